"""A deterministic FFDI-layout demo dataset of procedurally drawn portraits (real JPEG files).

Real images are face-like portraits with varied skin tones, hair, eyes, mouth, backgrounds,
lighting, sensor noise and JPEG quality. Fake images are the same kind of portrait with a forgery
trace confined to the face region, one of :data:`FORGERY_KINDS`:

- ``blend``: the face's colour is shifted and blended back through a soft mask (a swapped face's
  colour mismatch and seam);
- ``checkerboard``: the face carries a 2-pixel periodic pattern (transposed-convolution upsampling);
- ``smooth``: the face is low-pass filtered, wiping out its sensor noise (over-smoothed skin);
- ``double_jpeg``: the face alone was JPEG-compressed hard and pasted back (double compression);
- ``noise``: the face carries extra noise of another grain (a generator's noise mismatch).

Reals carry global versions of some of these (whole-image blur, JPEG, colour casts), so only the
*local* inconsistency tells the classes apart. ``difficulty`` (0..1) scales trace strength down;
each fake also draws its own strength, so a few are almost invisible and AUC stays below 1.

``unseen_forgery`` simulates a distribution shift: that kind is kept out of trainset and valset,
and every fake of testset carries it, so test AUC measures how well a detector (and the way it
was selected) generalises to a forgery it never saw. ``testset_label.txt`` (always written, never
read by training: the test split is a folder listing) and ``demo_manifest.csv`` (each image's
split, target and kind) are there for that evaluation.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ffdi_tune.errors import DataError, did_you_mean

__all__ = [
    "FORGERY_KINDS",
    "MANIFEST",
    "check_forgery_kind",
    "render_portrait",
    "write_demo_dataset",
]

FORGERY_KINDS = ("blend", "checkerboard", "smooth", "double_jpeg", "noise")
MANIFEST = "demo_manifest.csv"  # img_name,split,target,kind of every image (kind empty for reals)

_SKIN = np.array(
    [
        [255, 224, 196],
        [241, 194, 157],
        [224, 172, 130],
        [198, 134, 94],
        [161, 102, 68],
        [120, 75, 48],
        [88, 56, 38],
    ],
    dtype=np.float32,
)
_HAIR = np.array(
    [
        [20, 16, 14],
        [60, 40, 25],
        [110, 75, 40],
        [200, 170, 110],
        [150, 60, 30],
        [130, 130, 130],
        [230, 220, 200],
    ],
    dtype=np.float32,
)


def _ellipse(xx, yy, cx, cy, a, b, softness=1.5):
    """Soft ellipse mask in [0, 1], ``softness`` pixels wide at the edge."""
    d = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    return np.clip((1.0 - d) * min(a, b) / softness + 0.5, 0.0, 1.0)


def _paint(img, mask, colour):
    m = mask[..., None]
    img *= 1.0 - m
    img += m * np.asarray(colour, dtype=np.float32)


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)


def _blur(arr: np.ndarray, radius: float) -> np.ndarray:
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _background(rng: np.random.Generator, xx, yy, s: float) -> tuple[np.ndarray, float]:
    """A lit gradient between two random colours, sometimes with stripes; and the light's angle."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xx * np.cos(angle) + yy * np.sin(angle)) / s + 1) / 2
    img = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)
    if rng.random() < 0.3:
        img += (np.sin(xx / s * rng.uniform(6, 20)) * rng.uniform(5, 20))[..., None]
    return img, angle


def _head(rng: np.random.Generator, img: np.ndarray, xx, yy, s: float, angle: float):
    """Paint shoulders, hair and a lit face on ``img``; return the face's mask, its ellipse
    ``(cx, cy, a, b)``, and the hair and skin colours."""
    cx, cy = s * rng.uniform(0.42, 0.58), s * rng.uniform(0.44, 0.56)
    a, b = s * rng.uniform(0.2, 0.27), s * rng.uniform(0.27, 0.34)
    _paint(
        img,
        _ellipse(xx, yy, cx, s * 1.08, s * rng.uniform(0.35, 0.5), s * 0.3),
        rng.uniform(10, 240, 3),
    )
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.1)
    if rng.random() < 0.85:
        _paint(
            img,
            _ellipse(
                xx,
                yy,
                cx,
                cy - b * rng.uniform(0.15, 0.35),
                a * rng.uniform(1.05, 1.3),
                b * rng.uniform(0.9, 1.15),
            ),
            hair,
        )
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1) + rng.normal(0, 6, 3)
    face = _ellipse(xx, yy, cx, cy, a, b)
    light = (
        1.0 + rng.uniform(0.05, 0.35) * ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / s
    )
    _paint(img, face, skin)
    img *= np.where(face[..., None] > 0, light[..., None], 1.0)
    return face, (cx, cy, a, b), hair, skin


def _features(rng: np.random.Generator, img: np.ndarray, xx, yy, s: float, ellipse, hair, skin):
    """Paint eyes, brows, nose and mouth on the face of ``ellipse`` ``(cx, cy, a, b)``."""
    cx, cy, a, b = ellipse
    ex, ey = a * rng.uniform(0.35, 0.5), cy - b * rng.uniform(0.1, 0.25)
    er = max(1.0, s * rng.uniform(0.025, 0.04))
    iris = rng.choice([[60, 40, 20], [40, 80, 140], [70, 110, 60], [30, 25, 20]]).astype(np.float32)
    for side in (-1, 1):
        _paint(img, _ellipse(xx, yy, cx + side * ex, ey, er * 1.6, er, 0.8), [235, 235, 230])
        _paint(img, _ellipse(xx, yy, cx + side * ex, ey, er * 0.8, er * 0.8, 0.8), iris)
        _paint(
            img,
            _ellipse(xx, yy, cx + side * ex, ey - er * 2.2, er * 2.0, er * 0.5, 0.8),
            hair * 0.8,
        )
    _paint(img, _ellipse(xx, yy, cx, cy + b * 0.1, er * 0.6, er * 2.0, 0.8) * 0.35, skin * 0.7)
    _paint(
        img,
        _ellipse(
            xx,
            yy,
            cx,
            cy + b * rng.uniform(0.4, 0.55),
            a * rng.uniform(0.25, 0.45),
            er * rng.uniform(0.6, 1.4),
            0.8,
        ),
        [rng.uniform(120, 200), 50, 60],
    )


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Sensor noise, and sometimes a colour cast, blur or hard JPEG over the whole frame."""
    img += rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    if rng.random() < 0.2:
        img = img * rng.uniform(0.9, 1.1, 3) + rng.uniform(-10, 10, 3)
    if rng.random() < 0.1:
        img = _blur(img, rng.uniform(0.4, 0.9))
    if rng.random() < 0.1:
        img = _jpeg(img, int(rng.integers(35, 70)))
    return img


def render_portrait(
    rng: np.random.Generator, size: int, forgery: str | None = None, strength: float = 1.0
) -> np.ndarray:
    """One portrait (``H x W x 3`` float32, 0..255), with a ``forgery`` trace at ``strength``."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img, angle = _background(rng, xx, yy, s)
    face, ellipse, hair, skin = _head(rng, img, xx, yy, s, angle)
    _features(rng, img, xx, yy, s, ellipse, hair, skin)
    img = _camera(rng, img)
    if forgery is not None:
        img = _forge(img, rng, forgery, strength, face, ellipse, xx, yy)
    return np.clip(img, 0, 255)


def _forge(img, rng, kind, strength, face, ellipse, xx, yy):
    cx, cy, a, b = ellipse
    # The manipulated region: the face, shrunk or grown a little, with a soft edge.
    k = rng.uniform(0.85, 1.05)
    mask = _ellipse(xx, yy, cx, cy, a * k, b * k, softness=rng.uniform(1.0, 3.0))[..., None]
    if kind == "blend":
        shift = rng.normal(0, 1, 3) * 30 * strength
        forged = img * (1 + rng.normal(0, 0.1 * strength, 3)) + shift
    elif kind == "checkerboard":
        pattern = np.where((np.floor(xx) + np.floor(yy)) % 2 == 0, 1.0, -1.0)[..., None]
        forged = img + pattern * 14 * strength * rng.uniform(0.6, 1.2, 3)
    elif kind == "smooth":
        forged = _blur(img, 0.8 + 1.5 * strength)
    elif kind == "double_jpeg":
        forged = _jpeg(img, int(np.clip(40 - 30 * strength, 3, 60)))
    elif kind == "noise":
        forged = img + rng.normal(0, 18 * strength, img.shape[:2])[..., None] * rng.uniform(
            0.7, 1.0, 3
        )
    else:
        raise ValueError(
            f"unknown forgery kind {kind!r}; valid kinds are {', '.join(FORGERY_KINDS)}"
        )
    return img * (1 - mask) + forged * mask


def _strength(rng: np.random.Generator, difficulty: float) -> float:
    """Trace strength of one fake: most are clear, a difficulty-dependent share is near invisible.

    Clear traces keep the demo learnable by a tiny CNN in a few epochs; the faint share caps the
    reachable AUC below 1 (about 1 - faint_share / 2), so hyperparameters visibly matter.
    """
    faint_share = 0.1 + 0.4 * difficulty
    if rng.random() < faint_share:
        return float(rng.uniform(0.02, 0.3))
    return float(rng.uniform(1.0, 2.0) * (1.3 - 0.6 * difficulty))


def _image_name(seed: int, split: str, i: int) -> str:
    return hashlib.sha1(f"{seed}/{split}/{i}".encode()).hexdigest()[:20] + ".jpg"


def check_forgery_kind(kind: str) -> str:
    """Return ``kind`` or raise ValueError naming the valid kinds."""
    if kind not in FORGERY_KINDS:
        raise ValueError(
            f"unknown forgery kind {kind!r}{did_you_mean(kind, FORGERY_KINDS)}; "
            f"valid kinds are {', '.join(FORGERY_KINDS)}"
        )
    return kind


_SPLIT_INDEX = {"trainset": 0, "valset": 1, "testset": 2}  # each split's part of an image's seed


def _check_demo_args(
    root: Path,
    counts: dict[str, int],
    size: int,
    difficulty: float,
    kinds: tuple[str, ...],
    unseen_forgery: str | None,
) -> None:
    """Raise DataError on the first argument of :func:`write_demo_dataset` that cannot work."""
    if unseen_forgery is not None:
        try:
            check_forgery_kind(unseen_forgery)
        except ValueError as exc:
            raise DataError(f"unseen forgery: {exc}") from None
        if unseen_forgery not in kinds or len(kinds) < 2:
            raise DataError(
                f"unseen forgery {unseen_forgery!r} must be one of at least two kinds drawn "
                f"({', '.join(kinds)}); pick one of them"
            )
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} already exists and is not empty; pick a new folder or delete it")
    if not 0.0 <= difficulty <= 1.0:
        raise DataError(
            f"difficulty must be in [0, 1], but got {difficulty}; e.g. --difficulty 0.5"
        )
    if min(counts["trainset"], counts["valset"]) < 4 or counts["testset"] < 1:
        raise DataError(
            "demo data needs n_train >= 4, n_val >= 4 and n_test >= 1 so both classes appear"
        )
    if not 32 <= size <= 1024:
        raise DataError(f"size must be between 32 and 1024 pixels, but got {size}")


def _write_split(
    folder: Path,
    split: str,
    n: int,
    seed: int,
    size: int,
    difficulty: float,
    drawn: tuple[str | None, ...],
) -> list[tuple[str, str, int, str]]:
    """Write the ``n`` images of ``split`` and its label file under ``folder``; return the split's
    manifest rows ``(img_name, split, target, kind)``.

    Each image draws from its own generator (seed, split, index), and classes alternate, so every
    split has both in file order, whatever ``n``.
    """
    (folder / split).mkdir()
    rows, manifest = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_INDEX[split], i])
        target = i % 2
        kind = drawn[rng.integers(len(drawn))] if target else None
        strength = _strength(rng, difficulty)
        pixels = render_portrait(rng, size, kind, strength)
        name = _image_name(seed, split, i)
        Image.fromarray(pixels.astype(np.uint8)).save(
            folder / split / name, "JPEG", quality=int(rng.integers(82, 97))
        )
        rows.append((name, target))
        manifest.append((name, split, target, kind or ""))
    rows.sort()
    lines = "img_name,target\n" + "".join(f"{n},{t}\n" for n, t in rows)
    # testset's labels are written for evaluation only: training reads testset as a folder listing
    label_file = "testset_label.txt" if split == "testset" else f"{split}_label.txt"
    (folder / label_file).write_text(lines)
    return manifest


def write_demo_dataset(
    root: str | Path,
    n_train: int = 2000,
    n_val: int = 400,
    n_test: int = 200,
    size: int = 64,
    seed: int = 0,
    difficulty: float = 0.5,
    kinds: tuple[str, ...] = FORGERY_KINDS,
    unseen_forgery: str | None = None,
) -> Path:
    """Write ``trainset/``, ``valset/``, ``testset/``, their label files and :data:`MANIFEST`
    under ``root``, atomically (into a temporary folder, renamed when complete).

    With ``unseen_forgery`` that kind appears in testset only (as every test fake's trace).
    The same arguments always give the same files, byte for byte.

    >>> write_demo_dataset("/tmp/demo", n_train=8, n_val=8, n_test=4)  # doctest: +SKIP
    """
    root = Path(root)
    counts = {"trainset": n_train, "valset": n_val, "testset": n_test}
    _check_demo_args(root, counts, size, difficulty, kinds, unseen_forgery)
    seen = tuple(k for k in kinds if k != unseen_forgery)
    drawn = {
        "trainset": seen,
        "valset": seen,
        "testset": (unseen_forgery,) if unseen_forgery else kinds,
    }
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        manifest = []
        for split, n in counts.items():
            manifest += _write_split(tmp, split, n, seed, size, difficulty, drawn[split])
        manifest.sort()
        (tmp / MANIFEST).write_text(
            "img_name,split,target,kind\n" + "".join(",".join(map(str, r)) + "\n" for r in manifest)
        )
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
