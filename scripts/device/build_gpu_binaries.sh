#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), what scripts/device/gpu_checks.sh
# runs on a lent GPU machine that has no Rust toolchain: the CUDA builds of
# the parity tests of softmoe and clip-moe, clip-moe's GPU test, fused-ops'
# CUDA kernels against the composites, the benches (layers, per-op rows,
# gradient accumulation, the loader), and the application (train_uniattack,
# also with NCCL, eval_uniattack, detect, fas-data's synth_dataset), copied
# with stable names to .gpu/bin (ignored by git) and packed into
# .gpu/bin.tar.xz: 15 binaries (14 without NCCL), 40 MB packed on 2026-12-07 (the device call
# carries at most 64 MiB; xz -9's window shares the PTX every binary
# embeds). About 17 minutes from a cold release target on 2 cores, plus
# about 9 for the NCCL build of candle; 18 minutes in all on 2026-12-06 with
# the dependencies already built. Carry `.gpu/bin.tar.xz` with the device
# call.
#   scripts/device/build_gpu_binaries.sh
# Sets the CUDA toolkit up with the script CUDA_ENV names (CUDA_ENV=none: the
# nvcc already on PATH; unset: ../shared/tools/cuda-env.sh where it exists,
# else the nvcc on PATH) for nvcc and its own target directory
# (CARGO_TARGET_DIR, default /tmp/target-cuda) so CPU builds stay warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The sources as the build starts: the digest recorded at the end must be
# theirs (an edit during the build would otherwise be recorded as built).
sources=$(scripts/device/source_digest.sh)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
cuda_env=${CUDA_ENV:-}
if [ -z "$cuda_env" ]; then
    if [ -f ../shared/tools/cuda-env.sh ]; then
        cuda_env=../shared/tools/cuda-env.sh
    else
        cuda_env=none
    fi
fi
if [ "$cuda_env" != none ]; then
    if [ ! -f "$cuda_env" ]; then
        echo "no CUDA toolkit script at $cuda_env: set CUDA_ENV to one, or CUDA_ENV=none to use the nvcc on PATH" >&2
        exit 1
    fi
    # shellcheck disable=SC1090
    source "$cuda_env"
fi
if ! command -v nvcc >/dev/null; then
    echo "no nvcc on PATH: put the CUDA toolkit's bin on PATH, or set CUDA_ENV to a script that does" >&2
    exit 1
fi
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
cp "$(executable bench -p fas-data --bench preprocess)" .gpu/bin/preprocess
cp "$(executable test --release -p softmoe --test parity)" .gpu/bin/softmoe_parity
cp "$(executable test --release -p clip-moe --test parity)" .gpu/bin/clip_moe_parity
cp "$(executable test --release -p clip-moe --test cuda)" .gpu/bin/clip_moe_cuda
cp "$(executable test --release -p fused-ops --test cuda_parity)" .gpu/bin/fused_ops_cuda
cp "$(executable test --release -p uniattack --test adam_pytorch)" .gpu/bin/adam_cuda
# train_uniattack with NCCL (gpu_checks.sh's world-size-1 check), first, so
# the plain build below writes the plain binary last. cudarc links NCCL at
# build time: NVIDIA's nvidia-nccl-cu13 wheel, unpacked once into NCCL_DIR.
# Without it the check is skipped, not the rest.
nccl=${NCCL_DIR:-$HOME/.cache/nccl-cu13}
if [ ! -e "$nccl/lib/libnccl.so" ]; then
    "${CUDA_ENV_DIR:-$HOME/.cache/cuda-env-13.0}/venv/bin/pip" download -q --no-deps \
        -d "$nccl/wheel" nvidia-nccl-cu13 &&
        python3 -c 'import glob, sys, zipfile; zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]).extractall(sys.argv[2])' \
            "$nccl/wheel" "$nccl/pkg" &&
        mkdir -p "$nccl/lib" && ln -sf "$nccl/pkg/nvidia/nccl/lib/libnccl.so.2" "$nccl/lib/libnccl.so" ||
        echo "build_gpu_binaries: no NCCL wheel; train_uniattack_nccl is not built" >&2
fi
if [ -e "$nccl/lib/libnccl.so" ] &&
    LIBRARY_PATH="$nccl/lib" cargo build --release --features nccl --example train_uniattack; then
    cp "$CARGO_TARGET_DIR/release/examples/train_uniattack" .gpu/bin/train_uniattack_nccl
else
    echo "build_gpu_binaries: train_uniattack_nccl not built; gpu_checks skips the NCCL check" >&2
fi
cargo build --release --features "$features" \
    --example train_uniattack --example eval_uniattack --example detect
cargo build --release -p fas-data --features "$features" --example synth_dataset
for tool in train_uniattack eval_uniattack detect synth_dataset; do
    cp "$CARGO_TARGET_DIR/release/examples/$tool" .gpu/bin/
done
strip .gpu/bin/*
pwd >.gpu/bin/checkout
# What the binaries were built from: gpu_checks.sh prints the commit and
# refuses a bundle whose sources differ from the tree it runs in
# (RUN_STALE=1 overrides), so a GPU session never times old code.
if [ "$(scripts/device/source_digest.sh)" != "$sources" ]; then
    echo "build_gpu_binaries: the sources changed during the build; run it again" >&2
    exit 1
fi
echo "$commit" >.gpu/bin/commit
echo "$sources" >.gpu/bin/sources.sha256
ls -l .gpu/bin
tar -C .gpu -cf - bin | xz -T0 -9 >.gpu/bin.tar.xz
ls -l .gpu/bin.tar.xz
