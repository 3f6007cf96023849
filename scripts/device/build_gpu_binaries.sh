#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), what scripts/device/gpu_checks.sh
# runs on a lent GPU machine that has no Rust toolchain: the CUDA builds of
# the parity tests of softmoe and clip-moe, clip-moe's GPU test, fused-ops'
# CUDA kernels against the composites, the
# benches, and the application (train_uniattack, eval_uniattack, detect,
# fas-data's synth_dataset), copied with stable names to .gpu/bin (ignored by
# git) and packed into .gpu/bin.tar.xz: 9 binaries, 455 MB stripped, 25 MB
# packed (2026-12-02, before fused_ops_cuda made it 10; the device call
# carries at most 64 MiB, and xz -9's
# window shares the PTX every binary embeds). About 17 minutes from a cold
# release target on 2 cores. Carry `.gpu/bin.tar.xz` with the device call.
#   scripts/device/build_gpu_binaries.sh
# Uses ../shared/tools/cuda-env.sh for nvcc and its own target directory
# (CARGO_TARGET_DIR, default /tmp/target-cuda) so CPU builds stay warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
source ../shared/tools/cuda-env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cuda}
features=cuda
# Builds one target and prints the path of the executable cargo reports.
executable() {
    cargo "$@" --no-run --features "$features" 2>&1 | tee /dev/stderr |
        sed -n 's/^ *Executable .*(\(.*\))$/\1/p' | tail -n 1
}
rm -rf .gpu/bin && mkdir -p .gpu/bin
cp "$(executable bench -p softmoe --bench moe_throughput)" .gpu/bin/moe_throughput
cp "$(executable bench -p clip-moe --bench vision_throughput)" .gpu/bin/vision_throughput
cp "$(executable bench -p fused-ops --bench cuda_rows)" .gpu/bin/cuda_rows
cp "$(executable bench -p clip-moe --bench grad_accumulation)" .gpu/bin/grad_accumulation
cp "$(executable test --release -p softmoe --test parity)" .gpu/bin/softmoe_parity
cp "$(executable test --release -p clip-moe --test parity)" .gpu/bin/clip_moe_parity
cp "$(executable test --release -p clip-moe --test cuda)" .gpu/bin/clip_moe_cuda
cp "$(executable test --release -p fused-ops --test cuda_parity)" .gpu/bin/fused_ops_cuda
cargo build --release --features "$features" \
    --example train_uniattack --example eval_uniattack --example detect
cargo build --release -p fas-data --features "$features" --example synth_dataset
for tool in train_uniattack eval_uniattack detect synth_dataset; do
    cp "$CARGO_TARGET_DIR/release/examples/$tool" .gpu/bin/
done
strip .gpu/bin/*
pwd >.gpu/bin/checkout
ls -l .gpu/bin
tar -C .gpu -cf - bin | xz -T0 -9 >.gpu/bin.tar.xz
ls -l .gpu/bin.tar.xz
