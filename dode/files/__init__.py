"""What dode writes and reads: the solver file, the cache folder, images.

===============  =================================================================================
``solver_file``  :class:`FittedSolver`: solver, σ grid, λ (and an end-to-end solver's
                 coefficients and shift), teacher, model record, metrics (safetensors + JSON); the
                 weights hash; writes that never replace what a user owns
                 (:func:`atomic_write`, :func:`ensure_writable`)
``cache``        the cache root (:func:`cache_root`)
``images``       samples as uint8 images and image grids
===============  =================================================================================
"""

from .cache import cache_root
from .images import image_grid, to_uint8, to_uint8_hwc, to_uint8_images
from .solver_file import (
    FittedSolver,
    atomic_folder,
    atomic_write,
    check_model_weights,
    ensure_writable,
    model_family,
    model_schedule,
    weights_hash,
)

__all__ = [
    "FittedSolver",
    "weights_hash",
    "check_model_weights",
    "ensure_writable",
    "atomic_write",
    "atomic_folder",
    "model_family",
    "model_schedule",
    "cache_root",
    "to_uint8",
    "to_uint8_images",
    "to_uint8_hwc",
    "image_grid",
]
