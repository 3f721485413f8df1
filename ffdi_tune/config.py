"""Search-space YAML: load, validate strictly, apply CLI overrides.

A file describes one search::

    name: demo
    data: {root: runs/demo-data, demo: {n_train: 800}}
    train: {backbone: resnet10t, img_size: 64, epochs: 3}        # fixed settings of every trial
    space: {lr: {loguniform: [1e-4, 3e-3]}, augment: {choice: [flips, color]}}
    per_backbone: {efficientnet_b4: {lr: {loguniform: [1e-5, 3e-4]}, img_size: 380}}
    search: {num_samples: 8, max_concurrent: 2}

Unknown keys, wrong types, empty choices, ``low >= high``, unknown backbones and unknown
augmentation sets raise :class:`~ffdi_tune.errors.ConfigError` naming the file and the key.
``docs/config.md`` documents every key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from ffdi_tune.data.perturb import RobustValConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import ConfigError, did_you_mean
from ffdi_tune.scoring.epoch_metrics import check_metric, metric_mode, robust_metrics
from ffdi_tune.strict import StrictModel
from ffdi_tune.tracking.settings import TrackingConfig
from ffdi_tune.training.settings import TrainSettings

__all__ = [
    "Domain",
    "SearchSettings",
    "HoldoutSettings",
    "SchedulerConfig",
    "ResourcesConfig",
    "SearchConfig",
    "format_validation_error",
    "read_yaml",
    "parse_setting",
    "shipped_folders",
    "resolve_shipped",
    "load_search_config",
    "parse_search_config",
]

_UNSET = object()

# Domain has a field named ``int``; annotations use this alias so they never see the field.
_Int = int

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Domain(StrictModel):
    """One searched hyperparameter: exactly one of the keys below.

    ``choice`` lists values; ``uniform``/``loguniform`` are float ``[low, high]``;
    ``int``/``logint`` are integer ``[low, high]``, both ends included.
    """

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[_Int, _Int] | None = None
    logint: tuple[_Int, _Int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Domain:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a searched value needs exactly one of choice, uniform, loguniform, int, logint, "
                f"but got {kinds or 'none'}; write e.g. {{loguniform: [1e-5, 3e-3]}}"
            )
        kind = kinds[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice must list at least one value, but got []")
            return self
        low, high = getattr(self, kind)
        if not low < high:
            raise ValueError(f"{kind}: low < high must hold, but got low={low}, high={high}")
        if kind in ("loguniform", "logint") and low <= 0:
            raise ValueError(f"{kind}: bounds must be > 0 for a log scale, but got low={low}")
        return self

    @property
    def kind(self) -> str:
        """Which of the keys is set."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def values_to_check(self) -> list[Any]:
        """Values that must each be valid for the setting (every choice, or both bounds)."""
        return list(self.choice) if self.choice is not None else list(getattr(self, self.kind))


class HoldoutSettings(StrictModel):
    """The valset split fixed at search start: ``fraction`` of it (stratified, seeded) is kept for
    the final stage's estimate and never read by the search; 0 keeps none (no honest estimate)."""

    fraction: float = Field(0.5, ge=0, lt=1)
    seed: int = 0


class SearchSettings(StrictModel):
    """The ``search:`` section: how many trials, how many at once, the metric and the budget."""

    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    metric: str = "val_auc"
    # random trials before TPE models the space (Optuna's default)
    tpe_startup_trials: int = Field(10, ge=1)
    # TPE models the searched keys jointly (Optuna's multivariate, grouped for the per-backbone
    # keys) rather than one by one; with max_concurrent > 1 it also counts running trials as bad
    # (constant_liar), so concurrent trials do not all pile onto one point
    tpe_multivariate: bool = True
    max_failures: int = Field(1, ge=0)
    storage: str = "runs"
    reuse_actors: bool = True
    # the first trial is the default recipe (train: values where the space holds them), and the
    # final stage always counts it: the search can only add to one well-run recipe
    default_trial: bool = True
    holdout: HoldoutSettings = HoldoutSettings()
    # Wall-clock budget of the search (8h, 90m, 1h30m, or seconds): no trial starts that cannot fit,
    # running ones end in time, and the final stage's share is kept; null: no budget.
    time_budget: float | None = None

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        from ffdi_tune.durations import parse_duration

        return None if v is None else parse_duration(v)

    _known_metric = field_validator("metric")(lambda v: check_metric(v))

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction of ``metric``."""
        return metric_mode(self.metric)


class SchedulerConfig(StrictModel):
    """``asha`` stops poor trials at rungs grace_period * reduction_factor**k; ``fifo`` never."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_epochs: int | None = Field(None, ge=1)


class ResourcesConfig(StrictModel):
    """Per trial. ``gpu: auto`` is 1 when the cluster has a GPU, else 0; fractions share a GPU."""

    cpu: float = Field(1.0, gt=0)
    gpu: float | Literal["auto"] = "auto"

    @field_validator("gpu")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if isinstance(v, float) and v < 0:
            raise ValueError(f"gpu must be >= 0 or 'auto', but got {v}")
        return v


class SearchConfig(StrictModel):
    """One search-space file, validated: every section, and the settings checked across them."""

    name: str
    description: str = ""
    data: DataConfig
    train: TrainSettings = TrainSettings()
    space: dict[str, Domain] = {}
    per_backbone: dict[str, dict[str, Domain | bool | int | float | str | list | None]] = {}
    augment_sets: dict[str, list[dict[str, Any]]] = {}
    search: SearchSettings = SearchSettings()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    robust_val: RobustValConfig = RobustValConfig()
    ensemble: str | None = None
    address: str | None = None
    # the file it was read from (not a YAML key): its git commit is recorded on the search run
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The YAML file this config was loaded from (None when made in code)."""
        return self._source

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"name must be letters, digits, '_', '.' or '-' (it names a folder and an "
                f"experiment), but got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _check_space(self) -> SearchConfig:
        # Imported here: the augmentation registry pulls in torchvision, the backbone check timm.
        from ffdi_tune.data.augment import check_augment_name, check_augment_sets
        from ffdi_tune.models.factory import check_backbone

        check_augment_sets(self.augment_sets, img_size=self.train.img_size)
        fields = list(TrainSettings.model_fields)
        fixed = self.train.model_dump()
        for key, dom in self.space.items():
            _check_setting(f"space.{key}", key, dom, fields, fixed)
        for backbone, overrides in self.per_backbone.items():
            for key, value in overrides.items():
                if key == "backbone":
                    raise ValueError(f"per_backbone.{backbone}: 'backbone' cannot be overridden")
                _check_setting(f"per_backbone.{backbone}.{key}", key, value, fields, fixed)
        for backbone in self.backbones():
            check_backbone(backbone)
        unused = set(self.per_backbone) - set(self.backbones())
        if unused:
            name = sorted(unused)[0]
            raise ValueError(
                f"per_backbone.{name}: {name!r} is not among the searched backbones "
                f"({', '.join(self.backbones())}); add it to space.backbone or remove the entry"
            )
        for augment in self.augment_names():
            check_augment_name(augment, self.augment_sets)
        if self.search.metric in robust_metrics() and not self.robust_val.enabled:
            raise ValueError(
                f"search.metric={self.search.metric} is scored on the perturbed valset, but "
                "robust_val.enabled is false; set robust_val.enabled: true or use metric val_auc"
            )
        if self.scheduler.max_epochs is not None and self.scheduler.max_epochs < self.max_epochs():
            raise ValueError(
                f"scheduler.max_epochs={self.scheduler.max_epochs} is below the largest epochs "
                f"a trial can run ({self.max_epochs()}); raise it or leave it unset"
            )
        return self

    def backbones(self) -> list[str]:
        """Every backbone a trial may use."""
        dom = self.space.get("backbone")
        return [str(b) for b in dom.choice] if dom is not None else [self.train.backbone]

    def pretrained_choices(self) -> dict[str, list[bool | str]]:
        """Every ``pretrained`` value each backbone can be trained with."""
        return {
            backbone: self.backbone_values(backbone, "pretrained") for backbone in self.backbones()
        }

    def backbone_values(self, backbone: str, key: str) -> list[Any]:
        """Every value setting ``key`` can take in a trial of ``backbone``: per_backbone's, else
        space's, else train's."""
        given = self.per_backbone.get(backbone, {}).get(key, self.space.get(key, _UNSET))
        if given is _UNSET:
            return [getattr(self.train, key)]
        return list(given.values_to_check()) if isinstance(given, Domain) else [given]

    def setting_values(self, key: str) -> list[Any]:
        """Every value a train setting can take in this search (fixed, searched or per backbone)."""
        values = [getattr(self.train, key)]
        given = ([self.space[key]] if key in self.space else []) + [
            o[key] for o in self.per_backbone.values() if key in o
        ]
        for dom in given:
            values.extend(dom.values_to_check() if isinstance(dom, Domain) else [dom])
        return list(dict.fromkeys(values))

    def augment_names(self) -> list[str]:
        """Every augmentation set a trial may use, sorted."""
        return sorted({str(v) for v in self.setting_values("augment")})

    def max_epochs(self) -> int:
        """The most epochs any trial can run (the ASHA horizon)."""
        return max(int(v) for v in self.setting_values("epochs"))


def _check_setting(where: str, key: str, value: Any, fields: list[str], fixed: dict) -> None:
    """A searched or overridden setting must name a train field and every value must be valid."""
    if key not in fields:
        raise ValueError(f"{where}: unknown setting {key!r}{did_you_mean(key, fields)}")
    values = value.values_to_check() if isinstance(value, Domain) else [value]
    for v in values:
        try:
            TrainSettings.model_validate({**fixed, key: v})
        except ValidationError as exc:
            raise ValueError(f"{where}: value {v!r} is invalid: {exc.errors()[0]['msg']}") from None


def format_validation_error(source: str, exc: ValidationError) -> str:
    """pydantic's first error as one line, ``<source>: <key>: <message>``, with how many more."""
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "required key is missing"
    where = f"{source}: {loc}: " if loc else f"{source}: "
    more = (
        f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
        if len(errs) > 1
        else ""
    )
    return f"{where}{msg}{more}"


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    """Set ``raw``'s dotted key ``dotted`` to ``value``, making the mappings on its way."""
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot override {dotted}: {p} is not a mapping in the file")
        node = child
    node[leaf] = value


def parse_search_config(
    raw: Any, source: str = "<config>", overrides: dict[str, Any] | None = None
) -> SearchConfig:
    """Validate a parsed YAML mapping, after applying dotted-key ``overrides`` (CLI flags)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the file must hold a mapping of keys, but got {type(raw).__name__}"
        )
    raw = dict(raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(raw, dotted, value)
    if (overrides or {}).get("data.root") is not None and isinstance(raw.get("data"), dict):
        # Another root is the user's own dataset: the demo generator writes only at the file's own
        # root, so a mistyped --data is an error instead of a search on synthetic faces.
        raw["data"] = {k: v for k, v in raw["data"].items() if k != "demo"}
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers: ``time_budget: 1:30`` stays the
    text ``1:30`` (refused as a duration with the accepted forms) instead of becoming 90."""


_BASE_60 = re.compile(r"\|[^|]*\(\?::\[0-5\]\?\[0-9\]\)\+(?:\\\.\[0-9_\]\*)?")


def _without_base_60(regexp: re.Pattern) -> re.Pattern:
    """A resolver's pattern without its base-60 alternative (``|...(?::[0-5]?[0-9])+...``)."""
    return re.compile(_BASE_60.sub("", regexp.pattern), regexp.flags)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, _without_base_60(regexp)) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY.PATH=VALUE`` (a ``--set``) as (dotted key, value read as YAML, as in a space file)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {text}: write KEY=VALUE with a dotted YAML key, e.g. --set train.lr=3e-4 or "
            "--set 'space.lr={loguniform: [1e-4, 1e-3]}'"
        )
    try:
        return key.strip(), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not YAML ({problem})") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; pass the path of a YAML file (see search_spaces/)")
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{p}: YAML syntax error{line}: {problem}; fix the file's syntax"
        ) from None


def shipped_folders(kind: str) -> list[Path]:
    """Where the shipped ``search_spaces`` or ``ensembles`` are: beside the package in a source
    checkout (or an editable install), and under ``share/ffdi-tune/`` of the environment after a
    plain ``pip install``."""
    import sysconfig

    beside = Path(__file__).resolve().parents[1] / kind
    installed = Path(sysconfig.get_path("data")) / "share" / "ffdi-tune" / kind
    return [folder for folder in (beside, installed) if folder.is_dir()]


def resolve_shipped(arg: str, kind: str = "search_spaces") -> Path:
    """``arg`` as a file; a bare name (``demo``, ``top5``) that is no file is a shipped one of
    ``kind``; a name that is neither is a ConfigError listing the shipped ones."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    folders = shipped_folders(kind)
    for folder in folders:
        if (folder / f"{arg}.yaml").is_file():
            return folder / f"{arg}.yaml"
    names = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    raise ConfigError(
        f"{arg}: no such file, and no shipped {kind.replace('_', ' ')[:-1]} of that name; name a "
        f"YAML file, or one of: {', '.join(names) or 'none found'}"
    )


def load_search_config(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None
) -> SearchConfig:
    """Load and validate a search-space file.

    >>> cfg = load_search_config("search_spaces/demo.yaml", {"search.num_samples": 2})
    """
    cfg = parse_search_config(read_yaml(path), source=str(path), overrides=overrides)
    if cfg.ensemble:
        cfg = cfg.model_copy(update={"ensemble": _near(cfg.ensemble, Path(path))})
    cfg._source = Path(path).resolve()
    return cfg


def _near(relative: str, yaml_file: Path) -> str:
    """A path written in a YAML file: as written when it exists from here, else beside the file or
    one folder up, so ``ensemble: ensembles/top5.yaml`` in ``search_spaces/`` works from any
    working directory."""
    given = Path(relative).expanduser()
    if given.is_absolute() or given.exists():
        return relative
    for base in (yaml_file.parent, yaml_file.parent.parent):
        if (base / given).exists():
            return str(base / given)
    return relative
