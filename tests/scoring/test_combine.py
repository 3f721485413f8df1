"""Ensemble arithmetic against hand-computed cases: means, rank average, greedy selection; and the
TTA views the members are averaged over."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from ffdi_tune.scoring.combine import (
    SCALES,
    greedy_select,
    mean_log_odds,
    mean_probability,
    rank_average,
    to_probability,
)


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
    # worst case: a is 0.0, b 0.75; a+b -> clean 1.0, robust [.5,.7,.35,.5] -> 0.25,
    # so b alone stays best
    assert greedy_select(np.stack([clean, robust]), y).tolist() == [0, 1]


def test_each_scale_turns_into_a_probability():
    z = np.array([-2.0, 0.0, 3.0])
    assert np.array_equal(to_probability(z, "logit"), expit(z))
    # float sums may stray by an ulp outside [0, 1]: clipped back
    strays = np.array([np.nextafter(0.0, -1.0), 0.5, np.nextafter(1.0, 2.0)])
    assert to_probability(strays, "rank").tolist() == [0.0, 0.5, 1.0]
    # every scale a combination may average on has a weighted combiner, which orders alike
    w = np.array([1.0, 3.0])
    for scale, (combiner, _) in SCALES.items():
        prob = to_probability(combiner(np.stack([z, z / 2]), w), scale)
        assert ((prob >= 0) & (prob <= 1)).all() and (np.diff(prob) > 0).all(), scale
    with pytest.raises(ValueError, match="unknown score scale 'median'; valid scales are prob"):
        to_probability(z, "median")


def test_ranks_among_references_are_the_ranks_within_them_and_stable_for_one_score():
    from ffdi_tune.scoring.combine import rank_among

    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 40))
    z[0, :4] = z[0, 4]  # ties share their mean rank there too
    z[1, 7] = z[1, 8] + 1e-6  # two references closer than the tolerance stay apart
    assert np.array_equal(rank_average(z, None, list(z)), rank_average(z))
    # one image alone, scored with a rounding error, lands where it was among the references
    alone = rank_among(z[2, 5:6] * (1 + 1e-7), z[2])
    assert alone[0] == rank_average(z[2:3])[5]
