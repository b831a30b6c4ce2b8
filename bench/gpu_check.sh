#!/usr/bin/env bash
# The GPU checks on a lent H100/H200 (the team's developers' guide, bench/README.md), each part about 5 minutes:
#   CUDA tests (fp16 + scaler, bf16, compile, checkpointing, tiles after out-of-memory, folder prediction),
#   then the training rows ("train") and/or the prediction rows ("predict"), and a table at the end.
# Uses the machine's own python3 (PyTorch preinstalled there); wandb is not needed (--wandb disabled).
#   bash bench/gpu_check.sh [all|train|predict|explore|next]    # default all; log and table also go to $OUT
# "next" (~6 min, timeout_s 420: a 15-minute lease then still has room for one rerun): what the latest code has
# not been measured with, most important first, so that a run cut short still answers the main questions: the
# CUDA tests, train.py end to end, the model's step profiled by kind of kernel (bench/step_profile.py),
# predict.py end to end, predict.py with a blur in place of the U-Net (its ceiling around the model), train.py at
# full resolution (the 6 GiB target). The tables are also in $OUT/gpu_table*.md, row by row, should the call be cut.
# "explore" (~7 min, not in "all"): what could lift the ceilings further: the per-mask costs on the GPU,
# predict.py with cuDNN's algorithm search, model-only training variants train.py does not use yet (960x640
# inputs, batch 32, CUDA graphs, max-autotune last, cut at 150 s).
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
PY=${PY:-python3}
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
TABLE="$OUT/gpu_table.md"  # training rows (train_speed.py, step_profile.py)
PREDICT_TABLE="$OUT/gpu_table_predict.md"  # prediction rows (predict_speed.py): other columns
: >"$TABLE"
: >"$PREDICT_TABLE"

row() {  # run a benchmark, keep its last line (a Markdown row) for its table
    local label=$1
    shift
    echo "== $(date +%T) $label: $*" | tee -a "$LOG"
    local line table=$TABLE
    [[ $1 == bench/predict_speed.py ]] && table=$PREDICT_TABLE
    line=$(timeout "${STEP_TIMEOUT:-150}" "$PY" "$@" 2>>"$LOG" | tee -a "$LOG" | tail -n 1)
    echo "| $label ${line:-| failed or timed out (see gpu_check.log) |}" >>"$table"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$LOG"

echo "== $(date +%T) CUDA tests" | tee -a "$LOG"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 15 | tee -a "$LOG"

if [[ $PART == all || $PART == train ]]; then
# Carvana size from disk at scale 0.5: our defaults (bf16, compile on CUDA, auto batch), the same eager, then the
# reference recipe; the most important rows first, so that a run cut short still answers the main questions.
# --compile on: 864 training images are fewer than auto compiles for (15,000); the warm-up epoch is left out
row "train.py defaults, compiled" bench/train_speed.py --count 320 --scale 0.5 --epochs 3 --compile on
# Full resolution at batch 1 with --amp and checkpointing: the 6 GiB target.
row "full res b1 amp ckpt" bench/train_speed.py --model-only --scale 1 --batch-size 1 --amp --checkpointing --compile off
row "train.py full res b1 amp ckpt" bench/train_speed.py --count 40 --scale 1 --batch-size 1 --amp --checkpointing \
    --epochs 2 --compile off
row "train.py --compile off" bench/train_speed.py --count 320 --scale 0.5 --epochs 3 --compile off
row "reference --amp b8" bench/train_speed.py --count 320 --scale 0.5 --epochs 2 --recipe reference --amp --batch-size 8
# The model alone: the ceiling beside the end-to-end figures.
row "model bf16 b16 compiled" bench/train_speed.py --model-only --scale 0.5 --batch-size 16 --compile on
# Full resolution in 512x512 windows (--crop): images/s and memory of a run that does not downscale.
row "train.py --crop 512 scale 1" bench/train_speed.py --count 320 --scale 1 --crop 512 --epochs 2 --compile off
fi

if [[ $PART == all || $PART == predict ]]; then
# Prediction: a folder of Carvana-size JPEGs at scale 0.5 to full-size PNG masks, ours vs the reference's loop.
row "predict.py compiled" bench/predict_speed.py --count 960 --files 320 --reference-count 8 -- --compile on
row "predict.py eager" bench/predict_speed.py --count 960 --files 320 --reference-count 0 -- --compile off
# --tile auto on a GPU with 2 GiB: a 1918x1280 image at scale 1 (planned tiles, then the out-of-memory fallback).
echo "== $(date +%T) tile memory" | tee -a "$LOG"
timeout 120 "$PY" bench/tile_memory.py --width 1918 --height 1280 --scale 1 --gpu-limit 2 2>>"$LOG" | tee -a "$LOG"
timeout 60 "$PY" bench/inference_memory.py --device cuda 2>>"$LOG" | tee -a "$LOG"
# Per-mask costs around the model: PNG writing (CPU) and class counting on the GPU, per method.
timeout 60 "$PY" bench/mask_output_cost.py --device cuda --repeat 5 2>>"$LOG" | tee -a "$LOG"
fi

if [[ $PART == next ]]; then
# --compile on: 864 training images are fewer than auto compiles for (15,000); the warm-up epoch is left out
row "train.py defaults, compiled" bench/train_speed.py --count 320 --scale 0.5 --epochs 3 --compile on
# The model's step (the "model bf16 b16 compiled" row's images/s) and where its kernels' time goes: can anything
# but faster convolutions reach 150 images/s? The Chrome trace comes back in $OUT.
row "step profile bf16 b16 compiled" bench/step_profile.py --scale 0.5 --batch-size 16 --compile on --steps 6 \
    --trace "$OUT/step_trace.json.gz"
# 3200 images: even with the compiler's cache warm, a compiled start traces the model again (seconds), which a
# real folder (Carvana's test set: 100,064 images) amortises.
row "predict.py compiled" bench/predict_speed.py --count 3200 --files 320 --reference-count 8 -- --compile on
# The same folder with a blur in place of the U-Net: predict.py's ceiling around the model (decoding, transfers,
# upsampling, encoding, PNG writing). Far above 300 images/s: the model is what is left to speed up; near 200: not.
row "predict.py without the U-Net" bench/predict_speed.py --count 3200 --files 320 --reference-count 0 \
    --without-unet -- --compile off
# The 6 GiB target with train.py itself (data, validation at full size, checkpoints), not the model alone.
row "train.py full res b1 amp ckpt" bench/train_speed.py --count 40 --scale 1 --batch-size 1 --amp --checkpointing \
    --epochs 2 --compile off
fi

if [[ $PART == explore ]]; then
timeout 60 "$PY" bench/mask_output_cost.py --device cuda --repeat 5 2>>"$LOG" | tee -a "$LOG"
row "predict.py cudnn.benchmark" bench/predict_speed.py --count 3200 --files 320 --reference-count 0 \
    --cudnn-benchmark -- --compile on
row "model bf16 b16 compiled" bench/train_speed.py --model-only --scale 0.5 --batch-size 16 --compile on
# 960x640: every level halves evenly, so no up-step pads (959 is odd)
row "model 960x640 b16" bench/train_speed.py --model-only --scale 0.5 --width 1920 --batch-size 16 --compile on
row "model b32" bench/train_speed.py --model-only --scale 0.5 --batch-size 32 --compile on
row "model CUDA graphs" bench/train_speed.py --model-only --scale 0.5 --batch-size 16 --compile on \
    --compile-mode reduce-overhead
# Last: its compilation tries many kernels per convolution.
STEP_TIMEOUT=150 row "model max-autotune" bench/train_speed.py --model-only --scale 0.5 --batch-size 16 --compile on \
    --compile-mode max-autotune-no-cudagraphs
fi

echo
if [[ -s $TABLE ]]; then
    echo "| run | recipe | device | settings | images/s | data wait | peak memory | version, date |"
    echo "|---|---|---|---|---|---|---|---|"
    cat "$TABLE"
fi
if [[ -s $PREDICT_TABLE ]]; then
    echo
    echo "| run | device | settings | ours, 1st run | ours, 2nd run | reference loop | ratio | version, date |"
    echo "|---|---|---|---|---|---|---|---|"
    cat "$PREDICT_TABLE"
fi
echo "finished $(date +%T)"
