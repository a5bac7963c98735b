"""``weights_hash``: the sha256 of a model's weights, cached by the identity of its weight files."""

from __future__ import annotations

import os

import pytest
import torch
from _tiny import make_tiny_unet

from dode.denoisers import DiffusersDenoiser, gaussian
from dode.files import weights as hashing
from dode.files.weights import weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")

import diffusers  # noqa: F401, E402


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A fresh cache (in memory and on disk) and a count of full tensor hashes."""
    monkeypatch.setenv("DODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_HASHES", {})
    calls = []
    real = hashing._hash_tensors

    def count(module):
        calls.append(type(module).__name__)
        return real(module)

    monkeypatch.setattr(hashing, "_hash_tensors", count)
    return calls


def test_loaded_model_hash_is_cached(tmp_path, counted, monkeypatch):
    make_tiny_unet(tmp_path / "m", seed=0)
    den = DiffusersDenoiser.from_pretrained(tmp_path / "m")
    assert [os.path.basename(f) for f in den.weight_files] == [
        "diffusion_pytorch_model.safetensors"
    ]
    first = weights_hash(den)
    assert first == hashing._hash_tensors(den) == weights_hash(den, cache=False)
    counted.clear()
    assert weights_hash(den) == first and counted == []  # in memory
    # a new process: the in-memory cache is empty, the one on disk answers
    monkeypatch.setattr(hashing, "_HASHES", {})
    again = DiffusersDenoiser.from_pretrained(tmp_path / "m")
    assert weights_hash(again) == first and counted == []
    assert len(os.listdir(tmp_path / "cache" / "weights-hash")) == 1
    # the same files loaded in another dtype are other weights
    half = DiffusersDenoiser.from_pretrained(tmp_path / "m", torch_dtype=torch.float16)
    assert weights_hash(half) != first and counted == ["DiffusersDenoiser"]


def test_changed_weight_file_gives_a_new_hash(tmp_path, counted):
    make_tiny_unet(tmp_path / "m", seed=0)
    old = weights_hash(DiffusersDenoiser.from_pretrained(tmp_path / "m"))
    make_tiny_unet(tmp_path / "m", seed=1)  # rewrites the weight file in place
    den = DiffusersDenoiser.from_pretrained(tmp_path / "m")
    new = weights_hash(den)
    assert counted == ["DiffusersDenoiser"] * 2  # hashed again, not taken from the cache
    assert new != old and new == weights_hash(den, cache=False)


def test_in_memory_module_is_hashed_each_time(counted):
    den = gaussian(torch.zeros(2), torch.eye(2))
    h = weights_hash(den)
    with torch.no_grad():
        den.means.add_(1.0)
    assert weights_hash(den) != h
    assert counted == ["GaussianMixtureDenoiser"] * 2


def test_corrupt_cache_entry_is_recomputed(tmp_path, counted, monkeypatch):
    make_tiny_unet(tmp_path / "m", seed=0)
    den = DiffusersDenoiser.from_pretrained(tmp_path / "m")
    good = weights_hash(den)
    (entry,) = (tmp_path / "cache" / "weights-hash").iterdir()
    entry.write_text("not a hash\n")
    monkeypatch.setattr(hashing, "_HASHES", {})
    assert weights_hash(den) == good
    assert entry.read_text().strip() == good
