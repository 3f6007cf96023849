#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), what scripts/device/gpu_checks.sh
# runs on a lent GPU machine that has no Rust toolchain: the CUDA builds of
# softmoe's parity test, clip-moe's GPU test and the two throughput benches,
# copied with stable names to .gpu/bin (ignored by git) and packed into
# .gpu/bin.tar.xz (about 26 MB, under the device call's 64 MiB; the binaries
# embed candle's PTX). Carry `.gpu/bin.tar.xz` with the device call.
#   scripts/device/build_gpu_binaries.sh
# Uses ../shared/tools/cuda-env.sh for nvcc and its own target directory
# (CARGO_TARGET_DIR, default /tmp/target-cuda) so CPU builds stay warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
source ../shared/tools/cuda-env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cuda}
features=softmoe/cuda,clip-moe/cuda
newest() { ls -t "$CARGO_TARGET_DIR"/release/deps/"$1"-* | grep -v '\.d$' | head -n 1; }
cargo bench --no-run -p softmoe -p clip-moe --features "$features"
cargo test --release --no-run -p softmoe --test parity --features cuda
cargo test --release --no-run -p clip-moe --test cuda --features cuda
rm -rf .gpu/bin && mkdir -p .gpu/bin
cp "$(newest moe_throughput)" .gpu/bin/moe_throughput
cp "$(newest vision_throughput)" .gpu/bin/vision_throughput
cp "$(newest parity)" .gpu/bin/softmoe_parity
cp "$(newest cuda)" .gpu/bin/clip_moe_cuda
strip .gpu/bin/*
pwd >.gpu/bin/checkout
ls -l .gpu/bin
tar -C .gpu -cf - bin | xz -T0 -6 >.gpu/bin.tar.xz
ls -l .gpu/bin.tar.xz
