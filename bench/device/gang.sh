#!/bin/sh
# Issue #21, pipeline gangs on GPUs: a job whose long sequence runs on a gang of 2 GPUs (NCCL,
# engine.frame_parallel auto) and whose short one runs on the pool; the long one's depth and
# cameras against a single actor's; then a scene-state job (tiny_state_query) whose long sequence
# runs on the gang, its stored state's fast weights and cameras against a single actor's. Needs 2
# GPUs of one host (CUDA_VISIBLE_DEVICES with 2), Ray/pydantic on PYTHONPATH, pytest. About 2-4
# minutes (four runs of tiny models). Writes $OUT/gang_gpu.txt (pytest output with one JSON line of
# errors per test).
set -u
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # as bench/device/README.md
OUT=${OUT:-/tmp/gang-out}
mkdir -p "$OUT"
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray-gang-gpu}
mkdir -p "$RAY_TMPDIR"
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.csv" 2>&1
python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/pipeline/test_gang_gpu.py 2>&1 | tee "$OUT/gang_gpu.txt"
