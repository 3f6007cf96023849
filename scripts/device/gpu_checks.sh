#!/usr/bin/env bash
# One call's worth of GPU checks on a lent CUDA machine (no Rust toolchain
# there): the CUDA test and bench binaries are built here with
#   scripts/device/build_gpu_binaries.sh
# which copies them to .gpu/bin (ignored by git, carried to the device). On
# the device, from the repository root:
#   OUT=/some/dir scripts/device/gpu_checks.sh
# runs the CUDA parity tests, then the candle CUDA benches side by side with
# PyTorch (and transformers) on the same GPU, and writes logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BIN=.gpu/bin
if [ -f .gpu/bin.tar.xz ]; then
    rm -rf "$BIN" && tar -C .gpu -xJf .gpu/bin.tar.xz || exit 1
fi
PY=${PYTHON:-python3}
# Which softmoe groups to time: each case takes its group's 10 s (2 s warm-up,
# 8 s measured); '^cuda_' runs all 34 (about 6 min), the default the 6 at the
# paper's shape, '^cuda_(paper_shape|experts_sweep)' 22. The vision tower's 6
# cases take 18 s each; VISION=0 skips them.
MOE_GROUPS=${MOE_GROUPS:-^cuda_paper_shape}
VISION=${VISION:-1}

# candle loads cuBLAS, cuRAND and NVRTC at run time: take PyTorch's copies.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libdirs=$(find "$site/nvidia" \( -name 'libcublas.so*' -o -name 'libcurand.so*' -o -name 'libnvrtc.so*' -o -name 'libcudart.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nproc

status=0
echo "== tests on GPU 0"
# Integration tests find their fixtures through the CARGO_MANIFEST_DIR baked
# in at build time; build_gpu_binaries.sh records that checkout's path.
built_at=$(cat "$BIN/checkout")
if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"
fi
for t in softmoe_parity clip_moe_parity clip_moe_cuda; do
    timeout 300 "$BIN/$t" --test-threads 1 >"$OUT/$t.log" 2>&1 || status=1
    grep -E "^test |test result|panicked|rror" "$OUT/$t.log"
done

echo "== candle benches (CUDA groups only)"
"$BIN"/moe_throughput --bench "$MOE_GROUPS" 2>&1 |
    tee "$OUT/moe_throughput.log" |
    grep -E "^cuda_|^ +time: +\[" | paste - - | awk '{printf "%-52s median %s %s\n", $1, $5, $6}'
if [ "$VISION" = 1 ]; then
    "$BIN"/vision_throughput --bench '^cuda_' 2>&1 |
        tee "$OUT/vision_throughput.log" |
        grep -E "^cuda_|^ +time: +\[" | paste - - | awk '{printf "%-52s median %s %s\n", $1, $5, $6}'
fi

echo "== PyTorch on the same GPU"
sweep=""
case "$MOE_GROUPS" in *sweep* | "^cuda_") sweep=--sweep ;; esac
"$PY" scripts/softmoe/bench_torch.py --device cuda --iters 50 --warmup 10 $sweep 2>&1 | tee "$OUT/torch.log"
if [ "$VISION" = 1 ]; then
    "$PY" scripts/clip_moe/bench_transformers.py --device cuda --runs 30 2>&1 | tee "$OUT/transformers.log"
fi
exit $status
