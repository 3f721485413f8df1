"""The FFDI layout on disk: label files, the scan of a split, and decoding its images once.

The small interface the rest of the code uses:

- :func:`read_split` -> :class:`Split` (image names, paths, targets) for ``train``/``val``/``test``,
  every label row and file checked (:func:`scan_split` returns the problems instead of raising);
- :func:`load_images` -> uint8 ``N x 3 x S x S`` tensor, every image decoded and resized once
  (through the per-node decode-once cache of :mod:`ffdi_tune.data.cache` when one is given);
- :func:`ensure_dataset` writes the demo dataset where ``data.demo`` asks for it.

Batches of the decoded images are :mod:`ffdi_tune.data.loaders`' job.

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
    "decode_key",
    "centre_square",
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


_UNSAFE_CHARACTERS = {",", '"', "'"}  # they would need quoting in a submission or a label file


def _plain_characters(name: str) -> bool:
    """No control character (a newline would split a CSV record), comma or quote."""
    return not any(ord(c) < 32 or ord(c) == 127 or c in _UNSAFE_CHARACTERS for c in name)


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
    except OSError as exc:  # no permission, a folder in its place, an I/O error
        problems.append(
            f"{label_file} cannot be read ({exc.strerror or type(exc).__name__}); give this user "
            "read access to it"
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
        elif not _plain_characters(name):
            problems.append(
                f"{label_file}: row {i + 2}: img_name {name!r} holds a control character, comma or "
                "quote, which a submission CSV cannot carry plainly; rename the file"
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


def _inside_and_once(
    folder: Path,
    names: list[str],
    keep: list[int],
    follow_symlinks: bool,
    problems: list[str],
    once: bool = True,
) -> list[int]:
    """``keep`` without the images whose path resolves outside ``folder`` (unless
    ``follow_symlinks``) and without second names of one file (``x.jpg`` and ``./x.jpg``, hard or
    symbolic links); a problem for each."""
    inside, seen = folder.resolve(), {}
    kept = []
    for i in keep:
        real = (folder / names[i]).resolve()
        if not follow_symlinks and not real.is_relative_to(inside):
            problems.append(
                f"{folder / names[i]}: resolves to {real}, outside {inside} (a symbolic link out "
                "of the split folder); copy the file in, or set data.follow_symlinks: true"
            )
            continue
        st = real.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), names[i])
        if once and first != names[i]:
            problems.append(
                f"{folder}: {names[i]!r} and {first!r} are the same file; list each image once"
            )
            continue
        kept.append(i)
    return kept


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
    # testset may list one file twice (every name needs its prediction); trainset and valset not
    keep = _inside_and_once(folder, names, keep, cfg.follow_symlinks, problems, split != "test")
    excluded = set(cfg.exclude.get(split, ()))
    keep = [i for i in keep if names[i] not in excluded]
    names = [names[i] for i in keep]
    if targets is not None:
        targets = targets[keep]
    if not names and not problems:
        problems.append(f"split {split} ({folder}) has no images; add image files or fix the paths")
    return Split(split, tuple(names), tuple(folder / n for n in names), targets), problems


def problems_message(problems: list[str], shown: int = 5) -> str:
    """One line for a list of data problems: all of them when few, else the first ``shown`` and
    how many more there are."""
    if len(problems) == 1:
        return problems[0]
    head = " | ".join(problems[:shown])
    more = f" | and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} problems in the dataset: {head}{more}"


def read_split(cfg: DataConfig, split: str) -> Split:
    """Read one split's file list (and labels) and check every listed image exists."""
    found, problems = scan_split(cfg, split)
    if problems:
        raise DataError(problems_message(problems))
    return found


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
    """8-bit RGB from any mode: grayscale, palette, CMYK, alpha, and 16/32-bit (the last scaled
    down to 0-255, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or wide.max() > 255 else 255.0
        return Image.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    return im.convert("RGB")


def _decode(
    path: Path, img_size: int, perturb=None, name: str = "", resize: str = "squash"
) -> np.ndarray:
    """One image at ``img_size``: the whole frame squashed to it, or (``resize="crop"``) its
    centre square, the shorter side brought to ``img_size``.

    Squashed, ``perturb`` alters the image at that size: clean and perturbed copies share the
    decode and the resize, so the difference between their scores is the perturbation's alone,
    and its strengths (blur sigma, JPEG quality...) act on the pixels the model sees. Cropped, the
    file is decoded at full resolution (no JPEG draft) and ``perturb`` acts before the resize, as
    a real re-upload would.
    """
    try:
        with Image.open(path) as im:
            if resize == "squash":
                im.draft("RGB", (img_size, img_size))  # JPEG: libjpeg downscales by 1/2..1/8
            rgb = _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); replace or remove the file"
        ) from None
    if resize == "crop":
        return np.asarray(centre_square(perturb(rgb, name) if perturb else rgb, img_size))
    if rgb.size != (img_size, img_size):
        rgb = rgb.resize((img_size, img_size), Image.BILINEAR, reducing_gap=3.0)
    if perturb is not None:
        rgb = perturb(rgb, name)
        if rgb.size != (img_size, img_size):  # a crop: back to the side every other image has
            rgb = rgb.resize((img_size, img_size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def centre_square(rgb: Image.Image, side: int) -> Image.Image:
    """``rgb`` with its shorter side brought to ``side`` (not resized when it already is), then
    its centre ``side x side`` square."""
    w, h = rgb.size
    if min(w, h) != side:
        scale = side / min(w, h)
        w, h = max(side, round(w * scale)), max(side, round(h * scale))
        rgb = rgb.resize((w, h), Image.BILINEAR, reducing_gap=3.0)
    left, top = (w - side) // 2, (h - side) // 2
    return rgb.crop((left, top, left + side, top + side))


def _decode_rows(
    out: np.ndarray | str, img_size: int, perturb, rows, resize: str = "squash"
) -> None:
    """Decode ``rows`` (``(index, path, name)``) into ``out``: an array, or the path of a ``.npy``
    file (opened here, so that a worker process writes straight into the file)."""
    target = np.load(out, mmap_mode="r+") if isinstance(out, str) else out
    for i, path, name in rows:
        target[i] = _decode(path, img_size, perturb, name, resize)
    if isinstance(out, str):
        target.flush()


def decode_split(
    split: Split,
    img_size: int,
    out: np.ndarray,
    workers: int | None = None,
    kind: str = "threads",
    perturb=None,
    resize: str = "squash",
) -> None:
    """Fill ``out`` (``N x S x S x 3`` uint8) with every image of ``split``, ``workers`` at a time
    (``resize``: see :func:`_decode`).

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
    decode = partial(_decode_rows, target, img_size, perturb, resize=resize)
    run_pass(decode, rows, desc, workers, kind)


def cache_dir_of(cfg: DataConfig) -> Path | None:
    """Where decoded arrays are cached for ``cfg`` (None when data.cache is off)."""
    if not cfg.cache:
        return None
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def decode_key(resize: str, perturb=None) -> str:
    """What besides the files and the side tells two decoded arrays apart in the cache: the crop
    mode, and the perturbation's recipe."""
    key = perturb.key if perturb is not None else ""
    return key if resize == "squash" else f"crop|{key}"


def load_images(
    split: Split,
    img_size: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    perturb=None,
    kind: str = "threads",
    resize: str = "squash",
) -> torch.Tensor:
    """Every image of ``split`` decoded and resized once: uint8 tensor ``N x 3 x S x S``
    (``resize="crop"``: each image's centre square at full resolution, see :func:`_decode`).

    With ``cache_dir`` the pixels come from (or go into) the decode-once cache there; the tensor is
    then a view of a memory-mapped file, so a large split does not have to fit in memory.
    ``perturb`` (a :class:`~ffdi_tune.data.perturb.Perturber`) alters each decoded image, by its
    name, after the resize; its recipe is part of the cache key. ``workers`` (default: the CPUs
    torch may use here, i.e. a trial's share) decode in ``kind`` threads or processes (processes
    only into the cache).
    """
    workers = workers or max(1, min(torch.get_num_threads(), available_cpus()))

    def decode(out: np.ndarray) -> None:
        decode_split(split, img_size, out, workers, kind, perturb, resize)

    if cache_dir is not None:
        arr, _ = cached_array(split.paths, img_size, decode, cache_dir, decode_key(resize, perturb))
    else:
        arr = np.empty((len(split), img_size, img_size, 3), dtype=np.uint8)
        decode_split(split, img_size, arr, workers, "threads", perturb, resize)
    return torch.from_numpy(arr).permute(0, 3, 1, 2)
