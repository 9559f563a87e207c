#!/bin/sh
# Issue #18, one H200: the pipeline's frames/s on 8 real-codec 1080p H.264 videos x 240 frames
# (encoded here with PyAV) against the engine alone on the same frames, with the defaults (decode
# tasks of 4 CPUs chosen by the run, frames turned into model input on 4 threads each), then once
# more with decode tasks of 8 CPUs. Also printed: decode frames/s per core, one decode task's
# frames/s with 1, 2, 4 and 8 threads (pixels checked identical), the settings of each run.
# Before (decode_cpus 1, 22 cores): 57.9 against 91.9 frames/s, ratio 0.630, engine busy 57.8%.
# Uses GPU 0 of CUDA_VISIBLE_DEVICES (one actor); Ray gets the cores this process may use (a
# taskset counts). Expected about 4-5 minutes (machine start not counted), cut at 345 s: each
# pipeline run's ratio is printed as soon as it ends. Results: $OUT/vdec.txt (JSON on its last
# line), $OUT/machine.txt.
set -eu
OUT=${OUT:-/tmp/vdec-out}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" RAY_AUTH_MODE=disabled
{ nproc; nvidia-smi --query-gpu=name,memory.total --format=csv; free -g; } > "$OUT/machine.txt" 2>&1 || true
timeout 345 python3 bench/video_throughput.py --preset offline_affine --device cuda --size 518 --dtype bfloat16 \
    --fast --cpus-per-actor 8 --videos 8 --frames 240 --variant decode_cpus=8 2>&1 \
    | tee "$OUT/vdec.txt" | grep -v '^{' | grep -E '^\||^\[|^pipeline run|^decode|^[0-9]+ videos' | tail -30
