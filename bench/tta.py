"""Prediction with TTA: k members x t views from one decode vs re-decoding the images per view.

Re-decode (the usual starter code): for every member and view, a DataLoader opens, decodes,
resizes, flips/rotates (PIL) and normalises every image again. One decode (ffdi-tune): each split
is decoded once, every view is a tensor op on the decoded batch. Same models (tiny test_resnet,
random weights: only time matters), same images, same batch size.

    python bench/tta.py [--members 3] [--images 400] [--size 64]
Last line: JSON with views8_vs_view1_data and redecode_vs_once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ffdi_tune.data.demo import write_demo_dataset
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.loaders import eval_loader, to_model_input
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.models.factory import create_model
from ffdi_tune.scoring.predict import Member, predict_views
from ffdi_tune.scoring.tta import TTA_VIEWS, apply_view

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIL_VIEWS = {  # the same eight symmetries, done on PIL images as starter code does
    "identity": None,
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT,
    "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rot90": Image.Transpose.ROTATE_90,
    "rot180": Image.Transpose.ROTATE_180,
    "rot270": Image.Transpose.ROTATE_270,
    "transpose": Image.Transpose.TRANSPOSE,
    "antitranspose": Image.Transpose.TRANSVERSE,
}


class Redecode(Dataset):
    def __init__(self, paths, size, view):
        self.paths, self.view = paths, PIL_VIEWS[view]
        self.t = v2.Compose(
            [
                v2.Resize((size, size)),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            im = (
                self.t(im.convert("RGB"))
                if self.view is None
                else self.t(im.convert("RGB").transpose(self.view))
            )
            return im


@torch.no_grad()
def redecode_predict(models, paths, size, views, batch_size):
    for m in models:
        for view in views:
            for x in DataLoader(Redecode(paths, size, view), batch_size=batch_size, num_workers=0):
                m(x).softmax(1)


def view_data_time(images, views, batch_size, mean, std):
    t = time.perf_counter()
    for batch in eval_loader(images, batch_size):
        x = to_model_input(batch, mean, std, torch.device("cpu"))
        for v in views:
            apply_view(v, x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    views = list(TTA_VIEWS)
    assert len(views) == 8
    models = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        models.append(create_model("test_resnet").eval())
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    with tempfile.TemporaryDirectory(prefix="ffdi-bench-") as tmp:
        root = write_demo_dataset(
            Path(tmp) / "d", n_train=4, n_val=4, n_test=args.images, size=args.size
        )
        split = read_split(DataConfig(root=str(root)), "test")

        t = time.perf_counter()
        images = load_images(split, args.size)
        decode_s = time.perf_counter() - t
        data8 = decode_s + view_data_time(images, views, args.batch_size, mean, std)
        data1 = decode_s + view_data_time(images, views[:1], args.batch_size, mean, std)

        t = time.perf_counter()
        images = load_images(split, args.size)
        for m in models:
            predict_views(Member("m", m, args.size, mean, std, {}), images, views, args.batch_size)
        once_s = time.perf_counter() - t

        t = time.perf_counter()
        redecode_predict(models, split.paths, args.size, views, args.batch_size)
        redecode_s = time.perf_counter() - t
    out = {
        "views8_vs_view1_data": round(data8 / data1, 2),
        "redecode_vs_once": round(redecode_s / once_s, 2),
        "decode_s": round(decode_s, 3),
        "data_8_views_s": round(data8, 3),
        "data_1_view_s": round(data1, 3),
        "once_total_s": round(once_s, 2),
        "redecode_total_s": round(redecode_s, 2),
        "members": args.members,
        "views": len(views),
        "images": args.images,
        "size": args.size,
    }
    print(
        f"{args.members} members x {len(views)} views on {args.images} images at {args.size} px: "
        f"one decode {once_s:.2f} s, re-decode per view {redecode_s:.2f} s "
        f"({out['redecode_vs_once']}x); data time of 8 views vs 1: {out['views8_vs_view1_data']}x"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
