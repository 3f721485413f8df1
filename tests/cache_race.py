"""The two sides of a forced decode-cache race, run in their own processes by test_cache.py."""

from __future__ import annotations

from pathlib import Path


def builder(root: str, cache: str, decoding, go, out) -> None:
    """Takes the lock and, while decoding, waits for ``go``: the other side is blocked on the lock
    then."""
    from ffdi_tune.data.cache import cached_array
    from ffdi_tune.data.layout import decode_split, read_split
    from ffdi_tune.data.settings import DataConfig

    s = read_split(DataConfig(root=root), "train")

    def decode(arr):
        decoding.set()
        if not go.wait(120):
            raise TimeoutError("the other process never reached the lock")
        decode_split(s, 24, arr, workers=1)

    arr, built = cached_array(s.paths, 24, decode, Path(cache))
    out.put(("built" if built else "reused", int(arr.sum())))


def waiter(root: str, cache: str, waiting, out) -> None:
    """Arrives while the builder holds the lock: sets ``waiting`` as it starts to wait for it."""
    import filelock

    from ffdi_tune.data.cache import cached_array
    from ffdi_tune.data.layout import decode_split, read_split
    from ffdi_tune.data.settings import DataConfig

    acquire = filelock.FileLock.acquire

    def spy(self, *args, **kwargs):  # reached only once this process saw no finished entry
        waiting.set()
        return acquire(self, *args, **kwargs)

    filelock.FileLock.acquire = spy
    s = read_split(DataConfig(root=root), "train")
    arr, built = cached_array(s.paths, 24, lambda a: decode_split(s, 24, a, workers=1), Path(cache))
    out.put(("built" if built else "reused", int(arr.sum())))
