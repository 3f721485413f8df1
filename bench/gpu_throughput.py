"""GPU train throughput: the real ffdi-tune pipeline vs synthetic tensors already on the GPU.

efficientnet_b0 at 256 px, AMP (bf16) + channels_last, AdamW. "ceiling": random uint8 batches
already on the GPU, no augmentation (pure model compute). "pipeline": the decode-once cache of a
generated dataset, batches gathered on the CPU, copied (pinned, non-blocking), augmented and
normalised on the GPU, exactly as `train_trial` does. Also runs N copies at once (trials sharing one
GPU).

``--augment SET`` picks the augmentation set (default flips); ``--augment-on loader`` runs it image
by image through torchvision in ``--workers`` DataLoader processes instead of batched on the GPU
(the path sets without a batched form take), to compare the two.

    python bench/gpu_throughput.py [--steps 60] [--concurrent 1] [--device cuda] [--augment
    photometric]
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.loaders import to_model_input, train_batches
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.factory import create_model
from ffdi_tune.training.placement import Augmenters, augmenters
from ffdi_tune.training.settings import TrainSettings


def placed(augment: str, augment_on: str, size: int, device: torch.device) -> Augmenters:
    """Set ``augment`` built where ``train_trial`` puts it (``augment_on``: device_augment on /
    off)."""
    settings = TrainSettings(
        augment=augment, img_size=size, device_augment="on" if augment_on == "device" else "off"
    )
    return augmenters(settings, None, device)


def run(
    device: torch.device,
    steps: int,
    size: int,
    batch_size: int,
    root: Path | None,
    backbone: str,
    augment: str | None = "flips",
    augment_on: str = "device",
    workers: int = 0,
) -> float:
    """Train images/s; ``root`` None: the ceiling (random batches on the device, no augment)."""
    torch.manual_seed(0)
    model = create_model(backbone).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = torch.bfloat16 if device.type == "cuda" else None
    mean = torch.tensor((0.485, 0.456, 0.406), device=device)
    std = torch.tensor((0.229, 0.224, 0.225), device=device)
    aug = (
        placed(augment, augment_on, size, device)
        if root is not None
        else Augmenters("none", None, None, None)
    )
    if root is None:
        data = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
        batches = ((data, torch.randint(0, 2, (batch_size,))) for _ in iter(int, 1))
    else:
        split = read_split(DataConfig(root=str(root)), "train")
        images = load_images(split, size, cache_dir=root / "cache")
        gen = torch.Generator().manual_seed(0)

        def forever():
            while True:
                yield from train_batches(
                    images,
                    split.targets,
                    batch_size,
                    gen,
                    aug.per_image,
                    aug.while_gathering,
                    workers,
                    pin_memory=device.type == "cuda",
                )

        batches = forever()
    done, t0 = 0, None
    for step, (batch, y) in enumerate(batches):
        if step == 5:  # warm-up (cudnn autotune, allocator) excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch = batch.to(device, non_blocking=True)
        x = to_model_input(
            aug.on_device(batch) if aug.on_device is not None else batch,
            mean,
            std,
            device,
            channels_last=True,
        )
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 5:
            done += len(batch)
        if step == steps + 5:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument(
        "--concurrent", type=int, default=1, help="run this many copies at once (one GPU)"
    )
    ap.add_argument("--augment", default="flips", help="augmentation set (default flips)")
    ap.add_argument(
        "--augment-on",
        choices=["device", "loader"],
        default="device",
        help="batched on the GPU, or per image in DataLoader workers",
    )
    ap.add_argument(
        "--workers", type=int, default=8, help="DataLoader workers when the set runs image by image"
    )
    ap.add_argument(
        "--data", help="dataset folder to reuse across runs (generated there when missing)"
    )
    ap.add_argument("--only", choices=["pipeline"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    # without a batched form: loader
    where = placed(args.augment, args.augment_on, args.size, device).where
    aug = (args.augment, args.augment_on, args.workers if where == "loader" else 0)
    if args.only:  # a child of --concurrent
        root = Path(args.root)
        print(
            json.dumps(
                {
                    "img_s": run(
                        device, args.steps, args.size, args.batch_size, root, args.backbone, *aug
                    )
                }
            )
        )
        return
    with tempfile.TemporaryDirectory(prefix="ffdi-gpu-") as tmp:
        root = Path(args.data or Path(tmp) / "d")
        # --data: generated once, reused by later runs
        if not (root / "trainset_label.txt").exists():
            write_demo_dataset(root, n_train=args.images, n_val=4, n_test=2, size=args.size * 2)
        load_images(
            read_split(DataConfig(root=str(root)), "train"), args.size, cache_dir=root / "cache"
        )
        out = {}
        for kind in ("ceiling", "pipeline"):
            out[f"{kind}_img_s"] = round(
                run(
                    device,
                    args.steps,
                    args.size,
                    args.batch_size,
                    root if kind == "pipeline" else None,
                    args.backbone,
                    *aug,
                ),
                1,
            )
        if args.concurrent > 1:
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--size",
                str(args.size),
                "--batch-size",
                str(args.batch_size),
                "--backbone",
                args.backbone,
                "--only",
                "pipeline",
                "--root",
                str(root),
                "--augment",
                args.augment,
                "--augment-on",
                args.augment_on,
                "--workers",
                str(args.workers),
            ]
            procs = [
                subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                for _ in range(args.concurrent)
            ]
            rates = [
                json.loads(p.communicate()[0].strip().splitlines()[-1])["img_s"] for p in procs
            ]
            out[f"pipeline_{args.concurrent}_trials_total_img_s"] = round(sum(rates), 1)
    out["pipeline_vs_ceiling"] = round(out["pipeline_img_s"] / out["ceiling_img_s"], 3)
    out.update(
        device=str(device),
        backbone=args.backbone,
        size=args.size,
        batch_size=args.batch_size,
        augment=args.augment,
        augment_on=where,
        workers=aug[2],
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
