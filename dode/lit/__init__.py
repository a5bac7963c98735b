"""Lightning pieces of dode: the module, the data module, callbacks.

``python -m dode.train`` wires them with LightningCLI; use them directly for custom loops::

    from dode.lit import DODEModule, NoiseDataModule
    module = DODEModule(model="gmm-digits", solver="ddim", nfe=5)
    data = NoiseDataModule(fit_seeds="0-255", val_seeds="1000-1063", batch_size=64)
    trainer = lightning.Trainer(use_distributed_sampler=False)
    trainer.fit(module, data)
    module.fitted_solver().save("ddim-nfe5.safetensors")
"""

from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback
from .data import NoiseDataModule, TeacherCache
from .module import DODEModule, build_grid

__all__ = [
    "DODEModule",
    "NoiseDataModule",
    "TeacherCache",
    "SampleGridCallback",
    "LambdaPlotCallback",
    "FrechetCallback",
    "build_grid",
]
