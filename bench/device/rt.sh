#!/bin/sh
# Issue #21, streaming and FP8 (helper rt): run from the repository root on a host with one H200
# (uses the first visible GPU only), PyTorch 2.11, pydantic on PYTHONPATH. Results under $OUT:
#   streaming.txt/.json  bench/streaming_latency.py: streaming preset (window 1), random full-size
#                        weights, 392x518, 500 frames pushed one at a time: median/p99 ms per
#                        frame and frames/s for float32 (40 frames), bf16 autocast (200 frames),
#                        the fast path eager / CUDA-graphed / compiled / compiled+graphed (500),
#                        and the offline engine's frames/s on the same 500 frames (fast path,
#                        eager and compiled). About 4 min (two compilations of about 60 s).
#   fp8.txt/.json        bench/fp8.py: offline_affine random full-size, 750 frames: float32 /
#                        bf16 fast path / FP8, time and depth/camera errors vs float32; the
#                        trained demo model's errors; GEMMs alone. About 2 min.
#   gpu_test.txt         pytest -m gpu: torch._scaled_mm against the CPU computation, and a
#                        CUDA-graphed window-1 stream against the eager one. Seconds.
# Each step has its own time limit (JSON written after every variant: a step cut short keeps
# what it measured); all three together stay under 8 minutes.
set -u
OUT=${OUT:-/tmp/rt-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

timeout 270 python3 bench/streaming_latency.py --frames 500 --float32-frames 40 --autocast-frames 200 \
    --json "$OUT/streaming.json" > "$OUT/streaming.txt" 2>&1
echo "streaming_latency exit $?" | tee -a "$OUT/status.txt"

timeout 165 python3 bench/fp8.py --frames 750 --repeats 2 --json "$OUT/fp8.json" > "$OUT/fp8.txt" 2>&1
echo "fp8 exit $?" | tee -a "$OUT/status.txt"

timeout 40 python3 -m pytest -q -m gpu -p no:cacheprovider tests/zipmap_core/test_gpu.py -k "fp8 or graphed" \
    > "$OUT/gpu_test.txt" 2>&1
echo "gpu tests exit $?" | tee -a "$OUT/status.txt"
tail -n 14 "$OUT/streaming.txt" "$OUT/fp8.txt"
