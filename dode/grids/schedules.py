"""Noise-level grids in σ-space (EDM / k-diffusion convention: ``x = y + σ·n``).

Every grid is a 1-D ``float64`` tensor of *descending* σ that ends with an exact ``0``.
``len(grid) - 1`` is the number of solver steps (intervals).

VP (DDPM) models are described by their discrete ᾱ table; ``σ_t = sqrt((1 − ᾱ_t) / ᾱ_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..denoisers import Denoiser

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

Space = Literal["rho", "log", "linear"]


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")


def _with_zero(sig: Tensor) -> Tensor:
    return torch.cat([sig.to(torch.float64), sig.new_zeros(1, dtype=torch.float64)])


def karras(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Karras et al. (2022, Eq. 5) grid, uniform in ``σ^(1/ρ)``, followed by ``σ = 0``.

    Args:
        num_steps: number of solver steps N (the grid has N + 1 points).
        sigma_min: smallest non-zero σ (EDM default 0.002).
        sigma_max: largest σ (EDM default 80).
        rho: the ρ exponent (EDM default 7).
    """
    _check_steps(num_steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    if num_steps == 1:
        sig = torch.tensor([sigma_max], dtype=torch.float64)
    return _with_zero(sig)


def log_uniform(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """Grid uniform in log σ, i.e. uniform in log-SNR (DPM-Solver's "logSNR" spacing)."""
    _check_steps(num_steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    sig = torch.exp(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64)
    )
    if num_steps == 1:
        sig = torch.tensor([sigma_max], dtype=torch.float64)
    return _with_zero(sig)


def vp_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
) -> Tensor:
    """The discrete ᾱ table of a DDPM noise schedule (float64)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":

        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    else:
        raise ValueError(
            f"unknown beta_schedule {beta_schedule!r}; use 'linear', 'scaled_linear' or "
            "'squaredcos_cap_v2'."
        )
    return torch.cumprod(1.0 - betas, dim=0)


def vp_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) for every discrete timestep t (ascending in t)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def _timesteps(
    num_steps: int, T: int, spacing: Literal["leading", "trailing", "linspace"], offset: int
) -> list[int]:
    """Integer timesteps, descending, as diffusers' ``timestep_spacing`` defines them."""
    if num_steps > T:
        raise ValueError(f"num_steps={num_steps} exceeds the table's {T} timesteps.")
    if spacing == "leading":
        ratio = T // num_steps
        ts = [i * ratio + offset for i in range(num_steps)]
    elif spacing == "trailing":
        ratio = T / num_steps
        ts = [round(T - i * ratio) - 1 for i in range(num_steps)][::-1]
    elif spacing == "linspace":
        ts = [round(v) for v in torch.linspace(0, T - 1, num_steps, dtype=torch.float64).tolist()]
    else:
        raise ValueError(
            f"unknown spacing {spacing!r}; use 'leading' (DDIM 'uniform'), 'trailing' or "
            "'linspace'."
        )
    return sorted(set(ts), reverse=True)


def time_uniform(
    num_steps: int,
    alphas_cumprod: Tensor | None = None,
    spacing: Literal["leading", "trailing", "linspace"] = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Uniform in the discrete timestep t of a DDPM table (DDIM's "uniform" skip).

    With ``spacing="leading"`` this is DDIM's ``t_i = i·(T // N)`` (+ ``steps_offset``), the
    same timesteps diffusers' ``DDIMScheduler`` uses. The σ are exact table values, so a
    snapping denoiser evaluates the network at exactly these integer timesteps.
    """
    _check_steps(num_steps)
    a = vp_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    table = vp_sigmas(a)
    ts = _timesteps(num_steps, len(table), spacing, steps_offset)
    return _with_zero(table[torch.tensor(ts)])


def quadratic(
    num_steps: int, alphas_cumprod: Tensor | None = None, max_fraction: float = 0.8
) -> Tensor:
    """DDIM's "quad" skip: ``t_i = (i · sqrt(0.8·T)/(N−1))²`` rounded, on a DDPM table."""
    _check_steps(num_steps)
    a = vp_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    table = vp_sigmas(a)
    T = len(table)
    u = torch.linspace(0, math.sqrt(T * max_fraction), num_steps, dtype=torch.float64) ** 2
    ts = sorted({int(v) for v in u.tolist()}, reverse=True)
    if len(ts) < num_steps:
        raise ValueError(
            f"quadratic spacing gives only {len(ts)} distinct timesteps for num_steps={num_steps};"
            " use fewer steps or another schedule."
        )
    return _with_zero(table[torch.tensor(ts)])


def explicit(sigmas: Sequence[float] | Tensor) -> Tensor:
    """Validate an explicit list of σ: strictly descending, positive, and a final 0 appended
    if it is not there."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("the explicit σ list is empty; give at least one σ > 0.")
    if not torch.isfinite(s).all():
        raise ValueError("the explicit σ list contains non-finite values.")
    if s[-1] != 0:
        s = _with_zero(s)
    if (s[:-1] <= 0).any():
        raise ValueError("all σ except the final one must be > 0.")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("σ must be strictly descending (largest first), ending with 0.")
    return s


def _to_space(s: Tensor, space: Space, rho: float) -> Tensor:
    if space == "rho":
        return s ** (1 / rho)
    if space == "log":
        return s.log()
    return s


def _from_space(u: Tensor, space: Space, rho: float) -> Tensor:
    if space == "rho":
        return u**rho
    if space == "log":
        return u.exp()
    return u


def refine(
    sigmas: Tensor | Sequence[float],
    factor: int,
    *,
    space: Space = "rho",
    rho: float = 7.0,
    include: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """A finer grid that contains every point of ``sigmas`` exactly.

    Each interval ``[σ_i, σ_{i+1}]`` is split into ``factor`` sub-steps, uniformly in the
    schedule's own parameterisation: ``σ^(1/ρ)`` for Karras grids (``space="rho"``; the refined
    Karras grid is again a Karras grid), log σ for log-SNR grids (``space="log"``), σ itself
    (``"linear"``). In log space the last interval to σ = 0 is split in ``σ^(1/ρ)``. The original
    points are copied bit for bit, never recomputed, so a teacher state can be matched to a
    student state by σ value.

    Args:
        sigmas: a descending grid ending in 0.
        factor: refinement factor C ≥ 2 (the D-ODE teacher uses C = 10).
        space: parameterisation in which sub-steps are uniform.
        rho: ρ for ``space="rho"``.
        include: extra σ (e.g. stage points of multi-stage solvers) that must also be on the
            refined grid; inserted exactly.
    """
    if not isinstance(factor, int) or factor < 2:
        raise ValueError(
            f"refine factor must be an integer >= 2, got {factor!r} (the paper uses 10)."
        )
    if space not in ("rho", "log", "linear"):
        raise ValueError(f"unknown space {space!r}; use 'rho', 'log' or 'linear'.")
    s = explicit(sigmas)
    pieces = []
    for i in range(len(s) - 1):
        a, b = s[i : i + 1], s[i + 1 : i + 2]
        sp = "rho" if (space == "log" and b.item() == 0) else space
        ua, ub = _to_space(a, sp, rho), _to_space(b, sp, rho)
        frac = torch.arange(factor, dtype=torch.float64) / factor
        inner = _from_space(ua + frac[1:] * (ub - ua), sp, rho)
        pieces += [a, inner]
    pieces.append(s[-1:])
    out = torch.cat(pieces)
    if include is not None:
        extra = torch.as_tensor(include, dtype=torch.float64).flatten()
        out = torch.cat([out, extra])
        out = torch.unique(out, sorted=True).flip(0)
    return out


SCHEDULES = {
    "karras": karras,
    "log_uniform": log_uniform,
    "logsnr": log_uniform,
    "time_uniform": time_uniform,
    "uniform": time_uniform,
    "quadratic": quadratic,
}


def get_schedule(name: str, num_steps: int, **kwargs) -> Tensor:
    """Build a grid by name: ``karras``, ``log_uniform`` (``logsnr``), ``time_uniform``
    (``uniform``), ``quadratic``."""
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)} or pass an explicit "
            "σ list to dode.grids.schedules.explicit()."
        )
    return SCHEDULES[name](num_steps, **kwargs)


def refine_space(name: str) -> Space:
    """The parameterisation in which a named schedule is uniform (for :func:`refine`)."""
    return {"karras": "rho", "log_uniform": "log", "logsnr": "log"}.get(name, "log")


# ---- flow matching (rectified flow) grids ----------------------------------------------------
#
# A rectified flow has ``x_t = (1 − t) x0 + t ε`` with t ∈ [0, 1]; in σ-space
# ``σ = t / (1 − t)`` and ``x = x_t / (1 − t)`` (see :mod:`dode.denoisers.flow`). t = 1 is σ = ∞.

FlowSpacing = Literal["euler", "flux", "dpm_solver", "unipc"]


def flow_t_to_sigma(t: Tensor | Sequence[float] | float) -> Tensor:
    """σ = t / (1 − t) (float64); t = 1 gives σ = ∞."""
    t = torch.as_tensor(t, dtype=torch.float64)
    with torch.no_grad():
        return torch.where(t < 1, t / (1 - t).clamp(min=1e-300), torch.full_like(t, math.inf))


def sigma_to_flow_t(sigma: Tensor | Sequence[float] | float) -> Tensor:
    """t = σ / (1 + σ) (float64); σ = ∞ gives t = 1."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.where(torch.isinf(s), torch.ones_like(s), s / (1 + s))


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent shift μ (diffusers' ``calculate_shift``): linear in the
    number of latent tokens, ``base_shift`` at ``base_seq_len`` and ``max_shift`` at
    ``max_seq_len``. A 1024² FLUX image has ``(1024 / 16)² = 4096`` tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


def flow_shift(
    t: Tensor | Sequence[float],
    shift: float = 1.0,
    mu: float | None = None,
    shift_type: Literal["exponential", "linear"] = "exponential",
) -> Tensor:
    """Time shift of a flow grid, as diffusers applies it.

    Static (SD3's ``shift`` s): ``t' = s t / (1 + (s − 1) t)``. Resolution-dependent (FLUX's μ,
    ``use_dynamic_shifting``): ``t' = e^μ / (e^μ + (1/t − 1))`` (``shift_type="exponential"``) or
    ``μ / (μ + (1/t − 1))`` (``"linear"``), which are the static shift with s = e^μ or s = μ. In
    σ = t/(1 − t) every shift is the scaling ``σ' = s σ``: it changes the grid, not the model.

    Raises:
        ValueError: a shift that is not a finite number > 0 (the grid would not be monotone in
            (0, 1]), or both ``shift`` and ``mu`` set.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if mu is not None:
        if shift != 1.0:
            raise ValueError(
                f"give either a static shift (SD3: shift={shift}) or a dynamic mu (FLUX: "
                f"mu={mu}), not both."
            )
        if shift_type not in ("exponential", "linear"):
            raise ValueError(f"shift_type must be 'exponential' or 'linear', got {shift_type!r}.")
        s = math.exp(mu) if shift_type == "exponential" else float(mu)
        what = f"mu={mu} ({shift_type}: scale {s:.6g})"
    else:
        s = float(shift)
        what = f"shift={shift}"
    if not math.isfinite(s) or s <= 0:
        raise ValueError(
            f"{what} makes the flow grid non-monotone or leave (0, 1]: the time shift "
            "s·t / (1 + (s − 1)·t) needs a finite scale s > 0. Use shift > 0 (SD3 uses 3.0) or a "
            "linear mu > 0."
        )
    return s * t / (1 + (s - 1) * t)


def flow_times(
    num_steps: int,
    spacing: FlowSpacing = "euler",
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
    *,
    dynamic: bool = False,
) -> Tensor:
    """The unshifted, descending flow times t (``num_steps`` values, no final 0) of diffusers'
    schedulers and pipelines.

    * ``"euler"``: ``FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps)``:
      ``linspace(1, t_min, N)`` with ``t_min = 1/T``, already shifted once by a static
      ``shift`` (diffusers shifts its training table in ``__init__`` and takes its last entry;
      ``dynamic=True``, i.e. a μ given, skips that). SD3's pipeline uses this.
    * ``"flux"``: ``linspace(1, 1/N, N)``, the ``sigmas`` the FLUX pipeline passes.
    * ``"dpm_solver"``: ``DPMSolverMultistepScheduler(use_flow_sigmas=True)``:
      ``(1 − 1/T)·k/N`` for k = N … 1 (starts below 1).
    * ``"unipc"``: ``UniPCMultistepScheduler(use_flow_sigmas=True)``: ``linspace(1, 1/T,
      N + 1)[:-1]`` (:func:`flow_sigmas` moves a shifted t = 1 to ``1 − 1e-6`` as diffusers does).
    """
    _check_steps(num_steps)
    T = num_train_timesteps
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {T!r}.")
    if spacing == "euler":
        t_min = 1 / T if dynamic else float(flow_shift([1 / T], shift)[0])
        return torch.linspace(1.0, t_min, num_steps, dtype=torch.float64)
    if spacing == "flux":
        return torch.linspace(1.0, 1 / num_steps, num_steps, dtype=torch.float64)
    if spacing == "dpm_solver":
        return (1 - torch.linspace(1, 1 / T, num_steps + 1, dtype=torch.float64)).flip(0)[:-1]
    if spacing == "unipc":
        return torch.linspace(1, 1 / T, num_steps + 1, dtype=torch.float64)[:-1]
    raise ValueError(
        f"unknown flow spacing {spacing!r}; use 'euler' (FlowMatchEulerDiscreteScheduler, SD3), "
        "'flux' (FLUX pipeline), 'dpm_solver' or 'unipc' (use_flow_sigmas=True), or pass "
        "times=[...]."
    )


def flow_sigmas(
    num_steps: int | None = None,
    shift: float = 1.0,
    mu: float | None = None,
    *,
    spacing: FlowSpacing = "euler",
    times: Sequence[float] | Tensor | None = None,
    num_train_timesteps: int = 1000,
    shift_type: Literal["exponential", "linear"] = "exponential",
) -> Tensor:
    """A flow-matching grid in σ-space: flow times uniform in t (:func:`flow_times`, or the
    explicit unshifted ``times``), shifted (:func:`flow_shift`) as diffusers does, mapped to
    ``σ = t / (1 − t)``, with a final 0.

    A grid that starts at t = 1 (``"euler"``, ``"flux"``, explicit ``times`` starting at 1) starts
    with σ_0 = ∞, which no solver can step from: map the pipeline's initial latents and the grid
    with :meth:`dode.denoisers.FlowDenoiser.start`, which takes the first step exactly (the σ → ∞
    limit of DDIM, ``x̂0 = ε − v``) and returns the finite rest of the grid. Grids that start
    below t = 1 (``"dpm_solver"``, ``"unipc"``) are finite; ``start`` then only rescales the
    latents.

    Args:
        num_steps: number of model calls N of the diffusers scheduler (not needed with
            ``times``).
        shift: SD3's static shift (``FlowMatchEulerDiscreteScheduler(shift=...)``,
            ``flow_shift`` of the multistep schedulers).
        mu: FLUX's dynamic shift (:func:`flux_mu`); excludes ``shift``.
        spacing: which diffusers grid (see :func:`flow_times`).
        times: explicit unshifted times in (0, 1], strictly descending (diffusers'
            ``set_timesteps(sigmas=...)``).
        num_train_timesteps: T of the scheduler config.
        shift_type: how μ shifts (``time_shift_type``).

    Returns:
        float64 σ, descending, ending in 0 (``num_steps + 1`` values).
    """
    if times is None:
        if num_steps is None:
            raise ValueError("give num_steps (or an explicit list of flow times, times=[...]).")
        t = flow_times(num_steps, spacing, shift, num_train_timesteps, dynamic=mu is not None)
    else:
        t = torch.as_tensor(times, dtype=torch.float64).flatten()
        if t.numel() == 0:
            raise ValueError("times is empty; give at least one flow time in (0, 1].")
        if num_steps is not None and t.numel() != num_steps:
            raise ValueError(f"times has {t.numel()} values but num_steps={num_steps}.")
    if not torch.isfinite(t).all() or (t <= 0).any() or (t > 1).any():
        bad = t[~(torch.isfinite(t) & (t > 0) & (t <= 1))][0].item()
        raise ValueError(
            f"flow time t = {bad:.6g} is outside (0, 1]: a rectified flow x_t = (1 − t) x0 + t ε "
            "has t = 1 at pure noise and t → 0 at the data; give times in (0, 1] (the final "
            "t = 0 is appended for you)."
        )
    if not (t[1:] < t[:-1]).all():
        raise ValueError(
            "flow times must be strictly descending (largest first, no repeats); got "
            f"{[round(v, 6) for v in t.tolist()]}."
        )
    ts = flow_shift(t, shift, mu, shift_type)
    if spacing == "unipc" and times is None and abs(ts[0].item() - 1) < 1e-6:
        ts[0] = ts[0] - 1e-6  # as diffusers' UniPC, which cannot take log(1 − t) at t = 1
    if not (ts[1:] < ts[:-1]).all() or (ts <= 0).any() or (ts > 1).any():
        raise ValueError(
            f"the shift (shift={shift}, mu={mu}) makes the flow grid non-monotone or leave (0, 1]; "
            "use a shift > 0."
        )
    return _with_zero(flow_t_to_sigma(ts))


def round_grid(
    sigmas: Tensor, round_sigma: Callable[[Tensor], Tensor], what: str = "the grid"
) -> Tensor:
    """Move every σ > 0 of a grid to the σ the model actually evaluates at (as EDM does).

    A discrete model that snaps σ to its table (``DiffusersDenoiser(sigma_to_t="snap")``) runs
    the network at the snapped timestep; the solver's σ (``c_in``, the ε → x̂0 conversion, the
    step sizes) must be that same σ. Points already on the table (relative 1e-12) are kept bit
    for bit, so grids built from the table (``time_uniform``, ``quadratic``) do not change.

    Args:
        sigmas: a descending grid ending in 0.
        round_sigma: the model's ``round_sigma`` (identity for continuous models).
        what: how to name the grid in an error.

    Raises:
        ValueError: if rounding merges two grid points (the grid would not be strictly
            descending).
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    body = s[:-1]
    rounded = torch.as_tensor(round_sigma(body), dtype=torch.float64).to(body.device)
    on_table = (rounded - body).abs() <= 1e-12 * body
    body = torch.where(on_table, body, rounded)
    same = (body[1:] >= body[:-1]).nonzero()
    if len(same):
        i = int(same[0])
        raise ValueError(
            f"{what} has σ = {float(s[i]):.6g} and {float(s[i + 1]):.6g}, which the model "
            f"evaluates at the same table σ = {float(body[i + 1]):.6g} (sigma_to_t='snap'); "
            "use fewer steps, a grid on the model's table (time_uniform), or sigma_to_t='interp'."
        )
    return torch.cat([body, s[-1:]])


def round_refined(
    grid: Tensor, round_sigma: Callable[[Tensor], Tensor], keep: Sequence[float] = ()
) -> Tensor:
    """Round a refined (teacher) grid to the σ the model evaluates at, keeping ``keep`` exact.

    The teacher's extra points are moved onto the model's table like :func:`round_grid` does
    for the student; points that land on a kept σ or on each other are dropped (the teacher
    takes one step fewer there), so the grid stays strictly descending and still contains every
    kept σ bit for bit. For a continuous model (``round_sigma`` the identity) the grid is
    returned unchanged.
    """
    g = torch.as_tensor(grid, dtype=torch.float64)
    keep_set = {float(k) for k in keep}
    body = g[:-1]
    rounded = torch.as_tensor(round_sigma(body), dtype=torch.float64).to(body.device)
    values = {
        orig if orig in keep_set or abs(new - orig) <= 1e-12 * orig else new
        for orig, new in zip(body.tolist(), rounded.tolist())
    }
    pts = sorted(values, reverse=True)
    return torch.tensor([*pts, float(g[-1])], dtype=torch.float64)


def _buffer_device(module: object) -> torch.device | None:
    buffers = getattr(module, "buffers", None)
    if buffers is None:
        return None
    return next((b.device for b in buffers()), None)


def _check_range_options(denoiser, schedule: str, opts: dict) -> None:
    """``ValueError`` for grid options outside the model's range or meaning: a σ_max above
    the model's largest σ (it was never trained there: the fit's λ and the samples blow up),
    a ρ that is not a positive number, σ that are not finite positive numbers."""
    for key in ("sigma_min", "sigma_max", "rho"):
        if key not in opts:
            continue
        v = opts[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok:
            what = "ρ (the Karras exponent; 7 in EDM)" if key == "rho" else key
            raise ValueError(
                f"schedule_options.{key} = {v!r} for {schedule!r}: {what} must be a finite "
                "positive number."
            )
    top = getattr(denoiser, "sigma_max", None)
    smax = opts.get("sigma_max")
    if smax is not None and top is not None and math.isfinite(float(top)):
        if float(smax) > float(top) * (1 + 1e-6):
            raise ValueError(
                f"schedule_options.sigma_max = {float(smax):g} ({schedule!r} grid) is above the "
                f"largest σ of the model ({float(top):.6g}), where it was never trained: the λ "
                f"fitted there and the samples blow up. Use sigma_max <= {float(top):.6g} (or "
                "leave it out: the default is min(80, the model's σ_max))."
            )


def grid_for_model(
    denoiser: Denoiser, schedule: str, num_steps: int, options: dict | None = None
) -> Tensor:
    """The σ grid (descending, final 0) of a named schedule for a model.

    Defaults taken from the model: ``karras`` and ``log_uniform`` span
    ``[max(0.002, σ_min), min(80, σ_max)]`` of the model; ``time_uniform`` and ``quadratic`` use
    the model's discrete ᾱ table (diffusers DDPM models only). ``explicit`` takes
    ``options["sigmas"]``. The grid is then rounded to the σ the model evaluates at
    (:func:`round_grid`; a no-op unless the model snaps σ to a discrete table).

    Args:
        denoiser: the model (its σ range, ᾱ table and ``round_sigma`` are used).
        schedule: ``karras``, ``log_uniform`` (``logsnr``), ``time_uniform`` (``uniform``),
            ``quadratic`` or ``explicit``.
        num_steps: number of solver steps (the grid has ``num_steps + 1`` points).
        options: the schedule's options, e.g. ``{sigma_min: 0.002, sigma_max: 80, rho: 7}``,
            ``{spacing: trailing}`` or ``{sigmas: [...]}`` for ``explicit``.
    """
    opts = dict(options or {})
    if schedule == "explicit":
        if "sigmas" not in opts:
            raise ValueError(
                "schedule 'explicit' needs schedule_options.sigmas: a descending list of σ."
            )
        s = explicit(opts.pop("sigmas"))
        if opts:
            raise ValueError(f"schedule 'explicit' takes only 'sigmas', got {sorted(opts)}.")
        if len(s) - 1 != num_steps:
            raise ValueError(
                f"the explicit grid has {len(s) - 1} steps but the solver needs {num_steps} for "
                "this NFE; give one σ per step (the final 0 is added)."
            )
    else:
        if schedule == "flow":
            if getattr(denoiser, "family", "vp") != "flow":  # the denoiser's own answer
                raise ValueError(
                    f"schedule 'flow' is a rectified-flow grid, but {type(denoiser).__name__} "
                    "is a diffusion (σ-space) model; use 'karras', 'log_uniform' or "
                    "'time_uniform'."
                )
            net = getattr(denoiser, "model", denoiser)  # a bound (guided) flow
            if "shift" not in opts and "mu" not in opts:
                if getattr(net, "mu", None) is not None:
                    opts["mu"] = float(net.mu)  # FLUX: from the image sequence length
                else:
                    opts["shift"] = float(getattr(net, "shift", 1.0))
            if hasattr(net, "num_train_timesteps"):
                opts.setdefault("num_train_timesteps", int(net.num_train_timesteps))
        elif schedule in ("karras", "log_uniform", "logsnr"):
            opts.setdefault("sigma_min", max(0.002, float(denoiser.sigma_min)))
            opts.setdefault("sigma_max", min(80.0, float(denoiser.sigma_max)))
        elif schedule in ("time_uniform", "uniform", "quadratic"):
            table = getattr(denoiser, "alphas_cumprod", None)
            if table is None and "alphas_cumprod" not in opts:
                raise ValueError(
                    f"schedule {schedule!r} is uniform in the discrete timesteps of a DDPM "
                    f"model, but {type(denoiser).__name__} has no ᾱ table; use 'karras' or "
                    "'log_uniform'."
                )
            if table is not None:
                opts.setdefault("alphas_cumprod", table.detach().cpu())
        _check_range_options(denoiser, schedule, opts)
        try:
            s = get_schedule(schedule, num_steps, **opts)
        except TypeError as e:
            raise ValueError(f"bad schedule_options for {schedule!r}: {e}") from None
    if schedule == "explicit":
        _check_range_options(denoiser, schedule, {"sigma_max": float(s[0])})
    round_sigma = getattr(denoiser, "round_sigma", None)
    if round_sigma is None:
        return s
    device = _buffer_device(denoiser)
    return round_grid(
        s,
        lambda body: round_sigma(body if device is None else body.to(device)).cpu(),
        f"the {schedule!r} grid",
    )


def flow_schedule(
    num_steps: int,
    shift: float = 1.0,
    mu: float | None = None,
    spacing: FlowSpacing = "dpm_solver",
    num_train_timesteps: int = 1000,
    shift_type: Literal["exponential", "linear"] = "exponential",
) -> Tensor:
    """The named schedule ``"flow"`` (configs, :func:`grid_for_model`): :func:`flow_sigmas` on
    a grid that starts at a finite σ (``spacing`` ``"dpm_solver"`` — diffusers' multistep
    schedulers with ``use_flow_sigmas`` — or ``"unipc"``), so a solver can start there from
    ``noise · σ_0``. FlowMatchEuler's grids (``"euler"``, ``"flux"``) start at t = 1 (σ = ∞)
    and need :meth:`dode.denoisers.FlowDenoiser.start` (Python API) instead."""
    if spacing in ("euler", "flux"):
        raise ValueError(
            f"the 'flow' schedule with spacing {spacing!r} starts at t = 1 (σ = ∞), where no "
            "solver can start from noise; use spacing 'dpm_solver' or 'unipc' (start at "
            "t = shift(1 − 1/T)), or in Python FlowDenoiser.start(latents, flow_sigmas(...))."
        )
    return flow_sigmas(
        num_steps,
        shift,
        mu,
        spacing=spacing,
        num_train_timesteps=num_train_timesteps,
        shift_type=shift_type,
    )


SCHEDULES["flow"] = flow_schedule
