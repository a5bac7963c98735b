"""The solver zoo. ``get_solver(name, **kw)`` builds one by name.

========================  =========  =====================  ============================
name (aliases)            consumes   orders                 NFE for N steps
========================  =========  =====================  ============================
ddim                      ε̂          1                      N
euler (ddim_x0)           x̂0         1                      N
heun (edm_heun)           x̂0         2                      2N − 1
ipndm                     ε̂          1–4 (default 4)        N
pndm                      ε̂          AB4, PRK start         N + 9
pndm, stages=grid         ε̂          AB4, PRK start         N + 6 (stage points in N)
pndm, skip_prk (plms)     ε̂          AB4, Heun start        N + 1
dpm_solver                ε̂          2, 3 (default 2)       order·(N − 1) + 1
dpm_solver, stages=grid   ε̂          1–3 (diffusers' list)  N
dpm_solver_pp (dpmpp)     x̂0         1–3 (default 2)        N
deis                      ε̂          1–3 (default 3)        N
unipc                     x̂0         1–3 (default 2)        N
========================  =========  =====================  ============================
"""

from __future__ import annotations

from .base import Solver
from .ddim import DDIM, Euler
from .deis import DEIS
from .dpm_solver import DPMSolver
from .dpm_solver_pp import DPMSolverPP
from .heun import Heun
from .ipndm import IPNDM
from .pndm import PNDM
from .unipc import UniPC

SOLVERS: dict[str, type[Solver]] = {
    "ddim": DDIM,
    "euler": Euler,
    "heun": Heun,
    "ipndm": IPNDM,
    "pndm": PNDM,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPP,
    "deis": DEIS,
    "unipc": UniPC,
}

ALIASES: dict[str, tuple[str, dict]] = {
    "ddim_eps": ("ddim", {}),
    "ddim_x0": ("euler", {}),
    "edm_heun": ("heun", {}),
    "dpm_solver_2": ("dpm_solver", {"order": 2}),
    "dpm_solver_3": ("dpm_solver", {"order": 3}),
    "dpmpp": ("dpm_solver_pp", {}),
    "dpm_solver_pp_2m": ("dpm_solver_pp", {"order": 2}),
    "dpm_solver_pp_3m": ("dpm_solver_pp", {"order": 3}),
    "dpmpp_2m": ("dpm_solver_pp", {"order": 2}),
    "dpmpp_3m": ("dpm_solver_pp", {"order": 3}),
    "plms": ("pndm", {"skip_prk_steps": True}),
    "unipc_bh1": ("unipc", {"variant": "bh1"}),
    "unipc_bh2": ("unipc", {"variant": "bh2"}),
}


def solver_names() -> list[str]:
    return sorted([*SOLVERS, *ALIASES])


def get_solver(name: str | Solver, **kwargs) -> Solver:
    """Build a solver by name (see the table above); extra keywords go to its constructor.

    Raises:
        ValueError: unknown name, or arguments the solver does not take.
    """
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str):
        raise ValueError(f"solver name must be a string, got {type(name).__name__}.")
    key = name.lower().replace("-", "_")
    defaults: dict = {}
    if key in ALIASES:
        key, defaults = ALIASES[key]
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of: {', '.join(solver_names())}.")
    try:
        return SOLVERS[key](**{**defaults, **kwargs})
    except TypeError as e:
        raise ValueError(f"bad arguments for solver {name!r}: {e}") from None


__all__ = [
    "Solver",
    "DDIM",
    "Euler",
    "Heun",
    "IPNDM",
    "PNDM",
    "DPMSolver",
    "DPMSolverPP",
    "DEIS",
    "UniPC",
    "SOLVERS",
    "get_solver",
    "solver_names",
]
