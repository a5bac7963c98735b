"""The solver contract (``dode.solvers.base.Solver``), checked for every registered solver and
option on a cheap analytic denoiser (a Gaussian, float64) and several grid lengths:

1. exactly ``nfe(num_steps)`` model calls;
2. every σ the model is called at is on the grid or in ``stage_sigmas``;
3. ``get_solver(**config())`` rebuilds it: same config, bit-identical samples;
4. the fit's stacked replay: a model output stacked as ``[o, o + δ]`` on a new leading
   dimension at call k gives the state of shape ``(2, *x.shape)`` of the two separate runs;
5. gradients reach λ: ``dode.sample`` with an ``nn.Parameter`` λ.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dode
from dode.denoisers import gaussian
from dode.solvers import SOLVERS, get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

LOF = (True, False)
CASES: list[tuple[str, dict]] = [
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    *[("ipndm", {"order": p}) for p in (1, 2, 3, 4)],
    ("pndm", {}),
    ("pndm", {"stages": "grid"}),
    ("pndm", {"skip_prk_steps": True}),
    *[("dpm_solver", {"order": p}) for p in (1, 2, 3)],
    ("dpm_solver", {"order": 2, "r1": 0.3}),
    ("dpm_solver", {"order": 3, "r1": 0.25, "r2": 0.6}),
    *[
        ("dpm_solver", {"order": p, "stages": "grid", "solver_type": t, "lower_order_final": f})
        for p in (1, 2, 3)
        for t in ("midpoint", "heun")
        for f in LOF
    ],
    *[("dpm_solver_pp", {"order": p, "lower_order_final": f}) for p in (1, 2, 3) for f in LOF],
    *[
        ("deis", {"order": p, "basis": b, "lower_order_final": f})
        for p in (1, 2, 3)
        for b in ("t", "logrho", "rho")
        for f in LOF
    ],
    *[
        ("unipc", {"order": p, "variant": v, "lower_order_final": f, "corrector": c})
        for p in (1, 2, 3)
        for v in ("bh1", "bh2")
        for f in LOF
        for c in (True, False)
    ],
]
IDS = [n + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in CASES]
EXTRA_STEPS = (0, 1, 4)  # grids of min_steps + these intervals


def test_every_registered_solver_has_cases():
    assert {n for n, _ in CASES} == set(SOLVERS)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(7)
    d = 3
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    cov = q @ torch.diag(torch.tensor([0.2, 0.7, 1.5], dtype=torch.float64)) @ q.T
    den = gaussian(torch.randn(d, dtype=torch.float64, generator=g), cov)
    noise = torch.randn(4, d, dtype=torch.float64, generator=g)
    return den, noise


def grid(solver, extra: int) -> torch.Tensor:
    return dode.grids.schedules.karras(solver.min_steps() + extra, 0.02, 10.0)


def model_of(den, solver):
    return den.x0 if solver.consumes == "x0" else den.eps


@pytest.mark.parametrize("extra", EXTRA_STEPS)
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_calls_and_sigmas(problem, name, kw, extra):
    den, noise = problem
    solver = get_solver(name, **kw)
    assert solver.replay_batchable in (True, False)
    s = grid(solver, extra)
    fn, seen = model_of(den, solver), []

    def model(x, sigma):
        seen.append(float(sigma))
        return fn(x, sigma)

    solver(model, noise * s[0].item(), s)
    assert len(seen) == solver.nfe(len(s) - 1)
    allowed = [*s.tolist(), *solver.stage_sigmas(s).tolist()]
    for sig in seen:
        assert any(math.isclose(sig, a, rel_tol=1e-12) for a in allowed), (
            f"model called at σ = {sig}, neither on the grid nor a stage point"
        )


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_config_round_trip(problem, name, kw):
    den, noise = problem
    solver = get_solver(name, **kw)
    cfg = solver.config()
    rebuilt = get_solver(**cfg)
    assert type(rebuilt) is type(solver) and rebuilt.config() == cfg
    s = grid(solver, 2)
    lam = torch.linspace(0, 0.3, solver.nfe(len(s) - 1), dtype=torch.float64)
    assert torch.equal(
        dode.sample(den, solver, noise, s, lam), dode.sample(den, rebuilt, noise, s, lam)
    )


# The configs of the registered names with default arguments, as written into solver files
# before config() was derived from the constructor: the derivation must not change them.
CONFIGS = {
    "ddim": {"name": "ddim", "order": 1},
    "ddim_x0": {"name": "euler", "order": 1},
    "edm_heun": {"name": "heun", "order": 1},
    "ipndm": {"name": "ipndm", "order": 4},
    "deis": {
        "name": "deis",
        "order": 3,
        "basis": "t",
        "lower_order_final": True,
        "beta_min": 0.1,
        "beta_max": 20.0,
    },
    "dpm_solver_3": {
        "name": "dpm_solver",
        "order": 3,
        "r1": 1 / 3,
        "r2": 2 / 3,
        "stages": "lambda",
        "solver_type": "midpoint",
        "lower_order_final": False,
    },
    "dpmpp_3m": {"name": "dpm_solver_pp", "order": 3, "lower_order_final": True},
    "unipc_bh1": {
        "name": "unipc",
        "order": 2,
        "variant": "bh1",
        "lower_order_final": True,
        "corrector": True,
    },
    "pndm": {"name": "pndm", "skip_prk_steps": False, "stages": "sigma"},
    "plms": {"name": "pndm", "skip_prk_steps": True, "stages": "sigma"},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_values(name):
    cfg = get_solver(name).config()
    assert cfg == CONFIGS[name] and list(cfg) == list(CONFIGS[name])


def test_config_requires_stored_parameters():
    class Bad(dode.solvers.Solver):
        name = "bad"

        def __init__(self, order: int | None = None, gamma: float = 1.0) -> None:
            super().__init__(order)
            self._gamma = gamma

    with pytest.raises(TypeError, match="'gamma' as self.gamma"):
        Bad().config()


class _Branches:
    """Model callable: the real model, except that call ``k`` returns ``o + delta`` (one run),
    or ``[o, o + delta]`` stacked on a new leading dimension (``delta=None`` stacks with the
    module's δ). Later calls on a stacked state evaluate the model on both branches."""

    def __init__(self, fn, k: int, delta: torch.Tensor, mode: str) -> None:
        self.fn, self.k, self.delta, self.mode, self.j = fn, k, delta, mode, 0

    def __call__(self, x, sigma):
        j = self.j
        self.j += 1
        o = self.fn(x.reshape(-1, x.shape[-1]), sigma).reshape(x.shape)
        if j != self.k or self.mode == "a":
            return o
        if self.mode == "b":
            return o + self.delta
        return torch.stack([o, o + self.delta])


@pytest.mark.parametrize("extra", (0, 3))
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_stacked_branches(problem, name, kw, extra):
    den, noise = problem
    solver = get_solver(name, **kw)
    s = grid(solver, extra)
    x = noise * s[0].item()
    nfe = solver.nfe(len(s) - 1)
    delta = 0.1 * torch.randn(noise.shape, dtype=torch.float64)
    fn = model_of(den, solver)
    for k in sorted({0, min(1, nfe - 1), nfe // 2, nfe - 1}):
        a = solver(_Branches(fn, k, delta, "a"), x, s)
        b = solver(_Branches(fn, k, delta, "b"), x, s)
        both = solver(_Branches(fn, k, delta, "stack"), x, s)
        assert both.shape == (2, *x.shape)
        torch.testing.assert_close(both[0], a, rtol=0, atol=1e-12)
        torch.testing.assert_close(both[1], b, rtol=0, atol=1e-12)
        assert not torch.equal(a, b)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_gradient_reaches_lambda(problem, name, kw):
    den, noise = problem
    solver = get_solver(name, **kw)
    s = grid(solver, 3)
    lam = nn.Parameter(torch.full((solver.nfe(len(s) - 1),), 0.1, dtype=torch.float64))
    out = dode.sample(den, solver, noise, s, lam)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (out * w).sum().backward()
    assert lam.grad is not None and torch.isfinite(lam.grad).all()
    assert lam.grad[0] == 0  # λ_0 has no previous output to act on
    assert (lam.grad[1:] != 0).all(), f"λ without gradient: {lam.grad.tolist()}"
