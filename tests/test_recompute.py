"""Recomputed network calls (``dode.correction.recomputed``, ``fit_end_to_end(recompute=...)``).

The end-to-end fit backpropagates through every network call of the trajectory. With
``recompute`` (the default) a call keeps only its inputs and output and runs its forward again
in the backward pass, so memory no longer grows with the NFE (measured in
``experiments/bench_scale.py``, not here). What is tested: the gradients are the same with and
without it, the backward pass calls the network once more per call, and it composes with bound
(sliced, guided) denoisers, latent and flow models and half-precision networks.
"""

from __future__ import annotations

import pytest
import torch
from _tiny import flux_embeds, make_tiny_flux, make_tiny_sd, make_tiny_unet, tiny_alphas_cumprod
from torch import Tensor

import dode
from dode.correction import DODECorrection, model_fn, recomputed
from dode.denoisers import (
    CallableDenoiser,
    DiffusersDenoiser,
    FluxDenoiser,
    LatentDiffusionDenoiser,
)
from dode.grids.schedules import flow_sigmas, karras, vp_sigmas
from dode.learned_solver import fit_end_to_end
from dode.solvers import get_solver

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad"),
    pytest.mark.usefixtures("one_thread"),
]


class Counting(torch.nn.Module):
    """A small nonlinear network ``x̂0 = x · a(σ) + tanh(W x)`` counting its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 6, dtype=torch.float64)
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        return x / (1 + s**2) + torch.tanh(self.lin(x)) * s / (1 + s)


def _counting_denoiser() -> tuple[CallableDenoiser, Counting]:
    torch.manual_seed(0)
    net = Counting().requires_grad_(False)
    return CallableDenoiser(net, sigma_min=0.002, sigma_max=80.0, prediction="x0"), net


def _trajectory_grads(den, solver, z, grid, recompute):
    """Gradients of a trajectory's final-sample loss in λ, ξ and the interior σ."""
    k = solver.nfe(len(grid) - 1)
    lam = torch.full((k,), 0.1, dtype=torch.float64, requires_grad=True)
    xi = torch.full((k,), 0.05, dtype=torch.float64, requires_grad=True)
    inner = grid[1:-1].clone().requires_grad_(True)
    sig = [grid[0], *inner.unbind(), grid[-1]]
    corr = DODECorrection(model_fn(den, solver.consumes, recompute), lam, False, shift=xi)
    x = solver.solve(corr, z * float(grid[0]), sig, None)
    loss = (x.to(torch.float64) ** 2).mean()
    loss.backward()
    return loss.detach(), lam.grad, xi.grad, inner.grad


@pytest.mark.parametrize("name,opts", [("dpm_solver_pp", {"order": 2}), ("heun", {})])
def test_recompute_gives_the_same_gradients_and_calls_the_network_again(name, opts):
    den, net = _counting_denoiser()
    solver = get_solver(name, **opts)
    grid = karras(4, 0.002, 80.0)
    k = solver.nfe(4)
    z = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.calls = 0
        dode.sample(den, solver, z, grid)
        assert net.calls == k
    out = {}
    for recompute in (False, True):
        net.calls = 0
        out[recompute] = _trajectory_grads(den, solver, z, grid, recompute)
        # forward K calls; with recompute the backward pass runs each forward once more
        assert net.calls == (2 * k if recompute else k)
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_recomputed_is_the_call_itself_without_gradients():
    den, net = _counting_denoiser()
    fn = recomputed(den.x0)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fn(x, 2.0), den.x0(x, 2.0))
    assert fn.__wrapped__ == den.x0


def test_fit_end_to_end_is_the_same_with_and_without_recompute():
    den, net = _counting_denoiser()
    g = torch.Generator().manual_seed(2)
    z, zs = (torch.randn(12, 6, dtype=torch.float64, generator=g) for _ in range(2))
    ref = dode.sample(den, "heun", z, karras(40, 0.002, 80.0))
    ref_s = dode.sample(den, "heun", zs, karras(40, 0.002, 80.0))
    kw = dict(select_noise=zs, select_reference=ref_s, steps=4, eval_every=2, batch_size=6,
              accept_level=None)  # fmt: skip
    grid = karras(4, 0.002, 80.0)
    a = fit_end_to_end(den, "dpm_solver_pp", grid, z, ref, recompute=False, **kw)
    b = fit_end_to_end(den, "dpm_solver_pp", grid, z, ref, **kw)
    ra, rb = a.metrics["end_to_end"], b.metrics["end_to_end"]
    assert ra["recompute"] is False and rb["recompute"] is True
    assert ra["losses"] == pytest.approx(rb["losses"], rel=1e-9)
    assert torch.allclose(a.sigmas, b.sigmas, rtol=1e-9)
    assert torch.allclose(a.lambdas, b.lambdas, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    make_tiny_sd(folder, seed=1)
    return folder


def _grads_close(den, solver, z, grid, rtol):
    a = _trajectory_grads(den, solver, z, grid, False)
    b = _trajectory_grads(den, solver, z, grid, True)
    for u, v in zip(a, b):
        assert torch.isfinite(u).all()
        assert torch.allclose(u, v, rtol=rtol, atol=1e-6 * float(u.abs().max()))


def test_recompute_composes_with_a_sliced_guided_latent_model(tiny_sd):
    """Stable Diffusion with CFG, bound to 4 prompts and sliced to a mini-batch's rows."""
    den = LatentDiffusionDenoiser.from_pretrained(str(tiny_sd))
    bound = den.bind(["a", "b c", "d", "e f g"], guidance_scale=5.0)[torch.tensor([3, 1])]
    z = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(4))
    grid = vp_sigmas(tiny_alphas_cumprod()).flip(0)[[999, 600, 300, 100]]
    grid = torch.cat([grid, grid.new_zeros(1)])
    _grads_close(bound, get_solver("dpm_solver_pp", order=2), z, grid, 1e-4)


def test_recompute_composes_with_a_flow_model_in_bfloat16(tmp_path):
    """FLUX (packed latents, embedded guidance), the network in bfloat16, the integration in
    float32: the same gradients with and without recompute (the forward is deterministic)."""
    make_tiny_flux(tmp_path, seed=0)
    den = FluxDenoiser.from_pretrained(
        str(tmp_path), model_dtype=torch.bfloat16, image_size=(16, 24)
    )
    assert next(den.transformer.parameters()).dtype == torch.bfloat16
    bound = den.bind(flux_embeds())
    z = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(5))
    grid = flow_sigmas(4, mu=den.mu)
    _grads_close(bound, get_solver("euler"), z, grid[1:] if torch.isinf(grid[0]) else grid, 1e-3)


def test_fit_end_to_end_runs_a_half_precision_pixel_model(tmp_path):
    """The network in bfloat16 (``model_dtype`` of the λ fit), the solver in float32."""
    unet = make_tiny_unet(tmp_path).to(torch.bfloat16)
    den = DiffusersDenoiser(unet, tiny_alphas_cumprod())
    g = torch.Generator().manual_seed(6)
    z, zs = (torch.randn(4, *den.sample_shape, generator=g) for _ in range(2))
    ref = dode.sample(den, "heun", z, karras(20, 0.01, den.sigma_max))
    ref_s = dode.sample(den, "heun", zs, karras(20, 0.01, den.sigma_max))
    fitted = fit_end_to_end(
        den, "ddim", karras(3, 0.01, den.sigma_max), z, ref, select_noise=zs,
        select_reference=ref_s, steps=2, eval_every=1, accept_level=None,
    )  # fmt: skip
    rec = fitted.metrics["end_to_end"]
    assert rec["recompute"] is True and rec["steps_run"] == 2
    assert all(torch.isfinite(torch.tensor(rec["losses"])))
