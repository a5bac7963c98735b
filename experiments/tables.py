"""Reproduce a table of the D-ODE paper: fit and evaluate every (solver, NFE, base/D) cell.

    python experiments/tables.py cifar10            # what `make table-cifar10` runs
    DRY_RUN=1 python experiments/tables.py cifar10  # tiny random model, a few samples (CI)

A table is a YAML file in ``configs/paper/`` (model, solvers and their grids, NFEs, fit and
evaluation settings, and a ``dry_run`` section). For each solver and NFE the runner

1. builds the solver's σ-grid for exactly that NFE (a cell the solver cannot reach, e.g. an
   even NFE for EDM-Heun, is marked ``—``);
2. fits λ with the closed-form D-ODE fit (teacher: the same solver on a 10× refined grid that
   contains every student σ) on ``fit.batch_size`` noise seeds disjoint from the evaluation
   seeds, and saves the fitted-solver file;
3. evaluates the base solver and the D-solver on the same grid and the same evaluation seeds
   with :mod:`dode.evaluate` (Lightning; in-process on one device, ``python -m dode.evaluate``
   with DDP when ``DEVICES`` > 1) and records FID (or the stand-in metric of a dry run).

Every cell is stored as JSON (``<results>/<table>/cells/``) the moment it is finished, with the
settings it was made with; a rerun skips finished cells and redoes cells whose settings
changed. Generation inside a cell resumes per sample. The table is written as
``<results>/<table>.md`` and ``.csv`` in the paper's layout (rows: solvers, base and D-ODE;
columns: NFE).

A dry run builds a tiny random ``UNet2DModel`` with the real model's sample shape, saves it
with ``save_pretrained`` and loads it through the same ``from_pretrained`` path; reference
statistics come from a folder of images the tiny model generates, features from the
``pixels`` stand-in. Its outputs go to ``runs/dryrun/`` (git-ignored), never to
``experiments/results``.

Environment knobs: ``DRY_RUN``, ``DEVICES`` (devices per node for evaluation), ``NUM_SAMPLES``
(override the evaluation sample count), ``DODE_REFS`` (folder holding reference statistics;
default ``refs/``), ``RESULTS_DIR``, ``WORK_DIR``, ``KEEP_SAMPLES`` (keep the PNGs),
``WANDB`` (0 disables W&B logging), ``ONLY`` (comma-separated cell keys such as
``ddim-nfe5``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dode  # noqa: E402
from dode.evaluation.config import EvalConfig, build_grid, load_model  # noqa: E402
from dode.evaluation.run import evaluate  # noqa: E402
from dode.files.solver_file import FittedSolver  # noqa: E402
from dode.solvers import get_solver  # noqa: E402

CONFIGS = ROOT / "configs" / "paper"
UNREACHABLE = "—"
NOT_RUN = "·"


def _truthy(v: str | None) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def table_names() -> list[str]:
    """Every table with a config in ``configs/paper``."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("_"))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_table(name: str | os.PathLike, dry_run: bool = False) -> dict:
    """The table spec from ``configs/paper/<name>.yaml`` (dry-run overrides applied)."""
    path = Path(name)
    if not path.suffix:
        path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"no table config {str(path)!r}; known tables: {', '.join(table_names())}."
        )
    spec = yaml.safe_load(path.read_text())
    spec.setdefault("table", path.stem)
    for key in ("model", "sample_shape", "solvers", "nfe", "fit", "eval"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}.")
    if dry_run:
        dr = dict(spec.get("dry_run") or {})
        keep = dr.pop("solvers", None)
        if keep:
            spec["solvers"] = [s for s in spec["solvers"] if s["label"] in keep]
        for key in ("fit", "eval"):
            spec[key] = _merge(spec[key], dr.pop(key, {}))
        spec = _merge(spec, dr)
    return spec


# ---- dry-run model and reference ------------------------------------------------------------


def make_tiny_model(spec: dict, folder: Path) -> Path:
    """A random UNet2DModel with the table's sample shape, saved with ``save_pretrained``."""
    from diffusers import DDPMScheduler, UNet2DModel

    if (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        return folder
    c, h, w = spec["sample_shape"]
    kw = dict(spec.get("unet") or {})
    chans = tuple(kw.pop("block_out_channels", (8, 16)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=(h, w) if h != w else h,
            in_channels=c,
            out_channels=c,
            block_out_channels=chans,
            down_block_types=("DownBlock2D",) * len(chans),
            up_block_types=("UpBlock2D",) * len(chans),
            layers_per_block=kw.pop("layers_per_block", 1),
            norm_num_groups=kw.pop("norm_num_groups", 4),
            **kw,
        )
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # random biases: outputs that vary with x and t
            for pname, p in unet.named_parameters():
                if pname.endswith("bias") or pname.startswith("conv_out"):
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder)
    DDPMScheduler(**(spec.get("scheduler") or {})).save_pretrained(folder)
    return folder


def make_dry_run_reference(spec: dict, denoiser, work: Path) -> Path:
    """A folder of 'real' images for the dry run: the tiny model's own DDIM samples."""
    from dode.evaluation.predict import generate

    n = int(spec.get("reference_images", 16))
    ref = work / "reference"
    solver = get_solver("ddim")
    sigmas = build_grid(denoiser, solver, int(spec.get("reference_nfe", 10)), "time_uniform")
    seeds = list(range(20_000_000, 20_000_000 + n))
    generate(
        denoiser, solver.config(), sigmas, None, seeds, ref, batch_size=n, devices=1,
        accelerator="cpu", progress=False,
    )  # fmt: skip
    return ref / "samples"


# ---- cells ----------------------------------------------------------------------------------


def _settings(spec: dict, entry: dict, nfe: int, dry_run: bool) -> dict:
    ev = {k: v for k, v in spec["eval"].items() if k not in ("batch_size", "ref_url")}
    return {
        "model": spec["model"],
        "sample_shape": spec["sample_shape"],
        "solver": {k: v for k, v in entry.items() if k != "label"},
        "nfe": nfe,
        "fit": {
            k: v for k, v in spec["fit"].items() if k not in ("chunk", "lambda_plot", "sample_grid")
        },
        "eval": ev,
        "dry_run": dry_run,
    }


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: dict) -> None:
    from dode.files.writes import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")

    atomic_write(path, write)


def _discard(file: Path, folder: Path) -> None:
    """Remove a stale fitted solver and the samples made with it."""
    import shutil

    if file.is_file():
        file.unlink()
    if folder.is_dir():
        shutil.rmtree(folder)


def fit_cell(spec: dict, entry: dict, nfe: int, file: Path, run_dir: Path, opts: dict) -> dict:
    """Fit λ for one (solver, NFE) with :func:`dode.fit` (the fit of ``python -m dode.train``)
    into ``file``.

    The fit is the Lightning framework's ``lstsq`` mode (the paper's closed form) on
    ``fit.batch_size`` seeds from ``fit.seed_start``; an interrupted fit resumes from its last
    checkpoint. A finished file is loaded, not refitted.
    """
    if not file.is_file():
        fit = spec["fit"]
        s0, n = int(fit["seed_start"]), int(fit["batch_size"])
        v0, nv = int(fit.get("val_seed_start", 20_000_000)), int(fit.get("val_samples", 64))
        trainer = {"devices": 1, "enable_progress_bar": bool(opts["progress"])}
        if opts.get("accelerator"):
            trainer["accelerator"] = opts["accelerator"]
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        if not resume and run_dir.is_dir():  # a fit stopped before its first checkpoint
            import shutil

            shutil.rmtree(run_dir)
        try:
            dode.fit(
                str(opts["model"]),
                entry["solver"],
                solver_options=entry.get("options") or {},
                nfe=nfe,
                schedule=entry.get("schedule", "karras"),
                schedule_options=entry.get("schedule_options") or {},
                teacher_factor=int(fit.get("teacher_factor", 10)),
                sigma_to_t=spec.get("sigma_to_t", "interp"),
                fit_seeds=f"{s0}-{s0 + n - 1}",
                val_seeds=f"{v0}-{v0 + nv - 1}",
                batch_size=int(fit.get("chunk") or n),
                cache_dir=str(run_dir.parent / "teacher-cache"),
                samples={"num_samples": int(fit.get("sample_grid", 8))},
                lambda_plot={"enabled": bool(fit.get("lambda_plot", True))},
                wandb_mode=opts["wandb_mode"],
                run_dir=run_dir,
                solver_file=file,
                trainer=trainer,
                ckpt_path="last" if resume else None,
            )
        except ValueError as e:
            raise ValueError(f"fitting {entry['label']} at NFE {nfe} failed: {e}") from None
    fitted = FittedSolver.load(file)
    m = fitted.metrics
    timings = {k: v for k, v in m.items() if k.startswith("time/")}
    return {
        "file": file.name,
        "lambdas": [float(v) for v in fitted.lambdas],
        "seconds": m.get("time/fit_total_s"),
        "val_mse_teacher_base": m.get("val/mse_base_final"),
        "val_mse_teacher_dode": m.get("val/mse_final"),
        "timings": timings,
    }


def _eval_cell(spec: dict, file: Path, base: bool, out: Path, denoiser, opts: dict) -> dict:
    ev = spec["eval"]
    cfg = EvalConfig(
        model=str(opts["model"]),
        solver_file=str(file),
        base=base,
        num_samples=int(opts.get("num_samples") or ev["num_samples"]),
        seed_start=int(ev.get("seed_start", 0)),
        batch_size=int(ev.get("batch_size", 256)),
        out=str(out),
        save="png" if opts["keep_samples"] else "none",
        fid=True,
        ref=str(opts["ref"]),
        features=ev.get("features", "inception"),
        devices=opts["devices"],
        accelerator=opts.get("accelerator", "auto"),
        log=str(out.parent / "evaluate.jsonl"),
        wandb=False,
        progress=opts["progress"],
        sigma_to_t=spec.get("sigma_to_t", "interp"),
    )
    if opts["devices"] in (1, "1"):
        rec = evaluate(cfg, denoiser=denoiser)
    else:  # DDP across devices: a fresh process launched per evaluation
        args = [sys.executable, "-m", "dode.evaluate"]
        for k, v in vars(cfg).items():
            if v is not None:
                args += [f"--{k}", json.dumps(v) if isinstance(v, dict | bool) else str(v)]
        subprocess.run(args, check=True, cwd=ROOT)
        lines = Path(cfg.log).read_text().splitlines()
        rec = json.loads(lines[-1])
    keys = ("metric", "value", "num_samples", "seconds_generate", "images_per_second", "nfe")
    return {k: rec.get(k) for k in keys}


def run_table(
    name: str,
    *,
    dry_run: bool = False,
    results_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    devices: int | str = 1,
    num_samples: int | None = None,
    only: list[str] | None = None,
    keep_samples: bool = False,
    use_wandb: bool | None = None,
    progress: bool = True,
) -> Path:
    """Fit and evaluate every cell of a table (resuming), then write its .md and .csv.

    Returns the path of the markdown table.
    """
    spec = load_table(name, dry_run=dry_run)
    args = (spec, dry_run, results_dir, work_dir, devices, num_samples, only, keep_samples)
    if not dry_run:
        return _run_table(*args, use_wandb, progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny latency-bound models: extra threads only contend
    try:
        return _run_table(*args, use_wandb, progress)
    finally:
        torch.set_num_threads(threads)


def _run_table(
    spec: dict,
    dry_run: bool,
    results_dir,
    work_dir,
    devices,
    num_samples,
    only,
    keep_samples: bool,
    use_wandb: bool | None,
    progress: bool,
) -> Path:
    table = spec["table"]
    base_dir = ROOT / "runs" / "dryrun" if dry_run else None
    results = Path(
        results_dir or (base_dir / "results" if dry_run else ROOT / "experiments/results")
    )
    work = Path(work_dir or (base_dir / "work" if dry_run else ROOT / "runs" / "tables")) / table
    cells_dir = results / table / "cells"
    solvers_dir = results / table / "solvers"
    opts: dict = {
        "dry_run": dry_run,
        "devices": devices,
        "num_samples": num_samples,
        "keep_samples": keep_samples,
        "progress": progress,
    }
    if use_wandb is None:
        use_wandb = not dry_run
    opts["wandb_mode"] = "auto" if use_wandb else "disabled"
    if dry_run:
        opts["model"] = str(make_tiny_model(spec, work / "model"))
        opts["accelerator"] = "cpu"
        denoiser = load_model(opts["model"], spec.get("sigma_to_t", "interp"))
        opts["ref"] = make_dry_run_reference(spec, denoiser, work)
    else:
        opts["ref"] = _real_reference(spec)
        _check_features(spec)
        opts["model"] = spec["model"]
        denoiser = load_model(spec["model"], spec.get("sigma_to_t", "interp"))
    cells = []
    for entry in spec["solvers"]:
        solver = get_solver(entry["solver"], **(entry.get("options") or {}))
        for nfe in spec["nfe"]:
            key = f"{slug(entry['label'])}-nfe{nfe}"
            if only and key not in only:
                continue
            settings = _settings(spec, entry, nfe, dry_run)
            if num_samples:
                settings["eval"]["num_samples"] = num_samples
            path = cells_dir / f"{key}.json"
            cell = json.loads(path.read_text()) if path.is_file() else {}
            if cell.get("settings_hash") != _hash(settings):
                if cell:
                    print(f"[{table}] {key}: settings changed, redoing the cell", flush=True)
                _discard(solvers_dir / f"{key}.safetensors", work / key)
                cell = {"settings_hash": _hash(settings), "settings": settings}
            cell.update(key=key, label=entry["label"], nfe=nfe)
            try:
                solver.steps_for_nfe(nfe)
            except ValueError as e:
                cell.update(status="unreachable", reason=str(e))
                _write_json(path, cell)
                cells.append(cell)
                continue
            if cell.get("status") == "done":
                print(f"[{table}] {key}: done earlier, skipped", flush=True)
                cells.append(cell)
                continue
            print(f"[{table}] {key}: fitting and evaluating", flush=True)
            file = solvers_dir / f"{key}.safetensors"
            if "fit" not in cell or not file.is_file():
                cell["fit"] = fit_cell(spec, entry, nfe, file, work / key / "fit", opts)
                _write_json(path, cell)
            for variant, base in (("base", True), ("dode", False)):
                if variant not in cell:
                    out = work / key / variant
                    cell[variant] = _eval_cell(spec, file, base, out, denoiser, opts)
                    _write_json(path, cell)
            cell["status"] = "done"
            _write_json(path, cell)
            cells.append(cell)
    md, csv_text = render(spec, cells, dry_run=dry_run)
    results.mkdir(parents=True, exist_ok=True)
    md_path = results / f"{table}.md"
    md_path.write_text(md)
    (results / f"{table}.csv").write_text(csv_text)
    if use_wandb:
        _wandb_table(spec, cells, md_path, results)
    print(md)
    return md_path


def _real_reference(spec: dict) -> str:
    ev = spec["eval"]
    ref = str(ev["ref"])
    if ref.endswith(".npz") and not Path(ref).is_absolute():
        ref = str(Path(os.environ.get("DODE_REFS", ROOT / "refs")) / ref)
        if not Path(ref).is_file():
            url = ev.get("ref_url", "")
            raise ValueError(
                f"reference statistics {ref!r} are missing. Download them"
                + (f" from {url}" if url else "")
                + f" into {Path(ref).parent} (or set DODE_REFS to the folder holding "
                f"{Path(ref).name}), or compute them with `python -m dode.fid ref --images "
                f"DIR --out {ref}`."
            )
    return ref


def _check_features(spec: dict) -> None:
    from dode.evaluation.fid import get_feature_extractor

    get_feature_extractor(spec["eval"].get("features", "inception"))


def _fmt(v) -> str:
    if v is None:
        return NOT_RUN
    return f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.2e}"


def render(spec: dict, cells: list[dict], dry_run: bool = False) -> tuple[str, str]:
    """The table in the paper's layout: rows = solvers (base, then D-), columns = NFE."""
    nfes = list(spec["nfe"])
    by = {(c["label"], c["nfe"]): c for c in cells}
    metric = next((c["base"]["metric"] for c in cells if c.get("base")), None) or "fid"
    ev = spec["eval"]
    n = next((c["base"]["num_samples"] for c in cells if c.get("base")), ev["num_samples"])
    model = f"`{spec['model']}`"
    if dry_run:
        model = f"a tiny random stand-in with the shape of {model}"
    lines = [f"# {spec.get('title', spec['table'])}", ""]
    if dry_run:
        lines += [
            "**DRY RUN** — a tiny random model and stand-in features; the numbers mean nothing.",
            "",
        ]
    lines += [
        f"{metric.upper() if metric == 'fid' else metric} ↓ on {n:,} samples "
        f"(seeds from {ev.get('seed_start', 0)}), features: {ev.get('features', 'inception')}; "
        f"model {model}. D-X is the D-ODE solver fitted from X "
        f"(teacher ×{spec['fit'].get('teacher_factor', 10)}, {spec['fit']['batch_size']} fit "
        f"samples). {UNREACHABLE} = the solver cannot make exactly that many calls; "
        f"{NOT_RUN} = not run yet.",
        "",
        "| Solver | " + " | ".join(str(k) for k in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    rows = []
    for entry in spec["solvers"]:
        for variant, prefix in (("base", ""), ("dode", "D-")):
            vals = []
            for k in nfes:
                c = by.get((entry["label"], k))
                if c is None:
                    vals.append(None)
                elif c.get("status") == "unreachable":
                    vals.append(UNREACHABLE)
                else:
                    vals.append((c.get(variant) or {}).get("value"))
            rows.append((prefix + entry["label"], vals))
    for label, vals in rows:
        cells_txt = [v if v == UNREACHABLE else _fmt(v) for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells_txt) + " |")
    if spec.get("notes"):
        lines += ["", spec["notes"].strip()]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["solver", *[f"nfe{k}" for k in nfes]])
    for label, vals in rows:
        w.writerow([label, *["" if v in (None, UNREACHABLE) else repr(float(v)) for v in vals]])
    return "\n".join(lines) + "\n", buf.getvalue()


def _wandb_table(spec: dict, cells: list[dict], md_path: Path, results: Path) -> None:
    import wandb

    from dode.tracking import wandb_mode

    mode = wandb_mode("auto")
    run = wandb.init(
        project="dode",
        job_type="table",
        name=spec["table"],
        dir=str(results),
        mode=mode,
        config={k: spec[k] for k in ("model", "nfe", "fit", "eval")},
    )
    cols = ["solver", "nfe", "variant", "metric", "value", "fit_seconds"]
    tab = wandb.Table(columns=cols)
    for c in cells:
        for variant in ("base", "dode"):
            r = c.get(variant)
            if r:
                fit_s = (c.get("fit") or {}).get("seconds")
                tab.add_data(c["label"], c["nfe"], variant, r["metric"], r["value"], fit_s)
    run.log({"table": tab, "table_markdown": wandb.Html(f"<pre>{md_path.read_text()}</pre>")})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", help="table name: " + ", ".join(table_names()))
    p.add_argument("--dry-run", action="store_true", default=_truthy(os.environ.get("DRY_RUN")))
    p.add_argument("--results", default=os.environ.get("RESULTS_DIR"))
    p.add_argument("--work", default=os.environ.get("WORK_DIR"))
    p.add_argument("--devices", default=os.environ.get("DEVICES") or "1")
    p.add_argument("--num-samples", type=int, default=os.environ.get("NUM_SAMPLES") or None)
    p.add_argument("--only", default=os.environ.get("ONLY"))
    p.add_argument(
        "--keep-samples", action="store_true", default=_truthy(os.environ.get("KEEP_SAMPLES"))
    )
    a = p.parse_args(argv)
    wb = os.environ.get("WANDB") or None
    try:
        run_table(
            a.table,
            dry_run=a.dry_run,
            results_dir=a.results,
            work_dir=a.work,
            devices=a.devices,
            num_samples=a.num_samples,
            only=a.only.split(",") if a.only else None,
            keep_samples=a.keep_samples,
            use_wandb=None if wb is None else _truthy(wb),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
