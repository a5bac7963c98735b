"""Memory and cost of the end-to-end fit at the scale of Stable Diffusion, on the CPU.

Writes ``experiments/results/scale.md``. Every figure is one measurement in a fresh
subprocess, so runs do not contaminate each other: the subprocess builds the model, resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the measured work and reports
``VmHWM`` (peak resident memory) minus the resident memory just before it (the model and its
inputs). glibc's malloc runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor above
64 KiB is its own mapping and freed memory leaves the resident set (without it, memory freed
while the model is built is reused without showing in the peak).

Two models, random weights, DPM-Solver++(2M), float32 integration:

* **SD1.5's UNet** (``UNet2DConditionModel`` with SD1.5's configuration: 860 M parameters,
  block_out_channels (320, 640, 1280, 1280), cross_attention_dim 768, 8 heads), the network in
  bfloat16 (as ``configs/sd15-end-to-end.yaml`` runs it in float16 on a GPU), latents
  4×32×32, one prompt with guidance 7.5 (a batch of 2 through the UNet): peak memory of one fit
  step (the trajectory's forward and backward, gradients to the grid logits, λ, history
  coefficients and shift) at NFE 2 and 4 with recomputation and 1 and 2 without (``--full``:
  also 8 with, 4 without),
  and of one reference batch (no gradients). A forward of this UNet takes 10–20 s on the
  shared 2-core machine, so the other NFE and 512 px (latents 4×64×64) are projected from the
  per-call figures (said in the table).
* **A mid-sized UNet** (SD-shaped blocks with cross-attention, block_out_channels
  (64, 128, 192, 192), 22.6 M parameters, float32), latents 4×32×32, one prompt without
  guidance, 4 samples per step, 2 Adam steps of :func:`dode.learned_solver.fit_end_to_end`
  (selection on 2 seeds), references computed in batches of 16 seeds
  (:func:`dode.standard_grids.reference_solution` per batch, the bound denoiser sliced along;
  the references' NFE is 1: this measures memory, not accuracy): peak memory of the whole fit (references included)
  at NFE 4 and 16 with recomputation on and off, and with 16 and 256 fit seeds.

Usage::

    python experiments/bench_scale.py            # about 20 minutes on 2 shared cores
    python experiments/bench_scale.py --full     # adds SD1.5 at NFE 8 (4 without recompute)
    python experiments/bench_scale.py --only mid # one model (the other's figures are kept)
    python experiments/bench_scale.py --report   # rewrite scale.md from scale.json

The committed ``scale.md`` holds the mid-sized UNet's figures of a default run and SD1.5's of
an ``--only sd15 --full`` run (its header names each model's run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "scale.md"
GB = 1e9
SD15 = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32,
)
MID = {
    **SD15,
    "block_out_channels": (64, 128, 192, 192),
    "cross_attention_dim": 256,
    "attention_head_dim": (2, 4, 6, 6),  # heads per block: 32 channels per head
}
GUIDANCE = 7.5
REF_BATCH = 16  # seeds per reference batch (mid UNet)


# ---- in the measuring subprocess -----------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _reset_peak() -> float:
    """Reset the peak-RSS mark to the current RSS; return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_kb("VmRSS") * 1e3


def _model(cfg: dict, dtype, rows: int, seed: int = 0):
    """The UNet as a dode denoiser bound to one prompt (random embeddings) per row, with
    guidance (CFG, 2 rows through the UNet per sample) for SD1.5."""
    import torch
    from diffusers import UNet2DConditionModel

    from dode.denoisers import DiffusersDenoiser, GuidedDenoiser
    from dode.denoisers.guidance import Conditioning
    from dode.grids.schedules import vp_alphas_cumprod

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg).to(dtype)
    table = vp_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear")
    den = DiffusersDenoiser(unet, table)
    g = torch.Generator().manual_seed(seed + 1)
    emb = torch.randn(1, 77, cfg["cross_attention_dim"], generator=g)
    neg = torch.randn(1, 77, cfg["cross_attention_dim"], generator=g)
    cond = Conditioning({"encoder_hidden_states": emb.expand(rows, 77, -1)})
    guided = cfg is SD15
    uncond = Conditioning({"encoder_hidden_states": neg.expand(rows, 77, -1)}) if guided else None
    bound = GuidedDenoiser(den, cond, uncond, GUIDANCE if guided else 1.0)
    return den, bound, sum(p.numel() for p in unet.parameters())


def _references(bound, z, nfe: int, batch: int | None):
    """Converged references of ``z`` in batches of ``batch`` seeds (the bound denoiser sliced
    to each batch's rows by :func:`dode.standard_grids.reference_solution`), without
    gradients."""
    import torch

    from dode.standard_grids import reference_solution

    with torch.no_grad():
        return reference_solution(bound, z, nfe=nfe, batch_size=batch)


def _grid(den, solver, nfe: int):
    from dode.grids.schedules import karras
    from dode.standard_grids import model_sigma_range

    return karras(solver.steps_for_nfe(nfe), *model_sigma_range(den))


def _step(bound, den, nfe: int, recompute: bool, batch: int) -> float:
    """One fit step: the trajectory from noise with the fit's parameters (grid logits, λ,
    history coefficients, shift), its loss to a stand-in reference, the backward pass."""
    import torch

    from dode.correction import DODECorrection, model_fn
    from dode.grids.schedules import karras
    from dode.learned_grid import grid_from_logits, logits_from_grid
    from dode.solvers import get_solver
    from dode.standard_grids import model_sigma_range

    solver = get_solver("dpm_solver_pp", order=2)
    steps = solver.steps_for_nfe(nfe)
    lo, hi = model_sigma_range(den)
    grid = karras(steps, lo, hi)
    k = solver.nfe(steps)
    floor = 0.5 * lo
    logits = logits_from_grid(grid, floor).requires_grad_(steps >= 2)
    lam = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    coef = torch.zeros(k, k, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(batch, *den.sample_shape, generator=g)
    ref = torch.randn(batch, *den.sample_shape, generator=g, dtype=torch.float64)
    with torch.no_grad():  # one network call without gradients, in this process: the unit
        bound.x0(z, hi)  # (warm-up)
        t0 = time.perf_counter()
        bound.x0(z, hi)
        call_s = time.perf_counter() - t0
    base = _reset_peak()
    t0 = time.perf_counter()
    sig = grid_from_logits(logits, hi, floor) if steps >= 2 else grid
    corr = DODECorrection(
        model_fn(bound, solver.consumes, recompute), lam, False,
        coefficients=torch.tril(coef, -2), shift=shift,
    )  # fmt: skip
    x = solver.solve(corr, z * hi, list(sig.unbind()), None)
    loss = ((x.to(torch.float64) - ref) ** 2).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    if not (torch.isfinite(loss) and torch.isfinite(shift.grad).all()):
        raise RuntimeError("the fit step made non-finite values")
    return base, seconds, call_s


def measure(spec: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec.get("threads", 1))  # 2 threads on 2 busy cores: 5x slower
    kind = spec["kind"]
    cfg = SD15 if spec["model"] == "sd15" else MID
    dtype = getattr(torch, spec.get("dtype", "float32"))
    rows = spec.get("rows") or spec.get("fit_seeds", 0) + spec.get("select_seeds", 0) or 1
    den, bound, params = _model(cfg, dtype, rows)
    out = {**spec, "params_m": params / 1e6}
    if kind == "reference":  # a reference batch: no gradients, one network call's memory
        g = torch.Generator().manual_seed(7)
        z = torch.randn(rows, *den.sample_shape, generator=g)
        base = _reset_peak()
        t0 = time.perf_counter()
        _references(bound, z, spec["nfe"], spec.get("batch"))
        out["seconds"] = time.perf_counter() - t0
    elif kind == "step":
        base, out["seconds"], out["call_s"] = _step(
            bound, den, spec["nfe"], spec["recompute"], rows
        )
    elif kind == "fit":  # fit_end_to_end with references in batches, as a whole
        from dode.learned_solver import fit_end_to_end
        from dode.solvers import get_solver

        solver = get_solver("dpm_solver_pp", order=2)
        n_fit, n_sel = spec["fit_seeds"], spec["select_seeds"]
        g = torch.Generator().manual_seed(9)
        z = torch.randn(n_fit + n_sel, *den.sample_shape, generator=g)
        grid = _grid(den, solver, spec["nfe"])
        base = _reset_peak()
        t0 = time.perf_counter()
        ref = _references(bound, z, spec["ref_nfe"], REF_BATCH)
        t_ref = time.perf_counter() - t0
        out["reference_above_gb"] = (_rss_kb("VmHWM") * 1e3 - base) / GB
        ref_peak = _rss_kb("VmHWM") * 1e3
        _reset_peak()
        fitted = fit_end_to_end(
            bound[:n_fit], solver, grid, z[:n_fit], ref[:n_fit], select_noise=z[n_fit:],
            select_reference=ref[n_fit:], select_denoiser=bound[n_fit:], steps=2,
            batch_size=spec["batch"], eval_every=2, accept_level=None,
            recompute=spec["recompute"],
        )  # fmt: skip
        out["seconds"] = time.perf_counter() - t0
        out["reference_s"] = t_ref
        out["steps_run"] = fitted.metrics["end_to_end"]["steps_run"]
        out["fit_above_gb"] = (_rss_kb("VmHWM") * 1e3 - base) / GB
        out["peak_gb"] = max(ref_peak, _rss_kb("VmHWM") * 1e3) / GB
        out["base_gb"] = base / GB
        out["above_gb"] = out["peak_gb"] - out["base_gb"]
        return out
    else:
        raise ValueError(f"unknown measurement {kind!r}")
    out["base_gb"] = base / GB
    out["peak_gb"] = _rss_kb("VmHWM") * 1e3 / GB
    out["above_gb"] = out["peak_gb"] - out["base_gb"]
    return out


# ---- the driver ----------------------------------------------------------------------------


def run_one(spec: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, __file__, "--measure", json.dumps(spec)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    print(
        f"  {spec}: peak {out['peak_gb']:.2f} GB, above model {out['above_gb']:.3f} GB, "
        f"{out['seconds']:.0f} s",
        flush=True,
    )
    return out


def plan(full: bool, only: str | None) -> list[dict]:
    specs: list[dict] = []
    mid = dict(model="mid", kind="fit", select_seeds=2, batch=4, ref_nfe=1)
    sd = dict(model="sd15", dtype="bfloat16", rows=1)
    # the Show rows first, then SD1.5, then the contrast without recomputation
    if only in (None, "mid"):
        for nfe, seeds in ((4, 16), (16, 16), (4, 256)):
            specs.append({**mid, "nfe": nfe, "recompute": True, "fit_seeds": seeds})
    if only in (None, "sd15"):
        specs.append({**sd, "kind": "reference", "nfe": 1})
        for nfe in (2, 4, 8) if full else (2, 4):
            specs.append({**sd, "kind": "step", "nfe": nfe, "recompute": True})
        for nfe in (1, 2, 4) if full else (1, 2):
            specs.append({**sd, "kind": "step", "nfe": nfe, "recompute": False})
    if only in (None, "mid"):
        for nfe in (4, 16):
            specs.append({**mid, "nfe": nfe, "recompute": False, "fit_seeds": 16})
    return specs


def _find(results, **kw):
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def report(results: list[dict], seconds: float | None) -> str:
    runs = ", ".join(
        f"{m} {d}" for m, d in sorted({(r["model"], r.get("run", "?")) for r in results})
    )
    lines = [
        "# The end-to-end fit at scale: memory and cost",
        "",
        "Written by `python experiments/bench_scale.py` (each model's figures from one run: "
        f"{runs}; each figure one measurement in a fresh subprocess, peak resident memory "
        "from the kernel's `VmHWM` after resetting it once the model is built; 'above model' is the peak minus the memory of the model and "
        "its inputs). CPU: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
        "other jobs, torch 1 thread"
        + (f"; last run {seconds / 60:.1f} min" if seconds is not None else "")
        + ". Timings are noisy on a shared machine; the memory figures are not.",
        "",
    ]
    mid = [r for r in results if r["model"] == "mid"]
    if mid:
        p = mid[0]["params_m"]
        lines += [
            f"## Mid-sized UNet ({p:.1f} M parameters, float32), the whole fit",
            "",
            "`fit_end_to_end`, 2 Adam steps of 4 samples, latents 4×32×32, one prompt without "
            "guidance (4 UNet rows per step), "
            f"selection on 2 seeds, references in batches of {REF_BATCH} seeds (1 NFE: the "
            "memory of a reference batch does not depend on it; this measures memory, not "
            "accuracy). The peak is the larger of the reference phase's and the fit's (both "
            "above the model).",
            "",
            "| NFE | fit seeds | recompute | peak (GB) | above model (GB) | reference phase "
            "(GB) | fit phase (GB) | seconds |",
            "|---:|---:|:---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(
            (r for r in mid if r["kind"] == "fit"),
            key=lambda r: (r["fit_seeds"], not r["recompute"], r["nfe"]),
        ):
            lines.append(
                f"| {r['nfe']} | {r['fit_seeds']} | {'on' if r['recompute'] else 'off'} | "
                f"{r['peak_gb']:.2f} | {r['above_gb']:.3f} | {r['reference_above_gb']:.3f} | "
                f"{r['fit_above_gb']:.3f} | {r['seconds']:.0f} |"
            )
        a, b = (
            _find(mid, kind="fit", nfe=4, recompute=True, fit_seeds=16),
            _find(mid, kind="fit", nfe=16, recompute=True, fit_seeds=16),
        )
        c = _find(mid, kind="fit", nfe=4, recompute=True, fit_seeds=256)
        d, e = (
            _find(mid, kind="fit", nfe=4, recompute=False, fit_seeds=16),
            _find(mid, kind="fit", nfe=16, recompute=False, fit_seeds=16),
        )
        lines.append("")
        if a and b:
            lines.append(
                f"- **NFE 16 / NFE 4, recompute on: {b['peak_gb'] / a['peak_gb']:.3f}×** peak "
                f"({b['above_gb'] / a['above_gb']:.2f}× above the model)."
            )
        if d and e:
            lines.append(
                f"- NFE 16 / NFE 4, recompute off: {e['peak_gb'] / d['peak_gb']:.3f}× peak "
                f"({e['above_gb'] / d['above_gb']:.2f}× above the model; "
                f"{(e['above_gb'] - d['above_gb']) / 12 * 1e3:.0f} MB more per network call)."
            )
        if a and c:
            lines.append(
                f"- **256 / 16 fit seeds, recompute on, NFE 4: {c['peak_gb'] / a['peak_gb']:.3f}×"
                f"** peak ({c['above_gb'] / a['above_gb']:.2f}× above the model)."
            )
        if a and c:
            lines.append(
                f"- References alone, streamed in batches of {REF_BATCH}: "
                f"{a['reference_above_gb']:.3f} GB above the model for 16 seeds, "
                f"{c['reference_above_gb']:.3f} GB for 256."
            )
        lines.append("")
    sd = [r for r in results if r["model"] == "sd15"]
    if sd:
        lines += _sd15_section(sd)
    return "\n".join(lines) + "\n"


def _sd15_section(sd: list[dict]) -> list[str]:
    p = sd[0]["params_m"]
    weights = p * 1e6 * 2 / GB  # bfloat16 / float16
    lines = [
        f"## SD1.5's UNet ({p:.0f} M parameters, random weights), the network in bfloat16",
        "",
        "One prompt with guidance 7.5 (2 rows through the UNet), latents 4×32×32 (256 px), "
        "DPM-Solver++(2M), one fit step (trajectory forward and backward). 'Measured' rows ran; "
        "the others are projected from them (below).",
        "",
        "| what | NFE | recompute | peak above model (GB) | seconds | |",
        "|---|---:|:---:|---:|---:|---|",
    ]
    ref = _find(sd, kind="reference")
    if ref:
        lines.append(
            f"| reference batch (no gradients) | 1 | – | {ref['above_gb']:.3f} | "
            f"{ref['seconds']:.0f} | measured |"
        )
    steps = {(r["nfe"], r["recompute"]): r for r in sd if r["kind"] == "step"}
    for (nfe, rc), r in sorted(steps.items()):
        lines.append(
            f"| fit step | {nfe} | {'on' if rc else 'off'} | {r['above_gb']:.3f} | "
            f"{r['seconds']:.0f} | measured |"
        )
    offs = sorted((n, r["above_gb"]) for (n, rc), r in steps.items() if not rc)
    on = [r for (n, rc), r in sorted(steps.items()) if rc]
    if len(offs) < 2 or not on:
        return [*lines, ""]
    (n0, m0), (n1, m1) = offs[0], offs[-1]
    per_call = (m1 - m0) / (n1 - n0)  # activations kept per call
    fixed = m0 - n0 * per_call  # the rest of a step (backward transients, states)
    on_peak = max(r["above_gb"] for r in on)
    for nfe in (4, 8, 16):
        if (nfe, False) not in steps:
            lines.append(
                f"| fit step | {nfe} | off | {fixed + nfe * per_call:.2f} | – | projected |"
            )
        if (nfe, True) not in steps:
            lines.append(f"| fit step | {nfe} | on | {on_peak:.2f} | – | projected |")
    # 512 px: latents 4x64x64 = 4x the activations of 4x32x32 (convolutions and linear-memory
    # attention both scale with the number of latent pixels)
    s = 4.0
    budget = 24.0 - weights - 0.25  # the UNet and the text encoder in float16
    call64, on64 = per_call * s, on_peak * s
    b_on = int(budget // on64)
    nfe_off_1 = int((budget - fixed * s) // call64)
    # each step against a network call timed in the same process just before it
    r_on = [r["seconds"] / (r["nfe"] * r["call_s"]) for r in on]
    r_off = [r["seconds"] / (r["nfe"] * r["call_s"]) for (n, rc), r in steps.items() if not rc]
    t_fwd = min(r["call_s"] for r in steps.values())
    lines += [
        "",
        "Projection: without recomputation each network call keeps "
        f"**{per_call:.3f} GB** (the slope from NFE {n0} to {n1}) and the rest of a step takes "
        f"{fixed:.3f} GB, so a step needs about {fixed:.2f} + NFE × {per_call:.3f} GB; with "
        f"recomputation a step's peak stays at {on_peak:.3f} GB at any NFE (measured "
        f"{', '.join(format(r['above_gb'], '.3f') for r in on)} GB at NFE "
        f"{', '.join(str(r['nfe']) for r in on)}; what grows per call is a few latents, "
        "4×32×32 floats per sample).",
        "",
        "### On one 24 GB GPU at 512 px (latents 4×64×64, float16 networks)",
        "",
        f"The UNet's weights take {weights:.2f} GB in float16 (the text encoder 0.25 GB); "
        f"about {budget:.1f} GB remain. Activations at 64×64 are taken as 4× those at 32×32 "
        "(convolutions and memory-efficient attention both scale with the latent pixels; the "
        "issue measured 3.3 GB per call in float32 at 64×64, i.e. about 1.65 GB in half "
        f"precision, against {call64:.2f} GB projected here).",
        "",
        "| recompute | per prompt per step | largest batch (prompts per step) | largest NFE |",
        "|:---:|---:|---:|---:|",
        f"| on | {on64:.2f} GB at any NFE | {b_on} | any (memory flat in the NFE) |",
        f"| off | {fixed * s:.2f} + NFE × {call64:.2f} GB | 1 at NFE {max(nfe_off_1, 0)} | "
        f"{max(nfe_off_1, 0)} with one prompt |",
        "",
        "### Cost in units of the reference's generation time",
        "",
        f"One network call (no gradients, one prompt with guidance) took {t_fwd:.1f} s or more. "
        "Each step is timed against one such call timed in its own process just before it "
        "(the machine is shared, so only ratios within a process mean something). A fit "
        "step per sample took "
        + (f"{min(r_on):.1f}–{max(r_on):.1f} × NFE calls with recomputation " if r_on else "")
        + (f"and {min(r_off):.1f}–{max(r_off):.1f} × NFE without " if r_off else "")
        + "(forward, backward ≈ 2 forwards, and with recomputation one more forward: 4 and 3 "
        "in theory). A reference costs `reference_nfe` calls per seed. So the fit of "
        "`configs/sd15-end-to-end.yaml` (NFE 5, 100-NFE references, 64 fit + 32 selection "
        "seeds, 100 steps of 4 prompts, selection every 10 steps) costs about "
        f"{_sd15_cost(min(r_on) if r_on else 4.0):.0f} reference generations (one seed's "
        "100-NFE reference = 1): the references of the 96 seeds, then the steps and the "
        "selection checks.",
        "",
    ]
    return lines


def _sd15_cost(ratio: float) -> float:
    """Reference generations (100 NFE, one seed = 1) of the SD1.5 end-to-end config's fit."""
    nfe, ref_nfe, fit, sel, steps, batch, every = 5, 100, 64, 32, 100, 4, 10
    refs = fit + sel
    train = steps * batch * ratio * nfe / ref_nfe
    selection = (steps // every + 3) * sel * nfe / ref_nfe  # evaluations + base + final
    warm = 8 * sel * nfe / ref_nfe  # the warm-start cells tried on the selection seeds
    return refs + train + selection + warm


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help="SD1.5 at NFE 8 (4 without) too")
    ap.add_argument("--only", choices=["mid", "sd15"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--report", action="store_true", help="only rewrite the report from OUT's .json"
    )
    args = ap.parse_args(argv)
    if args.measure:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.report:
        results = json.loads(args.out.with_suffix(".json").read_text())
        args.out.write_text(report(results, None))
        print(args.out.read_text())
        return
    t0 = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    store = args.out.with_suffix(".json")
    if args.only and store.exists():  # keep the other model's figures (from their own run)
        results = [r for r in json.loads(store.read_text()) if r["model"] != args.only]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def queue(specs: list[dict]) -> None:
        for spec in specs:
            out = {**run_one(spec), "run": stamp}
            with lock:
                results.append(out)
                text = report(results, time.perf_counter() - t0)  # what is measured so far
                args.out.write_text(text)
                args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))

    # the two models in two processes side by side (the machine is shared: each process gets
    # its share of the cores); each measurement still runs alone in its own process
    specs = plan(args.full, args.only)
    queues = [[s for s in specs if s["model"] == m] for m in ("mid", "sd15")]
    threads = [threading.Thread(target=queue, args=(q,)) for q in queues if q]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(args.out.read_text())


if __name__ == "__main__":
    main()
