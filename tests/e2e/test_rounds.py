"""Searches that end by the clock and searches that grow: time budgets, extensions, what TPE
is told."""

from __future__ import annotations

import json
import math
import pickle

import pandas as pd
import pytest
from helpers import runs_by_role, store_client
from optuna.trial import TrialState

from ffdi_tune.cli import main

pytestmark = pytest.mark.slow

SPACE = """
name: {name}
data:
  root: data
  demo: {{n_train: 200, n_val: 80, n_test: 8, size: 32, seed: 5, difficulty: 0.2}}
train: {{backbone: test_resnet, img_size: 32, batch_size: 8, epochs: {epochs}}}
space: {{lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}
search: {{num_samples: {trials}, max_concurrent: 2, tpe_startup_trials: 2}}
scheduler: {scheduler}
robust_val: {{enabled: false}}
tracking: {{system_metrics: false}}
ensemble: one.yaml
"""


def write(folder, name, trials, epochs, scheduler="{type: fifo}"):
    (folder / "space.yaml").write_text(
        SPACE.format(name=name, trials=trials, epochs=epochs, scheduler=scheduler)
    )
    (folder / "one.yaml").write_text("top_k: 1\n")


def runs(folder, name):
    """The search's store client and its search, trial and ensemble runs."""
    client = store_client(folder)
    found = runs_by_role(client, name)
    return client, found["search"], found["trial"], found["ensemble"]


def test_time_budget_ends_the_search_and_keeps_the_final_stage(tmp_path, monkeypatch, capsys):
    """A 40 s budget (the driver's set-up counts, about 10-15 s of it) for trials of 150 epochs
    (most of a minute each on two cores): the first ones are cut and no more start; the final
    stage still runs, exit 0; resumed with more time, the same search gets new trials. The plan's
    probe is made to say an epoch takes 0.07 s, so that the plan accepts a length no trial can
    reach (a real probe on a busy machine refuses it, or on an idle one lets a trial finish
    uncut)."""
    from ffdi_tune.search import plan
    from ffdi_tune.search.probe import ProbeResult

    def cheap(settings, *args, **kwargs):  # 25 steps and 40 images: 0.07 s an epoch
        return ProbeResult(0.0025, 0.0002, settings.batch_size)

    monkeypatch.setattr(plan, "probe_cached", cheap)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "clock", trials=30, epochs=150)
    assert main(["run", "space.yaml", "--time-budget", "40s"]) == 0
    out = capsys.readouterr().out
    assert "time budget: spent" in out and "submission:" in out
    client, parents, trials, ensembles = runs(tmp_path, "clock")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(ensembles) == 1
    assert 1 <= len(trials) < 30 and all(r.info.status == "FINISHED" for r in trials)
    cut = [r for r in trials if r.data.tags["ffdi.budget_cut"] == "true"]
    assert cut and all(int(r.data.tags["ffdi.epochs_run"]) < 150 for r in cut)
    # FIFO: nothing else stops them
    assert all(r.data.tags["ffdi.stopped_early"] == "false" for r in trials)
    kept = json.loads((tmp_path / "runs" / "clock" / "budget.json").read_text())
    assert kept["total_s"] == 40 and set(kept["cut"]) == {r.data.tags["ffdi.trial_id"] for r in cut}
    table = pd.read_csv(tmp_path / "runs" / "clock" / "trials.csv")
    assert set(table["status"]) <= {"FINISHED", "CUT"} and (table["status"] == "CUT").sum() == len(
        cut
    )
    # the budget is spent: resuming without more time adds nothing
    assert main(["run", "space.yaml", "--resume", "--no-ensemble"]) == 0
    assert len(runs(tmp_path, "clock")[2]) == len(trials)
    # more time (the driver's set-up, and a trial's first rung as planned, which a trial needs to
    # start): the same parent run gets new trials, the old ones stay as they were
    planned = json.loads((tmp_path / "runs" / "clock" / "plan.json").read_text())
    more = math.ceil(planned["first_rung_s"]) + 30
    assert (
        main(["run", "space.yaml", "--resume", "--time-budget", f"{more}s", "--no-ensemble"]) == 0
    )
    _, parents_after, trials_after, _ = runs(tmp_path, "clock")
    assert [p.info.run_id for p in parents_after] == [parents[0].info.run_id]
    assert len(trials_after) > len(trials) and {r.info.run_id for r in trials} <= {
        r.info.run_id for r in trials_after
    }


def test_extending_a_finished_search_continues_tpe(tmp_path, monkeypatch):
    """A finished 4-trial search run again with --resume --num-samples 6: 6 trials under one parent,
    the first 4 untouched, the new points new; the study behind TPE has the best epoch of finished
    trials and the ASHA-stopped ones as PRUNED."""
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "grow",
        trials=4,
        epochs=3,
        scheduler="{type: asha, grace_period: 1, reduction_factor: 2}",
    )
    assert main(["run", "space.yaml", "--no-ensemble"]) == 0
    client, parents, before, _ = runs(tmp_path, "grow")
    history = {
        r.info.run_id: [
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_auc")
        ]
        for r in before
    }
    assert main(["run", "space.yaml", "--resume", "--num-samples", "6"]) == 0
    client, parents_after, after, ensembles = runs(tmp_path, "grow")
    assert [p.info.run_id for p in parents_after] == [parents[0].info.run_id] and len(after) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in after)
    for run_id, steps in history.items():  # the first four as they were
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_auc")] == steps
    old_lrs = {r.data.params["lr"] for r in before}
    new = [r for r in after if r.info.run_id not in history]
    assert len(new) == 2 and not {r.data.params["lr"] for r in new} & old_lrs
    assert len(ensembles) == 1 and len(pd.read_csv(tmp_path / "runs" / "grow" / "trials.csv")) == 6
    rounds = json.loads((tmp_path / "runs" / "grow" / "rounds.json").read_text())
    assert [r["num_samples"] for r in rounds] == [4, 2]

    # what TPE was told: the study the last round's searcher saved
    state = max((tmp_path / "runs" / "grow" / "round-2").glob("searcher-state-*.pkl"))
    study = pickle.loads(state.read_bytes())["_ot_study"]
    told = {f"{t.params['lr']:.12g}": t for t in study.trials}
    assert len(told) == 6
    for run in after:
        trial = told[f"{float(run.data.params['lr']):.12g}"]
        values = [m.value for m in client.get_metric_history(run.info.run_id, "val_auc")]
        assert {step: v for step, v in trial.intermediate_values.items()} == dict(
            enumerate(values, start=1)
        )
        if run.data.tags["ffdi.stopped_early"] == "true":
            assert trial.state == TrialState.PRUNED
        else:
            # the best epoch, not the last
            assert trial.state == TrialState.COMPLETE and trial.value == max(values)
    # Whether ASHA stops any of six trials depends on their scores; test_searcher.py drives the
    # searcher through a stop and a finish deterministically.
