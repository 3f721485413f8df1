"""FFDI data: read the layout, decode images, and feed batches to training and prediction.

The small interface the rest of the code uses:

- :func:`read_split` -> :class:`Split` (image names, paths, targets) for ``train``/``val``/``test``;
- :func:`load_images` -> uint8 ``N x 3 x S x S`` tensor, every image decoded and resized once
  (through the per-node decode-once cache of :mod:`ffdi_tune.data.cache` when one is given);
- :func:`train_batches` / :func:`eval_loader` -> batches of uint8 images (and targets);
- :func:`to_model_input` -> float, normalised, on the device (normalisation happens there, as in
  timm's PrefetchLoader, so the loader moves 4x fewer bytes).

Resolution policy: the full image is resized to ``img_size x img_size`` (the competition's winners
used the full frame, no face crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ffdi_tune.data.cache import cached_array, default_cache_dir
from ffdi_tune.data.passes import available_cpus, run_pass
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Split",
    "read_split",
    "scan_split",
    "problems_message",
    "single_class_problem",
    "ensure_dataset",
    "load_images",
    "decode_split",
    "cache_dir_of",
    "train_batches",
    "eval_loader",
    "to_model_input",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: image names as in the label file, their paths, and targets (None for test)."""

    name: str
    names: tuple[str, ...]
    paths: tuple[Path, ...]
    targets: np.ndarray | None

    def __len__(self) -> int:
        return len(self.names)

    def only(self, names) -> Split:
        """The images of this split named in ``names``, in the split's own order."""
        keep = set(names)
        idx = [i for i, n in enumerate(self.names) if n in keep]
        targets = None if self.targets is None else self.targets[idx]
        return Split(
            self.name, tuple(self.names[i] for i in idx), tuple(self.paths[i] for i in idx), targets
        )

    def without(self, names) -> Split:
        """This split less the images named in ``names``."""
        drop = set(names)
        return self.only([n for n in self.names if n not in drop])


def _split_dirs(cfg: DataConfig, split: str) -> tuple[Path, Path | None]:
    root = Path(cfg.root).expanduser()
    if split == "train":
        return root / cfg.train_dir, root / cfg.train_labels
    if split == "val":
        return root / cfg.val_dir, root / cfg.val_labels
    if split == "test":
        return root / cfg.test_dir, (root / cfg.test_list) if cfg.test_list else None
    raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name.strip()) and not p.is_absolute() and ".." not in p.parts


def _read_labels(label_file: Path, with_target: bool, problems: list[str]) -> pd.DataFrame | None:
    """The label table with only its good rows; every bad row (or the whole file) adds a problem."""
    if not label_file.is_file():
        problems.append(
            f"label file {label_file} is missing; write a CSV with header img_name,target"
        )
        return None
    try:
        df = pd.read_csv(label_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        problems.append(
            f"{label_file} is not a readable CSV ({str(exc).splitlines()[0]}); "
            "write a CSV with header img_name,target"
        )
        return None
    expected = ["img_name", "target"] if with_target else ["img_name"]
    if list(df.columns)[: len(expected)] != expected or (with_target and len(df.columns) != 2):
        problems.append(
            f"{label_file}: header is {','.join(map(str, df.columns))!r}, but {','.join(expected)} "
            "is needed; fix the first line of the file"
        )
        return None
    good = np.ones(len(df), dtype=bool)
    for i, name in enumerate(df["img_name"]):
        if not _safe_name(name):
            problems.append(
                f"{label_file}: row {i + 2}: img_name {name!r} is not a plain relative name (path "
                "traversal is refused); list files inside the split folder only"
            )
            good[i] = False
    for i in np.flatnonzero(df["img_name"].duplicated().to_numpy()):
        problems.append(
            f"{label_file}: row {i + 2}: img_name {df['img_name'].iloc[i]!r} is listed more than "
            "once; keep one row per image"
        )
        good[i] = False
    if with_target:
        for i in np.flatnonzero(~df["target"].str.strip().isin(["0", "1"]).to_numpy()):
            problems.append(
                f"{label_file}: row {i + 2}: target {df['target'].iloc[i]!r} is not 0 or 1; "
                "use 1 for fake and 0 for real"
            )
            good[i] = False
    return df[good]


def scan_split(cfg: DataConfig, split: str) -> tuple[Split | None, list[str]]:
    """One split's good rows whose image files exist, and a line for every problem found.

    Images listed in ``data.exclude`` are left out. The files are not decoded here (see
    :mod:`ffdi_tune.data.check` for that).
    """
    folder, label_file = _split_dirs(cfg, split)
    problems: list[str] = []
    if not folder.is_dir():
        return None, [f"split folder {folder} does not exist; check data.root and data.{split}_dir"]
    if label_file is None:
        names = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        targets = None
    else:
        df = _read_labels(label_file, split != "test", problems)
        if df is None:
            return None, problems
        names = list(df["img_name"])
        targets = df["target"].str.strip().astype(np.int64).to_numpy() if split != "test" else None
    keep = [i for i, n in enumerate(names) if (folder / n).is_file()]
    for i in sorted(set(range(len(names))) - set(keep)):
        problems.append(
            f"{label_file}: image {names[i]!r} is missing from {folder}; remove its row or add the "
            "file"
        )
    excluded = set(cfg.exclude.get(split, ()))
    keep = [i for i in keep if names[i] not in excluded]
    names = [names[i] for i in keep]
    if targets is not None:
        targets = targets[keep]
    if not names and not problems:
        problems.append(f"split {split} ({folder}) has no images; add image files or fix the paths")
    return Split(split, tuple(names), tuple(folder / n for n in names), targets), problems


def problems_message(problems: list[str], shown: int = 5) -> str:
    """One line for a list of data problems: all of them when few, else the first ``shown`` and a
    count."""
    if len(problems) == 1:
        return problems[0]
    head = " | ".join(problems[:shown])
    more = f" | and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} problems in the dataset: {head}{more}"


def read_split(cfg: DataConfig, split: str) -> Split:
    """Read one split's file list (and labels) and check every listed image exists."""
    s, problems = scan_split(cfg, split)
    if problems:
        raise DataError(problems_message(problems))
    return s


def single_class_problem(split: Split) -> str | None:
    """Why ROC AUC cannot be computed on a labelled split (only one class in it), or None."""
    n_fake = int(split.targets.sum())
    if n_fake in (0, len(split)):
        return (
            f"split {split.name} has only one class ({'fake' if n_fake else 'real'}), so ROC AUC "
            "is undefined; include both real (0) and fake (1) images"
        )
    return None


def ensure_dataset(cfg: DataConfig) -> None:
    """Generate the demo dataset at ``cfg.root`` when ``data.demo`` is set and nothing is there."""
    root = Path(cfg.root).expanduser()
    if cfg.demo is None or (root / cfg.val_labels).exists():
        return
    from ffdi_tune.data.demo import write_demo_dataset

    write_demo_dataset(root, **cfg.demo.model_dump())  # DemoSpec holds its keyword arguments


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: grayscale, palette, CMYK, alpha, and 16/32-bit (scaled, not
    clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or wide.max() > 255 else 255.0
        return Image.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    return im.convert("RGB")


def _decode(path: Path, img_size: int, perturb=None, name: str = "") -> np.ndarray:
    """One image, whole frame, at ``img_size``; ``perturb`` then alters it at that size.

    Clean and perturbed copies share the decode and the resize, so the difference between their
    scores is the perturbation's alone, and its strengths (blur sigma, JPEG quality...) act on the
    pixels the model sees, whatever the file's resolution.
    """
    try:
        with Image.open(path) as im:
            # JPEG: let libjpeg downscale by 1/2..1/8 for free
            im.draft("RGB", (img_size, img_size))
            rgb = _to_rgb(im)
            if rgb.size != (img_size, img_size):
                rgb = rgb.resize((img_size, img_size), Image.BILINEAR, reducing_gap=3.0)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); replace or remove the file"
        ) from None
    if perturb is not None:
        rgb = perturb(rgb, name)
        if rgb.size != (img_size, img_size):  # a crop: back to the side every other image has
            rgb = rgb.resize((img_size, img_size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_rows(out: np.ndarray | str, img_size: int, perturb, rows) -> None:
    """Decode ``rows`` (``(index, path, name)``) into ``out``: an array, or the path of a ``.npy``
    file (opened here, so that a worker process writes straight into the file)."""
    target = np.load(out, mmap_mode="r+") if isinstance(out, str) else out
    for i, path, name in rows:
        target[i] = _decode(path, img_size, perturb, name)
    if isinstance(out, str):
        target.flush()


def decode_split(
    split: Split,
    img_size: int,
    out: np.ndarray,
    workers: int | None = None,
    kind: str = "threads",
    perturb=None,
) -> None:
    """Fill ``out`` (``N x S x S x 3`` uint8) with every image of ``split``, ``workers`` at a time.

    ``kind="processes"`` needs ``out`` to be a memory map of a ``.npy`` file (the workers open it
    themselves); threads write into any array. Progress is reported for long passes.
    """
    rows = [(i, p, n) for i, (p, n) in enumerate(zip(split.paths, split.names, strict=True))]
    target = str(out.filename) if kind == "processes" else out
    if kind == "processes":
        out.flush()
    desc = f"decode {split.name}set at {img_size} px" + (
        " (perturbed)" if perturb is not None else ""
    )
    run_pass(partial(_decode_rows, target, img_size, perturb), rows, desc, workers, kind)


def cache_dir_of(cfg: DataConfig) -> Path | None:
    """Where decoded arrays are cached for ``cfg`` (None when data.cache is off)."""
    if not cfg.cache:
        return None
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def load_images(
    split: Split,
    img_size: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    perturb=None,
    kind: str = "threads",
) -> torch.Tensor:
    """Every image of ``split`` decoded and resized once: uint8 tensor ``N x 3 x S x S``.

    With ``cache_dir`` the pixels come from (or go into) the decode-once cache there; the tensor is
    then a view of a memory-mapped file, so a large split does not have to fit in memory.
    ``perturb`` (a :class:`~ffdi_tune.data.perturb.Perturber`) alters each decoded image, by its
    name, after the resize; its recipe is part of the cache key. ``workers`` (default: the CPUs
    torch may use here, i.e. a trial's share) decode in ``kind`` threads or processes (processes
    only into the cache).
    """
    workers = workers or max(1, min(torch.get_num_threads(), available_cpus()))

    def decode(out: np.ndarray) -> None:
        decode_split(split, img_size, out, workers, kind, perturb)

    if cache_dir is not None:
        arr, _ = cached_array(
            split.paths, img_size, decode, cache_dir, perturb.key if perturb else ""
        )
    else:
        arr = np.empty((len(split), img_size, img_size, 3), dtype=np.uint8)
        decode_split(split, img_size, arr, workers, "threads", perturb)
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


class _AugmentedImages(Dataset):
    def __init__(self, images: torch.Tensor, targets: np.ndarray, transform):
        self.images, self.targets, self.transform = images, torch.tensor(targets), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.targets[i]


def _gather(
    images: torch.Tensor, idx: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor
) -> torch.Tensor:
    """Copy images ``idx`` into a new NCHW batch, flipping on the way (numpy views: one pass)."""
    nhwc = images.permute(0, 2, 3, 1).numpy()  # the decoded (often memory-mapped) array itself
    out = np.empty((len(idx), 3, nhwc.shape[1], nhwc.shape[2]), dtype=np.uint8)
    for j, (i, h, v) in enumerate(zip(idx.tolist(), hflip.tolist(), vflip.tolist(), strict=True)):
        src = nhwc[i]
        if v:
            src = src[::-1]
        if h:
            src = src[:, ::-1]
        out[j] = src.transpose(2, 0, 1)
    return torch.from_numpy(out)


def train_batches(
    images: torch.Tensor,
    targets: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    sample_transform=None,
    flips=None,
    num_workers: int = 0,
    pin_memory: bool = False,
):
    """One epoch of shuffled uint8 batches ``(images, targets)``; the last short batch is dropped.

    ``flips`` (a :class:`~ffdi_tune.data.augment.BatchFlips`) are applied while the batch is
    gathered. A per-image ``sample_transform`` runs in ``num_workers`` DataLoader processes when
    asked, else inline. With neither, a batch is one gather from the decoded array (augment it on
    the device).
    """
    y = torch.tensor(targets)
    batch_size = min(batch_size, len(images))
    if sample_transform is not None and num_workers > 0:
        yield from DataLoader(
            _AugmentedImages(images, targets, sample_transform),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        return
    order = torch.randperm(len(images), generator=generator)
    no_flip = torch.zeros(batch_size, dtype=torch.bool)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        h, v = flips.draw(batch_size, generator) if flips is not None else (no_flip, no_flip)
        batch = _gather(images, idx, h, v)
        if sample_transform is not None:
            batch = torch.stack([sample_transform(img) for img in batch])
        yield (batch.pin_memory() if pin_memory else batch), y[idx]


def eval_loader(images: torch.Tensor, batch_size: int):
    """Plain in-order batches of the decoded images (no copies, no workers needed)."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def to_model_input(
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
) -> torch.Tensor:
    """``B x 3 x H x W`` on the 0-255 scale (uint8, or float from a device augmentation) ->
    normalised float on ``device``."""
    # (x / 255 - mean) / std as two in-place passes over the batch
    x = batch.to(device, non_blocking=True).float()
    x = x.sub_((mean * 255).view(1, 3, 1, 1)).mul_((1 / (std * 255)).view(1, 3, 1, 1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
