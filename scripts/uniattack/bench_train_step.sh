#!/usr/bin/env bash
# The training step of ViT-B/16 + La-SoftMoE (random weights, 224 px) as a
# user runs it, `train_uniattack` (release), side by side with PyTorch's
# same step (bench_train_step_torch.py), in alternating rounds.
#
#   scripts/uniattack/bench_train_step.sh [BATCH] [STEPS] [ROUNDS]
#
# The Rust side trains on a synthetic 224 px dataset (decoding and
# augmenting on the same cores, as a user's run does) and logs images/s per
# step in metrics.jsonl; it is stopped before its final evaluation. Its
# figure is the median over the steps after the first two. Peak RSS comes
# from GNU time (Rust) and getrusage (PyTorch). Needs /usr/bin/time and a
# Python with torch + transformers in $PYTHON (default /tmp/venv/bin/python).
# MOES (default "la") lists the MoE branches to time in each round, e.g.
# MOES="la none" for La-SoftMoE against plain CLIP.
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH=${1:-8}
STEPS=${2:-6}
ROUNDS=${3:-2}
MOES=${MOES:-la}
PYTHON=${PYTHON:-/tmp/venv/bin/python}
THREADS=$(nproc)
WORK=${BENCH_DIR:-/tmp/uniattack-bench}
mkdir -p "$WORK"
cargo build --release --example train_uniattack --example synth_dataset -p uniattack -p fas-data >&2
if [ ! -f "$WORK/data/.done" ]; then
    rm -rf "$WORK/data"
    target/release/examples/synth_dataset --out "$WORK/data" --subjects 15 --size 224 >&2
    touch "$WORK/data/.done"
fi

rust_round() { # moe
    local out="$WORK/run"
    rm -rf "$out"
    local want=$((STEPS + 2))
    /usr/bin/time -v -o "$WORK/time.txt" target/release/examples/train_uniattack \
        --model random:vit-b16 --moe "$1" --data "$WORK/data" --protocol p1 --batch-size "$BATCH" \
        --epochs 1000 --max-steps $((want + 50)) --log-every 1 --eval-every 100000 \
        --no-test-during-training --output "$out" >/dev/null 2>&1 &
    local pid=$!
    local done_steps=0
    while [ "$done_steps" -lt "$want" ]; do
        sleep 1
        kill -0 "$pid" 2>/dev/null || { echo "train_uniattack stopped early" >&2; cat "$WORK/time.txt" >&2; exit 1; }
        done_steps=$(grep -c '"kind":"train"' "$out/metrics.jsonl" 2>/dev/null) || true
        done_steps=${done_steps:-0}
    done
    # SIGTERM to the binary itself (a background job ignores SIGINT); GNU
    # time still reports its peak RSS.
    pkill -TERM -P "$pid" -f train_uniattack || true
    wait "$pid" || true
    "$PYTHON" - "$out/metrics.jsonl" "$WORK/time.txt" "$BATCH" "$1" <<'PY'
import json, statistics, sys
rates = [r["images_per_second"] for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"][2:]
rss = [l for l in open(sys.argv[2]) if "Maximum resident set size" in l][0].split()[-1]
med = statistics.median(rates)
print(json.dumps({"impl": "uniattack", "moe": sys.argv[4], "batch": int(sys.argv[3]),
                  "median_step_s": int(sys.argv[3]) / med,
                  "images_per_s": med, "peak_rss_mib": int(rss) / 1024, "steps": len(rates)}))
PY
}

for round in $(seq "$ROUNDS"); do
    echo "round $round" >&2
    for moe in $MOES; do
        rust_round "$moe"
        "$PYTHON" scripts/uniattack/bench_train_step_torch.py --threads "$THREADS" --batch "$BATCH" \
            --steps "$STEPS" --moe "$moe"
    done
done
