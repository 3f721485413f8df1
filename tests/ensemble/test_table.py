"""The ensemble table for people: members then combinations, ``*`` on what ships, ``-`` where
nothing was measured, perturbed-valset columns only when they were scored."""

from __future__ import annotations

import numpy as np

from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.methods import COMBINATIONS
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.table import HIDDEN, format_ensemble_table


def _result(perturbed: bool, report: bool):
    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 20)
    members = []
    for i in range(3):
        val = np.stack([rng.normal(0, 1, 40) + y] * 2)
        members.append(
            MemberPredictions(
                f"{i}" * 32,
                f"resnet trial_{i}",
                ["identity", "hflip"],
                val,
                val[:, :4],
                val + 0.1 if perturbed else None,
            )
        )
    idx = np.arange(40)
    pairs = (idx // 2) % 2 == 0  # both parts hold both labels
    select, rest = (idx[pairs], idx[~pairs]) if report else (idx, idx[:0])
    return build_ensemble(members, y, EnsembleRecipe(top_k=2, combine="rank"), select, rest)


def test_members_then_every_combination_with_the_shipped_one_starred():
    result = _result(perturbed=False, report=True)
    lines = format_ensemble_table(result.table).splitlines()
    assert lines[0].split() == [
        "member",
        "label",
        "views",
        "weight",
        "select_auc_no_tta",
        "select_auc_tta",
        "holdout_auc_no_tta",
        "holdout_auc_tta",
    ]
    rows = [line.split() for line in lines[1:]]
    # members, ranked: run ids cut to 12 characters
    assert [r[0] for r in rows[:3]] == [m[:12] for m in result.table["member"][:3]]
    assert {r[0] for r in rows[:3]} == {f"{i}" * 12 for i in range(3)}
    assert sorted(r[-5] for r in rows[:3]) == ["0.0000", "0.5000", "0.5000"]  # rank of the top 2
    assert all(r[-4] == f"{float(r[-4]):.4f}" for r in rows)  # the selection part's AUCs
    shipped = [r for r in rows if r[0] == "*"]
    assert len(shipped) == 1 and shipped[0][1] == "rank"
    combinations = [r[1] if r[0] == "*" else r[0] for r in rows[3:]]
    assert combinations == list(COMBINATIONS)
    weights = {r[0] if r[0] != "*" else r[1]: r[-5] for r in rows[3:]}
    assert set(weights.values()) == {"-"}  # a combination has no weight of its own
    # report-part AUCs: the shipped ensemble's alone; the rest is hidden, kept in the table
    for r in rows:
        if r[0] == "*":
            shipped_auc = result.table.loc[result.table["shipped"], "holdout_auc_tta"].item()
            assert r[-1] == f"{shipped_auc:.4f}"
        else:
            assert r[-1] == r[-2] == HIDDEN and r[-3] != HIDDEN
    assert result.table["holdout_auc_tta"].notna().all()


def test_perturbed_columns_and_a_missing_report_part():
    lines = format_ensemble_table(_result(perturbed=True, report=False).table).splitlines()
    assert lines[0].split()[-2:] == ["select_robust_auc", "holdout_robust_auc"]
    for line in lines[1:]:
        cells = line.split()
        assert cells[-1] == cells[-3] == cells[-4] == "-"  # nothing measured on a report part
        assert cells[-2] != "-"
