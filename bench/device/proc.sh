#!/bin/sh
# Issue #21 (short sequences in the pipeline) and #18 (pipeline on 1080p videos), one H200:
# pipeline frames/s against the engine alone in the same run, with the engine in its own process
# per actor (pipeline/engine_process.py). About 5 minutes (machine start not counted):
#   1. 40 sequences x 32 frames   (target: ratio >= 0.95; 0.852 before)
#   2. 16 sequences x 100 frames  (target: no worse than 0.968)
#   3. 8 real-codec 1080p H.264 videos x 240 frames (target: ratio >= 0.90; 0.78 before)
# Each prints the ratio, inference per sequence in the pipeline against alone, and how long the
# engine waited between sequences. Run from the repository root; uses GPU 0 of CUDA_VISIBLE_DEVICES
# (one actor). Results: $OUT/proc_{32,100,video}.txt with the JSON on their last line.
set -eu
OUT=${OUT:-/tmp/proc-bench}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" RAY_AUTH_MODE=disabled
common="--preset offline_affine --device cuda --size 518 --dtype bfloat16 --fast --cpus-per-actor 8 --num-actors 1"
python3 bench/pipeline_throughput.py $common --sequences 40 --frames 32 2>&1 | tee "$OUT/proc_32.txt" | grep -v '^{' | tail -6
python3 bench/pipeline_throughput.py $common --sequences 16 --frames 100 2>&1 | tee "$OUT/proc_100.txt" | grep -v '^{' | tail -6
python3 bench/video_throughput.py --preset offline_affine --device cuda --size 518 --dtype bfloat16 --fast \
    --cpus-per-actor 8 --videos 8 --frames 240 --processes 12 2>&1 | tee "$OUT/proc_video.txt" | grep -v '^{' | tail -14
