#!/bin/sh
# Issue #21, one GPU, long sequences: first runs (pinning included) of the chunked engine with the
# current store (compact head inputs, cudaHostRegister pinning) at 750, 10000 (then 10000 again,
# warm), 2000 and 5000 frames, against the previous store (four projections per layer,
# cudaHostAlloc) at 750 and 2000 frames, in one process after one compilation warm-up; plus
# pinning-rate probes. Uses the first GPU of CUDA_VISIBLE_DEVICES. Expected about 7 minutes on one
# H200 (warm-up ~90 s, new 10000 twice ~180 s); cut at 470 s, the JSON then holds every run
# finished by then (5000 frames runs last). Results: $OUT/long.json, $OUT/long.txt.
set -eu
OUT=${OUT:-/tmp/long-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
free -g >> "$OUT/gpu.txt" 2>&1 || true
timeout 470 python3 bench/long_sequences.py --frames 750 10000 2000 5000 --old-frames 750 2000 \
    --chunk-size 64 --host-budget-gb 64 --gpu-cache-gb 6 --json "$OUT/long.json" 2>&1 | tee "$OUT/long.txt"
