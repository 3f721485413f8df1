#!/usr/bin/env bash
# One prepared run for a lent GPU machine (fits in about 8 minutes): efficientnet_b0 at 256 px,
# AMP + channels_last, the real pipeline vs synthetic tensors on the GPU, and 1 vs 4 trials per GPU.
# Usage (repository root): bash bench/gpu.sh   -> JSON lines, the last one per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -c "import ffdi_tune" 2>/dev/null || pip install -q -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 240 python bench/gpu_throughput.py --steps 80 --concurrent 1
timeout 240 python bench/gpu_throughput.py --steps 40 --concurrent 4
