#!/bin/sh
# Issue #21, scene states through a gang on GPUs: a scene-state job (tiny_state_query, 13 frames)
# whose long sequence runs on a gang of 2 GPUs (NCCL, engine.frame_parallel auto, rank 0 keeps the
# state), against the same job on single actors: the stored states' fast weights and cameras.
# Also reruns the existing gang GPU test. Needs 2 GPUs of one host (CUDA_VISIBLE_DEVICES with 2),
# Ray/pydantic on PYTHONPATH, pytest. About 2-3 minutes (four tiny-model runs). Writes
# $OUT/gang2.txt (pytest output with one JSON line of errors per test).
set -u
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # as bench/device/README.md
OUT=${OUT:-/tmp/gang2-out}
mkdir -p "$OUT"
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray-gang2-gpu}
mkdir -p "$RAY_TMPDIR"
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.csv" 2>&1
python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/pipeline/test_gang_gpu.py 2>&1 | tee "$OUT/gang2.txt"
