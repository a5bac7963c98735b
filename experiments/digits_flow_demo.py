"""``make demo-flow``: D-ODE on the bundled class-conditional rectified-flow digits model
(``dode/assets/digits_flow``), end to end, on a CPU.

The same pipeline as ``make demo-guided`` (:mod:`digits_guided_demo`: fit with the core API,
α chosen on other seeds, base vs D-solver judged by FD-digits and class accuracy on held-out
seeds, a converged reference row), on the flow. Labels are seed mod 10, guidance 1 (the
conditional flow alone).

The flow in σ-space (:mod:`dode.denoisers.flow`): ``σ = t/(1 − t)``, ``x = x_t/(1 − t)``,
``x̂0 = x_t − t·v``. Its grids start at t = 1 (σ = ∞), which no solver can step from:
:meth:`~dode.denoisers.FlowDenoiser.start` takes that first call exactly (x̂0 = ε − v(ε, 1),
then the state at the next σ); it is shared by base and D-solver, not corrected, and counts in
the NFE. The solver makes the other NFE − 1 calls on the finite rest of the grid, where the λ
are fitted and act. Default grid: ``flow_sigmas(N, spacing="flux")``, t uniform from 1 to 1/N
(the FLUX pipeline's; shift 1 as the model's scheduler config).

Usage::

    python experiments/digits_flow_demo.py -c configs/demo/digits-flow.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import digits_guided_demo  # noqa: E402
from digits_guided_demo import SolverSpec  # noqa: E402

FLOW_SOLVERS = [
    SolverSpec("Euler", "euler", {}, "flux"),
    SolverSpec("DPM-Solver++(2M)", "dpm_solver_pp", {"order": 2}, "flux"),
    SolverSpec("UniPC", "unipc", {}, "flux"),
]

#: The flow demo's defaults (over :class:`digits_guided_demo.DemoSettings`'); the config file
#: and the command line override them.
FLOW_DEFAULTS = {
    "model": "digits-flow",
    "solvers": FLOW_SOLVERS,
    "nfes": [3, 4, 5, 6, 7, 8, 9, 10],
    "guidance_scales": [1.0],
    "out": "experiments/results/digits-flow",
}


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``-c CONFIG`` and any ``DemoSettings`` field as an option."""
    return digits_guided_demo.main(argv, prog="digits_flow_demo", defaults=FLOW_DEFAULTS)


if __name__ == "__main__":
    main()
