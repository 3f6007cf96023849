#!/usr/bin/env bash
# Soft MoE layer throughput, candle against PyTorch eager, measured side by
# side on one machine: ROUNDS alternations of the criterion bench
# (crates/softmoe/benches/moe_throughput.rs, paper shape) and
# scripts/softmoe/bench_torch.py, with the same thread count.
#
#   PYTHON=/tmp/venv/bin/python THREADS=2 ROUNDS=2 scripts/softmoe/bench_side_by_side.sh
#
# Prints each run's medians; report the median over rounds and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
cargo bench -p softmoe --bench moe_throughput --no-run >/dev/null 2>&1
bench=$(ls -t target/release/deps/moe_throughput-* | grep -v '\.d$' | head -n 1)
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    echo "== round $round: candle ($THREADS threads)"
    RAYON_NUM_THREADS=$THREADS "$bench" --bench cpu_paper_shape --warm-up-time 2 --measurement-time 10 2>&1 |
        grep -E "^cpu_paper_shape|^ +time: +\[[0-9.]+ (ns|µs|ms|s) " | paste - - |
        awk '{printf "%-50s median %s %s\n", $1, $5, $6}'
    echo "== round $round: PyTorch ($THREADS threads)"
    "$PYTHON" scripts/softmoe/bench_torch.py --threads "$THREADS" --iters 10
done
