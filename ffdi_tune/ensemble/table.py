"""The ensemble table for people: every candidate member, then every combination, on the selection
part of valset, with and without TTA; ``*`` marks what ships, and only its report-part AUCs are
shown (the others stay in ``members.csv``: choosing on them would spend the report part)."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["format_ensemble_table", "REPORT_NOTE", "HIDDEN"]

_SCORE_COLUMNS = (
    "select_auc_no_tta",
    "select_auc_tta",
    "holdout_auc_no_tta",
    "holdout_auc_tta",
)
# on the perturbed copy of valset: in the table when the members were scored on it too
_PERTURBED_COLUMNS = ("select_robust_auc", "holdout_robust_auc")
_REPORT_COLUMNS = ("holdout_auc_no_tta", "holdout_auc_tta", "holdout_robust_auc")
HIDDEN = "·"  # a report-part AUC left out of the printed table
REPORT_NOTE = (
    "report-part AUCs (holdout_*) are printed for the shipped ensemble only; members.csv keeps "
    "the others, and choosing on them would spend the report part"
)


def format_ensemble_table(table: pd.DataFrame) -> str:
    """``EnsembleResult.table`` as text: the members (run ids cut to 12 characters), then every
    combination; ``*`` marks what ships, ``-`` what was not measured, ``·`` a report-part AUC of
    anything that does not ship."""
    view = table.copy()
    perturbed = [c for c in _PERTURBED_COLUMNS if c in view]
    for c in (*_SCORE_COLUMNS, "weight", *perturbed):
        view[c] = view[c].map(
            lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"
        )
        if c in _REPORT_COLUMNS:
            view.loc[~view["shipped"].astype(bool) & (view[c] != "-"), c] = HIDDEN
    view["member"] = [
        ("* " if shipped else "  ") + (m if kind == "ensemble" else m[:12])
        for m, kind, shipped in zip(view["member"], view["kind"], view["shipped"], strict=True)
    ]
    columns = ["member", "label", "views", "weight", *_SCORE_COLUMNS, *perturbed]
    return view[columns].to_string(index=False)
