"""``python -m dode.evaluate`` and ``dode.evaluation.fid``: sharding, resume, Fréchet distances, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import make_tiny_unet

from dode.cli.evaluate import main
from dode.evaluation import fid as fidlib
from dode.evaluation.config import EvalConfig
from dode.evaluation.run import evaluate
from dode.evaluation.store import SampleStore
from dode.metrics import frechet_distance_from_stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as Lightning gives each of 2 DDP processes on a 2-core machine:
    float reductions then run in the same order in both runs (and tiny models run faster)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_unet(path, layout="flat")
    return str(path)


def _cfg(model: str, out: Path, **kw) -> EvalConfig:
    base = dict(
        model=model,
        solver="ddim",
        nfe=3,
        schedule="time_uniform",
        seeds="0-7",
        batch_size=2,
        out=str(out),
        fid=False,
        log=None,
        wandb=False,
        progress=False,
        accelerator="cpu",
        devices=1,
    )
    base.update(kw)
    return EvalConfig(**base)


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "samples").glob("*/*.png"))}


def test_two_ddp_processes_give_the_images_of_one(tiny_model, tmp_path):
    """gloo DDP in 2 CPU processes (subprocess, Lightning's launcher) vs 1 process: the same
    PNG bytes for every seed, each seed written exactly once."""
    evaluate(_cfg(tiny_model, tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dode.evaluate", "--model", tiny_model, "--solver", "ddim"]
    cmd += ["--nfe", "3", "--schedule", "time_uniform", "--seeds", "0-7", "--batch_size", "2"]
    cmd += ["--out", str(tmp_path / "two"), "--fid", "false", "--wandb", "false"]
    cmd += ["--log", str(tmp_path / "log.jsonl"), "--progress", "false"]
    cmd += ["--accelerator", "cpu", "--devices", "2"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert sorted(one) == [f"{s:06d}.png" for s in range(8)]
    assert one == two
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["world_size"] == 2 and rec["num_samples"] == 8 and rec["generated_now"] == 8


def test_interrupted_evaluation_resumes_without_redoing(tiny_model, tmp_path, monkeypatch):
    ref_dir, out = tmp_path / "ref", tmp_path / "out"
    evaluate(_cfg(tiny_model, ref_dir))
    original = SampleStore.write
    calls: list[list[int]] = []

    def crash_after_two_batches(self, seeds, images):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(list(seeds))
        original(self, seeds, images)

    monkeypatch.setattr(SampleStore, "write", crash_after_two_batches)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(_cfg(tiny_model, out))
    first = {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*/*.png")}
    assert 4 <= len(first) < 8  # the batches handed to the writer before the crash, at least

    resumed: list[int] = []

    def record(self, seeds, images):
        resumed.extend(seeds)
        original(self, seeds, images)

    monkeypatch.setattr(SampleStore, "write", record)
    rec = evaluate(_cfg(tiny_model, out))
    done_before = {int(n.split(".")[0]) for n in first}
    assert sorted(resumed) == sorted(set(range(8)) - done_before)  # only the missing seeds
    assert rec["generated_now"] == 8 - len(first)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "samples").glob("*/*.png")}
    assert {k: after[k] for k in first} == first  # finished samples were not rewritten
    assert _pngs(out) == _pngs(ref_dir)  # and the result is the uninterrupted one
    assert not list(out.rglob("*.tmp"))


def test_resume_refuses_samples_of_other_settings(tiny_model, tmp_path):
    evaluate(_cfg(tiny_model, tmp_path / "o", seeds="0-1"))
    with pytest.raises(ValueError, match="different sigmas"):
        evaluate(_cfg(tiny_model, tmp_path / "o", seeds="0-1", nfe=4))


def _patches(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random crops of the two photographs scikit-learn ships (real images), uint8 NCHW."""
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = imgs[i % 2]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(im[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    fx = fidlib.get_feature_extractor("pixels")
    imgs = _patches(300)
    mu, sig, n = fidlib.stats_of_images(imgs.split(64), fx)
    assert n == 300
    assert fidlib.fid_from_stats(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-8)
    values = []
    for shift in (10, 20, 40):
        moved = (imgs.int() + shift).clamp(0, 255).to(torch.uint8)
        m2, s2, _ = fidlib.stats_of_images(moved.split(64), fx)
        values.append(fidlib.fid_from_stats(mu, sig, m2, s2))
    assert 0 < values[0] < values[1] < values[2]
    # a uniform brightness shift of s/255 moves every pooled pixel mean by about s/255
    assert values[0] == pytest.approx(48 * (10 / 255) ** 2, rel=0.3)


def test_frechet_formula_against_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = fidlib.fid_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(closed, rel=1e-10)
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = x @ x.T + np.eye(6), y @ y.T + np.eye(6)
    got = fidlib.fid_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(frechet_distance_from_stats(mu1, s1, mu2, s2), rel=1e-8)


def test_streaming_statistics_match_numpy():
    rng = np.random.default_rng(1)
    feats = rng.normal(loc=1e3, scale=[1.0, 2.0, 0.5], size=(500, 3))
    acc = fidlib.StatsAccumulator()
    for chunk in np.array_split(feats, 7):
        acc.update(torch.from_numpy(chunk))
    mu, sig = acc.result()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sig, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-12)


def test_reference_folder_statistics_are_computed_once(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i, a in enumerate(_patches(12).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(a).save(folder / f"{i}.png")
    fx = fidlib.get_feature_extractor("pixels")
    mu, sig, _ = fidlib.reference_stats(folder, fx, cache_dir=tmp_path / "cache")
    direct = fidlib.stats_of_images(_patches(12).split(5), fx)
    np.testing.assert_allclose(mu, direct[0], rtol=1e-12)

    def boom(*a, **k):
        raise AssertionError("statistics recomputed instead of read from the cache")

    monkeypatch.setattr(fidlib, "stats_of_images", boom)
    mu2, sig2, _ = fidlib.reference_stats(folder, fx, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(mu, mu2)
    with pytest.raises(ValueError, match="'pixels' features, not 'inception'"):
        fidlib.load_stats(next((tmp_path / "cache").glob("*.npz")), features="inception")


def test_evaluate_scores_logs_jsonl_and_wandb(tiny_model, tmp_path):
    from PIL import Image

    ref = tmp_path / "ref"
    ref.mkdir()
    for i, a in enumerate(_patches(8, size=8).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(a).save(ref / f"{i}.png")
    out = tmp_path / "out"
    cfg = _cfg(tiny_model, out, fid=True, ref=str(ref), features="pixels", save="npz")
    cfg.log, cfg.wandb = str(tmp_path / "eval.jsonl"), True
    rec = evaluate(cfg)
    assert rec["metric"] == "fd_pixels" and rec["value"] > 0  # never called FID
    assert json.loads((tmp_path / "eval.jsonl").read_text())["value"] == rec["value"]
    with np.load(out / "samples.npz") as z:  # guided-diffusion layout: NHWC uint8 + seeds
        assert z["arr_0"].shape == (8, 8, 8, 3) and z["arr_0"].dtype == np.uint8
        assert z["seeds"].tolist() == list(range(8))
    assert not (out / "samples").exists()
    # the offline run's record log: run.finish() returns once the run is complete, but the W&B
    # service writes out and closes the file when it handles the finish notice, after that on a
    # busy machine; wandb.teardown() (what the process runs at exit) waits for it
    import wandb

    wandb.teardown()
    runs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"eval/fd_pixels" in runs[0].read_bytes()


def test_inception_fid_when_weights_are_present():
    try:
        path = fidlib.inception_weights_path(download=False)
    except ValueError:
        pytest.skip(f"Inception weights ({fidlib.INCEPTION_FILE}) not present")
    fx = fidlib.InceptionFeatures(path)
    imgs = _patches(16, size=32)
    feats = fx(imgs)
    assert feats.shape == (16, 2048)
    mu, sig, _ = fidlib.stats_of_images([imgs], fx)
    assert fidlib.fid_from_stats(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-3)


def test_missing_inception_weights_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DODE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        fidlib.get_feature_extractor("inception")
    msg = str(e.value)
    assert fidlib.INCEPTION_FILE in msg and "DODE_INCEPTION_WEIGHTS" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    monkeypatch.setenv("DODE_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="nope.pth"):
        fidlib.inception_weights_path()


def test_missing_reference_statistics_fail_before_generating(tiny_model, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(tiny_model, out, fid=True, ref=str(tmp_path / "cifar10.npz"), features="pixels")
    with pytest.raises(ValueError, match=r"cifar10\.npz.*do not exist.*python -m dode.fid ref"):
        evaluate(cfg)
    assert not out.exists()


def test_unfetchable_checkpoint_cli_one_clear_error(tmp_path, capsys):
    code = main(
        ["--model", "google/ddpm-cifar10-32", "--solver", "ddim", "--nfe", "3", "--seeds", "0-1"]
        + ["--out", str(tmp_path / "o"), "--fid", "false", "--wandb", "false", "--log", "null"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "huggingface-cli download google/ddpm-cifar10-32" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper" / "eval").glob("*.yaml")))
def test_shipped_evaluation_configs_parse(path):
    from dode.cli.evaluate import parser as _parser

    ns = _parser().parse_args(["-c", str(path), "--solver", "ddim", "--nfe", "10"]).as_dict()
    cfg = EvalConfig(**{k: v for k, v in ns.items() if k in EvalConfig.__dataclass_fields__})
    assert cfg.features == "inception" and cfg.num_samples == 50_000 and cfg.ref.endswith(".npz")
