"""One trial's training on real JPEGs with real tiny timm models, no Ray or MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.scoring.epoch_metrics import epoch_metric_names
from ffdi_tune.scoring.inference import view_log_odds
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.trial import BEST_FILE, LAST_FILE, train_trial


def run(settings, data, resume_from=None):
    reports = []

    def report(metrics, folder):
        best = torch.load(folder / BEST_FILE, weights_only=True)
        last = torch.load(folder / LAST_FILE, weights_only=True)
        reports.append((metrics, best, last))

    best = train_trial(settings, DataConfig(root=str(data)), report, resume_from=resume_from)
    return best, reports


@pytest.mark.parametrize(
    "backbone,extra",
    [
        (
            "resnet10t",
            {
                "mix": "mixup_or_cutmix",
                "ema_decay": 0.9,
                "label_smoothing": 0.1,
                "augment": "flips+jpeg",
            },
        ),
        ("mobilenetv3_small_050", {"optimizer": "sgd", "augment": "randaugment"}),
    ],
)
def test_epochs_report_metrics_and_checkpoints(tiny_data, backbone, extra):
    s = TrainSettings(
        backbone=backbone,
        img_size=32,
        batch_size=8,
        epochs=2,
        lr=3e-3,
        step_size=1,
        gamma=0.5,
        **extra,
    )
    best, reports = run(s, tiny_data)
    assert [m["epoch"] for m, _, _ in reports] == [1, 2]
    for i, (m, b, last) in enumerate(reports):
        # that one on a GPU only
        assert set(epoch_metric_names()) - {"peak_accelerator_memory_mb"} <= set(m)
        assert 0 < m["data_wait_share"] < 1 and m["eval_time_s"] < m["epoch_time_s"]
        assert (
            np.isfinite(m["train_loss"])
            and m["train_images_per_s"] > 0
            and last["epoch"] == m["epoch"]
        )
        # the best so far
        assert b["metrics"]["val_auc"] == max(r[0]["val_auc"] for r in reports[: i + 1])
        assert b["backbone"] == backbone and b["img_size"] == 32 and len(b["mean"]) == 3
    # StepLR steps after each epoch: epoch 2 trains at lr * gamma
    assert reports[0][0]["lr"] == pytest.approx(3e-3) and reports[1][0]["lr"] == pytest.approx(
        1.5e-3
    )
    # best.pt holds the best epoch by val_auc
    best_epoch = max(reports, key=lambda r: r[0]["val_auc"])[0]["epoch"]
    assert reports[-1][1]["epoch"] == best_epoch == best["epoch"]


def test_best_checkpoint_holds_the_best_epochs_weights(tiny_data):
    """Each epoch's best.pt is the weights of the epoch it names, which reproduce its metrics, also
    when a later epoch was worse (on a CPU a state dict that aliases the live weights would be
    overwritten)."""
    import timm

    from ffdi_tune.scoring.metrics import binary_metrics

    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=3, lr=3e-3, gamma=1.0)
    _, reports = run(s, tiny_data)
    weights_of_epoch = {m["epoch"]: last["model"] for m, _, last in reports}
    # a report whose best is an earlier epoch
    assert any(b["epoch"] < m["epoch"] for m, b, _ in reports)
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    for _, ckpt, _ in reports:
        assert all(
            torch.equal(v, weights_of_epoch[ckpt["epoch"]][k])
            for k, v in ckpt["state_dict"].items()
        )
        model = timm.create_model(ckpt["backbone"], num_classes=2)
        model.load_state_dict(ckpt["state_dict"])
        score = view_log_odds(
            model,
            load_images(val, 32),
            torch.tensor(ckpt["mean"]),
            torch.tensor(ckpt["std"]),
            ["identity"],
        )[0]
        reproduced = binary_metrics(val.targets, score)
        assert reproduced == pytest.approx({k: ckpt["metrics"][k] for k in reproduced})


def test_resume_continues_after_saved_epoch(tiny_data, tmp_path):
    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1)
    saved = tmp_path / "ckpt"

    def keep(metrics, folder):
        import shutil

        shutil.copytree(folder, saved)

    train_trial(s, DataConfig(root=str(tiny_data)), keep)
    _, reports = run(s.model_copy(update={"epochs": 2}), tiny_data, resume_from=saved)
    assert [m["epoch"] for m, _, _ in reports] == [2]
    assert reports[0][2]["step"] == 2 * (48 // 8)


def test_member_loads_from_best_checkpoint_and_rejects_garbage(tiny_data, tmp_path):
    from ffdi_tune.errors import DataError
    from ffdi_tune.scoring.predict import DecodedSplits, load_member, predict_views

    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=1)
    _, reports = run(s, tiny_data)
    torch.save(reports[-1][1], tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))
    splits = DecodedSplits(DataConfig(root=str(tiny_data)))
    probs = predict_views(
        member, splits.images("val", member.img_size), ["identity", "hflip", "rot90"], 16
    )
    assert (
        probs.shape == (3, 24) and np.isfinite(probs).all() and not np.allclose(probs[0], probs[1])
    )
    # the identity view reproduces the checkpoint's own val AUC
    from ffdi_tune.scoring.metrics import binary_metrics

    assert binary_metrics(splits.split("val").targets, probs[0])["val_auc"] == pytest.approx(
        reports[-1][1]["metrics"]["val_auc"]
    )
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="can't be loaded"):
        load_member(tmp_path / "bad.pt", "bad")


@pytest.mark.slow
def test_compiled_model_trains_like_the_plain_one(tiny_data):
    """torch.compile (inductor on CPU here) gives the same training within float tolerance."""
    s = TrainSettings(backbone="test_resnet", img_size=32, batch_size=8, epochs=1, augment="none")
    plain, _ = run(s, tiny_data)
    compiled, _ = run(s.model_copy(update={"compile": True}), tiny_data)
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)
    assert compiled["val_auc"] == pytest.approx(plain["val_auc"], abs=0.05)


@pytest.mark.parametrize("mode,batched", [("on", True), ("auto", False), ("off", False)])
def test_device_augment_setting_picks_where_sets_run(tiny_data, monkeypatch, mode, batched):
    """device_augment=on runs a set's batched form on the device (here the CPU) instead of the
    loader's per-image path; auto does so only on a GPU."""
    import ffdi_tune.data.augment as augment
    import ffdi_tune.training.placement as placement
    from ffdi_tune.training.trial import train_trial

    calls = {"batched": 0, "per_image": 0}
    forward = augment.DeviceAugment.forward

    def spy_forward(self, batch):
        calls["batched"] += 1
        return forward(self, batch)

    build = placement.build_augment

    def spy_build(*args, **kwargs):
        inner = build(*args, **kwargs)

        def per_image(img):
            calls["per_image"] += 1
            return inner(img)

        return per_image

    monkeypatch.setattr(augment.DeviceAugment, "forward", spy_forward)
    monkeypatch.setattr(placement, "build_augment", spy_build)
    s = TrainSettings(
        backbone="test_resnet",
        img_size=32,
        batch_size=8,
        epochs=1,
        augment="color",
        device_augment=mode,
    )
    assert placement.augment_placement(s, None, torch.device("cpu")) == (
        "device" if batched else "loader"
    )
    best = train_trial(s, DataConfig(root=str(tiny_data)), lambda m, f: None, device="cpu")
    assert best["epoch"] == 1 and np.isfinite(best["train_loss"])
    if batched:
        assert calls == {"batched": 48 // 8, "per_image": 0}
    else:
        assert calls == {"batched": 0, "per_image": 48}


def test_augment_placement_for_every_kind_of_set():
    from ffdi_tune.training.placement import augment_placement

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # only compared, never used
    mine = {"mine": [{"name": "RandomHorizontalFlip"}]}
    cases = [  # set, device_augment, device, user sets -> where
        ("flips", "off", gpu, None, "device"),
        ("flips", "auto", cpu, None, "gather"),
        ("color", "auto", gpu, None, "device"),
        ("color", "auto", cpu, None, "loader"),
        ("color", "off", gpu, None, "loader"),
        ("color", "on", cpu, None, "device"),
        ("flips+color", "auto", gpu, None, "device"),
        ("flips+jpeg", "auto", gpu, None, "loader"),
        ("randaugment", "on", gpu, None, "loader"),
        ("mine", "on", gpu, mine, "loader"),
        ("color+mine", "on", gpu, mine, "loader"),
    ]
    for name, mode, device, user_sets, where in cases:
        s = TrainSettings(augment=name, device_augment=mode)
        assert augment_placement(s, user_sets, device) == where, (name, mode, device)


def test_loader_workers_feed_a_gpu_and_leave_a_cpu_alone(monkeypatch):
    from ffdi_tune.training.placement import loader_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # only compared, never used
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # the trial's resources.cpu
    assert loader_workers("auto", "loader", gpu) == 3 and loader_workers("auto", "loader", cpu) == 0
    assert loader_workers("auto", "device", gpu) == 0 and loader_workers("auto", "gather", cpu) == 0
    assert loader_workers(2, "loader", cpu) == 2 and loader_workers(2, "device", gpu) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert loader_workers("auto", "loader", gpu) == 1


def test_warmup_then_step_lr(tiny_data):
    """warmup_epochs ramps lr up from lr / 100 step by step; StepLR counts epochs after warm-up."""
    s = TrainSettings(
        backbone="test_resnet",
        img_size=32,
        batch_size=8,
        epochs=3,
        lr=4e-3,
        step_size=1,
        gamma=0.5,
        warmup_epochs=1,
    )
    _, reports = run(s, tiny_data)
    assert [m["lr"] for m, _, _ in reports] == pytest.approx([4e-5, 4e-3, 2e-3])


def test_head_lr_multiplier_scales_only_the_new_classifier(tiny_data):
    """With a near-zero head multiplier the classifier keeps its initial weights while the body
    learns."""
    from ffdi_tune.models.factory import create_model
    from ffdi_tune.training.trial import _seed_everything

    s = TrainSettings(
        backbone="resnet10t",
        img_size=32,
        batch_size=8,
        epochs=1,
        lr=3e-3,
        head_lr_mult=1e-9,
        weight_decay=0.01,
    )
    _, reports = run(s, tiny_data)
    _seed_everything(0)  # the seed of a trial run outside a search
    initial = create_model("resnet10t").state_dict()  # the same draw the trial made
    trained = reports[-1][1]["state_dict"]
    assert torch.allclose(trained["fc.weight"], initial["fc.weight"], atol=1e-6)
    assert not torch.allclose(trained["conv1.0.weight"], initial["conv1.0.weight"], atol=1e-4)
    assert reports[-1][0]["lr"] == pytest.approx(3e-3)  # the body's rate is what is logged


def test_pretrained_trial_records_its_weights(tiny_data):
    s = TrainSettings(
        backbone="tf_efficientnet_lite0", pretrained=True, img_size=32, batch_size=8, epochs=1
    )
    _, reports = run(s, tiny_data)
    best = reports[-1][1]
    assert best["weights_source"] == "package" and len(best["weights_sha256"]) == 64
    assert best["mean"] == [0.5, 0.5, 0.5]  # the normalisation these weights were trained with
