"""Ensemble arithmetic against hand-computed cases; choosing on the selection part; TTA views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logit
from sklearn.metrics import roc_auc_score

from ffdi_tune.ensemble.build import COMBINATIONS, MemberPredictions, build_ensemble
from ffdi_tune.ensemble.combine import greedy_select, mean_log_odds, mean_probability, rank_average
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.scoring.tta import TTA_VIEWS, apply_view, check_views


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions alternate between the parts (labels alternate 0, 1: both hold both)."""
    idx = np.arange(n)
    return idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]


def test_mean_of_probabilities_and_of_log_odds():
    z = logit(np.array([[0.2, 0.8], [0.4, 0.6]]))
    assert np.allclose(mean_probability(z), [0.3, 0.7])
    assert np.allclose(mean_probability(z, np.array([3, 1])), [0.25, 0.75])
    assert np.allclose(
        mean_log_odds(np.array([[1.0, -3.0], [3.0, 1.0]]), np.array([1, 3])), [2.5, 0.0]
    )


def test_rank_average_by_hand():
    z = np.array([[0.1, 0.9, 0.5], [0.30, 0.31, 0.99]])
    # member ranks (0..1): [0, 1, .5] and [0, .5, 1] -> mean [0, .75, .75]
    assert np.allclose(rank_average(z), [0.0, 0.75, 0.75])
    assert np.allclose(rank_average(np.array([[0.5, 0.5, 1.0]])), [0.25, 0.25, 1.0])


def test_greedy_with_replacement_and_stopping():
    y = np.array([0, 0, 1, 1])
    a = np.array([0.1, 0.6, 0.5, 0.9])  # AUC 0.75: swaps (1, 2)
    b = np.array([0.5, 0.2, 0.6, 0.3])  # AUC 0.5: swaps (0, 3)
    c = np.array([0.4, 0.4, 0.4, 0.4])  # AUC 0.5 (all tied)
    counts = greedy_select(logit(np.stack([a, b, c])), y)
    # round 1 picks a (0.75); round 2: a+a -> 0.75 (no gain), a+b -> mean [.3,.4,.55,.6] -> 1.0
    # round 3: nothing beats 1.0 -> stop
    assert counts.tolist() == [1, 1, 0]


def test_greedy_picks_same_member_twice():
    y = np.array([0, 0, 0, 1, 1, 1])
    p0 = np.array([0.2, 1 - 1e-9, 0.8, 0.5, 0.8, 0.6])  # AUC 7/18
    p1 = np.array([0.7, 0.9, 0.1, 0.8, 0.4, 0.3])  # AUC 8/18
    assert roc_auc_score(y, (p0 + p1) / 2) == 0.5
    assert roc_auc_score(y, (2 * p0 + p1) / 3) == pytest.approx(10 / 18)
    # p1 first (8/18), then p0 (9/18), then p0 again (10/18); a fourth pick gains nothing
    assert greedy_select(logit(np.stack([p0, p1])), y).tolist() == [2, 1]


def test_greedy_on_log_odds_averages_log_odds():
    y = np.array([0, 0, 1, 1])
    # a alone: AUC 0.75, b 0.375; the mean of their log-odds orders all four, the mean of
    # probabilities does not beat a alone
    a, b = np.array([1.0, -8.0, 5.0, 0.0]), np.array([-7.0, -1.0, -7.0, -4.0])
    assert (
        roc_auc_score(y, (a + b) / 2) == 1.0
        and roc_auc_score(y, mean_probability(np.stack([a, b]))) == 0.75
    )
    assert greedy_select(np.stack([a, b]), y, "logit").tolist() == [1, 1]
    assert greedy_select(np.stack([a, b]), y, "prob").tolist() == [1, 0]
    with pytest.raises(ValueError, match="unknown average"):
        greedy_select(np.stack([a, b]), y, "median")


def test_greedy_on_two_valsets_maximises_the_worst_auc():
    y = np.array([0, 0, 1, 1])
    # a is perfect on the clean images and inverted on the perturbed ones; b is fair on both
    a_clean, a_robust = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1])
    b_clean, b_robust = np.array([0.1, 0.6, 0.5, 0.9]), np.array([0.1, 0.6, 0.5, 0.9])
    clean, robust = logit(np.stack([a_clean, b_clean])), logit(np.stack([a_robust, b_robust]))
    assert greedy_select(clean, y).tolist() == [1, 0]  # clean AUC alone: a (1.0)
    # worst case: a is 0.0, b 0.75; a+b -> clean 1.0, robust [.5,.7,.35,.5] -> 0.25: b alone stays
    # best
    assert greedy_select(np.stack([clean, robust]), y).tolist() == [0, 1]


def test_views_are_exact_flips_and_rotations():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert torch.equal(apply_view("identity", x), x)
    assert torch.equal(apply_view("hflip", x)[..., 0], x[..., -1])
    assert torch.equal(apply_view("vflip", x)[..., 0, :], x[..., -1, :])
    assert torch.equal(apply_view("rot180", x), x.flip(-1).flip(-2))
    assert torch.equal(apply_view("rot90", apply_view("rot270", x)), x)
    assert torch.equal(apply_view("transpose", x)[0, 0], x[0, 0].T)
    # rot90 turns counter-clockwise: the top row becomes the left column, reversed
    assert torch.equal(apply_view("rot90", x)[0, 0][:, 0], x[0, 0][0].flip(0))
    assert len({tuple(apply_view(v, x).flatten().tolist()) for v in TTA_VIEWS}) == len(TTA_VIEWS)


def test_check_views_errors():
    with pytest.raises(ValueError, match="unknown TTA view 'hflp'.*did you mean 'hflip'"):
        check_views(["identity", "hflp"])
    with pytest.raises(ValueError, match="twice"):
        check_views(["hflip", "hflip"])


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
    assert (
        shipped["select_objective"] >= max(table.loc[m, "select_objective"] for m in pool) - 1e-12
    )
    assert shipped["select_objective"] == table.loc[list(COMBINATIONS), "select_objective"].max()


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


def test_confident_members_stay_ordered_to_the_submission():
    """Two images a member is sure about (log-odds 20 and 21) round to 1.000000 as probabilities;
    their order survives combining, and the submission writes them apart and reads back the same
    floats."""
    import io

    import pandas as pd

    from ffdi_tune.ensemble.final_stage import submission_text

    y = np.array([0, 1] * 10)
    z = np.where(y == 1, 5.0, -5.0)
    z[[1, 3]] = [20.0, 21.0]
    test = np.array([[20.0, 21.0, 0.0]] * 2)
    for combine in ("mean", "best"):
        result = build_ensemble(
            [_member("m", [z, z], test)], y, EnsembleRecipe(top_k=1, combine=combine), *halves(20)
        )
        p = result.test_pred
        assert f"{p[0]:.6f}" == f"{p[1]:.6f}" == "1.000000" and p[0] < p[1]
        written = pd.read_csv(io.StringIO(submission_text(("a.jpg", "b.jpg", "c.jpg"), p)))[
            "y_pred"
        ].to_numpy()
        assert written.tolist() == p.tolist()


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


def test_submission_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from ffdi_tune.ensemble.final_stage import submission_text
    from ffdi_tune.files import write_atomic

    text = submission_text(("a.jpg", "b,c.jpg"), np.array([0.25, 1.0]))
    assert text.splitlines() == ["img_name,y_pred", "a.jpg,0.25", '"b,c.jpg",1.0']
    with pytest.raises(ValueError):
        submission_text(("a.jpg",), np.array([np.nan]))
    target = tmp_path / "sub.csv"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, text)
    assert list(tmp_path.iterdir()) == []


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
