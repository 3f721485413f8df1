"""The final stage's refit: each shipped member's refits in its place, sharing its weight, scored
on the report part; the estimate before it kept beside."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.refit import refit_result

RNG = np.random.default_rng(0)
Y = np.array([0, 1] * 20)
_IDX = np.arange(40)
SELECT, REPORT = _IDX[(_IDX // 2) % 2 == 0], _IDX[(_IDX // 2) % 2 == 1]  # both hold both labels


def _preds(name: str, noise: float) -> MemberPredictions:
    """Log-odds on two views (identity, hflip) of 40 valset and 10 test images."""
    val = np.stack([Y * 2.0 + RNG.normal(0, noise, 40) for _ in range(2)])
    return MemberPredictions(name, name, ["identity", "hflip"], val, RNG.normal(0, 1, (2, 10)))


def test_each_member_is_replaced_by_its_refits_sharing_its_weight():
    members = [_preds("a", 1.0), _preds("b", 1.5)]
    recipe = EnsembleRecipe(top_k=2, combine="mean", tta=["identity", "hflip"], tta_select=False)
    result = build_ensemble(members, Y, recipe, SELECT, REPORT)
    assert result.members == ["a", "b"] and result.weights == {"a": 0.5, "b": 0.5}
    refits = {"a": ["a1", "a2"]}  # b's refit failed: b ships as the search trained it
    scored = {m.name: m for m in members} | {r: _preds(r, 0.5) for r in ("a1", "a2")}
    after = refit_result(result, refits, scored, Y, REPORT)
    assert after.members == ["a1", "a2", "b"]
    assert after.weights == {"a1": 0.25, "a2": 0.25, "b": 0.5}
    assert after.views["a1"] == ["identity", "hflip"] and after.chosen == "mean"

    # the mean of probabilities, over the shipped models' view-averaged log-odds
    def each(split):
        return {n: getattr(scored[n], split).mean(0) for n in after.members}

    weights = np.array([0.25, 0.25, 0.5])
    val = weights @ expit(np.stack(list(each("val").values())))
    test = weights @ expit(np.stack(list(each("test").values())))
    np.testing.assert_allclose(after.test_pred, test)
    np.testing.assert_allclose(after.report_pred, val[REPORT])
    m = after.metrics
    assert m["holdout_auc"] == pytest.approx(roc_auc_score(Y[REPORT], val[REPORT]))
    assert m["holdout_auc_before_refit"] == result.metrics["holdout_auc"]
    assert m["holdout_auc_ci_low"] <= m["holdout_auc"] <= m["holdout_auc_ci_high"]
    assert m["select_auc"] == result.metrics["select_auc"]  # the choice's, made before the refit
    shipped = after.table[after.table["shipped"]]
    assert shipped["member"].tolist() == ["refit"] and np.isnan(shipped["select_auc_tta"].iloc[0])
    assert len(after.table) == len(result.table) + 1


def test_a_recipe_refits_trained_members_not_soups():
    with pytest.raises(ValidationError, match="weight soup is an average of members"):
        EnsembleRecipe(combine="soup", refit={"seeds": 2})
    assert EnsembleRecipe(refit={"seeds": 2}).soups is False  # auto leaves soups out under refit
    assert EnsembleRecipe().soups is True and EnsembleRecipe(combine="mean").soups is False
    with pytest.raises(ValidationError):
        EnsembleRecipe(refit={"seeds": 0})


def test_when_no_refit_trained_to_its_end_the_searchs_models_ship_unchanged(monkeypatch):
    import ffdi_tune.ensemble.final_stage as final_stage

    members = [_preds("a", 1.0), _preds("b", 1.5)]
    recipe = EnsembleRecipe(top_k=2, combine="mean", tta=["identity", "hflip"], refit={"seeds": 1})
    result = build_ensemble(members, Y, recipe, SELECT, REPORT)
    monkeypatch.setattr(final_stage, "refit_jobs", lambda tracker, names, seeds: ["job"] * 2)
    said = []
    holdout = type("Parts", (), {"select_names": ("x",)})()
    shipped = final_stage._refit(
        lambda jobs, names, config, root: {}, recipe, result, None, members, None, holdout,
        ({}, "d"), said.append,
    )  # fmt: skip
    assert shipped is result and said == [
        "refit: no refit trained to its end; the search's models ship"
    ]
