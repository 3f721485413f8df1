#!/usr/bin/env bash
# One prepared run for a lent GPU machine (fits in about 8 minutes): efficientnet_b0 at 256 px,
# AMP + channels_last, the real pipeline vs synthetic tensors on the GPU, 1 vs 4 trials per GPU,
# a heavy augmentation set batched on the GPU vs image by image in 12 loader workers, and each
# set's cost per image (bench/augment.py).
# Usage (repository root): bash bench/gpu.sh   -> JSON lines, the last one per configuration.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -c "import ffdi_tune, kornia" 2>/dev/null || pip install -q -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# The dataset once (800 images at 512 px, decoded to 256 px), shared by every run below.
data=$(mktemp -d)/d
timeout 150 python - "$data" <<'PY'
import sys
from ffdi_tune.config import DataConfig
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.demo import write_demo_dataset
root = write_demo_dataset(sys.argv[1], n_train=800, n_val=4, n_test=2, size=512)
load_images(read_split(DataConfig(root=str(root)), "train"), 256, cache_dir=root / "cache")
PY
timeout 70 python bench/gpu_throughput.py --data "$data" --steps 80 --concurrent 1
timeout 80 python bench/gpu_throughput.py --data "$data" --steps 40 --concurrent 4
timeout 50 python bench/gpu_throughput.py --data "$data" --steps 60 --augment photometric
timeout 50 python bench/gpu_throughput.py --data "$data" --steps 60 --augment photometric --augment-on loader --workers 12
timeout 60 python bench/augment.py --reps 1
