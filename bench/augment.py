"""Cost of each augmentation set per image: torchvision image by image vs the batched device form.

"per image": the set's torchvision transform on one uint8 image at a time, as a loader worker
runs it (one thread). "batched": the set's kornia form on whole uint8 batches, as training runs it
on the device; timed on this CPU (one thread) and, when there is one, on the GPU. Same decoded
demo images (sources twice the side, resized once), same batch size, runs alternating per set.
A loader worker that pays ``per_image_ms`` feeds at most ``1000 / per_image_ms`` images/s, so
``workers_for_4000_img_s`` says how many CPU cores the slowest set needs to keep a GPU that trains
4,000 images/s busy without the device forms.
``batched_call_overhead_ms`` is one batched call on 16 px images on this CPU: its fixed cost
(Python, parameter draws), an estimate of the host time a GPU run pays per batch whatever the size.

    python bench/augment.py [--size 256] [--batch-size 64] [--reps 3]
Last line: JSON with batched_vs_per_image_cpu (median over the sets with a batched form).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ffdi_tune.data.augment import (
    augment_names,
    batch_augment,
    build_augment,
    device_augment,
    has_device_form,
)
from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig

PER_IMAGE_ONLY = [name for name in augment_names() if not has_device_form(name)]


def per_image_ms(name: str, batch: torch.Tensor) -> float:
    t = build_augment(name, batch.shape[-1])
    t0 = time.perf_counter()
    for img in batch:
        t(img)
    return (time.perf_counter() - t0) * 1000 / len(batch)


def batched_ms(name: str, batch: torch.Tensor) -> float:
    t = device_augment(name, batch.shape[-1]).to(batch.device)
    t(batch)  # warm-up: kernels, caches
    if batch.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    t(batch)
    if batch.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000 / len(batch)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ffdi-aug-") as tmp:
        root = write_demo_dataset(
            Path(tmp) / "d", n_train=args.batch_size, n_val=4, n_test=2, size=args.size * 2
        )
        batch = load_images(read_split(DataConfig(root=str(root)), "train"), args.size)[
            : args.batch_size
        ].clone()
    cuda = batch.cuda() if torch.cuda.is_available() else None
    # 16 px images: the time of one batched call is then its fixed cost (Python, parameter draws),
    # which a GPU run pays on the host for every batch whatever the image size.
    tiny = torch.nn.functional.interpolate(batch[:, :, ::16, ::16].float(), size=16).to(torch.uint8)
    names = [n for n in augment_names() if has_device_form(n) and batch_augment(n) is None]
    rows: dict[str, dict[str, float | None]] = {}
    for name in names + PER_IMAGE_ONLY:
        per, cpu, gpu, overhead = [], [], [], []
        for _ in range(args.reps):
            per.append(per_image_ms(name, batch))
            if has_device_form(name):
                cpu.append(batched_ms(name, batch))
                overhead.append(batched_ms(name, tiny) * len(tiny))
                if cuda is not None:
                    gpu.append(batched_ms(name, cuda))
        rows[name] = {
            "per_image_ms": round(statistics.median(per), 3),
            "batched_cpu_ms": round(statistics.median(cpu), 3) if cpu else None,
            "batched_cuda_ms": round(statistics.median(gpu), 4) if gpu else None,
            "batched_call_overhead_ms": round(statistics.median(overhead), 2) if overhead else None,
        }
        print(f"{name:15s} {json.dumps(rows[name])}", flush=True)
    ratios = [r["per_image_ms"] / r["batched_cpu_ms"] for r in rows.values() if r["batched_cpu_ms"]]
    overheads = [
        r["batched_call_overhead_ms"] for r in rows.values() if r["batched_call_overhead_ms"]
    ]
    slowest = max(rows, key=lambda n: rows[n]["per_image_ms"])
    out = {
        "size": args.size,
        "batch_size": args.batch_size,
        "sets": rows,
        "batched_vs_per_image_cpu": round(statistics.median(ratios), 2),
        "batched_call_overhead_ms_median": round(statistics.median(overheads), 2),
        "slowest_per_image_set": slowest,
        "workers_for_4000_img_s": round(4000 * rows[slowest]["per_image_ms"] / 1000, 1),
        "gpu": torch.cuda.get_device_name() if cuda is not None else None,
    }
    if cuda is not None:
        gpu_ratios = [
            r["per_image_ms"] / r["batched_cuda_ms"] for r in rows.values() if r["batched_cuda_ms"]
        ]
        out["batched_cuda_vs_per_image_cpu"] = round(statistics.median(gpu_ratios), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
