"""The submission CSV: every score written exactly, refused when it is not a probability, and
written whole or not at all."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest

from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.submission import submission_text
from ffdi_tune.files import write_atomic


def test_confident_members_stay_ordered_to_the_submission():
    """Two images a member is sure about (log-odds 20 and 21) round to 1.000000 as probabilities;
    their order survives combining, and the submission writes them apart and reads back the same
    floats."""
    y = np.array([0, 1] * 10)
    z = np.where(y == 1, 5.0, -5.0)
    z[[1, 3]] = [20.0, 21.0]
    test = np.array([[20.0, 21.0, 0.0]] * 2)
    member = MemberPredictions("m", "m", ["identity", "hflip"], np.stack([z, z]), test)
    idx = np.arange(20)
    select, report = idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]
    for combine in ("mean", "best"):
        result = build_ensemble(
            [member], y, EnsembleRecipe(top_k=1, combine=combine), select, report
        )
        p = result.test_pred
        assert f"{p[0]:.6f}" == f"{p[1]:.6f}" == "1.000000" and p[0] < p[1]
        written = pd.read_csv(io.StringIO(submission_text(("a.jpg", "b.jpg", "c.jpg"), p)))[
            "y_pred"
        ].to_numpy()
        assert written.tolist() == p.tolist()


def test_submission_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
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


def test_scores_outside_zero_one_or_one_short_are_refused():
    for prob in ([0.5, 1.5], [-0.1, 0.5], [0.5, np.inf], [0.5]):
        with pytest.raises(ValueError, match=r"finite, in \[0, 1\], one per test image"):
            submission_text(("a.jpg", "b.jpg"), np.array(prob))
