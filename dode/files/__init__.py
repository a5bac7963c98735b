"""What dode writes and reads: the solver file, the cache folder, images.

===============  =================================================================================
``solver_file``  :class:`~dode.files.solver_file.FittedSolver`: solver, σ grid, λ (and an
                 end-to-end solver's coefficients and shift), teacher, model record, metrics
                 (safetensors + JSON); the weights hash; writes that never replace what a user owns
                 (:func:`~dode.files.solver_file.atomic_write`,
                 :func:`~dode.files.solver_file.ensure_writable`)
``cache``        the cache root (:func:`~dode.files.cache.cache_root`)
``images``       samples as uint8 images and image grids
===============  =================================================================================

``from dode.files import FittedSolver`` works for every public name of the three (imported on
first use, :func:`dode.import_paths.wing_exports`).
"""

from ..import_paths import wing_exports


def _modules():
    from . import cache, images, solver_file

    return solver_file, cache, images


__getattr__ = wing_exports(__name__, __path__, _modules)
