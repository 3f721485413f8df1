"""What a trial's checkpoint folder holds (best.pt to predict with, last.pt to resume from), on CPU
with tiny real timm models."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch
from helpers import train_collecting

from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.srm import SrmInput
from ffdi_tune.scoring.inference import view_log_odds
from ffdi_tune.scoring.metrics import binary_metrics
from ffdi_tune.scoring.predict import load_member, predict_views
from ffdi_tune.training.checkpoint import keep_if_best
from ffdi_tune.training.settings import TrainSettings
from ffdi_tune.training.state import build_trial_state
from ffdi_tune.training.trial import train_trial


def train(data, **settings):
    """One epoch of test_resnet at 32 px (unless ``settings`` say otherwise); (reported metrics,
    best.pt, last.pt) of it."""
    s = TrainSettings(
        **{"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "epochs": 1, **settings}
    )
    return train_collecting(s, data)[1][-1]


def val_loss_of(model, ckpt, data, size):
    val = read_split(DataConfig(root=str(data)), "val")
    score = view_log_odds(
        model,
        load_images(val, size),
        torch.tensor(ckpt["mean"]),
        torch.tensor(ckpt["std"]),
        ["identity"],
    )[0]
    return binary_metrics(val.targets, score)["val_loss"]


def test_best_checkpoint_holds_the_best_epochs_weights(tiny_data):
    """Each epoch's best.pt is the weights of the epoch it names, which reproduce its metrics, also
    when a later epoch was worse: on a CPU, a state dict that aliased the live weights would be
    overwritten by it."""
    s = TrainSettings(backbone="resnet10t", img_size=32, batch_size=8, epochs=3, lr=3e-3, gamma=1.0)
    _, reports = train_collecting(s, tiny_data)
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
    saved, original = tmp_path / "ckpt", []

    def keep(metrics, folder):
        original.append(metrics)
        shutil.copytree(folder, saved)

    train_trial(s, DataConfig(root=str(tiny_data)), keep)
    _, reports = train_collecting(s.model_copy(update={"epochs": 2}), tiny_data, resume_from=saved)
    assert [m["epoch"] for m, _, _ in reports] == [2]
    assert reports[0][2]["step"] == 2 * (48 // 8)

    # resumed after its last epoch from its own checkpoint: Tune recorded that epoch, nothing more
    again = []
    train_trial(s, DataConfig(root=str(tiny_data)), lambda m, f: again.append(m), resume_from=saved)
    assert again == []
    # from a stand-in (Tune had deleted the checkpoint its state named, and may never have
    # recorded the trial's end): the last epoch is reported again, as it was
    from ffdi_tune.training.checkpoint import STAND_IN_FILE

    (saved / STAND_IN_FILE).write_text("checkpoint_000001")
    train_trial(s, DataConfig(root=str(tiny_data)), lambda m, f: again.append(m), resume_from=saved)
    assert again == original and [m["epoch"] for m in again] == [1]


def test_pretrained_trial_records_its_weights(tiny_data):
    s = TrainSettings(
        backbone="tf_efficientnet_lite0", pretrained=True, img_size=32, batch_size=8, epochs=1
    )
    _, reports = train_collecting(s, tiny_data)
    best = reports[-1][1]
    assert best["weights_source"] == "package" and len(best["weights_sha256"]) == 64
    assert best["mean"] == [0.5, 0.5, 0.5]  # the normalisation these weights were trained with


def test_eval_img_size_is_recorded_and_used_for_prediction(tiny_data, tmp_path):
    metrics, best, _ = train(tiny_data, eval_img_size=48)
    assert best["img_size"] == 32 and best["eval_img_size"] == 48
    torch.save(best, tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))
    assert member.img_size == 48
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    prob = predict_views(member, load_images(val, member.img_size), ["identity"])[0]
    # the reported validation ran at 48 px: the member reproduces it there, and not at 32 px
    assert binary_metrics(val.targets, prob)["val_loss"] == pytest.approx(
        metrics["val_loss"], rel=1e-6
    )
    assert val_loss_of(member.model, best, tiny_data, 32) != pytest.approx(
        metrics["val_loss"], rel=1e-6
    )
    # without the key, evaluation runs at the training size
    _, plain, _ = train(tiny_data)
    assert plain["eval_img_size"] == 32


def test_srm_input_trains_and_its_checkpoint_rebuilds_the_model(tiny_data, tmp_path):
    metrics, best, _ = train(tiny_data, input="rgb+srm", backbone="resnet10t")
    assert best["input"] == "rgb+srm" and any(k.startswith("adapter.") for k in best["state_dict"])
    # training moved the adapter off the identity, towards the residual channels
    assert best["state_dict"]["adapter.weight"][:, 3:].abs().sum() > 0
    torch.save(best, tmp_path / "best.pt")
    member = load_member(tmp_path / "best.pt", "m", torch.device("cpu"))  # weights_only=True inside
    assert isinstance(member.model, SrmInput)
    val = read_split(DataConfig(root=str(tiny_data)), "val")
    prob = predict_views(member, load_images(val, 32), ["identity"])[0]
    assert binary_metrics(val.targets, prob)["val_loss"] == pytest.approx(
        metrics["val_loss"], rel=1e-6
    )


def test_the_kept_kind_of_weights_is_saved_and_reported(tiny_data):
    metrics, best, last = train(tiny_data, ema_decay=0.5)
    kind = best["weights_kind"]
    assert metrics["weights_kept"] == kind in ("raw", "ema")
    expected = "ema" if metrics["val_auc_ema"] >= metrics["val_auc_raw"] else "raw"
    assert kind == expected
    saved = (
        {k.removeprefix("module."): v for k, v in last["ema"].items()}
        if kind == "ema"
        else last["model"]
    )
    assert best["state_dict"].keys() == last["model"].keys()
    assert all(torch.equal(v, saved[k]) for k, v in best["state_dict"].items())
    # the reported metrics are those of the kept weights
    model = timm.create_model("test_resnet", num_classes=2)
    model.load_state_dict(best["state_dict"])
    assert val_loss_of(model, best, tiny_data, 32) == pytest.approx(metrics["val_loss"], rel=1e-6)
    # the EMA and the trained weights differ after a few steps
    ema_state = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    assert any(
        not torch.equal(v, last["model"][k]) for k, v in ema_state.items() if v.is_floating_point()
    )


def test_the_best_epoch_follows_the_metrics_direction(tiny_data):
    """val_loss is lower-is-better: a higher loss never replaces the best epoch; a lower one
    does."""
    state = build_trial_state(
        TrainSettings(backbone="test_resnet", img_size=32, batch_size=8),
        DataConfig(root=str(tiny_data)),
        "val_loss",
        None,
        torch.device("cpu"),
        0.0,
        None,
        None,
    )
    for epoch, loss in enumerate([0.5, 0.7, 0.3, 0.4], start=1):
        keep_if_best(state, {"epoch": epoch, "val_loss": loss, "val_auc": 1 - loss})
    assert state.best_value == 0.3 and state.best_metrics["epoch"] == 3
    assert state.best_checkpoint["epoch"] == 3 and state.best_checkpoint["metric"] == "val_loss"
    assert state.best_checkpoint["metrics"] == state.best_metrics


def test_an_swa_average_is_resumed_only_into_the_window_it_was_made_for(tiny_data, tmp_path):
    from ffdi_tune.training.checkpoint import restore

    folders = []

    def report(metrics, folder):
        folders.append(shutil.copytree(folder, tmp_path / f"epoch{metrics['epoch']}"))

    base = {"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "swa_epochs": 2}
    cfg = DataConfig(root=str(tiny_data))
    train_trial(TrainSettings(**base, epochs=2), cfg, report, robust_val=None)

    def resumed(epochs: int, folder):
        s = TrainSettings(**base, epochs=epochs)
        state = build_trial_state(s, cfg, "val_auc", None, torch.device("cpu"), 0.0, None, None)
        restore(state, folder)
        return int(state.swa.n_averaged)

    assert resumed(2, folders[0]) == 1  # the same trial after its first epoch: its average goes on
    # trained further to 3 epochs, the window is epochs 2-3: the old average of 1-2 is not reused
    assert resumed(3, folders[1]) == 0
