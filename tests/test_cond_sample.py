"""python -m dode.sample with prompts / class labels, and the bad conditioning inputs: one
clear error each, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import make_tiny_sd, make_tiny_unet

import dode
from dode.cli.sample import main as sample_main
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver, model_schedule
from dode.files.weights import weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")


def _solver_file(path, folder, conditioning, w=2.0, options=None):
    den = load_denoiser(str(folder), **(options or {}))
    sigmas = dode.grids.schedules.karras(3, 0.1, 10.0)
    model = {
        "id": str(folder), "class": type(den).__name__, "weights_hash": weights_hash(den),
        "dtype": "float32", "integration_dtype": "float32", "sigma_to_t": "interp",
        "options": options or {}, "guidance_scale": w, "guidance_rescale": 0.0,
        "conditioning": conditioning, "schedule": model_schedule(den),
    }  # fmt: skip
    fs = FittedSolver(solver={"name": "ddim"}, sigmas=sigmas, lambdas=[0.0, 0.1, -0.05],
                      model=model)  # fmt: skip
    return fs.save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_sd(root / "sd", seed=1)
    make_tiny_unet(root / "cond", num_class_embeds=4)
    make_tiny_unet(root / "uncond")
    return root


PROMPTS_REC = {"kind": "prompts", "num_prompts": 2, "prompts_hash": "x", "negative_prompt": None}


def test_sample_prompts_decodes_pngs(folders, tmp_path):
    f = _solver_file(tmp_path / "sd.safetensors", folders / "sd", PROMPTS_REC)
    (tmp_path / "p.txt").write_text("a red cube\n\na blue ball\n")
    out = tmp_path / "out"
    sample_main(["--solver_file", str(f), "--prompts_file", str(tmp_path / "p.txt"), "--seeds",
                 "0-2", "--out", str(out), "--device", "cpu", "--batch_size", "2"])  # fmt: skip
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (3, 16, 16, 3)  # decoded by the VAE
    assert list(data["prompts"]) == ["a red cube", "a blue ball", "a red cube"]
    assert sorted(p.name for p in out.glob("seed_*.png")) == [
        f"seed_00000{i}.png" for i in range(3)
    ]
    # The same images as binding and sampling by hand, decoding once per image.
    den = load_denoiser(str(folders / "sd"))
    noise = dode.noise.noise_from_seeds([0, 1, 2], den.sample_shape, torch.float32)
    fs = FittedSolver.load(f)
    lat = fs.sample(den.bind(["a red cube", "a blue ball", "a red cube"], guidance_scale=2.0),
                    noise)  # fmt: skip
    assert torch.allclose(torch.from_numpy(data["samples"]), den.decode(lat), atol=1e-5)
    # Another guidance scale warns that λ were fitted for 2.
    with pytest.warns(UserWarning, match="fitted for guidance scale 2"):
        sample_main(["--solver_file", str(f), "--prompt", "a cat", "--seeds", "0", "--out",
                     str(tmp_path / "o2"), "--device", "cpu", "--guidance_scale", "4"])  # fmt: skip


def test_sample_class_labels(folders, tmp_path):
    rec = {"kind": "class_labels", "labels": "all"}
    f = _solver_file(tmp_path / "c.safetensors", folders / "cond", rec, options={"num_classes": 3})
    out = tmp_path / "out"
    sample_main(["--solver_file", str(f), "--class_labels", "0,2", "--seeds", "0-3", "--out",
                 str(out), "--device", "cpu"])  # fmt: skip
    assert np.load(out / "samples.npz")["class_labels"].tolist() == [0, 2, 0, 2]
    # Without labels: the file's rule (all: seed % 3).
    sample_main(["--solver_file", str(f), "--seeds", "0-3", "--out", str(tmp_path / "o2"),
                 "--device", "cpu"])  # fmt: skip
    assert np.load(tmp_path / "o2" / "samples.npz")["class_labels"].tolist() == [0, 1, 2, 0]


def _fails(capsys, argv, match, out):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample_main([*argv, "--out", str(out), "--device", "cpu", "--seeds", "0-1"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if not ln.startswith("Loading weights")]  # transformers' progress bar  # fmt: skip
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_bad_conditioning_inputs(folders, tmp_path, capsys):
    sd = _solver_file(tmp_path / "sd.safetensors", folders / "sd", PROMPTS_REC)
    un = _solver_file(tmp_path / "u.safetensors", folders / "uncond", None, w=1.0)
    c = _solver_file(
        tmp_path / "c.safetensors",
        folders / "cond",
        {"kind": "class_labels", "labels": "all"},
        options={"num_classes": 3},
    )
    nonull = _solver_file(tmp_path / "n.safetensors", folders / "cond",
                          {"kind": "class_labels", "labels": "all"}, w=1.0)  # fmt: skip
    out = tmp_path / "never"
    _fails(capsys, ["--solver_file", str(un), "--prompt", "a cat"],
           "prompts were given for the unconditional model", out)  # fmt: skip
    _fails(capsys, ["--solver_file", str(c), "--class_labels", "1,3"],
           "class label 3 is out of range", out)  # fmt: skip
    (tmp_path / "empty.txt").write_text("\n  \n")
    _fails(capsys, ["--solver_file", str(sd), "--prompts_file", str(tmp_path / "empty.txt")],
           "is empty", out)  # fmt: skip
    _fails(capsys, ["--solver_file", str(sd), "--prompts_file", str(tmp_path / "no.txt")],
           "does not exist", out)  # fmt: skip
    _fails(capsys, ["--solver_file", str(nonull), "--guidance_scale", "3"],
           "has no unconditional input", out)  # fmt: skip
    _fails(capsys, ["--solver_file", str(sd)], "fitted with prompts", out)


def test_fit_bad_conditioning_writes_nothing(folders, tmp_path):
    """The same checks in dode.fit, before anything is written."""
    run = tmp_path / "run"
    kw = dict(nfe=3, teacher_factor=3, fit_seeds="0-3", val_seeds="10-11", batch_size=2,
              cache_dir=None, run_dir=run, wandb_mode="disabled")  # fmt: skip
    with pytest.raises(ValueError, match="prompts were given for the unconditional model"):
        (tmp_path / "p.txt").write_text("a cat\n")
        dode.fit(model=str(folders / "uncond"), prompts=str(tmp_path / "p.txt"), **kw)
    with pytest.raises(ValueError, match="class label 5 is out of range"):
        dode.fit(model=str(folders / "cond"), model_options={"num_classes": 3},
                 class_labels=[0, 5], **kw)  # fmt: skip
    with pytest.raises(ValueError, match="no unconditional input"):
        dode.fit(model=str(folders / "cond"), class_labels="all", guidance_scale=2.0, **kw)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        dode.fit(model=str(folders / "sd"), prompts=str(tmp_path / "e.txt"), **kw)
    with pytest.raises(ValueError, match="does not exist"):
        dode.fit(model=str(folders / "sd"), prompts=str(tmp_path / "missing.txt"), **kw)
    with pytest.raises(ValueError, match="is conditional"):
        dode.fit(model=str(folders / "cond"), model_options={"num_classes": 3}, **kw)
    assert not (run / "solver.safetensors").exists()


def _tiny_clip(folder):
    from _tiny import write_clip_tokenizer
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    tok = write_clip_tokenizer(folder / "_vocab")
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, projection_dim=16,
                          bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1,
                          pad_token_id=len(tok) - 1)  # fmt: skip
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=16))  # fmt: skip
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )  # fmt: skip
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_evaluate_prompts_clip_score(folders, tmp_path):
    from dode.evaluation.config import EvalConfig
    from dode.evaluation.run import evaluate

    f = _solver_file(tmp_path / "sd.safetensors", folders / "sd", PROMPTS_REC)
    (tmp_path / "p.txt").write_text("a red cube\na blue ball\n")
    base = dict(solver_file=str(f), seeds="0-3", batch_size=2, fid=False, log=None, wandb=False,
                progress=False, accelerator="cpu", devices=1,
                prompts_file=str(tmp_path / "p.txt"))  # fmt: skip
    # No CLIP weights in the folder: one clear error naming it, before generating anything.
    with pytest.raises(ValueError, match="no CLIP weights in .*noclip"):
        evaluate(EvalConfig(**base, out=str(tmp_path / "e0"), clip_model=str(tmp_path / "noclip")))
    assert not (tmp_path / "e0").exists()
    clip = _tiny_clip(tmp_path / "clip")
    rec = evaluate(EvalConfig(**base, out=str(tmp_path / "e1"), clip_model=str(clip)))
    assert rec["conditioning"]["kind"] == "prompts" and rec["guidance_scale"] == 2.0
    assert np.isfinite(rec["clip_score"]) and rec["clip_score"] >= 0
    from PIL import Image

    pngs = sorted((tmp_path / "e1" / "samples").glob("*/*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (16, 16)  # decoded images
    # The CLIP score against the same prompts, computed directly from the stored images.
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(clip), CLIPProcessor.from_pretrained(clip)
    imgs = [np.array(Image.open(p).convert("RGB")) for p in pngs]
    inputs = proc(text=["a red cube", "a blue ball"] * 2, images=imgs, return_tensors="pt",
                  padding=True)  # fmt: skip
    with torch.no_grad():
        out = model(**inputs)
    a = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    b = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    want = (100 * (a * b).sum(-1)).mean().clamp(min=0)  # torchmetrics: max(mean, 0)
    assert abs(float(want) - rec["clip_score"]) < 1e-3
