"""``dode.digits.pretrain``: class conditioning with label dropout, the rectified-flow objective, export.

Ground truths come from diffusers: ``DDPMScheduler.add_noise`` for the DDPM forward process,
``FlowMatchEulerDiscreteScheduler.scale_noise`` and its training timesteps for the flow, and
the diffusers loaders (``UNet2DModel`` / scheduler ``from_pretrained``) for the exported folders.
"""

from __future__ import annotations

import json

import pytest
import torch

from dode.digits.pretrain import DDPMPretrain, export_pretrained

TINY = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=8,
)


class _Recorder(torch.nn.Module):
    """Stands in for the UNet: records its inputs and predicts zeros."""

    def forward(self, x, timestep, class_labels=None):
        self.x, self.timestep, self.class_labels = x, timestep, class_labels
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def _batch(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=gen) * 2 - 1, torch.arange(n) % 10


def test_class_conditional_unet_has_a_null_embedding():
    m = DDPMPretrain(**TINY, num_classes=10, label_dropout=0.1)
    assert m.unet.config.num_class_embeds == 11 and m.null_label == 10
    assert DDPMPretrain(**TINY).unet.config.num_class_embeds is None


def test_label_dropout_produces_null_labels_at_its_rate():
    p = 0.25
    m = DDPMPretrain(**TINY, num_classes=10, label_dropout=p)
    labels = torch.arange(10).repeat(4000)
    torch.manual_seed(0)
    out = m.drop_labels(labels)
    null = out == 10
    # Binomial(40000, p): standard deviation 0.0022; 5 of them.
    assert abs(float(null.float().mean()) - p) < 0.011
    assert torch.equal(out[~null], labels[~null])
    # Every class loses about the same share.
    per_class = torch.stack([null[labels == k].float().mean() for k in range(10)])
    assert float((per_class - p).abs().max()) < 0.04
    # No dropout: labels unchanged and no random numbers drawn.
    m0 = DDPMPretrain(**TINY, num_classes=10, label_dropout=0.0)
    state = torch.get_rng_state()
    assert torch.equal(m0.drop_labels(labels), labels)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_step_feeds_dropped_labels_to_the_unet():
    m = DDPMPretrain(**TINY, num_classes=10, label_dropout=0.5)
    m.unet = rec = _Recorder()
    m.log = lambda *a, **k: None
    m.optimizers = lambda: type("O", (), {"param_groups": [{"lr": 0.0}]})()
    x0, y = _batch(400)
    torch.manual_seed(1)
    m.training_step((x0, y), 0)
    got = rec.class_labels
    assert got.shape == y.shape and set(got.tolist()) <= set(range(11))
    dropped = got == 10
    assert 0.4 < float(dropped.float().mean()) < 0.6
    assert torch.equal(got[~dropped], y[~dropped])


def test_flow_target_is_noise_minus_data_and_timestep_is_1000t():
    from diffusers import FlowMatchEulerDiscreteScheduler

    m = DDPMPretrain(**TINY, objective="flow", num_classes=10)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    x0, y = _batch()
    eps = torch.randn_like(x0)
    k = torch.tensor([0, 1, 250, 500, 998, 999])
    t = sched.sigmas[k].to(torch.float32)
    xt, timestep, target = m.noisy_and_target(x0, t, eps)
    torch.testing.assert_close(xt, sched.scale_noise(x0, sched.timesteps[k], eps))
    torch.testing.assert_close(timestep, sched.timesteps[k])
    torch.testing.assert_close(target, eps - x0)
    # The loss regresses the network's output on ε − x0 at (x_t, 1000 t, labels).
    rec = _Recorder()
    loss = m._loss(rec, x0, t, eps, y)
    torch.testing.assert_close(loss, ((eps - x0) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(rec.x, xt)
    torch.testing.assert_close(rec.timestep, t * 1000)
    assert torch.equal(rec.class_labels, y)


@pytest.mark.parametrize("flow_time", ["uniform", "logit_normal"])
def test_flow_training_times_lie_in_the_unit_interval(flow_time):
    m = DDPMPretrain(**TINY, objective="flow", flow_time=flow_time)
    t = m.sample_time(20000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and float(t.min()) >= 0 and float(t.max()) <= 1
    # Uniform has mean 1/2 and variance 1/12; logit-normal is symmetric about 1/2 and tighter.
    assert abs(float(t.mean()) - 0.5) < 0.01
    var = float(t.var())
    assert abs(var - 1 / 12) < 0.003 if flow_time == "uniform" else var < 0.05


def test_default_objective_is_the_ddpm_eps_loss():
    from diffusers import DDPMScheduler

    m = DDPMPretrain(**TINY)
    x0, y = _batch()
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    xt, timestep, target = m.noisy_and_target(x0, t, eps)
    torch.testing.assert_close(xt, DDPMScheduler().add_noise(x0, eps, t))
    assert torch.equal(timestep, t) and torch.equal(target, eps)
    # Unconditional: labels in the batch are not passed to the UNet.
    rec = _Recorder()
    m._loss(rec, x0, t, eps, y)
    assert rec.class_labels is None


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_export_writes_a_loadable_folder_with_the_right_scheduler(tmp_path, objective):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

    m = DDPMPretrain(**TINY, objective=objective, num_classes=10, label_dropout=0.1)
    with torch.no_grad():
        for p in m.ema.parameters():
            p.normal_(0, 0.05)
    out = export_pretrained(m, tmp_path / "model", card={"objective": objective})
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    assert unet.config.num_class_embeds == 11
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 7, 10])
    ts = torch.tensor([5.0, 500.0, 990.0])
    with torch.no_grad():
        torch.testing.assert_close(
            unet(x, ts, class_labels=y).sample, m.ema(x, ts, class_labels=y).sample
        )
    cls = FlowMatchEulerDiscreteScheduler if objective == "flow" else DDPMScheduler
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == cls.__name__
    sched = cls.from_pretrained(out, subfolder="scheduler")
    assert sched.config.num_train_timesteps == 1000
    if objective == "flow":
        assert sched.config.shift == 1.0
    else:
        torch.testing.assert_close(sched.alphas_cumprod, DDPMScheduler().alphas_cumprod)
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", cls.__name__]
    assert index["_class_name"] == ("DDPMPipeline" if objective == "eps" else None)
    assert json.loads((out / "training.json").read_text()) == {"objective": objective}


def test_pretrain_cli_trains_a_conditional_flow_and_records_it(tmp_path):
    """Two optimizer steps of ``python -m dode.pretrain -c configs/pretrain/digits-flow.yaml``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dode.cli.pretrain import main

    out = main(
        [
            "-c",
            "configs/pretrain/digits-flow.yaml",
            "--model.block_out_channels=[8, 16]",
            "--model.down_block_types=[DownBlock2D, DownBlock2D]",
            "--model.up_block_types=[UpBlock2D, UpBlock2D]",
            "--model.norm_num_groups=4",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.steps_per_epoch=1",
            "--data.batch_size=8",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--output={tmp_path / 'model'}",
            f"--results={tmp_path / 'results'}",
        ]
    )
    card = json.loads((out / "training.json").read_text())
    assert card["objective"] == "flow" and card["steps"] == 2
    assert card["num_classes"] == 10 and card["null_label"] == 10
    assert card["label_dropout"] == 0.1 and card["flow_time"] == "uniform"
    assert card["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert "val/loss_ema_null" in card["final_metrics"]
    FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    metrics = (tmp_path / "results" / "pretrain_flow_metrics.csv").read_text().splitlines()
    assert metrics[0].split(",")[-1] == "val_loss_ema_null" and len(metrics) == 3
    assert (tmp_path / "results" / "pretrain_flow_curve.png").is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(label_dropout=0.1), "set --model.num_classes"),
        (dict(objective="x0"), "objective must be 'eps' or 'flow'"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(num_classes=10, label_dropout=1.0), r"label_dropout must be in \[0, 1\)"),
        (dict(objective="flow", flow_time="beta"), "flow_time must be"),
    ],
)
def test_pretrain_rejects_bad_conditioning_and_objective(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMPretrain(**TINY, **kwargs)
