#!/bin/sh
# Issue #21, one GPU, long sequences: first runs (pinning included) of the chunked engine at 750,
# 10000 and 5000 frames with the current store (compact head inputs, cudaHostRegister pinning)
# against the previous one (four projections per layer, cudaHostAlloc) at 750 and 5000 frames,
# in one process after one compilation warm-up. Uses GPU 0 of CUDA_VISIBLE_DEVICES; about 6.5
# minutes on one H200 (warm-up ~90 s, old 5000 ~100 s, new 10000 ~90 s); cut at 470 s, and the
# JSON holds every run finished by then. Results: $OUT/long.json, $OUT/long.txt.
set -eu
OUT=${OUT:-/tmp/long-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
free -g >> "$OUT/gpu.txt" 2>&1 || true
timeout 470 python3 bench/long_sequences.py --frames 750 10000 5000 --old-frames 750 5000 \
    --chunk-size 64 --host-budget-gb 64 --gpu-cache-gb 6 --json "$OUT/long.json" 2>&1 | tee "$OUT/long.txt"
