"""What dode writes and reads: the solver file, the cache folder, images.

===============  =================================================================================
``solver_file``  the file format: :class:`FittedSolver`: solver, σ grid, λ (and an end-to-end
                 solver's coefficients and shift), teacher, model record, metrics (safetensors +
                 JSON)
``weights``      the hash of a model's weights (:func:`weights_hash`) and the samplers' check
                 that a model has the weights a file was fitted on (:func:`check_model_weights`)
``writes``       writes that never leave a half-written file or replace what a user owns
                 (:func:`atomic_write`, :func:`atomic_folder`, :func:`ensure_writable`)
``cache``        the cache root (:func:`cache_root`)
``images``       samples as uint8 images and image grids
===============  =================================================================================
"""

from .cache import cache_root
from .images import image_grid, to_uint8, to_uint8_hwc, to_uint8_images
from .solver_file import FittedSolver, model_family, model_schedule
from .weights import check_model_weights, weights_hash
from .writes import atomic_folder, atomic_write, check_replaceable, ensure_writable

__all__ = [
    "FittedSolver",
    "weights_hash",
    "check_model_weights",
    "ensure_writable",
    "atomic_write",
    "atomic_folder",
    "check_replaceable",
    "model_family",
    "model_schedule",
    "cache_root",
    "to_uint8",
    "to_uint8_images",
    "to_uint8_hwc",
    "image_grid",
]
