"""A search planned from its time budget, end to end through the CLI with real Ray, MLflow (sqlite),
timm models and JPEG files: the plan is printed and logged, the default recipe runs first to full
length and is always a candidate, spare time trains the best further, and a budget too small for
one full-length trial is one line before any training."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
from helpers import REPO, runs_by_role, store_client, write_space

from ffdi_tune.cli import main
from ffdi_tune.search.space import trial_seed

pytestmark = pytest.mark.slow

DEMO = str(REPO / "search_spaces" / "demo.yaml")


@pytest.fixture(scope="module")
def planned(tiny_data, tmp_path_factory):
    """The shipped demo space on tiny data with a 75 s budget: what it printed and its folder."""
    work = tmp_path_factory.mktemp("planned")
    out = work / "stdout.txt"
    with contextlib.chdir(work), open(out, "w") as sink, contextlib.redirect_stdout(sink):
        code = main(["run", DEMO, "--data", str(tiny_data), "--time-budget", "75s"])
    return code, out.read_text(), work


def test_the_plan_is_printed_logged_and_kept(planned):
    code, printed, work = planned
    assert code == 0
    (line,) = [x for x in printed.splitlines() if x.startswith("plan: ")]
    kept = json.loads((work / "runs" / "demo" / "plan.json").read_text())
    assert f"plan: {kept['num_samples']} trials, {kept['max_concurrent']} at a time" in line
    # the demo leaves the recipe's length to the plan: a rung ladder 1, 2, 4... up to it
    top = kept["max_epochs"]
    assert top >= 4 and kept["rungs"] == [2**k for k in range(top.bit_length())]
    (search,) = runs_by_role(store_client(work), "demo")["search"]
    assert search.data.tags["ffdi.plan.num_samples"] == str(kept["num_samples"])
    assert search.data.tags["ffdi.plan.rungs"] == str(kept["rungs"])


def test_the_default_recipe_runs_first_to_full_length_and_is_a_candidate(planned):
    _, printed, work = planned
    trials = runs_by_role(store_client(work), "demo")["trial"]
    (first,) = [r for r in trials if r.data.tags.get("ffdi.default_recipe") == "True"]
    # Optuna's trial 0 (its seed is the first trial's), with the demo's train: values
    assert first.data.params["seed"] == str(trial_seed(0, 0))
    assert first.data.params["lr"] == "0.001" and first.data.params["augment"] == "flips"
    # ASHA never stops it: it trains the full length the plan chose, unless the machine ran it
    # slower than the probe had measured and the time budget ended it first (tagged so)
    top = json.loads((work / "runs" / "demo" / "plan.json").read_text())["max_epochs"]
    ran, cut = int(first.data.tags["ffdi.epochs_run"]), first.data.tags["ffdi.budget_cut"]
    assert ran == top or (cut == "true" and ran < top)
    assert first.data.tags["ffdi.stopped_early"] == "false"
    # no searched trial trains longer (only one trained further with time to spare may)
    searched = [r for r in trials if "ffdi.continued_from" not in r.data.tags]
    assert max(int(r.data.tags["ffdi.epochs_run"]) for r in searched) <= top
    (ensemble,) = runs_by_role(store_client(work), "demo")["ensemble"]
    members = pd.read_csv(
        store_client(work).download_artifacts(ensemble.info.run_id, "members.csv", str(work))
    )
    assert first.info.run_id in set(members["member"])
    assert "default_recipe_select_auc" in ensemble.data.metrics
    assert "against the default recipe (trial-" in printed


def test_a_budgeted_search_ships_a_submission(planned, tiny_data):
    _, printed, work = planned
    submission = pd.read_csv(work / "runs" / "demo" / "submission.csv")
    assert len(submission) == len(list((tiny_data / "testset").iterdir()))
    assert "time budget:" in printed and "submission:" in printed
    # what the final stage took, against what the budget kept for it: said and logged
    (ensemble,) = runs_by_role(store_client(work), "demo")["ensemble"]
    took, kept = (ensemble.data.metrics[k] for k in ("final_stage_s", "final_stage_reserve_s"))
    verdict = "within" if took <= kept else "over"
    assert f"final stage: {took:.0f}s, {verdict} the {kept:.0f}s the time budget kept" in printed


def test_a_budget_too_small_for_one_full_length_trial_is_one_line(
    tiny_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = ["run", DEMO, "--data", str(tiny_data), "--time-budget", "12s", "--name", "tiny"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the time budget (12s) leaves") and "\n" not in err
    assert "raise --time-budget to at least" in err
    # refused before the valset split, Ray and the tracking store: nothing of the search written
    assert not (tmp_path / "runs" / "tiny" / "holdout.json").exists()
    assert not (tmp_path / "runs" / "mlflow.db").exists()


SPARE = """
name: spare
data: {{root: {data}}}
train: {{backbone: test_resnet, img_size: 32, batch_size: 16, epochs: 2, lr: 0.003}}
space: {{lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}
search: {{num_samples: 1, max_concurrent: 1, time_budget: 75s}}
scheduler: {{type: fifo}}
tracking: {{system_metrics: false}}
ensemble: one.yaml
"""


def test_time_to_spare_trains_the_best_further(tiny_data, tmp_path, monkeypatch):
    """One 2-epoch trial of a tiny model ends long before its 75 s budget: the rest goes to the
    same trial, continued from its checkpoint for more epochs, and both are candidates."""
    monkeypatch.chdir(tmp_path)
    write_space(tmp_path, SPARE.format(data=tiny_data))
    write_space(tmp_path, "top_k: 2\n", "one.yaml")
    assert main(["run", "space.yaml"]) == 0
    trials = runs_by_role(store_client(tmp_path), "spare")["trial"]
    first = next(r for r in trials if "ffdi.continued_from" not in r.data.tags)
    (further,) = [r for r in trials if "ffdi.continued_from" in r.data.tags]
    assert further.data.tags["ffdi.continued_from"] == first.data.tags["ffdi.trial_id"]
    assert further.data.params["lr"] == first.data.params["lr"]
    assert int(further.data.tags["ffdi.epochs_run"]) > int(first.data.tags["ffdi.epochs_run"]) == 2
    # its epochs carry on from the first trial's: logged from epoch 3 on
    steps = [
        m.step for m in store_client(tmp_path).get_metric_history(further.info.run_id, "val_auc")
    ]
    assert min(steps) == 3
    table = pd.read_csv(tmp_path / "runs" / "spare" / "trials.csv")
    assert len(table) == 2 and (tmp_path / "runs" / "spare" / "submission.csv").exists()
