#!/usr/bin/env bash
# Issue #19, the cost side of TTT vs full attention, on one GPU (the first of CUDA_VISIBLE_DEVICES):
# 1. bench/cost.py: demo_ttt vs demo_attention at the demo's 224x168 over 8..1024 frames (time: median
#    of 3 runs after a warm-up; memory: torch.cuda.max_memory_allocated above the weights);
# 2. the demo itself (its step 4 measures at the demo's size on a GPU), to check its CUDA path.
# Run from the repository root; writes $OUT/cost_224x168.{json,txt} and $OUT/demo.txt. About 2 minutes.
set -euo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
python3 bench/cost.py --height 168 --width 224 --frames 8 64 256 1024 --device cuda \
    --json "$OUT/cost_224x168.json" 2>&1 | tee "$OUT/cost_224x168.txt"
python3 -m jobs.demo --out "$OUT/demo" --no-progress > "$OUT/demo.txt" 2>&1 || echo "demo exit code $?" >> "$OUT/demo.txt"
sed -n '/the cost side/,/attention matrix/p' "$OUT/demo.txt"
tail -1 "$OUT/demo.txt"
