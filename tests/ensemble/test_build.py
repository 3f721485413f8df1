"""Building an ensemble: views, ranking, every combination and the one shipped are chosen on the
selection part of valset only; the report part gives the estimate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.methods import COMBINATIONS
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.combine import mean_probability


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions alternate between the parts (labels alternate 0, 1: both hold both)."""
    idx = np.arange(n)
    return idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]


def _member(name, val, test=None, views=("identity", "hflip"), robust=None):
    val = np.asarray(val, dtype=float)
    test = np.asarray(test if test is not None else val[:, :3], dtype=float)
    return MemberPredictions(
        name, name, list(views), val, test, None if robust is None else np.asarray(robust)
    )


def test_nothing_of_the_report_part_chooses():
    """A member perfect on the report part but random on the selection part ranks by its selection
    AUC."""
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    sel, rep = halves(100)
    good = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.0, 100)
    cheat = rng.normal(0, 1, 100)
    cheat[rep] = np.where(y[rep] == 1, 3.0, -3.0)
    noise = rng.normal(0, 1, 100)
    members = [
        _member("good", [good, good]),
        _member("cheat", [cheat, cheat]),
        _member("noise", [noise, noise]),
    ]
    result = build_ensemble(members, y, EnsembleRecipe(top_k=2, combine="mean"), sel, rep)
    table = result.table.set_index("member")
    assert table.loc["cheat", "holdout_auc_no_tta"] == 1.0  # it would win if the report part chose
    assert table.loc["cheat", "rank_score"] == pytest.approx(roc_auc_score(y[sel], cheat[sel]))
    ranked = [m for m in result.table["member"] if m in ("good", "cheat", "noise")]
    scores = {"good": good, "cheat": cheat, "noise": noise}
    by_selection = sorted(scores, key=lambda m: -roc_auc_score(y[sel], scores[m][sel]))
    assert ranked == by_selection and result.members[0] == "good"
    assert set(result.members) == set(by_selection[:2])
    # every combination is shown on both parts, with and without TTA
    assert [m for m in result.table["member"] if m in COMBINATIONS] == list(COMBINATIONS)
    assert table.loc["mean", "shipped"] and table["shipped"].sum() == 1
    # the submission is the mean of the shipped members' probabilities on the test images
    assert np.allclose(
        result.test_pred, mean_probability(np.stack([scores[m][:3] for m in result.members]))
    )


@settings(max_examples=60, deadline=None)
@given(
    n_members=st.integers(1, 6),
    n_pairs=st.integers(6, 30),
    top_k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    metric=st.sampled_from(["val_auc", "val_robust_auc", "val_worst_auc"]),
    tta_select=st.booleans(),
)
def test_auto_is_never_below_its_best_member_on_the_selection_part(
    n_members, n_pairs, top_k, seed, metric, tta_select
):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * n_pairs)
    sel, rep = halves(len(y))
    members = []
    for m in range(n_members):
        signal = rng.uniform(-1, 2)  # from anti-correlated to strong
        views = rng.normal(0, 1, (2, len(y))) + signal * y
        robust = views + rng.normal(0, rng.uniform(0, 2), (2, len(y)))
        members.append(_member(f"m{m}", views, views[:, :5], robust=robust))
    recipe = EnsembleRecipe(top_k=min(top_k, n_members), metric=metric, tta_select=tta_select)
    result = build_ensemble(members, y, recipe, sel, rep)
    table = result.table.set_index("member")
    pool = [m for m in result.table["member"] if m.startswith("m")][: recipe.top_k]
    shipped = table[table["shipped"]].iloc[0]
    assert shipped["kind"] == "ensemble" and result.chosen in COMBINATIONS
    best_member = max(table.loc[m, "select_objective"] for m in pool)
    assert shipped["select_objective"] >= best_member - 1e-12
    # of the combinations that good, the best cross-fitted one ships
    combos = table.loc[list(COMBINATIONS)]
    eligible = combos[combos["select_objective"] >= best_member - 1e-12]
    judged = eligible["crossfit_objective"].fillna(eligible["select_objective"])
    assert judged[result.chosen] == judged.max()


def test_auto_judges_combinations_cross_fitted_on_the_selection_part():
    """Each combination's cross-fitted objective is its AUC on one half of the selection part when
    fit on the other, averaged over both ways: for mean over every member (no fitting), the mean
    of its AUCs on the two halves."""
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(4)
    y = np.array([0, 1] * 40)
    sel, rep = halves(80)
    members = [_member(f"m{i}", np.stack([rng.normal(0, 1, 80) + 0.8 * y] * 2)) for i in range(3)]
    recipe = EnsembleRecipe(top_k=3, tta=["identity"])
    result = build_ensemble(members, y, recipe, sel, rep)
    table = result.table.set_index("member")
    mean_logit = np.mean([m.val[0] for m in members], axis=0)
    folds = StratifiedKFold(2, shuffle=True, random_state=0).split(np.zeros(len(sel)), y[sel])
    expected = np.mean([roc_auc_score(y[sel][b], mean_logit[sel][b]) for _, b in folds])
    assert table.loc["mean-logit", "crossfit_objective"] == pytest.approx(expected)
    assert np.isnan(table.loc["m0", "crossfit_objective"])  # members are not combinations
    assert table.loc[list(COMBINATIONS), "crossfit_objective"].notna().all()


def test_fraction_zero_has_no_estimate():
    y = np.array([0, 1] * 10)
    z = np.where(y == 1, 1.0, -1.0) + np.linspace(-1, 1, 20)
    result = build_ensemble(
        [_member("m", [z, z])], y, EnsembleRecipe(top_k=1), np.arange(20), np.array([], int)
    )
    assert not result.honest and "holdout_auc" not in result.metrics
    assert result.metrics["select_auc"] == roc_auc_score(y, z)
    assert result.table["holdout_auc_tta"].isna().all()


@pytest.mark.parametrize(
    "combine,average,chosen",
    [
        ("best", "prob", "best"),
        ("mean", "logit", "mean-logit"),
        ("greedy", "prob", "greedy"),
        ("rank", "prob", "rank"),
    ],
)
def test_explicit_methods_ship_what_they_name(combine, average, chosen):
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    members = [_member(f"m{i}", np.stack([rng.normal(0, 1, 60) + y] * 2)) for i in range(3)]
    result = build_ensemble(
        members, y, EnsembleRecipe(top_k=3, combine=combine, average=average), *halves(60)
    )
    assert result.chosen == chosen
    assert result.table.set_index("member").loc[chosen, "shipped"]


def test_tta_kept_only_where_it_helps_on_selection_part():
    y = np.array([0, 1] * 20)
    plain = np.where(y == 1, 0.4, -0.4)
    bad_flip = -plain  # the flipped view is anti-correlated: averaging it hurts
    recipe = EnsembleRecipe(top_k=1, tta=["identity", "hflip"])
    assert build_ensemble([_member("m", [plain, bad_flip])], y, recipe, *halves(40)).views["m"] == [
        "identity"
    ]
    assert build_ensemble([_member("m", [plain, plain])], y, recipe, *halves(40)).views["m"] == [
        "identity",
        "hflip",
    ]
    no_select = EnsembleRecipe(top_k=1, tta=["identity", "hflip"], tta_select=False)
    assert build_ensemble([_member("m", [plain, bad_flip])], y, no_select, *halves(40)).views[
        "m"
    ] == ["identity", "hflip"]


@pytest.mark.parametrize(
    "metric,first",
    [("val_auc", "brittle"), ("val_robust_auc", "steady"), ("val_worst_auc", "steady")],
)
def test_ranking_on_the_perturbed_valset(metric, first):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    sel, rep = halves(100)
    # near perfect on clean images
    brittle_clean = np.where(y == 1, 3.0, -3.0) + rng.normal(0, 0.5, 100)
    brittle_robust = rng.normal(0, 1, 100)  # chance once they are perturbed
    steady = np.where(y == 1, 0.4, -0.4) + rng.normal(0, 0.6, 100)  # good, and as good perturbed
    robust = {"brittle": brittle_robust, "steady": steady}
    members = [
        _member("brittle", [brittle_clean] * 2, robust=[brittle_robust] * 2),
        _member("steady", [steady] * 2, robust=[steady] * 2),
    ]
    for combine in ("best", "greedy"):
        result = build_ensemble(
            members, y, EnsembleRecipe(top_k=2, metric=metric, combine=combine), sel, rep
        )
        assert result.members == [first]
        table = result.table.set_index("member")
        expected = {
            "val_auc": roc_auc_score(y[sel], brittle_clean[sel]),
            "val_robust_auc": roc_auc_score(y[sel], steady[sel]),
            "val_worst_auc": roc_auc_score(y[sel], steady[sel]),
        }[metric]
        assert table.loc[first, "rank_score"] == pytest.approx(expected)
        assert table.loc["brittle", "holdout_robust_auc"] == pytest.approx(
            roc_auc_score(y[rep], brittle_robust[rep])
        )
        assert result.metrics["holdout_robust_auc"] == pytest.approx(
            roc_auc_score(y[rep], robust[first][rep])
        )


def test_robust_metric_needs_perturbed_predictions():
    y = np.array([0, 1] * 10)
    with pytest.raises(ValueError, match="perturbed valset"):
        build_ensemble(
            [_member("m", [y * 0.5, y * 0.5])],
            y,
            EnsembleRecipe(top_k=1, metric="val_robust_auc"),
            *halves(20),
        )
