#!/usr/bin/env bash
# Issue #19 on the GPU machine: train demo_ttt and demo_attention with the recipe of the shipped files
# (the demo presets: layer scale 1.0 and sin-cos patch positions, see bench/exp/README.md; camera head
# started at the trivial prediction; cosine to a floor of LR_MIN_RATIO of the peak) on identical
# batches for the same steps, then evaluate both files as shipped (float16) next to the trivial
# baseline on the held-out 16 x 12 set and on the demo's 9 sequences. Everything lands in $OUT:
#   demo_ttt.safetensors, demo_attention.safetensors  trained weights (float16, ~10 MB each)
#   results.json, eval.log                            both tables, per-sequence metrics, training curves
#   train_<model>.log                                 training logs; training_curve.png
#   state/<model>.pt.part-*                           resumable training state, split in 15 MiB parts
#
# Two GPUs (cuda:0, cuda:1): one model per GPU, same seed and data settings, so both processes
# render the same batches and train the same STEPS steps (the lockstep guarantee of --models).
# Measured on one H200 (2026-11-30, both models in one process): demo_ttt 0.234 s a step,
# demo_attention 0.157 s, rendering ~0.08 s, pool 14 s. On 2 x H200, one model each: demo_ttt
# ~0.31 s a step, so STEPS=1300 is ~6.9 minutes of training (attention finishes first) and the
# whole call ~8.5 minutes with the evaluation (~1 minute); STOP_MINUTES=7.5 only guards against a
# slower machine (a run stopped by it saves a resumable state, and the two models' steps may then
# differ: check the last line of both train logs). One GPU: both models in lockstep in one process,
# fewer steps.
#
#   bash bench/device/cam.sh                                      # fresh run, 2 x H200, ~8.5 min
#   RESUME=<dir with state/> STEPS=2600 bash bench/device/cam.sh  # continue the exact state to 2600 steps
#   INIT=<dir with the two .safetensors> bash bench/device/cam.sh     # or fine-tune the files (~20 MB to carry:
#                                                                     # the split states are ~70 MB together)
# CPU smoke run (a few minutes): PYTHON=.venv/bin/python OUT=/tmp/cam STEPS=2 TRAIN_EXTRA="--size 28 --frames-per-batch 4
#   --max-frames 2 --pool-size 2 --pool-frames 3" EVAL_EXTRA="--size 28 --eval-sequences 1 --eval-frames 2"
#   bash bench/device/cam.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the results folder}"
PY=${PYTHON:-python3}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then STEPS=${STEPS:-1300}; else STEPS=${STEPS:-700}; fi
DEV=$([ "$GPUS" -ge 1 ] && echo cuda || echo cpu)  # cpu: smoke runs only (with tiny TRAIN_EXTRA/EVAL_EXTRA)
# a variant of both presets for this run (e.g. PRESET_UPDATE="value_rope=true"); the presets as they are by default
read -r -a UPDATE <<< "${PRESET_UPDATE:-}"
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_EXTRA:---eval-demo}"
STOP_MINUTES=${STOP_MINUTES:-7.5}  # guard: a run stopped by it saves a resumable state (steps may then differ)
mkdir -p "$OUT/state" /tmp/cam_state
CONTINUE=()  # INIT: fine-tune the two files of an earlier run (new data, a fresh schedule at half the lr)
if [ -n "${INIT:-}" ]; then CONTINUE=(--init-dir "$INIT"); SEED=${SEED:-1}; LR=${LR:-4e-4}; fi
COMMON=(--steps "$STEPS" --stop-after-minutes "$STOP_MINUTES" --lr "${LR:-8e-4}" --warmup-steps 150
        --lr-min-ratio "${LR_MIN_RATIO:-0.1}"
        --frames-per-batch 64 --max-frames 12 --pool-size 128 --pool-frames 16 --new-per-step 0.5
        --seed "${SEED:-0}" --log-every 50 --eval-sequences 0 --preset-update "${UPDATE[@]}" "${TRAIN_EXTRA[@]}"
        "${CONTINUE[@]}")

resume_args() {  # $1: state name; joins the parts of an earlier run's state, if RESUME is set
  if [ -n "${RESUME:-}" ]; then
    cat "$RESUME"/state/"$1".pt.part-* > /tmp/cam_state/"$1".in.pt
    echo --resume /tmp/cam_state/"$1".in.pt
  fi
}

split_state() {  # $1: state name
  split -b 15M -d /tmp/cam_state/"$1".pt "$OUT/state/$1.pt.part-"
}

echo "GPUs: $GPUS, steps: $STEPS" | tee "$OUT/eval.log"
if [ "$GPUS" -ge 2 ]; then
  pids=()
  for i in 0 1; do
    model=$([ $i = 0 ] && echo demo_ttt || echo demo_attention)
    # shellcheck disable=SC2046
    "$PY" bench/train_demo.py --models "$model" --device "cuda:$i" "${COMMON[@]}" --out-dir "$OUT/run_$model" \
      --state-out /tmp/cam_state/$model.pt $(resume_args $model) > "$OUT/train_$model.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "a training process failed:"; tail -n 20 "$OUT"/train_*.log; exit 1; }; done
  for model in demo_ttt demo_attention; do
    mv "$OUT/run_$model/$model.safetensors" "$OUT/"
    split_state $model
    tail -n 2 "$OUT/train_$model.log"
  done
else
  # shellcheck disable=SC2046
  "$PY" bench/train_demo.py --device "$DEV" "${COMMON[@]}" --out-dir "$OUT/run_both" \
    --state-out /tmp/cam_state/both.pt $(resume_args both) > "$OUT/train_both.log" 2>&1
  mv "$OUT"/run_both/demo_*.safetensors "$OUT/"
  split_state both
  tail -n 2 "$OUT/train_both.log"
fi
"$PY" bench/train_demo.py --skip-training --device "$DEV" --out-dir "$OUT" --preset-update "${UPDATE[@]}" \
  "${EVAL_EXTRA[@]}" 2>&1 | tee -a "$OUT/eval.log"
"$PY" bench/plot_training.py "$OUT"/run_*/results.json --out "$OUT/training_curve.png" \
  || echo "no training curve (matplotlib missing?)"
ls -la "$OUT" "$OUT/state"
