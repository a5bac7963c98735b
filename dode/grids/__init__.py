"""σ grids: the grid formulas in σ-space and a model's grid by name (foundation: imports no
other dode module).

==============  ==================================================================================
``schedules``   Karras, time-uniform, log-SNR, quadratic, explicit; VP tables, flow times and
                shifts; :func:`grid_for_model` (a model's grid by name, on the σ it evaluates at)
==============  ==================================================================================

The grids chosen or fitted for a model live with the fit: :mod:`dode.standard_grids` (the
standard grid family and the best grid per (solver, NFE)) and :mod:`dode.learned_grid`.
"""

from .schedules import (
    SCHEDULES,
    explicit,
    flow_schedule,
    flow_shift,
    flow_sigmas,
    flow_t_to_sigma,
    flow_times,
    flux_mu,
    get_schedule,
    grid_for_model,
    karras,
    log_uniform,
    quadratic,
    refine,
    round_grid,
    round_refined,
    sigma_to_flow_t,
    time_uniform,
    vp_alphas_cumprod,
    vp_sigmas,
)

__all__ = [
    "karras",
    "log_uniform",
    "time_uniform",
    "quadratic",
    "explicit",
    "refine",
    "vp_alphas_cumprod",
    "vp_sigmas",
    "get_schedule",
    "grid_for_model",
    "round_grid",
    "round_refined",
    "SCHEDULES",
    "flow_shift",
    "flow_sigmas",
    "flow_schedule",
    "flow_times",
    "flux_mu",
    "sigma_to_flow_t",
    "flow_t_to_sigma",
]
