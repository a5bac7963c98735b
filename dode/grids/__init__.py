"""σ grids: the grid formulas, a model's standard grid family, and learned grids.

==============  ==================================================================================
``schedules``   grid formulas in σ-space (Karras, time-uniform, log-SNR, quadratic, VP tables, flow
                times and shifts) and a model's grid by name: :func:`grid_for_model` (foundation:
                imports no other dode module)
``standard``    the standard grid family of a model and the best grid per (solver, NFE):
                :func:`standard_grids`, :func:`select_grid`, :func:`reference_solution`
``learned``     learned grids fitted with λ: :func:`learned_dp` (dynamic programme),
                :func:`learned_sgd` (gradient), :func:`learned_schedule`
==============  ==================================================================================

``from dode.grids import karras, select_grid, learned_dp`` works for every public name of the
three; they are imported on first use (:func:`dode.import_paths.wing_exports`), so that
importing the grid formulas does not import the fit code beside them.
"""

from ..import_paths import wing_exports


def _modules():
    from . import learned, schedules, standard

    return schedules, standard, learned


__getattr__ = wing_exports(__name__, __path__, _modules)
