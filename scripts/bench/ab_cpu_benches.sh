#!/usr/bin/env bash
# A/B of the CPU layer benchmarks between two commits, alternated in one run
# (A B A B ...) so that drift of a shared machine hits both alike.
#
#   git worktree add /tmp/ab-old OLD && git worktree add /tmp/ab-new NEW
#   (cd /tmp/ab-old && CARGO_TARGET_DIR=/tmp/ab-target cargo bench --no-run -p softmoe -p clip-moe)
#   (cd /tmp/ab-new && CARGO_TARGET_DIR=/tmp/ab-target cargo bench --no-run -p softmoe -p clip-moe)
#   scripts/bench/ab_cpu_benches.sh OLD_MOE_BIN OLD_VISION_BIN NEW_MOE_BIN NEW_VISION_BIN [ROUNDS]
#
# The bench binaries are the `Executable benches/...` paths cargo prints.
# Prints criterion's estimate line of every case, labelled old/new and round.
set -euo pipefail
old_moe=$1 old_vision=$2 new_moe=$3 new_vision=$4 rounds=${5:-2}
args=(--bench --noplot --warm-up-time 2 --measurement-time 5 --sample-size 10)
run() { # label binary filter
    CRITERION_HOME="/tmp/ab-criterion-$1" "$2" "${args[@]}" "$3" 2>&1 |
        awk -v label="$1" '/^cpu_/ {name=$1} /time:/ {print label, name, $0}'
}
for round in $(seq "$rounds"); do
    echo "== round $round"
    for side in old new; do
        moe_var="${side}_moe" vision_var="${side}_vision"
        run "$side" "${!moe_var}" 'cpu_paper_shape/.*/(soft|la_soft)_moe_4x49'
        run "$side" "${!vision_var}" 'cpu_vit_b16_batch2/.*/(none|la_soft_moe_4x49)'
    done
done
