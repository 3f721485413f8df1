"""Training-pipeline images/s: the decode-once cache vs a seed-style Dataset, side by side.

Seed-style: PIL open + resize + the same augmentation (flips) + ToTensor + Normalize for every
image, every epoch, through a DataLoader. Cached: the split decoded once into the memory-mapped
cache, whole batches gathered, flipped per image and normalised as training does. Same images,
same batch size, no worker processes for either (2 cores), runs alternating in one process.
Two cases: the demo images at 64 px, and 512 px JPEGs resized to 256.

    python bench/loader.py [--reps 3] [--n-large 300]
Last line: JSON with cached_vs_seed and cached_vs_seed_256.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ffdi_tune.data.augment import batch_augment
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.loaders import to_model_input, train_batches
from ffdi_tune.data.settings import DataConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SeedStyle(Dataset):
    """What the usual FFDI starter code does per image, per epoch."""

    def __init__(self, paths, targets, size):
        self.paths, self.targets = paths, targets
        self.transform = v2.Compose(
            [
                v2.Resize((size, size)),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), int(self.targets[i])


def seed_epoch(split, size, batch_size):
    n = 0
    for x, _ in DataLoader(
        SeedStyle(split.paths, split.targets, size),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
    ):
        n += len(x)
    return n


def cached_epoch(images, targets, batch_size, mean, std):
    flips = batch_augment("flips")
    gen = torch.Generator().manual_seed(0)
    n = 0
    for batch, _ in train_batches(images, targets, batch_size, gen):
        x = to_model_input(flips(batch), mean, std, torch.device("cpu"))
        n += len(x)
    return n


def measure(root: Path, size: int, reps: int, batch_size: int, cache_dir: Path) -> dict:
    split = read_split(DataConfig(root=str(root)), "train")
    t = time.perf_counter()
    # the first trial on a node pays this once
    images = load_images(split, size, cache_dir=cache_dir)
    build_s = time.perf_counter() - t
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    seed, cached = [], []
    for _ in range(reps):
        t = time.perf_counter()
        n = seed_epoch(split, size, batch_size)
        seed.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = cached_epoch(images, split.targets, batch_size, mean, std)
        cached.append(n / (time.perf_counter() - t))
    s, c = statistics.median(seed), statistics.median(cached)
    return {
        "images": len(split),
        "seed_img_s": round(s),
        "cached_img_s": round(c),
        "ratio": round(c / s, 1),
        "cache_build_s": round(build_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-small", type=int, default=2000)
    ap.add_argument("--n-large", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ffdi-bench-") as tmp:
        tmp = Path(tmp)
        small = write_demo_dataset(tmp / "demo64", n_train=args.n_small, n_val=8, n_test=2, size=64)
        large = write_demo_dataset(
            tmp / "demo512", n_train=args.n_large, n_val=8, n_test=2, size=512
        )
        demo = measure(small, 64, args.reps, args.batch_size, tmp / "cache")
        big = measure(large, 256, args.reps, args.batch_size, tmp / "cache")
    print(
        f"demo 64 px  ({demo['images']} JPEGs): seed-style {demo['seed_img_s']} img/s, cached "
        f"{demo['cached_img_s']} img/s, {demo['ratio']}x (cache built once in "
        f"{demo['cache_build_s']} s)"
    )
    print(
        f"512->256 px ({big['images']} JPEGs): seed-style {big['seed_img_s']} img/s, cached "
        f"{big['cached_img_s']} img/s, {big['ratio']}x (cache built once in {big['cache_build_s']} "
        "s)"
    )
    print(
        json.dumps(
            {
                "cached_vs_seed": demo["ratio"],
                "cached_vs_seed_256": big["ratio"],
                "demo_64": demo,
                "large_256": big,
                "threads": 1,
                "workers": 0,
            }
        )
    )


if __name__ == "__main__":
    main()
