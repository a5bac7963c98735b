"""Lightning pieces of dode: the module, the data module, callbacks.

``python -m dode.train`` wires them with LightningCLI; use them directly for custom loops::

    from dode.lit import DODEModule, NoiseDataModule
    module = DODEModule(model="gmm-digits", solver="ddim", nfe=5)
    data = NoiseDataModule(fit_seeds="0-255", val_seeds="1000-1063", batch_size=64)
    trainer = lightning.Trainer(use_distributed_sampler=False)
    trainer.fit(module, data)
    module.fitted_solver().save("ddim-nfe5.safetensors")

The settings as typed specs (:mod:`dode.lit.specs`), shared by ``dode.fit``, the configs and
the constructors::

    specs = Specs.from_config("configs/tiny.yaml")
    module = DODEModule.from_specs(specs.model, specs.solver, specs.fit)
    data = NoiseDataModule.from_spec(specs.data)
"""

from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback
from .data import NoiseDataModule, TeacherCache
from .module import DODEModule
from .specs import DataSpec, FitSpec, ModelSpec, RunSpec, SolverSpec, Specs

__all__ = [
    "DODEModule",
    "NoiseDataModule",
    "TeacherCache",
    "SampleGridCallback",
    "LambdaPlotCallback",
    "FrechetCallback",
    "ModelSpec",
    "SolverSpec",
    "FitSpec",
    "DataSpec",
    "RunSpec",
    "Specs",
]


def __getattr__(name: str):
    if name == "build_grid":  # the old name, with the signature of grid_for_model (warns)
        from ..import_paths import moved

        return moved("dode.lit", "dode.grids.schedules", name, "grid_for_model")
    raise AttributeError(f"module 'dode.lit' has no attribute {name!r}")
