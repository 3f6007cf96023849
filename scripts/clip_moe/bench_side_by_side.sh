#!/usr/bin/env bash
# CLIP ViT-B/16 vision tower, candle (crates/clip-moe/benches/vision_throughput.rs)
# against transformers' CLIPVisionModel (scripts/clip_moe/bench_transformers.py),
# measured side by side on one machine: ROUNDS alternations, same thread count.
#
#   PYTHON=/tmp/venv-clip/bin/python THREADS=2 ROUNDS=2 CASES=none scripts/clip_moe/bench_side_by_side.sh
#
# CASES is a regex over the bench's MoE cases (none, soft_moe_4x49,
# la_soft_moe_4x49); the PyTorch model has no MoE, so it is timed once per
# round whatever CASES says. Report the median over rounds and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
CASES=${CASES:-none}
cargo bench -p clip-moe --bench vision_throughput --no-run >/dev/null 2>&1
bench=$(ls -t target/release/deps/vision_throughput-* | grep -v '\.d$' | head -n 1)
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    echo "== round $round: candle ($THREADS threads)"
    RAYON_NUM_THREADS=$THREADS "$bench" --bench "cpu_vit_b16_batch2/(forward|forward_backward)/($CASES)\$" \
        --warm-up-time 2 --measurement-time 15 2>&1 |
        grep -E "^cpu_vit|^ +time: +\[[0-9.]+ (ns|µs|ms|s) " | paste - - |
        awk '{printf "%-50s median %s %s\n", $1, $5, $6}'
    echo "== round $round: PyTorch ($THREADS threads)"
    "$PYTHON" scripts/clip_moe/bench_transformers.py --threads "$THREADS" --runs 10
done
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
