#!/usr/bin/env bash
# One call's worth of GPU checks on a lent CUDA machine (no Rust toolchain
# there): the CUDA test and bench binaries are built here with
#   scripts/device/build_gpu_binaries.sh
# which copies them to .gpu/bin (ignored by git, carried to the device). On
# the device, from the repository root:
#   OUT=/some/dir scripts/device/gpu_checks.sh
# runs the CUDA parity tests, a few steps of the demo on CUDA in F32 and
# BF16 (and eval_uniattack on the F32 run, whose scores must equal the
# training's final evaluation's byte for byte), the training step of ViT-B/16 + La-SoftMoE at batch 32 through the
# real train_uniattack binary against PyTorch's step (TF32 on both; BF16
# against autocast), then the candle CUDA benches side by side with PyTorch
# (and transformers) on the same GPU, and writes logs under $OUT.
# fused-ops' CUDA kernels are checked first (they already pass on the CPU
# emulator, `cargo test`), with uniattack's Adam on the fused step against
# torch.optim, then the tiny model with them on; where they
# pass, the step is also timed with them on (FUSED_OPS_CUDA=1), and
# cuda_rows times each op (row ops, La-SoftMoE's combine ops, attention)
# as composite and kernel (ROWS_BENCH=0 skips it), and grad_accumulation
# measures candle's zero-and-add share of the backward and times the
# gradient norm's sums of squares (GRAD_BENCH=0 skips it).
# With a train_uniattack_nccl binary (build_gpu_binaries.sh builds one when
# NCCL links), the demo runs again as rank 0 of an NCCL group of one, and
# its losses are compared with the plain run's (NCCL_CHECK=0 skips it).
# TESTS=0 skips the tests (then KERNELS_OK=1 lets the step run with the
# kernels, from an earlier call's verdict) and DEMO=0 the demo runs;
# STEP_BENCH=0 skips the training-step comparison (STEP_ROUNDS=1 runs it
# once instead of twice); PHASE_PROFILE=0 the step's phase times
# (train_uniattack --profile-phases); DETECT_BENCH=0 the
# detector's inference against PyTorch; LOADER_BENCH=0 the loader on every
# core; BENCHES=0 the layer benches that follow them (the device call allows
# 600 s in all: split the checks over calls with these switches).
# The step comparison also times plain CLIP (no MoE branch) on both sides
# (PLAIN_STEP=0 skips it), and every PyTorch step's peak GPU memory is read
# from nvidia-smi as uniattack's is. The last lines judge the issue's
# targets from this call's logs (scripts/device/gpu_targets.py, which also
# joins several calls' fetched folders).
# A bundle built from other sources than this tree is refused (RUN_STALE=1
# runs it anyway); STEP_DEADLINE (default 180 s) bounds each timed training
# run; BENCH_DEVICES (default cuda) leaves out the benches' CPU passes.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BIN=.gpu/bin
if [ -f .gpu/bin.tar.xz ]; then
    rm -rf "$BIN" && tar -C .gpu -xJf .gpu/bin.tar.xz || exit 1
fi
PY=${PYTHON:-python3}
echo "== binaries built from commit $(cat "$BIN/commit" 2>/dev/null || echo '(not recorded)')"
if [ "$(cat "$BIN/sources.sha256" 2>/dev/null)" != "$(scripts/device/source_digest.sh)" ] &&
    [ "${RUN_STALE:-0}" != 1 ]; then
    echo "gpu_checks: the binaries were built from other sources than this tree's;" \
        "rerun scripts/device/build_gpu_binaries.sh (or RUN_STALE=1)" >&2
    exit 2
fi
# The benches' CPU passes only spend the GPU machine's time.
export BENCH_DEVICES=${BENCH_DEVICES:-cuda}
# Which softmoe groups to time: each case takes its group's 10 s (2 s warm-up,
# 8 s measured); '^cuda_' runs all 34 (about 6 min), the default the 6 at the
# paper's shape, '^cuda_(paper_shape|experts_sweep)' 22. The vision tower's 6
# cases take 18 s each; VISION=0 skips them.
MOE_GROUPS=${MOE_GROUPS:-^cuda_paper_shape}
VISION=${VISION:-1}

# candle loads cuBLAS, cuRAND and NVRTC at run time: take PyTorch's copies.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libdirs=$(find "$site/nvidia" \( -name 'libcublas.so*' -o -name 'libcurand.so*' -o -name 'libnvrtc.so*' -o -name 'libcudart.so*' -o -name 'libnccl.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nproc

status=0
# Integration tests find their fixtures through the CARGO_MANIFEST_DIR baked
# in at build time; build_gpu_binaries.sh records that checkout's path.
built_at=$(cat "$BIN/checkout")
if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at" ||
        echo "gpu_checks: cannot link $built_at to this tree; the parity tests will not find their fixtures" >&2
fi
# Whether the step bench may turn the fused CUDA kernels on
# (FUSED_OPS_CUDA=1): decided by fused_ops_cuda below, or, with TESTS=0
# (a later call), by KERNELS_OK from an earlier call's result.
kernels_ok=${KERNELS_OK:-0}
if [ "${TESTS:-1}" = 1 ]; then
    echo "== tests on GPU 0"
    kernels_ok=0
    timeout 120 "$BIN/fused_ops_cuda" --test-threads 1 --nocapture >"$OUT/fused_ops_cuda.log" 2>&1 &&
        kernels_ok=1 || status=1
    grep -E "max diff|fused Adam|^test |test result|panicked|rror" "$OUT/fused_ops_cuda.log" | tail -n 40
    # uniattack's optimizer on the GPU with the kernels on: one launch per
    # group of up to 64 parameters (fused_ops::adam_update_many), counted,
    # bit-equal to torch.optim.
    timeout 120 "$BIN/adam_cuda" --test-threads 1 >"$OUT/adam_cuda.log" 2>&1 || { status=1; kernels_ok=0; }
    grep -E "^test |test result|panicked|rror" "$OUT/adam_cuda.log"
    for t in softmoe_parity clip_moe_parity clip_moe_cuda; do
        timeout 300 "$BIN/$t" --test-threads 1 >"$OUT/$t.log" 2>&1 || status=1
        grep -E "^test |test result|panicked|rror" "$OUT/$t.log"
    done
    # The whole tiny model on GPU with the fused kernels on, against the CPU.
    if [ "$kernels_ok" = 1 ]; then
        FUSED_OPS_CUDA=1 timeout 300 "$BIN/clip_moe_cuda" --test-threads 1 \
            >"$OUT/clip_moe_cuda_kernels.log" 2>&1 || { status=1; kernels_ok=0; }
        grep -E "^test |test result|panicked|rror" "$OUT/clip_moe_cuda_kernels.log"
    fi
    echo "KERNELS_OK=$kernels_ok (pass it to a later call with TESTS=0)"
fi

demo() { # precision
    UNIATTACK_CACHE="$OUT/demo-cache" timeout 300 "$BIN/train_uniattack" --demo --device cuda \
        --precision "$1" --max-steps 40 --log-every 1 --output "$OUT/demo-$1" \
        >"$OUT/demo-$1.log" 2>&1 || status=1
    tail -n 12 "$OUT/demo-$1.log"
}
if [ "${DEMO:-1}" = 1 ]; then
    echo "== the demo on CUDA (40 steps), F32 and BF16"
    demo f32
    demo bf16
    # eval_uniattack scores the best checkpoint as training's final
    # evaluation did (with the run's TF32 setting): the same scores, byte
    # for byte, or the checkpoint's dev threshold would meet other numbers.
    if [ -f "$OUT/demo-f32/report.json" ]; then
        timeout 120 "$BIN/eval_uniattack" --device cuda --checkpoint "$OUT/demo-f32" \
            --output "$OUT/demo-f32-eval" >"$OUT/demo-f32-eval.log" 2>&1 || status=1
        for split in dev test; do
            if cmp -s "$OUT/demo-f32/scores/$split.txt" "$OUT/demo-f32-eval/scores/$split.txt"; then
                echo "eval_uniattack: $split scores identical to training's"
            else
                echo "eval_uniattack: $split scores DIFFER from training's"
                status=1
            fi
        done
    fi
fi

step_data() { # the synthetic 224 px set the timed training runs read
    data="$OUT/step-data"
    [ -d "$data" ] || "$BIN/synth_dataset" --out "$data" --subjects 30 --size 224 >/dev/null 2>&1 || status=1
}
# The real binary: images/s per logged step (median after the first 3)
# and the peak GPU memory nvidia-smi sees for its process; with profile 1,
# also the median seconds of each phase of a step (--profile-phases: the
# device synchronised after each phase, so its images/s is not the
# headline figure).
# The larger of $2 and the GPU memory (MiB) nvidia-smi sees for process $1:
# the same measure for both sides (context, allocator cache and tensors).
gpu_peak() {
    local used
    used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        awk -F', ' -v p="$1" '$1 == p {print $2}')
    if [ -n "$used" ] && [ "$used" -gt "$2" ]; then echo "$used"; else echo "$2"; fi
}
rust_step() { # precision [kernels: 0 or 1] [profile: 0 or 1] [moe: la or none]
    local moe=${4:-la}
    local out="$OUT/step-$1-k${2:-0}-p${3:-0}-$moe" peak=0 profile=()
    [ "${3:-0}" = 1 ] && profile=(--profile-phases)
    rm -rf "$out"
    FUSED_OPS_CUDA=${2:-0} "$BIN/train_uniattack" --model random:vit-b16 --moe "$moe" --data "$data" --protocol p1 --device cuda \
        --precision "$1" --batch-size 32 --workers "$(nproc)" --epochs 1000 --max-steps 23 \
        --log-every 1 --eval-every 100000 --no-test-during-training ${profile[@]+"${profile[@]}"} --output "$out" \
        >"$out.log" 2>&1 &
    local pid=$! deadline=$((SECONDS + ${STEP_DEADLINE:-180}))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        peak=$(gpu_peak "$pid" "$peak")
        sleep 0.5
        [ -f "$out/metrics.jsonl" ] && [ "$(grep -c '"kind":"train"' "$out/metrics.jsonl")" -ge 23 ] && break
    done
    local timed_out=0
    if kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -ge "$deadline" ]; then
        timed_out=1
        echo "rust_step $1 k${2:-0}: deadline of ${STEP_DEADLINE:-180} s reached; stopped" >&2
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    "$PY" - "$out/metrics.jsonl" "$1" "$peak" "${2:-0}" "$timed_out" "$moe" <<'PY'
import json, os, statistics, sys
path = sys.argv[1]
records = list(map(json.loads, open(path))) if os.path.exists(path) else []
train = [r for r in records if r["kind"] == "train"][3:]
rates = [r["images_per_second"] for r in train]
result = {"impl": "uniattack", "moe": sys.argv[6], "precision": sys.argv[2], "batch": 32,
          "fused_cuda_kernels": sys.argv[4] == "1",
          "images_per_s": statistics.median(rates) if rates else None,
          "steps": len(rates), "timed_out": sys.argv[5] == "1",
          "peak_gpu_mib": int(sys.argv[3]), "peak_gpu_mib_smi": int(sys.argv[3]),
          "data_wait_s": statistics.median(r.get("data_wait_s", 0.0) for r in train) if train else None}
phases = [r["phases"] for r in train if r.get("phases")]
if phases:
    result["profiled"] = True
    result["phase_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
print(json.dumps(result))
sys.exit(0 if rates else 1)
PY
}

# PyTorch's step (bench_train_step_torch.py with these arguments), its
# JSON line given the process's peak GPU memory as nvidia-smi sees it
# (peak_gpu_mib_smi, measured as for uniattack; its own peak_gpu_mib counts
# allocated tensors only).
torch_step() {
    local log="$OUT/torch_step.tmp" peak=0 pid rc deadline=$((SECONDS + ${STEP_DEADLINE:-180}))
    "$PY" scripts/uniattack/bench_train_step_torch.py "$@" >"$log" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        peak=$(gpu_peak "$pid" "$peak")
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "torch_step $*: deadline of ${STEP_DEADLINE:-180} s reached; stopped" >&2
        kill "$pid" 2>/dev/null
    fi
    wait "$pid"
    rc=$?
    "$PY" - "$log" "$peak" <<'PY'
import json, sys
for line in open(sys.argv[1]).read().splitlines():
    try:
        record = json.loads(line)
    except ValueError:
        print(line)
        continue
    record["peak_gpu_mib_smi"] = int(sys.argv[2])
    print(json.dumps(record))
PY
    rm -f "$log"
    return "$rc"
}

if [ "${STEP_BENCH:-1}" = 1 ]; then
    echo "== training step, ViT-B/16 + La-SoftMoE, 224 px, batch 32"
    step_data
    for _ in $(seq "${STEP_ROUNDS:-2}"); do
        for precision in f32 bf16; do
            rust_step "$precision" 0 || status=1
            if [ "$kernels_ok" = 1 ]; then rust_step "$precision" 1 || status=1; fi
            amp=none; [ "$precision" = bf16 ] && amp=bf16
            torch_step --device cuda --batch 32 --steps 20 --warmup 3 --tf32 --amp "$amp" || status=1
        done
        # The same step of plain CLIP (no MoE branch), F32 + TF32: the
        # issue's La-SoftMoE step is at most 1.5x it (PLAIN_STEP=0 skips).
        if [ "${PLAIN_STEP:-1}" = 1 ]; then
            rust_step f32 0 0 none || status=1
            torch_step --device cuda --batch 32 --steps 20 --warmup 3 --tf32 --moe none || status=1
        fi
    done >"$OUT/train_step.log" 2>&1 # not a pipe: a pipe's loop would set status in a subshell
    cat "$OUT/train_step.log"
fi

if [ "${PHASE_PROFILE:-1}" = 1 ]; then
    # Where a step's time goes (loader wait, forward, backward, gradient
    # norm, Adam), F32 + TF32 and BF16, kernels off (and on, where they
    # passed: the fused Adam step shows in `update`), beside PyTorch's
    # forward, backward and Adam timed the same way: the profile that says
    # what to fuse next.
    echo "== training step phases, ViT-B/16 + La-SoftMoE, batch 32 (--profile-phases)"
    step_data
    for precision in f32 bf16; do
        rust_step "$precision" 0 1 || status=1
        if [ "$kernels_ok" = 1 ]; then rust_step "$precision" 1 1 || status=1; fi
        amp=none; [ "$precision" = bf16 ] && amp=bf16
        torch_step --device cuda --batch 32 --steps 10 --warmup 3 --tf32 --amp "$amp" \
            --profile-phases || status=1
    done >"$OUT/step_phases.log" 2>&1 # not a pipe: status would be set in a subshell
    cat "$OUT/step_phases.log"
fi

if [ "${NCCL_CHECK:-1}" = 1 ] && [ -x "$BIN/train_uniattack_nccl" ]; then
    # The data-parallel path at world size 1: this process is rank 0 of one,
    # joins an NCCL communicator and all-reduces every step's gradients
    # (a sum of one: exact), so its losses should equal the plain F32 run's.
    echo "== NCCL, world size 1, against the plain F32 demo run"
    [ -f "$OUT/demo-f32/metrics.jsonl" ] || demo f32
    UNIATTACK_RANK=0 UNIATTACK_WORLD_SIZE=1 UNIATTACK_CACHE="$OUT/demo-cache" timeout 300 \
        "$BIN/train_uniattack_nccl" --demo --device cuda --precision f32 --max-steps 40 --log-every 1 \
        --output "$OUT/demo-nccl" >"$OUT/demo-nccl.log" 2>&1 || status=1
    tail -n 4 "$OUT/demo-nccl.log"
    "$PY" - "$OUT/demo-f32/metrics.jsonl" "$OUT/demo-nccl/metrics.jsonl" <<'PY' || status=1
import json, sys
def losses(path):
    return [r["loss"] for r in map(json.loads, open(path)) if r["kind"] == "train"]
plain, nccl = losses(sys.argv[1]), losses(sys.argv[2])
worst = max((abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, nccl)), default=float("nan"))
same = len(plain) == len(nccl) > 0 and worst == 0.0
print(json.dumps({"steps": [len(plain), len(nccl)], "largest_relative_loss_difference": worst,
                  "identical": same}))
sys.exit(0 if len(plain) == len(nccl) > 0 and worst <= 1e-5 else 1)
PY
fi

if [ "${ROWS_BENCH:-1}" = 1 ]; then
    # Per-op profile at the step's shapes: composite vs kernel (72 cases at
    # about 1.5 s: about 2 minutes).
    echo "== per-op at batch 32 (softmaxes, LayerNorm, La-SoftMoE's combine ops, router norm, attention, MLP bias + activation)"
    "$BIN"/cuda_rows --bench 2>&1 | tee "$OUT/cuda_rows.log" |
        grep -E "^cuda_rows|^ +time: +\[" | paste - - | awk '{printf "%-60s median %s %s\n", $1, $5, $6}'
fi

if [ "${GRAD_BENCH:-1}" = 1 ]; then
    # candle's zero-and-add gradient accumulation at batch 32: its replay
    # over the real graph's nodes against the timed backward (F32 + TF32 and
    # BF16, plain and La-SoftMoE, the largest shapes; about 40 s, and again
    # with the fused kernels on when they passed). Each F32 case also times
    # the gradient norm's sums of squares, candle's composite against
    # fused-ops' two kernels (BF16 gradients have the composite only).
    echo "== zero-and-add share of the backward, ViT-B/16, batch 32"
    timeout 180 "$BIN"/grad_accumulation --bench 2>&1 | tee "$OUT/grad_accumulation.log" || status=1
    if [ "$kernels_ok" = 1 ]; then
        echo "-- with the fused CUDA kernels on (fewer graph nodes)"
        FUSED_OPS_CUDA=1 timeout 180 "$BIN"/grad_accumulation --bench 2>&1 |
            tee "$OUT/grad_accumulation_kernels.log" || status=1
    fi
fi

if [ "${DETECT_BENCH:-1}" = 1 ]; then
    # The detector as a user runs it (`detect`, every core decoding, batch
    # 64, a random ViT-B/16 + La-SoftMoE checkpoint) against PyTorch no_grad
    # with a DataLoader on as many workers, TF32 on both; images/s = images
    # / (wall - wall on one image), start-up and checkpoint loading out.
    echo "== detector inference on CUDA, ViT-B/16 + La-SoftMoE, batch 64"
    data="$OUT/step-data"
    [ -d "$data" ] || "$BIN/synth_dataset" --out "$data" --subjects 30 --size 224 >/dev/null 2>&1 || status=1
    ck="$OUT/detect-ckpt"
    "$BIN/train_uniattack" --model random:vit-b16 --data "$data" --protocol p1 --device cuda \
        --batch-size 8 --max-steps 1 --eval-batch-size 64 --no-test-during-training \
        --output "$ck" >"$ck.log" 2>&1 || status=1
    images="$data/UniAttackData/Data"
    one=$(find "$images" -name '*.jpg' | sort | head -n 1)
    wall() { "$PY" -c 'import subprocess, sys, time; s = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; print(time.perf_counter() - s if r == 0 else "nan")' "$@"; }
    for _ in 1 2; do
        all=$(wall "$BIN/detect" --device cuda --checkpoint "$ck" --batch-size 64 --workers "$(nproc)" "$images")
        single=$(wall "$BIN/detect" --device cuda --checkpoint "$ck" "$one")
        "$PY" -c 'import json, math, sys; n, a, o = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); r = n / (a - o) if a > o else float("nan"); print(json.dumps({"impl": "uniattack", "images": n, "seconds": a, "startup_seconds": o, "images_per_s": r})); sys.exit(0 if math.isfinite(r) else 1)' \
            "$(find "$images" -name '*.jpg' | wc -l)" "$all" "$single" || status=1
        "$PY" scripts/uniattack/bench_detect_torch.py --device cuda --tf32 --workers "$(nproc)" \
            --batch 64 --threads "$(nproc)" "$images" || status=1
    done >"$OUT/detect.log" 2>&1
    cat "$OUT/detect.log"
fi

if [ "${LOADER_BENCH:-1}" = 1 ]; then
    # The augmented training loader on this machine's cores, against the
    # step's images/s above.
    echo "== the training loader, 224 px with augmentation, $(nproc) workers"
    "$BIN"/preprocess --bench loader >"$OUT/loader.log" 2>&1 || status=1
    grep -E "^cpu_|thrpt:" "$OUT/loader.log" | paste - - |
        awk '{printf "%-80s %s %s\n", $1, $(NF-3), $(NF-2)}'
fi

# The issue's targets, from this call's logs (run it on several calls'
# fetched folders to join them): the last lines of the output.
finish() {
    echo "== targets (scripts/device/gpu_targets.py)"
    "$PY" scripts/device/gpu_targets.py "$OUT" || true
    exit "$status"
}
if [ "${BENCHES:-1}" = 0 ]; then
    finish
fi
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
finish
