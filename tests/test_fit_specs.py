"""The typed specs of a fit (:mod:`dode.lit.specs`): what ``dode.fit``, the configs and the CLI
share.

Every shipped ``python -m dode.train`` config maps to the same settings through the flat path
(:func:`fit_kwargs`), through the specs and through LightningCLI's parser; each spec rejects a
bad field with one message naming it; the specs keep the defaults and keywords of the classes
they build; a fit from specs gives the λ of the same fit from flat keywords, bit for bit.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml

import dode
from dode.lit import (
    DataSpec,
    DODEModule,
    FitSpec,
    ModelSpec,
    NoiseDataModule,
    RunSpec,
    SolverSpec,
    Specs,
)
from dode.lit.api import fit_kwargs

ROOT = Path(__file__).resolve().parents[1]


def _train_configs() -> list[Path]:
    """Every ``python -m dode.train`` config under configs/: all files but those of the other
    entry points (``dode.digits.pretrain``: pretrain/; the paper tables and ``dode.evaluate``: paper/;
    the demo drivers, whose configs list ``solvers:``)."""
    out = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        rel = path.relative_to(ROOT / "configs").parts
        if rel[0] in ("pretrain", "paper"):
            continue
        if "solvers" in (yaml.safe_load(path.read_text()) or {}):
            continue
        out.append(path)
    return out


TRAIN_CONFIGS = _train_configs()


def test_the_config_list_is_not_empty():
    names = {p.relative_to(ROOT).as_posix() for p in TRAIN_CONFIGS}
    assert {"configs/default.yaml", "configs/tiny.yaml", "configs/sgd-local.yaml",
            "configs/sd15.yaml", "configs/flux.yaml", "configs/demo/digits-fit.yaml"} <= names  # fmt: skip
    assert len(names) >= 14


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_config_maps_to_the_same_settings_flat_and_as_specs(path):
    flat = fit_kwargs(path)
    specs = Specs.from_config(path)
    assert specs.kwargs() == {**Specs.defaults(), **flat}
    # ... and the specs hold exactly the config's values where it sets them
    raw = yaml.safe_load(path.read_text())
    for section, groups in (("model", ("model", "solver", "fit")), ("data", ("data",))):
        for key, value in (raw.get(section) or {}).items():
            owner = next(g for g in groups if key in type(getattr(specs, g)).names())
            assert getattr(getattr(specs, owner), key) == value, (section, key)
    # the flat form rebuilds the same specs
    assert Specs.from_kwargs(**specs.kwargs()) == specs


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_cli_parses_every_config_to_the_same_specs(path):
    from dode.cli.train import DODECLI

    class ParseOnly(DODECLI):
        def instantiate_classes(self) -> None:  # no model is loaded
            pass

    cli = ParseOnly(args=["-c", str(path)])
    got, want = cli.specs(), Specs.from_config(path)
    assert (got.model, got.solver, got.fit, got.data) == (
        want.model, want.solver, want.fit, want.data
    )  # fmt: skip
    for name in ("run_dir", "solver_file", "ckpt_path", "wandb_mode", "wandb_project", "name",
                 "seed"):  # fmt: skip
        assert getattr(got.run, name) == getattr(want.run, name), name
    for section in ("trainer", "samples", "lambda_plot", "fid"):
        given = getattr(want.run, section) or {}
        parsed = getattr(got.run, section) or {}
        assert {k: parsed.get(k) for k in given} == given, section


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_the_specs_keep_the_keywords_and_defaults_of_the_classes():
    """Each setting is declared once, in its spec: the classes and ``dode.fit`` take the specs'
    fields (LightningCLI reads them through the constructors: ``--model.*`` / ``--data.*``
    are the spec fields with the spec defaults), and nothing else."""
    from dode.cli.train import DODECLI

    class ParseOnly(DODECLI):
        def instantiate_classes(self) -> None:  # no model is loaded
            pass

    parsed = ParseOnly(args=[]).config.as_dict()
    model_fields = [*ModelSpec.names(), *SolverSpec.names(), *FitSpec.names()]
    assert sorted(parsed["model"]) == sorted(model_fields)
    assert sorted(parsed["data"]) == sorted(DataSpec.names())
    defaults = Specs.defaults()
    for name in model_fields:
        assert parsed["model"][name] == defaults[name], name
    for name in DataSpec.names():
        assert parsed["data"][name] == defaults[name], name
    from dode.lit.specs import RUN_TOP

    for name in RUN_TOP:  # the top-level settings: RunSpec's fields and defaults
        assert parsed[name] == defaults[name], name
    # the constructors and dode.fit declare no setting of their own
    for target in (DODEModule.__init__, NoiseDataModule.__init__):
        params = inspect.signature(target).parameters
        assert [p.kind for p in params.values()][1:] == [inspect.Parameter.VAR_KEYWORD], target
    fit = inspect.signature(inspect.unwrap(dode.fit)).parameters
    assert {p.name for p in fit.values() if p.default is not inspect.Parameter.empty} <= {
        "model",
        "solver",
        "data",
        "fit",
        "run",
    }
    assert all(fit[n].default is None for n in ("model", "solver", "data", "fit", "run"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        DODEModule(colour="red")
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        NoiseDataModule(colour="red")


BAD = [
    (lambda: ModelSpec(""), "model must be a registered name"),
    (lambda: ModelSpec(dtype="float8"), "unknown dtype 'float8'"),
    (lambda: ModelSpec(model_dtype="int4"), "unknown dtype 'int4'"),
    (lambda: ModelSpec(model_options=[1]), "model_options must be a mapping"),
    (lambda: ModelSpec(guidance_rescale=2), r"guidance_rescale must lie in \[0, 1\]"),
    (lambda: ModelSpec(guidance_scale=float("nan")), "guidance_scale must be a finite"),
    (lambda: SolverSpec("rk99"), "unknown solver 'rk99'"),
    (lambda: SolverSpec(nfe=0), "nfe must be a positive integer"),
    (lambda: SolverSpec(nfe=1), "nfe 1 leaves nothing to fit"),
    (lambda: SolverSpec(nfe=2.5), "nfe must be a positive integer"),
    (lambda: SolverSpec(teacher_factor=1), "teacher_factor must be an integer >= 2"),
    (lambda: SolverSpec(teacher_solver="rk99"), "unknown solver 'rk99'"),
    (lambda: SolverSpec(schedule_options=3), "schedule_options must be a mapping"),
    (lambda: FitSpec("adam"), "unknown fit_mode 'adam'"),
    (lambda: FitSpec(lr=0), "lr must be > 0"),
    (lambda: FitSpec(lr="fast"), "lr must be > 0"),
    (lambda: FitSpec(end_to_end={"steps": 3}), "end_to_end settings apply only"),
    (lambda: FitSpec("end-to-end", end_to_end={"stepz": 3}), "unknown end_to_end setting stepz"),
    (lambda: DataSpec(batch_size=0), "batch_size must be a positive integer"),
    (lambda: DataSpec(fit_seeds=[]), "fit_seeds is empty"),
    (lambda: DataSpec(fit_seeds="1,1"), "fit_seeds lists a seed twice"),
    (lambda: DataSpec(fit_seeds="x-y"), "bad fit_seeds"),
    (lambda: DataSpec("0-9", "5-20"), "fit_seeds and val_seeds overlap"),
    (lambda: DataSpec(class_labels="some"), "class_labels 'some' is not"),
    (lambda: DataSpec(class_labels="all", prompts="p.txt"), "give one kind of conditioning"),
    (lambda: DataSpec(negative_prompt="blurry"), "negative_prompt without prompts"),
    (lambda: RunSpec(wandb_mode="loud"), "unknown wandb_mode 'loud'"),
    (lambda: RunSpec(trainer={"use_distributed_sampler": True}), "must stay false"),
    (lambda: RunSpec(trainer={"max_epoch": 3}), "unknown setting trainer.max_epoch"),
    (lambda: RunSpec(samples={"colour": 1}), "unknown setting samples.colour"),
    (lambda: RunSpec(fid=[1]), "fid must be a mapping"),
    (lambda: RunSpec(seed="0"), "seed must be an integer"),
    (lambda: Specs(model="digits"), "Specs.model must be a ModelSpec"),
    (lambda: Specs.from_kwargs(colour="red"), "unknown fit setting 'colour'"),
    (lambda: Specs.from_config({"model": {"colour": "red"}}), "unknown setting model.colour"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_each_spec_rejects_a_bad_field_with_one_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_constructors_check_through_the_specs():
    """One check, two doors: the constructor's message is the spec's, before any model loads."""
    for kw, spec in (({"nfe": 1}, lambda: SolverSpec(nfe=1)),
                     ({"fit_mode": "adam"}, lambda: FitSpec("adam")),
                     ({"guidance_rescale": 2.0}, lambda: ModelSpec(guidance_rescale=2.0)),
                     ({"model": "no-such-model-anywhere", "nfe": 1}, lambda: SolverSpec(nfe=1))):  # fmt: skip
        with pytest.raises(ValueError) as a:
            DODEModule(**kw)
        with pytest.raises(ValueError) as b:
            spec()
        assert str(a.value) == str(b.value)
    with pytest.raises(ValueError) as a:
        NoiseDataModule(fit_seeds="0-9", val_seeds="9")
    with pytest.raises(ValueError) as b:
        DataSpec("0-9", "9")
    assert str(a.value) == str(b.value)


def test_specs_are_frozen_and_copy_their_options():
    options = {"order": 2}
    spec = SolverSpec("dpm_solver_pp", nfe=4, solver_options=options)
    options["order"] = 3
    assert spec.solver_options == {"order": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.nfe = 8  # type: ignore[misc]
    assert dataclasses.replace(spec, nfe=8).nfe == 8
    with pytest.raises(ValueError, match="nfe 1"):
        dataclasses.replace(spec, nfe=1)
    assert DataSpec("0-3", "7").fit_seed_list == (0, 1, 2, 3)


def test_from_specs_builds_what_the_constructor_builds():
    kw = dict(model="gmm-digits", solver="ipndm", nfe=4, schedule="log_uniform",
              teacher_factor=3, fit_mode="sgd-local", lr=0.2)  # fmt: skip
    specs = Specs.from_kwargs(**kw, fit_seeds="0-7", val_seeds="8-9", batch_size=4)
    a = DODEModule.from_specs(specs.model, specs.solver, specs.fit)
    b = DODEModule(**kw)
    assert dict(a.hparams) == dict(b.hparams)
    assert a.problem_key() == b.problem_key() and torch.equal(a.sigmas, b.sigmas)
    assert (a.model_spec, a.solver_spec, a.fit_spec) == (specs.model, specs.solver, specs.fit)
    data = NoiseDataModule.from_spec(specs.data)
    assert data.fit_seeds == list(range(8)) and data.batch_size == 4 and data.spec == specs.data
    with pytest.raises(ValueError, match="solver must be a SolverSpec"):
        DODEModule.from_specs(specs.model, "ddim")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes a DataSpec"):
        NoiseDataModule.from_spec({"fit_seeds": "0-7"})  # type: ignore[arg-type]


SETTINGS = dict(
    model="gmm-digits", solver="ddim", nfe=4, teacher_factor=4, fit_seeds="0-31",
    val_seeds="100-107", batch_size=16, cache_dir=None,
)  # fmt: skip
QUIET = dict(
    samples={"num_samples": 0}, lambda_plot={"enabled": False}, wandb_mode="disabled",
    trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
             "enable_model_summary": False, "enable_checkpointing": False},
)  # fmt: skip


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_fit_from_specs_equals_the_fit_from_flat_keywords(tmp_path, one_thread):
    flat = dode.fit(**SETTINGS, **QUIET, run_dir=tmp_path / "flat")
    grouped = dode.fit(
        ModelSpec("gmm-digits"),
        SolverSpec("ddim", nfe=4, teacher_factor=4),
        data=DataSpec("0-31", "100-107", batch_size=16, cache_dir=None),
        run=RunSpec(**QUIET, run_dir=tmp_path / "specs"),
    )
    whole = dode.fit(Specs.from_kwargs(**SETTINGS, **QUIET, run_dir=tmp_path / "whole"))
    mixed = dode.fit(  # a spec for one group, flat keywords for the others
        "gmm-digits", SolverSpec("ddim", nfe=4, teacher_factor=4), fit_seeds="0-31",
        val_seeds="100-107", batch_size=16, cache_dir=None, **QUIET, run_dir=tmp_path / "mixed",
    )  # fmt: skip
    assert flat.lambdas.abs().max() > 0
    for other in (grouped, whole, mixed):
        assert torch.equal(other.lambdas, flat.lambdas)
        assert torch.equal(other.sigmas, flat.sigmas)
        assert other.solver == flat.solver and other.teacher == flat.teacher
        assert other.model == flat.model
    for name in ("flat", "specs", "whole", "mixed"):
        assert (tmp_path / name / "solver.safetensors").is_file()


def test_a_setting_given_twice_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="dtype is given both as a keyword and in the ModelSpec"):
        dode.fit(ModelSpec("gmm-digits"), dtype="float64", run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="nfe is given both"):
        dode.fit("gmm-digits", SolverSpec(nfe=4), nfe=6, run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="run_dir is given both"):
        dode.fit("gmm-digits", run=RunSpec(), run_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="nfe is given both as a keyword and in the SolverSpec"):
        dode.fit(Specs(), nfe=4)
    with pytest.raises(ValueError, match="solver is given both"):
        dode.fit(Specs(), "heun")
    with pytest.raises(ValueError, match=r"dode.fit\(specs\) takes no other spec"):
        dode.fit(Specs(), data=DataSpec())
    with pytest.raises(ValueError, match="data must be a DataSpec"):
        dode.fit("gmm-digits", data={"fit_seeds": "0-7"}, run_dir=tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_dode_fit_is_the_lightning_fit_without_importing_lightning_first():
    import subprocess
    import sys

    code = ("import sys, dode; assert not any(m.startswith('lightning') for m in sys.modules); "
            "from dode.lit import api, fit; assert dode.fit is fit is api.fit; "
            "assert not hasattr(dode, 'ModelSpec')")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
