"""Search-space validation: every documented error is one line naming file and key."""

from __future__ import annotations

import pytest
from helpers import REPO

from ffdi_tune.config import load_search_config, parse_search_config
from ffdi_tune.errors import ConfigError

BASE = {"name": "t", "data": {"root": "/nonexistent"}}


def parse(**sections):
    return parse_search_config({**BASE, **sections}, source="x.yaml")


def error_of(**sections) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(**sections)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("x.yaml: ")
    return msg


@pytest.mark.parametrize(
    "path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_search_spaces_load(path):
    cfg = load_search_config(path)
    assert cfg.name == path.stem
    assert cfg.search.num_samples >= 1
    assert cfg.backbones()


def test_unknown_key_suggests_close_name():
    msg = error_of(search={"num_sample": 4})
    assert (
        "search" in msg
        and "unknown key 'num_sample'" in msg
        and "did you mean 'num_samples'" in msg
    )


def test_unknown_top_level_key():
    msg = error_of(serch={"num_samples": 4})
    assert "unknown key 'serch'" in msg and "'search'" in msg


def test_wrong_type_names_the_key():
    msg = error_of(search={"num_samples": "many"})
    assert "search.num_samples" in msg and "integer" in msg


def test_empty_choice():
    msg = error_of(space={"augment": {"choice": []}})
    assert "space.augment" in msg and "at least one value" in msg


@pytest.mark.parametrize("kind", ["uniform", "loguniform", "int"])
def test_low_not_below_high(kind):
    msg = error_of(space={"lr" if kind != "int" else "step_size": {kind: [3, 1]}})
    assert "low < high must hold, but got low=3" in msg


def test_loguniform_needs_positive_bounds():
    msg = error_of(space={"lr": {"loguniform": [0, 1e-3]}})
    assert "must be > 0" in msg and "space.lr" in msg


def test_domain_needs_exactly_one_kind():
    msg = error_of(space={"lr": {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}})
    assert "exactly one of" in msg


def test_searched_values_are_checked_against_the_setting():
    msg = error_of(space={"optimizer": {"choice": ["adamw", "lion9"]}})
    assert "space.optimizer" in msg and "'lion9'" in msg


def test_unknown_setting_in_space():
    msg = error_of(space={"learning_rate": {"loguniform": [1e-4, 1e-2]}})
    assert "unknown setting 'learning_rate'" in msg


def test_unknown_backbone_suggests_timm_names():
    msg = error_of(space={"backbone": {"choice": ["resnet10t", "efficientnet_b9x"]}})
    assert "unknown timm backbone 'efficientnet_b9x'" in msg and "did you mean" in msg


def test_unknown_augmentation_set():
    msg = error_of(space={"augment": {"choice": ["flips", "colour"]}})
    assert "unknown augmentation set 'colour'" in msg and "did you mean 'color'" in msg


def test_bad_timm_augment_string():
    msg = error_of(train={"augment": "rand-zz9"})
    assert "rand-zz9" in msg


def test_user_augment_set_is_validated():
    msg = error_of(augment_sets={"mine": [{"name": "RandomHorizontalFlipp"}]})
    assert "augment_sets.mine" in msg and "RandomHorizontalFlip" in msg


def test_per_backbone_must_name_a_searched_backbone():
    msg = error_of(
        space={"backbone": {"choice": ["resnet10t"]}}, per_backbone={"resnet18": {"lr": 0.1}}
    )
    assert "per_backbone.resnet18" in msg


def test_metric_must_be_known():
    msg = error_of(search={"metric": "val_au"})
    assert "unknown metric 'val_au'" in msg and "val_auc" in msg


def test_max_concurrent_at_least_one():
    msg = error_of(search={"max_concurrent": 0})
    assert "search.max_concurrent" in msg


def test_mix_needs_even_batch():
    msg = error_of(train={"mix": "cutmix", "batch_size": 31})
    assert "even" in msg


def test_missing_required_key():
    with pytest.raises(ConfigError, match="data: required key is missing"):
        parse_search_config({"name": "t"}, source="x.yaml")


def test_cli_overrides_apply_before_validation():
    cfg = parse_search_config(
        {**BASE, "train": {"epochs": 5}},
        "x.yaml",
        {"train.epochs": 1, "search.num_samples": 3, "data.root": "/d"},
    )
    assert (cfg.train.epochs, cfg.search.num_samples, cfg.data.root) == (1, 3, "/d")


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace:\n  lr: {loguniform: [1e-4, 1e-2]\n  gamma: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line 4, column \d+: "):
        load_search_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_search_config(tmp_path / "missing.yaml")


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    from ffdi_tune.tracking import resolve_tracking
    from ffdi_tune.tracking.settings import TrackingConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = resolve_tracking(TrackingConfig())
    assert uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert artifacts == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking(TrackingConfig()) == ("http://127.0.0.1:5999", None)
    uri, _ = resolve_tracking(TrackingConfig(uri="sqlite:///other/db.sqlite"))
    assert uri == f"sqlite:///{tmp_path}/other/db.sqlite"


SHIPPED_RECIPES = {  # file -> (combine, average, top_k, metric)
    "top5.yaml": ("auto", "prob", 5, "val_auc"),
    "rank.yaml": ("rank", "prob", 5, "val_auc"),
    "greedy.yaml": ("greedy", "logit", 8, "val_auc"),
    "robust.yaml": ("auto", "prob", 5, "val_worst_auc"),
    "refit.yaml": ("auto", "prob", 5, "val_auc"),
}


def test_shipped_recipes_load_as_documented():
    from ffdi_tune.ensemble.recipe import load_recipe

    assert {p.name for p in (REPO / "ensembles").glob("*.yaml")} == set(SHIPPED_RECIPES)
    for name, expected in SHIPPED_RECIPES.items():
        recipe = load_recipe(REPO / "ensembles" / name)
        assert (
            recipe.combine,
            recipe.average,
            recipe.top_k,
            recipe.metric,
        ) == expected and "identity" in recipe.tta
    assert load_recipe(REPO / "ensembles" / "refit.yaml").refit.seeds == 2


def test_recipe_errors_name_file_and_key(tmp_path):
    from ffdi_tune.ensemble.recipe import load_recipe

    bad = tmp_path / "r.yaml"
    bad.write_text("top_k: 0\n")
    with pytest.raises(ConfigError, match=r"r.yaml: top_k: .*greater than or equal to 1"):
        load_recipe(bad)
    bad.write_text("combine: average\n")
    with pytest.raises(
        ConfigError, match=r"combine: .*'auto', 'best', 'mean', 'rank', 'greedy' or 'soup'"
    ):
        load_recipe(bad)
    bad.write_text("holdout: 0.3\n")
    with pytest.raises(ConfigError, match="unknown key 'holdout'"):
        load_recipe(bad)
    bad.write_text("top_k: 3\nholdout_fraction: 0.3\n")  # it belongs to the search now
    with pytest.raises(
        ConfigError, match="holdout_fraction no longer belongs in a recipe.*search.holdout"
    ):
        load_recipe(bad)


def test_recipe_pool_defaults_to_three_times_top_k_and_holds_top_k(tmp_path):
    from ffdi_tune.ensemble.recipe import EnsembleRecipe, load_recipe

    assert EnsembleRecipe(top_k=5).pool_size == 15
    assert EnsembleRecipe(top_k=5, candidates={"pool": 0}).pool_size is None  # score every one
    assert EnsembleRecipe(top_k=5, candidates={"pool": 5}).pool_size == 5
    bad = tmp_path / "r.yaml"
    bad.write_text("top_k: 5\ncandidates: {pool: 4}\n")
    with pytest.raises(ConfigError, match="candidates.pool=4 is smaller than top_k=5"):
        load_recipe(bad)


def test_a_clock_time_is_not_read_as_seconds(tmp_path):
    """YAML 1.1 reads 1:30 as the base-60 number 90; a space file keeps it as text, refused."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\ndata: {root: d}\nsearch: {time_budget: 1:30}\ntrain: {lr: 1.0e-3, epochs: 2}\n"
    )
    with pytest.raises(ConfigError, match="'1:30' is not a duration; write e.g. 8h, 90m"):
        load_search_config(path)
    path.write_text("name: t\ndata: {root: d}\nsearch: {time_budget: 90}\n")
    assert load_search_config(path).search.time_budget == 90


def test_shipped_spaces_and_recipes_are_found_by_name(tmp_path, monkeypatch):
    import sysconfig

    from ffdi_tune.config import resolve_shipped

    monkeypatch.chdir(tmp_path)  # from any folder
    assert resolve_shipped("demo") == REPO / "search_spaces" / "demo.yaml"
    assert resolve_shipped("top5", "ensembles") == REPO / "ensembles" / "top5.yaml"
    assert str(resolve_shipped("mine.yaml")) == "mine.yaml"  # a file name stays a file name
    with pytest.raises(ConfigError, match="no shipped search space of that name; .* demo, "):
        resolve_shipped("dmeo")
    # after a plain install they live under the environment's share/ffdi-tune/
    share = tmp_path / "env" / "share" / "ffdi-tune" / "search_spaces"
    share.mkdir(parents=True)
    (share / "night.yaml").write_text("name: night\n")
    real = sysconfig.get_path
    monkeypatch.setattr(
        sysconfig,
        "get_path",
        lambda name, *a, **k: str(tmp_path / "env") if name == "data" else real(name, *a, **k),
    )
    assert resolve_shipped("night") == share / "night.yaml"


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_spaces_and_recipes(tmp_path):
    """A plain (not editable) install gets them: the wheel's data files."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ffdi_tune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "search_spaces/demo.yaml",
        "search_spaces/efficientnet.yaml",
        "ensembles/top5.yaml",
    ):
        assert any(n.endswith(f".data/data/share/ffdi-tune/{shipped}") for n in names), shipped
