"""Ensemble arithmetic against hand-computed cases; TTA views are exact tensor ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ffdi_tune.combine import greedy_select, holdout_split, mean_combine, rank_combine
from ffdi_tune.tta import TTA_VIEWS, apply_view, check_views


def test_mean_combine_weighted():
    probs = np.array([[0.2, 0.8], [0.4, 0.6]])
    assert np.allclose(mean_combine(probs), [0.3, 0.7])
    assert np.allclose(mean_combine(probs, np.array([3, 1])), [0.25, 0.75])


def test_rank_combine_by_hand():
    probs = np.array([[0.1, 0.9, 0.5], [0.30, 0.31, 0.99]])
    # member ranks (0..1): [0, 1, .5] and [0, .5, 1] -> mean [0, .75, .75]
    assert np.allclose(rank_combine(probs), [0.0, 0.75, 0.75])
    ties = np.array([[0.5, 0.5, 1.0]])
    assert np.allclose(rank_combine(ties), [0.25, 0.25, 1.0])


def test_greedy_with_replacement_and_stopping():
    y = np.array([0, 0, 1, 1])
    a = np.array([0.1, 0.6, 0.5, 0.9])  # AUC 0.75: swaps (1, 2)
    b = np.array([0.5, 0.2, 0.6, 0.3])  # AUC 0.5: swaps (0, 3)
    c = np.array([0.4, 0.4, 0.4, 0.4])  # AUC 0.5 (all tied)
    counts = greedy_select(np.stack([a, b, c]), y)
    # round 1 picks a (0.75); round 2: a+a -> 0.75 (no gain), a+b -> mean [.3,.4,.55,.6] -> 1.0
    # round 3: nothing beats 1.0 -> stop
    assert counts.tolist() == [1, 1, 0]


def test_greedy_picks_same_member_twice():
    y = np.array([0, 0, 0, 1, 1, 1])
    p0 = np.array([0.2, 1.0, 0.8, 0.5, 0.8, 0.6])  # AUC 7/18
    p1 = np.array([0.7, 0.9, 0.1, 0.8, 0.4, 0.3])  # AUC 8/18
    assert roc_auc_score(y, (p0 + p1) / 2) == 0.5
    assert roc_auc_score(y, (2 * p0 + p1) / 3) == pytest.approx(10 / 18)
    # p1 first (8/18), then p0 (9/18), then p0 again (10/18); a fourth pick gains nothing
    assert greedy_select(np.stack([p0, p1]), y).tolist() == [2, 1]


def test_holdout_split_stratified_and_deterministic():
    y = np.array([0] * 30 + [1] * 10)
    sel, rep = holdout_split(y, 0.5, seed=3)
    sel2, rep2 = holdout_split(y, 0.5, seed=3)
    assert np.array_equal(sel, sel2) and np.array_equal(rep, rep2)
    assert sorted(np.r_[sel, rep].tolist()) == list(range(40))
    assert y[sel].sum() == 5 and y[rep].sum() == 5
    other, _ = holdout_split(y, 0.5, seed=4)
    assert not np.array_equal(sel, other)
    sel, rep = holdout_split(y, 0.25, seed=0)
    assert len(rep) == 10 and y[rep].sum() in (2, 3)


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


def _member(name, val, test=None, views=("identity", "hflip")):
    from ffdi_tune.ensemble import MemberPredictions

    val = np.asarray(val, dtype=float)
    test = np.asarray(test if test is not None else val[:, :3], dtype=float)
    return MemberPredictions(name, name, list(views), val, test)


def test_build_ensemble_selects_on_selection_half_only():
    from ffdi_tune.ensemble import build_ensemble
    from ffdi_tune.recipe import EnsembleRecipe

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    recipe = EnsembleRecipe(top_k=2, combine="mean", tta=["identity", "hflip"], holdout_fraction=0.5, seed=1)
    sel, rep = holdout_split(y, 0.5, 1)
    good = np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.15, 100)
    # "cheat" is perfect on the report half but random on the selection half: it must not be picked
    cheat = rng.random(100)
    cheat[rep] = y[rep] * 0.5 + 0.25
    noise = rng.random(100)
    members = [_member("good", [good, good]), _member("cheat", [cheat, cheat]), _member("noise", [noise, noise])]
    result = build_ensemble(members, y, recipe)
    assert result.members[0] == "good" and "cheat" in result.table["member"].tolist()
    assert result.table.set_index("member").loc["good", "rank_score"] == pytest.approx(roc_auc_score(y[sel], good[sel]))
    # the ensemble row reports both halves, with and without TTA
    ens = result.table.set_index("member").loc["ensemble"]
    assert {"select_auc_no_tta", "select_auc_tta", "holdout_auc_no_tta", "holdout_auc_tta"} <= set(ens.index)
    assert result.test_pred.shape == (3,) and ((0 <= result.test_pred) & (result.test_pred <= 1)).all()


def test_tta_kept_only_where_it_helps_on_selection_half():
    from ffdi_tune.ensemble import build_ensemble
    from ffdi_tune.recipe import EnsembleRecipe

    y = np.array([0, 1] * 20)
    plain = np.where(y == 1, 0.6, 0.4)
    bad_flip = 1 - plain  # the flipped view is anti-correlated: averaging it hurts
    recipe = EnsembleRecipe(top_k=1, tta=["identity", "hflip"])
    result = build_ensemble([_member("m", [plain, bad_flip])], y, recipe)
    assert result.views["m"] == ["identity"]
    result = build_ensemble([_member("m", [plain, plain])], y, recipe)
    assert result.views["m"] == ["identity", "hflip"]
    no_select = EnsembleRecipe(top_k=1, tta=["identity", "hflip"], tta_select=False)
    assert build_ensemble([_member("m", [plain, bad_flip])], y, no_select).views["m"] == ["identity", "hflip"]


def test_submission_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from ffdi_tune.final_stage import submission_text
    from ffdi_tune.results import write_atomic

    text = submission_text(("a.jpg", "b,c.jpg"), np.array([0.25, 1.0]))
    assert text.splitlines() == ["img_name,y_pred", "a.jpg,0.250000", '"b,c.jpg",1.000000']
    with pytest.raises(ValueError):
        submission_text(("a.jpg",), np.array([np.nan]))
    target = tmp_path / "sub.csv"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, text)
    assert list(tmp_path.iterdir()) == []


def test_greedy_on_two_valsets_maximises_the_worst_auc():
    y = np.array([0, 0, 1, 1])
    # a is perfect on the clean images and inverted on the perturbed ones; b is fair on both
    a_clean, a_robust = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1])
    b_clean, b_robust = np.array([0.1, 0.6, 0.5, 0.9]), np.array([0.1, 0.6, 0.5, 0.9])
    clean, robust = np.stack([a_clean, b_clean]), np.stack([a_robust, b_robust])
    assert greedy_select(clean, y).tolist() == [1, 0]  # clean AUC alone: a (1.0)
    # worst case: a is 0.0, b 0.75; a+b -> clean 1.0, robust [.5,.7,.35,.5] -> 0.25: b alone stays best
    assert greedy_select(np.stack([clean, robust]), y).tolist() == [0, 1]


def _robust_member(name, clean, robust):
    from ffdi_tune.ensemble import MemberPredictions

    val, rob = np.stack([clean, clean]), np.stack([robust, robust])
    return MemberPredictions(name, name, ["identity", "hflip"], val, val[:, :3], rob)


@pytest.mark.parametrize("metric,first", [("val_auc", "brittle"), ("val_robust_auc", "steady"),
                                          ("val_worst_auc", "steady")])
def test_ranking_on_the_perturbed_valset(metric, first):
    from ffdi_tune.ensemble import build_ensemble
    from ffdi_tune.recipe import EnsembleRecipe

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    sel, rep = holdout_split(y, 0.5, 0)
    brittle_clean = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, 100)  # near perfect on clean images
    brittle_robust = rng.random(100)  # chance once they are perturbed
    steady = np.where(y == 1, 0.6, 0.4) + rng.normal(0, 0.15, 100)  # good, and as good perturbed
    members = [_robust_member("brittle", brittle_clean, brittle_robust), _robust_member("steady", steady, steady)]
    for combine in ("mean", "greedy"):
        result = build_ensemble(members, y, EnsembleRecipe(top_k=1 if combine == "mean" else 2, metric=metric,
                                                           combine=combine))
        assert result.members == [first]
        table = result.table.set_index("member")
        expected = {"val_auc": roc_auc_score(y[sel], brittle_clean[sel]),
                    "val_robust_auc": roc_auc_score(y[sel], steady[sel]),
                    "val_worst_auc": roc_auc_score(y[sel], steady[sel])}[metric]
        assert table.loc[first, "rank_score"] == pytest.approx(expected)
        assert table.loc["brittle", "holdout_robust_auc"] == pytest.approx(roc_auc_score(y[rep], brittle_robust[rep]))
        assert result.metrics["holdout_worst_auc"] <= result.metrics["holdout_auc"]


def test_robust_metric_needs_perturbed_predictions():
    from ffdi_tune.ensemble import build_ensemble
    from ffdi_tune.recipe import EnsembleRecipe

    y = np.array([0, 1] * 10)
    with pytest.raises(ValueError, match="perturbed valset"):
        build_ensemble([_member("m", [y * 0.5, y * 0.5])], y, EnsembleRecipe(top_k=1, metric="val_robust_auc"))
