"""Lightning pieces of dode: ``fit`` (also ``dode.fit``), the module, the data module, callbacks.

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

from .api import fit
from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback
from .data import NoiseDataModule, TeacherCache
from .module import DODEModule
from .specs import DataSpec, FitSpec, ModelSpec, RunSpec, SolverSpec, Specs

__all__ = [
    "fit",
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
