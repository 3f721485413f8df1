"""The registry of combination methods: what it lists, what the recipe accepts, and one
registration reaching the recipe, the build and the table at once."""

from __future__ import annotations

import numpy as np
import pytest

from ffdi_tune.ensemble import methods
from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.methods import (
    COMBINATIONS,
    Fitted,
    Pool,
    combination_names,
    method_names,
    register_method,
    requested_combination,
)
from ffdi_tune.ensemble.recipe import EnsembleRecipe, load_recipe
from ffdi_tune.errors import ConfigError


def _members(n: int = 3) -> tuple[list[MemberPredictions], np.ndarray]:
    rng = np.random.default_rng(4)
    y = np.array([0, 1] * 20)
    members = [
        MemberPredictions(
            f"m{i}",
            f"m{i}",
            ["identity", "hflip"],
            np.stack([rng.normal(0, 1, 40) + y] * 2),
            np.zeros((2, 3)),
        )
        for i in range(n)
    ]
    return members, y


def test_the_built_in_methods_and_their_combinations_in_tie_break_order():
    assert method_names() == ("best", "mean", "rank", "greedy", "soup")
    assert combination_names() == COMBINATIONS
    assert COMBINATIONS == ("best", "mean", "mean-logit", "rank", "greedy", "greedy-logit", "soup")
    assert requested_combination("auto", "logit") is None
    assert requested_combination("mean", "prob") == "mean"
    assert requested_combination("greedy", "logit") == "greedy-logit"
    assert requested_combination("rank", "logit") == "rank"  # rank has no average to pick


def test_an_unknown_method_is_a_did_you_mean_error_naming_the_valid_ones(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("combine: greddy\n")
    with pytest.raises(
        ConfigError,
        match=r"r.yaml: combine: unknown combine method 'greddy' \(did you mean 'greedy'\?\); "
        r"valid values are 'auto', 'best', 'mean', 'rank', 'greedy' or 'soup'$",
    ):
        load_recipe(recipe)
    recipe.write_text("combine: mean-logit\n")  # a combination's name, not a method's
    with pytest.raises(ConfigError, match="unknown combine method 'mean-logit'"):
        load_recipe(recipe)
    for name in ("auto", *method_names()):
        recipe.write_text(f"combine: {name}\n")
        assert load_recipe(recipe).combine == name


def test_one_registration_reaches_the_recipe_the_build_and_the_table(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))  # undone after the test

    @register_method("top2", label="top {n} by rank, {average}", uses_average=True)
    def _top2(pool: Pool, average: str | None) -> Fitted:
        return Fitted({m: 0.5 for m in pool.members[:2]}, average)

    assert method_names()[-1] == "top2"
    assert combination_names()[-2:] == ("top2", "top2-logit")
    members, y = _members()
    recipe = EnsembleRecipe(top_k=3, combine="top2", average="logit")
    idx = np.arange(40)
    select, report = idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]
    result = build_ensemble(members, y, recipe, select, report)
    table = result.table.set_index("member")
    assert result.chosen == "top2-logit" and len(result.members) == 2
    assert table.loc["top2-logit", "shipped"]
    assert table.loc["top2", "label"] == "top 2 by rank, probabilities"
    assert table.loc["top2-logit", "label"] == "top 2 by rank, log-odds"
    assert [m for m in result.table["member"] if m in combination_names()] == list(
        combination_names()
    )
    with pytest.raises(ValueError, match="'top2' is already taken"):
        register_method("top2", label="again")(_top2)
    with pytest.raises(ValueError, match="'auto' is already taken"):
        register_method("auto", label="auto")(_top2)
