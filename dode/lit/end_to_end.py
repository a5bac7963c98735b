"""``fit_mode: end-to-end``: the grid, history coefficients and model-time shift fitted on the
final sample, as a Lightning training run of a :class:`~dode.lit.DODEModule`'s problem (model,
solver, NFE, conditioning).

The pieces are :mod:`dode.learned_solver`'s (the same as :func:`~dode.learned_solver.
fit_end_to_end`'s plain loop): the parameters live in a :class:`~dode.learned_solver.
LearnedSolver`, the module's ``learned`` submodule (in the checkpoint; the frozen network is
not), and

* **setup**: the converged references of the fit seeds and the selection seeds (the data
  module's ``val_seeds``), in batches of ``reference_batch_size``, each rank its share, cached
  on disk (:meth:`dode.lit.NoiseDataModule.references`); the warm-start cell (the best standard
  cell on the selection seeds, or the config's schedule); the warm-start cell's per-seed
  selection MSE;
* **a training step**: one mini-batch of fit seeds (this rank's share of the global mini-batch,
  in :func:`~dode.learned_solver.minibatch_order`'s order) through the whole trajectory and
  :func:`~dode.learned_solver.fit_loss`; the loss is scaled by the rank's share so that DDP's
  average of the gradients is the gradient of the global mini-batch's mean;
* **validation** (every ``eval_every`` steps: one Lightning epoch; also at step 0 and at the
  last step): the selection MSE, each rank its share of the selection seeds, the per-seed values
  gathered; the iterate with the best selection MSE is kept (and checkpointed), ``patience``
  stops the run;
* **the end**: the paired-bootstrap acceptance (:func:`~dode.learned_solver.conclude`) of the
  kept iterate against the warm-start cell; the solver file records it in
  ``metrics["end_to_end"]``.

Adam's state, the step, the kept iterate and the selection history are in the checkpoint, and
the mini-batch order is a function of the step, so ``--ckpt_path last`` continues to the result
of an uninterrupted run.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..files.solver_file import FittedSolver
from ..metrics import clipped
from ..noise import noise_from_seeds
from .fit_modes import ModeFit

if TYPE_CHECKING:
    from .problem import FitHost, FitProblem

__all__ = ["EndToEndFit", "check_end_to_end", "end_to_end_settings"]

#: ``end_to_end`` settings that are not keywords of :func:`dode.learned_solver.fit_end_to_end`.
OWN_SETTINGS = {"warm_start": "best_standard", "reference_nfe": 100, "reference_batch_size": 64}
#: keywords of :func:`~dode.learned_solver.fit_end_to_end` that are not settings (data).
_DATA_KEYWORDS = {"select_noise", "select_reference", "select_denoiser"}


def _fit_defaults() -> dict[str, Any]:
    from ..learned_solver import fit_end_to_end

    return {
        p.name: p.default
        for p in inspect.signature(fit_end_to_end).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in _DATA_KEYWORDS
    }


def check_end_to_end(options: dict[str, Any] | None) -> dict[str, Any]:
    """The ``end_to_end`` settings, checked: names against :func:`fit_end_to_end`'s keywords
    and :data:`OWN_SETTINGS`, values by :func:`dode.learned_solver.check_options` (at start-up,
    before any reference is computed).

    Raises:
        ValueError: an unknown setting or a bad value.
    """
    from ..learned_solver import check_options

    opts = dict(options or {})
    allowed = set(_fit_defaults())
    bad = sorted(set(opts) - allowed - set(OWN_SETTINGS))
    if bad:
        raise ValueError(
            f"unknown end_to_end setting {', '.join(bad)}; use {', '.join(sorted(OWN_SETTINGS))} "
            f"or {', '.join(sorted(allowed))}."
        )
    if opts.get("warm_start", "best_standard") not in ("best_standard", "config"):
        raise ValueError(
            f"end_to_end.warm_start must be 'best_standard' or 'config', got "
            f"{opts['warm_start']!r}."
        )
    nfe = opts.get("reference_nfe", 100)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 10:
        raise ValueError(f"end_to_end.reference_nfe must be an integer >= 10, got {nfe!r}.")
    rb = opts.get("reference_batch_size", 64)
    if not isinstance(rb, int) or isinstance(rb, bool) or rb < 1:
        raise ValueError(
            f"end_to_end.reference_batch_size must be a positive integer (seeds per reference "
            f"batch), got {rb!r}."
        )
    features = opts.get("features")
    if features is not None:
        feature_factory(features)
    try:
        check_options({k: v for k, v in opts.items() if k not in OWN_SETTINGS})
    except ValueError as e:
        raise ValueError(f"bad end_to_end setting: {e}") from None
    return opts


def feature_factory(spec: Any):
    """The factory ``end_to_end.features`` names (``"package.module:factory"``, where
    ``factory()`` returns the feature network ``fn(samples) -> [B, F]``, differentiable, e.g.
    ``dode.digits.classifier:feature_hook``).

    Raises:
        ValueError: not such a string, or it does not import.
    """
    from ..denoisers.loading import import_factory

    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"end_to_end.features must be 'package.module:factory' (factory() returns the "
            f"feature network samples -> [B, F], e.g. dode.digits.classifier:feature_hook), got "
            f"{spec!r}."
        )
    return import_factory(
        spec, "end_to_end.features factory",
        usage="give 'package.module:factory' with the package importable (on PYTHONPATH)",
        returns="a function returning the feature network fn(samples) -> [B, F]",
    )  # fmt: skip


def build_objective(settings: dict[str, Any]):
    """The run's objective: ``"default"`` becomes :func:`dode.objectives.default_objective` with
    the feature network of ``settings["features"]`` (none: L2, its quality watch on the spectrum
    and moments); ``"l2"`` / ``"l1"`` stay names."""
    from ..objectives import default_objective

    if settings["objective"] != "default":
        return settings["objective"]
    spec = settings.get("features")
    return default_objective(feature_factory(spec)() if spec is not None else None)


def end_to_end_settings(options: dict[str, Any] | None) -> dict[str, Any]:
    """Every ``end_to_end`` setting: the defaults of :func:`fit_end_to_end` and
    :data:`OWN_SETTINGS` with ``options`` (checked) over them."""
    from ..learned_solver import check_options

    opts = {**_fit_defaults(), **OWN_SETTINGS, **check_end_to_end(options)}
    opts["clip"] = check_options({"clip": opts["clip"]})["clip"]
    return opts


class EndToEndFit(ModeFit):
    """The end-to-end fit of a module's problem as a Lightning training run (see the module
    docstring); :meth:`fit` runs :func:`dode.learned_solver.fit_end_to_end` in this process
    instead (no Trainer).

    Args:
        problem: what is fitted (model, solver, NFE, conditioning).
        options: the ``end_to_end`` settings (:func:`check_end_to_end`).
    """

    owns_validation = True

    def __init__(self, problem: FitProblem, options: dict[str, Any]) -> None:
        super().__init__(problem)
        self.options = dict(options)
        self.settings = end_to_end_settings(options)
        self.objective: Any = None  # built at setup (build_objective)
        self.watch = None  # the objective's quality, where the run watches it
        self._val_seeds: list[int] | None = None
        self._reset()

    def _reset(self) -> None:
        self.best_value = math.inf
        self.best_params: dict[str, Tensor] | None = None
        self.best_step = 0
        self.since = 0
        self.curve: list[tuple[int, float]] = []
        self.losses: list[float] = []
        self.stop = "steps"
        self.base_errors: Tensor | None = None
        self.warm: dict[str, Any] = {}
        self.result: FittedSolver | None = None
        self._micro: list[float] = []
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self._t0 = time.perf_counter()
        self.quality_curve: list[tuple[int, float]] = []
        self.quality_base, self.quality_max = 0.0, math.inf

    # ---- setup: references, warm start, parameters -------------------------------------------
    def setup(self, module: FitHost, stage: str) -> None:
        if stage != "fit":
            return
        from ..learned_solver import LearnedSolver, resolve_clip, sigma_floor, warm_start_grid
        from ..sampling import sample
        from ..standard_grids import model_sigma_range

        self.settings["clip"] = resolve_clip(self.settings["clip"], self.problem.denoiser)
        self.objective = build_objective(self.settings)
        level = self.settings["quality_level"]
        self.watch = getattr(self.objective, "quality", None) if level is not None else None

        trainer = module.trainer
        dm = getattr(trainer, "datamodule", None)
        if not callable(getattr(dm, "attach_references", None)):  # a NoiseDataModule
            raise ValueError(
                "fit_mode end-to-end needs a NoiseDataModule (its fit_seeds fit, its val_seeds "
                "select and accept); pass trainer.fit(module, datamodule=NoiseDataModule(...))."
            )
        self._reset()
        self._val_seeds = list(dm.val_seeds)
        s = self.settings
        self.check_run(dm.fit_seeds, dm.val_seeds, trainer.world_size)
        steps, every = s["steps"], s["eval_every"]
        acc = trainer.accumulate_grad_batches
        # One Lightning epoch is eval_every Adam steps: validation at its end is the selection;
        # the run ends at `steps` Adam steps (an epoch count would not survive a resume).
        trainer.fit_loop.max_epochs = -1 if steps > 0 else 0
        trainer.fit_loop.epoch_loop.max_steps = steps
        dev = trainer.strategy.root_device
        module.to(dev)
        module.lambdas.requires_grad_(False)  # not this mode's parameter (DDP syncs the rest)
        t0 = time.perf_counter()
        dm.attach_references(module.reference_source(s["reference_nfe"],
                                                     s["reference_batch_size"]))  # fmt: skip
        fit_refs = dm.references(dm.fit_seeds, "fit_seeds")
        sel_refs = dm.references(dm.val_seeds, "val_seeds")
        self._sel_refs = clipped(sel_refs, self.settings["clip"])
        eval_batch = s["select_batch_size"] or s["batch_size"]
        dm.serve_end_to_end(
            fit_refs, sel_refs, batch_size=s["batch_size"], seed=s["seed"],
            per_epoch=every * acc, select_batch_size=eval_batch,
        )  # fmt: skip
        t_ref = time.perf_counter() - t0
        problem = self.problem
        grid, label = problem.sigmas, problem.schedule
        if s["warm_start"] == "best_standard":
            grid, label = self._warm_start(module, sel_refs, eval_batch)
        grid = warm_start_grid(problem.solver, grid)
        module.learned = LearnedSolver(
            problem.solver, grid, sigma_floor=sigma_floor(problem.denoiser, grid),
            learn_grid=s["learn_grid"], coefficients=s["coefficients"],
            time_shift=s["time_shift"], shift_floor=model_sigma_range(problem.denoiser)[0],
            shift_fraction=s["shift_fraction"], recompute=s["recompute"],
        ).to(dev)  # fmt: skip
        self.warm.update(warm_start=s["warm_start"], warm_start_grid=label,
                         reference_nfe=s["reference_nfe"])  # fmt: skip
        self.base_errors, base_x = self._errors(
            module, lambda d, z: sample(d, problem.solver, z, grid), samples=True
        )
        if self.watch is not None:
            from ..learned_solver import quality_limit

            self.quality_base, self.quality_max = quality_limit(
                self.watch, base_x, self._sel_refs, s["quality_level"], s["seed"]
            )  # fmt: skip
        self.best_params = module.learned.snapshot()
        if not module.learned.fitted_names():
            trainer.fit_loop.max_epochs = 0
        module.timings.update(reference_s=t_ref, warm_start_s=time.perf_counter() - t0 - t_ref)

    def _warm_start(
        self, module: FitHost, refs: Tensor, batch_size: int | None
    ) -> tuple[Tensor, str]:
        """The best standard cell of the module's solver and NFE on the selection seeds
        (:func:`~dode.standard_grids.select_grid`'s choice: the lowest MSE to the reference;
        ties to the first), each rank sampling its share, the per-seed errors gathered."""
        from ..metrics import per_seed_mse
        from ..standard_grids import select_grid, standard_grids

        problem = self.problem
        trainer, dm = module.trainer, module.trainer.datamodule
        rank, world, n = trainer.global_rank, trainer.world_size, len(dm.val_seeds)
        pos = list(range(rank, n, world))
        seeds = [dm.val_seeds[i] for i in pos]
        dev = module.device
        noise = noise_from_seeds(seeds, problem.sample_shape, problem.dtype, dev)
        ref = refs[pos].to(dev, torch.float64)
        grids = standard_grids(problem.denoiser)
        labels = [g.label or f"grid{i}" for i, g in enumerate(grids)]
        got: list[Tensor] = []

        def score(x: Tensor) -> float:  # this rank's per-seed errors, kept in order
            got.append(per_seed_mse(x.double(), ref).cpu())
            return 0.0

        try:
            choice = select_grid(
                problem.bind(problem.condition(seeds)), problem.solver, problem.num_calls, noise,
                grids=grids, score=score, batch_size=batch_size,
            )  # fmt: skip
            failed = set(choice.errors)
        except ValueError:  # no candidate runs on this rank's seeds
            failed, got = set(labels), []
        scored = iter(got)
        cols = [
            torch.full((len(pos),), math.inf, dtype=torch.float64)
            if label in failed
            else next(scored)
            for label in labels
        ]
        means = dm.gather(torch.stack(cols, 1), pos, n).mean(0)
        best = int(torch.argmin(means))  # the first of equal minima
        if not math.isfinite(float(means[best])):
            raise ValueError(
                f"no standard grid works for {problem.solver.describe()} at NFE "
                f"{problem.num_calls} on the selection seeds; set end_to_end.warm_start config."
            )
        self.warm["warm_start_scores"] = {k: float(v) for k, v in zip(labels, means)}
        return grids[best].build(problem.solver.steps_for_nfe(problem.num_calls)), labels[best]

    def check_run(self, fit_seeds: list[int], val_seeds: list[int], world_size: int) -> None:
        """``ValueError`` unless every process gets seeds of every mini-batch and of the
        selection (checked at start-up, before the run folder is touched)."""
        n_fit, n_sel = len(fit_seeds), len(val_seeds)
        size = self.settings["batch_size"]
        if (size or n_fit) < world_size or n_sel < world_size:
            raise ValueError(
                f"fit_mode end-to-end over {world_size} processes needs at least {world_size} "
                f"seeds in every mini-batch (end_to_end.batch_size is {size}, fit seeds "
                f"{n_fit}) and in val_seeds ({n_sel}); use fewer devices or more seeds."
            )

    def optimizers(self, module: FitHost):
        s = self.settings
        groups = module.learned.param_groups(
            s["lr"], s["lr_coefficients"], s["lr_shift"], s["weight_decay"]
        )
        return torch.optim.Adam(groups)

    # ---- the selection MSE, shared out over the ranks -----------------------------------------
    def _errors(self, module: FitHost, run, every_rank: bool = False, samples: bool = False):
        """Per-seed selection MSE ``[N]`` of ``run(denoiser, noise)`` over the selection seeds
        (each rank its share, gathered; ``every_rank``: all seeds here). A batch whose
        sampling fails counts as ``inf``. ``samples``: also the samples ``[N, ...]`` (clamped
        to the run's ``clip``, gathered; ``None`` without a quality watch or where a batch
        failed), for the quality watch."""
        dm = module.trainer.datamodule
        pos, err, xs = [], [], []
        for b in dm.selection_batches(every_rank):
            pos.append(b["positions"])
            e, x = self._batch_errors(module, run, b)
            err.append(e)
            xs.append(x)
        out = self._collect(dm, torch.cat(err), torch.cat(pos), every_rank)
        if not samples:
            return out
        return out, self._collect_samples(dm, xs, torch.cat(pos), every_rank)

    @staticmethod
    def _collect(dm, rows: Tensor, where: Tensor, every_rank: bool) -> Tensor:
        """``rows`` at positions ``where`` of the selection seeds, in seed order: gathered over
        the ranks, or (``every_rank``: this rank holds every seed) placed here."""
        n = len(dm.val_seeds)
        if not every_rank:
            return dm.gather(rows, where.tolist(), n)
        out = torch.empty((n, *rows.shape[1:]), dtype=rows.dtype)
        out[where] = rows.detach().cpu()
        return out

    def _collect_samples(self, dm, xs: list, where: Tensor, every_rank: bool) -> Tensor | None:
        """The selection samples of every rank in seed order (the quality watch's input);
        ``None`` without a watch or where a batch failed (on any rank)."""
        if self.watch is None:
            return None
        failed = float(any(x is None for x in xs))
        if (failed if every_rank else _sum_over_ranks(dm.trainer, failed)) > 0:
            return None
        return self._collect(dm, torch.cat(xs), where, every_rank)

    def _batch_errors(self, module: FitHost, run, batch: dict) -> tuple[Tensor, Tensor | None]:
        """This selection batch's per-seed MSE (``inf`` where sampling fails) and, with a
        quality watch, its samples clamped to the run's ``clip`` (CPU, float64)."""
        from ..learned_solver import selection_errors

        dev = module.device
        den = self.problem.bind(batch.get("cond"))
        z = batch["noise"].to(dev)
        keep: list[Tensor] | None = [] if self.watch is not None else None
        try:
            err = selection_errors(
                run, den, z, batch["reference"].to(dev), None, self.settings["clip"], keep
            ).cpu()
        except ValueError:
            return torch.full((len(z),), math.inf, dtype=torch.float64), None
        x = clipped(torch.cat(keep), self.settings["clip"]).cpu() if keep is not None else None
        return err, x

    def _quality(self, x: Tensor | None) -> float:
        """The watch's quality of the gathered selection samples ``x`` (``inf`` where they
        failed; 0 without a watch)."""
        if self.watch is None:
            return 0.0
        return math.inf if x is None else float(self.watch(x, self._sel_refs))

    def _select(self, module: FitHost, value: float, step: int, quality: float = 0.0) -> None:
        """Record the selection MSE ``value`` (and the watch's ``quality``) of the iterate at
        ``step``: keep it if best and within the quality limit, stop after ``patience``
        evaluations without a kept one."""
        self.curve.append((step, value))
        if self.watch is not None:
            self.quality_curve.append((step, quality))
        if value < self.best_value and quality <= self.quality_max:
            self.best_value, self.best_step, self.since = value, step, 0
            self.best_params = module.learned.snapshot()
        else:
            self.since += 1
        patience = self.settings["patience"]
        if patience is not None and self.since > patience:
            self.stop = "patience"
            module.trainer.should_stop = True
        metrics = {"e2e/select_mse": value, "e2e/select_mse_best": self.best_value}
        if self.watch is not None:
            metrics["e2e/select_quality"] = quality
        for lg in module.trainer.loggers:
            lg.log_metrics(metrics, step=step)

    def _evaluate(self, module: FitHost, step: int) -> None:
        err, x = self._errors(module, lambda d, z: module.learned(d, z), samples=True)
        v = float(err.mean())
        self._select(module, v if math.isfinite(v) else math.inf, step, self._quality(x))

    # ---- the training loop ----------------------------------------------------------------------
    def on_train_start(self, module: FitHost) -> None:
        if not self.curve and module.trainer.global_step == 0:
            self._evaluate(module, 0)  # the start: the warm-start cell through the learned path

    def training_step(self, module: FitHost, batch: dict, batch_idx: int) -> Tensor | None:
        from ..learned_solver import fit_loss

        s, trainer = self.settings, module.trainer
        if self.stop != "steps":
            return None
        module.learned.project_()  # the shift's u inside [-1, 1] after the last step
        z = batch["noise"].to(module.device)
        ref = batch["reference"].to(module.device, torch.float64)
        world = trainer.world_size
        # DDP averages the ranks' gradients. A per-seed mean (l2, l1): each rank's loss scaled
        # by its share of the global mini-batch, so that the average is the gradient of the
        # global mean. A batch statistic (a callable objective): every rank evaluates it on the
        # whole global mini-batch with only its own rows live, so the ranks' gradients sum to
        # the whole gradient; its value is counted once.
        share = len(z) / int(batch["global_size"])
        scale = share * world
        try:
            x = module.learned(self.problem.bind(batch.get("cond")), z)
            failed = 0.0
        except ValueError:
            x, failed = None, 1.0
        if callable(self.objective) and world > 1:
            x, ref, failed = self._global_batch(trainer, batch, x, ref, failed)
            share, scale = 1.0 / world, float(world)
        loss = None
        if not failed:
            try:
                loss = fit_loss(x, ref, self.objective, s["clip"])
            except ValueError:
                failed = 1.0
        part = loss.detach() * share if loss is not None else torch.zeros((), dtype=torch.float64)
        stats = torch.stack([part.to(torch.float64), torch.tensor(failed, dtype=torch.float64)])
        if trainer.world_size > 1:
            stats = trainer.strategy.reduce(stats.to(module.device), reduce_op="sum").cpu()
        total, failed = float(stats[0]), float(stats[1])
        if failed:
            self.stop = "non-finite model output"
        else:
            self._micro.append(total)
            if not math.isfinite(total):
                self.stop = "non-finite loss"
        if self.stop != "steps":
            self._flush()
            trainer.should_stop = True
            return None
        module.log("train/loss", total, prog_bar=True, batch_size=len(z))
        return loss * scale

    @staticmethod
    def _global_batch(trainer, batch: dict, x: Tensor | None, ref: Tensor, failed: float):
        """The whole global mini-batch on this rank: every rank's samples and references in
        the global order (rank ``r`` holds rows ``r, r + W, ...``), this rank's own rows live
        (with gradients), the others' detached; ``failed`` summed over the ranks."""
        dev, world, rank = ref.device, trainer.world_size, trainer.global_rank
        total = int(batch["global_size"])
        mine = torch.arange(rank, total, world)
        failed = _sum_over_ranks(trainer, failed)
        if failed:
            return None, ref, failed
        rows = trainer.datamodule.gather(torch.cat([x.detach().to(torch.float64).flatten(1),
                                               ref.flatten(1)], 1), mine.tolist(), total)  # fmt: skip
        width = x[0].numel()
        every_x = rows[:, :width].reshape(total, *x.shape[1:]).to(dev)
        every_ref = rows[:, width:].reshape(total, *ref.shape[1:]).to(dev)
        every_x = every_x.index_copy(0, mine.to(dev), x.to(torch.float64))
        return every_x, every_ref, 0.0

    def _flush(self) -> None:
        if self._micro:
            self.losses.append(sum(self._micro) / len(self._micro))
            self._micro = []

    def on_before_optimizer_step(self, module: FitHost, optimizer) -> None:
        from ..learned_solver import zero_nonfinite_grads

        zero_nonfinite_grads(module.learned.parameters())
        self._flush()
        names = ("grid", "coefficients", "shift")
        present = [n for n, on in zip(names, self._groups(module)) if on]
        module.log_dict({f"lr/{n}": g["lr"] for n, g in zip(present, optimizer.param_groups)})

    @staticmethod
    def _groups(module: FitHost) -> tuple[bool, bool, bool]:
        ls = module.learned
        return (ls.logits is not None, ls.lambdas is not None or ls.coefficients is not None,
                ls.shift is not None)  # fmt: skip

    def validation_step(self, module: FitHost, batch: dict, batch_idx: int) -> None:
        if module.trainer.sanity_checking or self.stop != "steps":
            return
        err, x = self._batch_errors(module, lambda d, z: module.learned(d, z), batch)
        self._val.append((batch["positions"], err, x))

    def on_validation_epoch_end(self, module: FitHost) -> None:
        val, self._val = self._val, []
        trainer = module.trainer
        if trainer.sanity_checking or self.stop != "steps" or not val:
            return
        where = torch.cat([p for p, _, _ in val])
        dm = trainer.datamodule
        err = self._collect(dm, torch.cat([e for _, e, _ in val]), where, False)
        x = self._collect_samples(dm, [x for _, _, x in val], where, False)
        v = float(err.mean())
        self._select(module, v if math.isfinite(v) else math.inf, trainer.global_step,
                     self._quality(x))  # fmt: skip
        module.log("val/select_mse", self.curve[-1][1], prog_bar=True, rank_zero_only=True)

    def on_train_epoch_end(self, module: FitHost) -> None:
        # the last step when it does not end an epoch (steps not a multiple of eval_every)
        step = module.trainer.global_step
        if self.stop == "steps" and step >= self.settings["steps"] and self.curve[-1][0] != step:
            self._evaluate(module, step)

    def on_train_end(self, module: FitHost) -> None:
        self._flush()
        self.result = self._conclude(module)

    # ---- checkpoints: the kept iterate and the history ---------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best_params": {k: v.cpu() for k, v in (self.best_params or {}).items()},
            "since": self.since,
            "curve": list(self.curve),
            "quality_curve": list(self.quality_curve),
            "losses": list(self.losses),
            "stop": self.stop,
            "val_seeds": None if self._val_seeds is None else _digest(self._val_seeds),
            "settings": {k: v for k, v in self.settings.items() if k != "objective"}
            | {"objective": _name(self.settings["objective"])},
        }

    def check_state(self, state: dict[str, Any], val_seeds: list[int] | None = None) -> None:
        """``ValueError`` unless checkpoint entry ``state`` was written with these settings
        (and, where given, these selection seeds)."""
        mine = self.state_dict()["settings"]
        theirs = state.get("settings", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(
                f"the checkpoint's end-to-end fit has other end_to_end settings ({', '.join(diff)}"
                "); resume with the same settings, or start a new run folder."
            )
        if val_seeds is not None and state.get("val_seeds") not in (None, _digest(val_seeds)):
            raise ValueError(
                "the checkpoint's end-to-end fit selected on other val_seeds; resume with the "
                "same --data.val_seeds, or start a new run folder."
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state, self._val_seeds)
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.best_params = dict(state["best_params"])
        self.since, self.stop = state["since"], state["stop"]
        self.curve = [tuple(c) for c in state["curve"]]
        self.quality_curve = [tuple(c) for c in state.get("quality_curve", [])]
        self.losses = list(state["losses"])

    # ---- the end: acceptance and the file ----------------------------------------------------
    def _conclude(self, module: FitHost, every_rank: bool = False) -> FittedSolver:
        from ..learned_solver import conclude

        s = self.settings
        model = module.model_record()
        candidate = module.learned.solver_file(self.best_params, model=model)
        errs, x = self._errors(module, lambda d, z: candidate.sample(d, z), every_rank, True)
        fit_errors = errs if torch.isfinite(errs).all() else None
        watched = self.watch is not None
        dm = module.trainer.datamodule
        record = {
            "clip": None if s["clip"] is None else list(s["clip"]),
            "objective": _name(self.objective),
            "steps": s["steps"],
            "steps_run": len(self.losses),
            "stop": self.stop,
            **{
                k: s[k] for k in ("lr", "lr_coefficients", "lr_shift", "weight_decay", "batch_size")
            },  # fmt: skip
            "select_batch_size": s["select_batch_size"] or s["batch_size"],
            "seed": s["seed"],
            "num_fit_seeds": len(dm.fit_seeds),
            "num_select_seeds": len(dm.val_seeds),
            "losses": list(self.losses),
            "select_curve": [list(c) for c in self.curve],
            "quality_level": s["quality_level"] if watched else None,
            "quality_curve": [list(c) for c in self.quality_curve],
            "reference_batch_size": s["reference_batch_size"],
            "world_size": module.trainer.world_size,
            "accumulate_grad_batches": module.trainer.accumulate_grad_batches,
            **self.warm,
        }
        fitted = conclude(
            module.learned, candidate, self.base_errors, fit_errors, best_step=self.best_step,
            accept_level=s["accept_level"], seed=s["seed"], record=record, model=model,
            quality=(self.quality_base, self.quality_max, self._quality(x)) if watched else None,
        )  # fmt: skip
        fitted.metrics["end_to_end"]["seconds"] = time.perf_counter() - self._t0
        return fitted

    def solver_file(self, module: FitHost, metrics: dict | None = None) -> FittedSolver:
        """The fitted solver of the run (concluded at the end of training, or now, when the
        run had nothing left to train: a resumed finished run, ``steps: 0``)."""
        if self.result is None:
            module.to(module.trainer.strategy.root_device)
            self.result = self._conclude(module, every_rank=True)
        fitted = self.result
        record = fitted.metrics["end_to_end"]
        module.grid_record = {"schedule": "end-to-end", "warm_start": self.warm.get(
            "warm_start_grid")}  # fmt: skip
        module.timings["end_to_end_s"] = record["seconds"]
        out = {
            "fit_mode": module.fit_mode,
            "nfe": self.problem.num_calls,
            "end_to_end": record,
            "grid": module.grid_record,
            **{f"time/{k}": v for k, v in module.timings.items()},
            **(metrics or {}),
        }
        return replace(fitted, model=module.model_record(), metrics=out)

    # ---- without a Trainer -------------------------------------------------------------------
    def fit(self, module: FitHost, fit_seeds: list[int], select_seeds: list[int]) -> FittedSolver:
        """References of both seed sets (in batches of ``reference_batch_size``), the
        warm-start cell, then :func:`dode.learned_solver.fit_end_to_end`, in this process on the
        module's device; the fitted solver with the module's model record."""
        from ..learned_solver import fit_end_to_end
        from ..standard_grids import reference_solution, select_grid, standard_grids

        opts = {**OWN_SETTINGS, **self.options}
        warm, ref_nfe = opts.pop("warm_start"), opts.pop("reference_nfe")
        ref_batch = opts.pop("reference_batch_size")
        if opts.get("features") is not None:
            opts["features"] = feature_factory(opts["features"])()
        problem = self.problem
        t0 = time.perf_counter()
        dev = module.device
        dens, noise, refs = [], [], []
        for seeds in (fit_seeds, select_seeds):
            z = noise_from_seeds(seeds, problem.sample_shape, problem.dtype, dev)
            den = problem.bind(problem.condition(seeds))
            dens.append(den)
            noise.append(z)
            refs.append(reference_solution(den, z, nfe=ref_nfe, batch_size=ref_batch))
        t_ref = time.perf_counter() - t0
        grid, label = problem.sigmas, problem.schedule
        if warm == "best_standard":
            choice = select_grid(
                dens[1], problem.solver, problem.num_calls, noise[1],
                grids=standard_grids(problem.denoiser), reference=refs[1],
            )  # fmt: skip
            grid, label = choice.sigmas, choice.spec.label
        fitted = fit_end_to_end(
            dens[0], problem.solver, grid, noise[0], refs[0], select_noise=noise[1],
            select_reference=refs[1], select_denoiser=dens[1], **opts,
        )  # fmt: skip
        record = fitted.metrics["end_to_end"]
        record.update(warm_start=warm, warm_start_grid=label, reference_nfe=ref_nfe)
        module.grid_record = {"schedule": "end-to-end", "warm_start": label}
        module.timings.update(reference_s=t_ref, end_to_end_s=time.perf_counter() - t0)
        metrics = {
            "fit_mode": module.fit_mode,
            "nfe": problem.num_calls,
            "end_to_end": record,
            "grid": module.grid_record,
            **{f"time/{k}": v for k, v in module.timings.items()},
        }
        return replace(fitted, model=module.model_record(), metrics=metrics)


def _sum_over_ranks(trainer, value: float) -> float:
    """``value`` summed over the run's processes (itself in one)."""
    if trainer.world_size == 1:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=trainer.strategy.root_device)
    return float(trainer.strategy.reduce(t, reduce_op="sum"))


def _digest(seeds: list[int]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps([int(x) for x in seeds]).encode()).hexdigest()[:24]


def _name(objective) -> str:
    return objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")
