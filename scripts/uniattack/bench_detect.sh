#!/usr/bin/env bash
# Inference of the detector as a user runs it (`detect`, release, a random
# ViT-B/16 + La-SoftMoE checkpoint) against PyTorch no_grad
# (bench_detect_torch.py) on the same images, alternating rounds.
#
#   scripts/uniattack/bench_detect.sh [BATCH] [ROUNDS]
#
# `detect`'s figure is images / wall time of the whole process minus the
# wall time of the same command on one image (start-up and checkpoint
# loading); PyTorch's excludes model construction. Run bench_train_step.sh
# first: it writes the 224 px synthetic data this uses.
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH=${1:-16}
ROUNDS=${2:-2}
PYTHON=${PYTHON:-/tmp/venv/bin/python}
WORK=${BENCH_DIR:-/tmp/uniattack-bench}
cargo build --release --example train_uniattack --example detect >&2
if [ ! -f "$WORK/ckpt/checkpoints/best.safetensors" ]; then
    rm -rf "$WORK/ckpt"
    target/release/examples/train_uniattack --model random:vit-b16 --data "$WORK/data" \
        --protocol p1 --batch-size 2 --max-steps 1 --eval-batch-size 16 --output "$WORK/ckpt" >&2
fi
IMAGES="$WORK/data/UniAttackData/Data"
N=$(find "$IMAGES" -name '*.jpg' | wc -l)
ONE=$(find "$IMAGES" -name '*.jpg' | sort | head -n 1)
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
for round in $(seq "$ROUNDS"); do
    all=$(timed target/release/examples/detect --checkpoint "$WORK/ckpt" --batch-size "$BATCH" "$IMAGES")
    one=$(timed target/release/examples/detect --checkpoint "$WORK/ckpt" "$ONE")
    echo "{\"impl\": \"uniattack\", \"images\": $N, \"seconds\": $all, \"startup_seconds\": $one, \"images_per_s\": $(echo "$N / ($all - $one)" | bc -l)}"
    (cd scripts/uniattack && "$PYTHON" bench_detect_torch.py --threads "$(nproc)" --batch "$BATCH" "$IMAGES")
done
