"""The Ray a search runs on: connecting to it, what each trial asks of it, what every node must see.

A search without an address starts a private local Ray; ``--address`` / ``address:`` /
``$RAY_ADDRESS`` join a cluster (see ``docs/cluster.md``). Before any trial starts,
:func:`trial_resources` checks the cluster can host one, and :func:`check_cluster_paths` runs a
small task on every node that can, to check it sees the dataset and the search's storage;
:func:`warm_node_caches` then builds each such node's decode cache with all of its CPUs."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ffdi_tune.config import SearchConfig
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError, FfdiError, SearchError
from ffdi_tune.files import is_bucket_uri

__all__ = [
    "NODE_CHECK_TIMEOUT_S",
    "ray_address",
    "connect",
    "trial_resources",
    "check_cluster_paths",
    "warm_node_caches",
]

# a node whose check has not answered by then counts as blind (hung mount)
NODE_CHECK_TIMEOUT_S = 120.0


def ray_address(address: str | None) -> str:
    """The Ray a search uses: ``address`` (``--address`` or YAML), $RAY_ADDRESS, or a new local one.

    Ray's own default, ``ray.init()``, joins the cluster that ``ray start`` last started on this
    machine, which may be someone else's; a search without an address starts a private Ray
    instead. ``auto`` joins that cluster on purpose.

    >>> ray_address(None)  # doctest: +SKIP  (with RAY_ADDRESS unset)
    'local'
    """
    return address or os.environ.get("RAY_ADDRESS") or "local"


def connect(address: str) -> None:
    """Start a local Ray or join a cluster (one that cannot be joined is a one-line SearchError)."""
    # Ray notes on every start that token authentication (its default) is on; that is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            configure_logging=True,
            logging_level="WARNING",
        )
    except (ConnectionError, ValueError, ray.exceptions.RayError) as exc:
        if address == "local":
            raise  # not a user's mistake: keep the traceback
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SearchError(
            f"cannot join the Ray cluster at {address!r} ({type(exc).__name__}: {first}); check "
            "the address (auto, HOST:6379 or ray://HOST:10001, the last needs ray[client]) and "
            "that the cluster runs; a cluster with token authentication also needs "
            "RAY_AUTH_MODE=token and its token on this machine (~/.ray/auth_token or "
            "$RAY_AUTH_TOKEN)"
        ) from None


def trial_resources(cfg: SearchConfig) -> dict[str, float]:
    """What each trial asks of the connected cluster (``gpu: auto`` resolved); a SearchError when
    the cluster has less in all."""
    total = ray.cluster_resources()
    gpu = cfg.resources.gpu
    if gpu == "auto":
        gpu = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    need = {"CPU": cfg.resources.cpu, "GPU": float(gpu)}
    for key, amount in need.items():
        if amount > total.get(key, 0.0) + 1e-9:
            raise SearchError(
                f"resources: a trial asks for {amount:g} {key}, but the Ray cluster has "
                f"{total.get(key, 0.0):g}; lower resources.{key.lower()} or add nodes"
            )
    return {"cpu": need["CPU"], "gpu": need["GPU"]}


def _node_can_host(node_resources: dict[str, float], resources: dict[str, float]) -> bool:
    return (
        node_resources.get("CPU", 0.0) + 1e-9 >= resources["cpu"]
        and node_resources.get("GPU", 0.0) + 1e-9 >= resources["gpu"]
    )


def _trial_nodes(resources: dict[str, float]) -> list[dict]:
    """The alive nodes of the cluster that can host one trial."""
    return [n for n in ray.nodes() if n["Alive"] and _node_can_host(n["Resources"], resources)]


def _where(node: dict) -> str:
    return f"node {node['NodeID'][:12]} ({node['NodeManagerAddress']})"


def _paths_trials_read(data: DataConfig) -> list[tuple[str, str, str, int | None]]:
    """(key, path, kind, entries on the driver) of what every trial opens; the counts of entries
    catch a node's stale copy."""
    root = Path(data.root)
    items: list[tuple[str, str, str, int | None]] = [("data.root", str(root), "dir", None)]
    for key in ("train_dir", "val_dir"):
        path = root / getattr(data, key)
        items.append((f"data.{key}", str(path), "dir", sum(1 for _ in os.scandir(path))))
    for key in ("train_labels", "val_labels"):
        items.append((f"data.{key}", str(root / getattr(data, key)), "file", None))
    return items


def check_cluster_paths(
    data: DataConfig,
    storage_path: str,
    resources: dict[str, float],
    timeout_s: float = NODE_CHECK_TIMEOUT_S,
) -> int:
    """Check that every alive node that can host a trial sees what the trials read; return how many.

    One small task per node (no CPU asked, pinned with ``NodeAffinitySchedulingStrategy``) looks at
    ``data.root``, the train/val folders (same number of entries as on the driver) and label files,
    and, when ``storage_path`` is a local path, at a file the driver just wrote there: Ray keeps
    trial checkpoints in that folder, and the driver copies them into MLflow, so it must be one
    shared folder. Nodes too small for one trial (e.g. a head started with ``--num-cpus 0``) run no
    trial and are not asked, nor is the driver's own node when it is the only one (a local Ray).
    Raises :class:`DataError` (:class:`SearchError` when only the storage is missing) whose message
    has a line per node that cannot see them.
    """
    nodes = _trial_nodes(resources)
    if not nodes:
        raise SearchError(
            f"resources: a trial asks for {resources['cpu']:g} CPU and {resources['gpu']:g} GPU, "
            "but no single node of the Ray cluster has that much (a trial runs on one node); "
            "lower resources or add a bigger node"
        )
    if len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id():
        return 1  # one machine, the driver's own: it has just checked the dataset itself
    items = _paths_trials_read(data)
    with _storage_marker(storage_path) as marker:
        if marker is not None:
            items.append(("search.storage", str(marker), "marker", None))
        lines = _ask_nodes(nodes, items, timeout_s)
    if lines:
        raise _blind_nodes_error(lines, len(nodes), data, storage_asked=marker is not None)
    return len(nodes)


@contextlib.contextmanager
def _storage_marker(storage_path: str):
    """A file the driver writes in a local ``storage_path`` for the nodes to find (None for a
    bucket); removed afterwards, with the folders made for it, so that no empty storage folder is
    left behind a refused search."""
    if is_bucket_uri(storage_path):
        yield None
        return
    storage = Path(storage_path)
    made = [p for p in (storage, *storage.parents) if not p.exists()]  # deepest first
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".ffdi-node-check-{uuid.uuid4().hex}"
    marker.touch()
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break


def _path_check():
    """The task a node runs: why it cannot see one of the items, or None. Made inside a function so
    that Ray sends it by value: the node imports neither this package nor torch."""

    def look(items: list[tuple[str, str, str, int | None]]) -> str | None:
        import os

        for key, path, kind, count in items:
            if kind == "marker":
                if not os.path.isfile(path):
                    return (
                        f"search.storage {os.path.dirname(path)} is not the driver's folder there "
                        "(a file the driver wrote in it is missing)"
                    )
                continue
            if kind == "dir" and not os.path.isdir(path):
                return f"{key} {path} is not a directory there"
            if kind == "file" and not os.path.isfile(path):
                return f"{key} {path} does not exist there"
            if not os.access(path, os.R_OK):
                return f"{key} {path} is not readable there"
            if count is not None:
                seen = sum(1 for _ in os.scandir(path))
                if seen != count:
                    return f"{key} {path} has {seen} entries there but {count} on the driver"
        return None

    return look


def _ask_nodes(
    nodes: list[dict], items: list[tuple[str, str, str, int | None]], timeout_s: float
) -> list[str]:
    """Run the path check on every node at once; a line for each that cannot see an item, whose
    check failed, or that did not answer within ``timeout_s``."""
    probe = ray.remote(num_cpus=0, max_retries=0)(_path_check())
    refs = {
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(items): n
        for n in nodes
    }
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    lines = []
    for ref, node in refs.items():
        if ref not in ready:
            why = f"the check did not answer within {timeout_s:g} s (a hung mount?)"
        else:
            try:
                why = ray.get(ref)
            except ray.exceptions.RayError as exc:
                why = f"the check failed there ({type(exc).__name__})"
        if why:
            lines.append(f"  {_where(node)}: {why}")
    return lines


def _blind_nodes_error(
    lines: list[str], n_nodes: int, data: DataConfig, storage_asked: bool
) -> FfdiError:
    """The error for nodes that cannot see what the trials read: a SearchError when only the
    storage is missing, else a DataError; ``storage_asked``: whether the nodes looked for it."""
    only_storage = all(": search.storage " in line for line in lines)
    need = (
        "search.storage on a shared filesystem (or s3://...)"
        if only_storage
        else (
            f"data.root ({data.root}) at the same path, with the same files"
            + (", and search.storage on a shared filesystem (or s3://...)" if storage_asked else "")
        )
    )
    return (SearchError if only_storage else DataError)(
        f"{len(lines)} of {n_nodes} Ray node(s) that can run trials cannot see what the trials "
        f"read; every such node needs {need}:\n" + "\n".join(lines)
    )


def warm_node_caches(entries: list, data: DataConfig, resources: dict[str, float], echo) -> None:
    """Check and build each trial node's decode cache before any trial starts, with all its CPUs.

    One task per node that can host a trial, pinned there and holding every CPU the node gives Ray,
    runs :func:`~ffdi_tune.search.cache_plan.build_here` on ``entries`` (what
    :func:`~ffdi_tune.search.cache_plan.planned_entries` listed). Without it the first trial on a
    node would decode with its own CPUs while the node's other trials wait on the entry's lock.
    Raises :class:`DataError` with a line per node whose cache does not fit or could not be built.
    """
    from ffdi_tune.search.cache_plan import build_here

    nodes = _trial_nodes(resources)
    if not entries or not nodes:
        return
    echo(f"decode cache: checking and building on {len(nodes)} node(s), each with all its CPUs")
    task = ray.remote(max_retries=0)(build_here)
    shared = ray.put(entries)  # once, not once per node: the split's paths can be many MB
    refs = {}
    for node in nodes:
        cpus = max(1, int(node["Resources"].get("CPU", 1)))
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs[
            task.options(num_cpus=cpus, scheduling_strategy=strategy).remote(shared, data, cpus)
        ] = node
    lines = []
    for ref, node in refs.items():
        try:
            why = ray.get(ref)
        except ray.exceptions.RayError as exc:
            why = f"building the cache failed there ({type(exc).__name__}: {str(exc)[-300:]})"
        if why:
            lines.append(f"  {_where(node)}: {why}")
    if lines:
        raise DataError(
            f"{len(lines)} of {len(nodes)} Ray node(s) that can run trials cannot hold this "
            "search's decode cache:\n" + "\n".join(lines)
        )
