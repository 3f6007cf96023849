#!/usr/bin/env python3
"""The targets of the CUDA issue, judged from the logs gpu_checks.sh writes.

    python3 scripts/device/gpu_targets.py OUT [OUT ...]

Each OUT is the folder one call of gpu_checks.sh wrote (several calls' folders
are joined: call 1's step figures, call 2's detector and loader). Prints one
line per check and target: the measured figure, the target, and whether it is
met; a figure a call did not measure is said to be missing, not guessed.
Figures are medians over every run found; ratios are uniattack's over
PyTorch's, on the same GPU within one call.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def json_lines(path):
    """The JSON objects among a log's lines (other lines skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and v == v and v > 0]
    return statistics.median(values) if values else None


def step_runs(outs):
    """Timed training-step runs: (implementation, moe, precision, kernels) -> records."""
    runs = {}
    for out in outs:
        for r in json_lines(out / "train_step.log"):
            if r.get("impl") == "uniattack":
                key = ("uniattack", r.get("moe", "la"), r.get("precision"),
                       bool(r.get("fused_cuda_kernels")))
            elif r.get("impl") == "pytorch":
                key = ("pytorch", r.get("moe", "la"),
                       "bf16" if r.get("amp") == "bf16" else "f32", False)
            else:
                continue
            runs.setdefault(key, []).append(r)
    return runs


def figure(runs, key, field):
    return median(r.get(field) for r in runs.get(key, []))


def verdict(value, target, higher_is_better=True):
    if value is None:
        return "missing"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def line(name, value, target_text, state, detail=""):
    """One target; `detail` (the figures behind a ratio) only when measured."""
    shown = "-" if value is None else f"{value:.3f}"
    print(f"{name:<46} {shown:>9}  target {target_text:<8} {state:<8} {detail if value else ''}")


def loader_images_per_s(outs):
    """The augmented training loader on the most workers: criterion's median
    throughput (elements are images)."""
    best = None
    scale = {"elem/s": 1.0, "Kelem/s": 1e3, "Melem/s": 1e6}
    for out in outs:
        path = out / "loader.log"
        if not path.is_file():
            continue
        name = None
        for text in path.read_text(errors="replace").splitlines():
            m = re.search(r"training_loader_augmented_(\d+)_workers?_batch32", text)
            if m:
                name = int(m.group(1))
            m = re.search(r"thrpt:\s*\[\s*\S+ \S+\s+(\S+) (\S+)", text)
            if m and name is not None and m.group(2) in scale:
                value = float(m.group(1)) * scale[m.group(2)]
                if best is None or name > best[0]:
                    best = (name, value)
                name = None
    return best


def train_losses(path):
    if not path.is_file():
        return None
    return [r["loss"] for r in json_lines(path) if r.get("kind") == "train"]


TEST_LOGS = ("fused_ops_cuda", "adam_cuda", "softmoe_parity", "clip_moe_parity", "clip_moe_cuda",
             "clip_moe_cuda_kernels")


def tests(outs):
    for out in outs:
        for log in sorted(out.glob("*.log")):
            text = log.read_text(errors="replace")
            results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
            if not results and log.stem in TEST_LOGS:
                last = text.strip().splitlines()[-1:] or ["(empty log)"]
                print(f"{log.stem:<46} no test result, FAILED to run: {last[0][:80]}")
            elif results:
                passed = sum(int(p) for _, p, _ in results)
                failed = sum(int(f) for _, _, f in results)
                state = "passed" if failed == 0 and all(r == "ok" for r, _, _ in results) else "FAILED"
                print(f"{log.stem:<46} {passed:>4} passed, {failed} failed: {state}")


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    outs = [Path(a) for a in argv]
    print("-- tests on the GPU")
    tests(outs)

    print("-- targets (ratio = uniattack / PyTorch unless said)")
    runs = step_runs(outs)
    ours = lambda moe, p, k=False: figure(runs, ("uniattack", moe, p, k), "images_per_s")
    torch = lambda moe, p: figure(runs, ("pytorch", moe, p, False), "images_per_s")
    for precision, target in (("f32", 1.0), ("bf16", 0.9)):
        theirs = torch("la", precision)
        for kernels in (False, True):
            mine = ours("la", precision, kernels)
            if kernels and mine is None:
                continue
            ratio = mine / theirs if mine and theirs else None
            label = "TF32" if precision == "f32" else "autocast"
            line(f"step {precision} images/s vs PyTorch {label}" + (" (kernels)" if kernels else ""),
                 ratio, f">= {target}", verdict(ratio, target),
                 f"{mine or 0:.1f} vs {theirs or 0:.1f} images/s")
    la, plain = ours("la", "f32"), ours("none", "f32")
    cost = plain / la if la and plain else None
    t_la, t_plain = torch("la", "f32"), torch("none", "f32")
    line("La-SoftMoE step / plain CLIP step (F32)", cost, "<= 1.5", verdict(cost, 1.5, False),
         f"PyTorch's: {t_plain / t_la:.2f}" if t_la and t_plain else "")
    for precision in ("f32", "bf16"):
        mine = figure(runs, ("uniattack", "la", precision, False), "peak_gpu_mib_smi")
        theirs = figure(runs, ("pytorch", "la", precision, False), "peak_gpu_mib_smi")
        ratio = mine / theirs if mine and theirs else None
        line(f"peak GPU memory {precision} vs PyTorch (nvidia-smi)", ratio, "<= 1.0",
             verdict(ratio, 1.0, False), f"{mine or 0:.0f} vs {theirs or 0:.0f} MiB")

    detect = {"uniattack": [], "pytorch": []}
    for out in outs:
        for r in json_lines(out / "detect.log"):
            if r.get("impl") in detect:
                detect[r["impl"]].append(r.get("images_per_s"))
    mine, theirs = median(detect["uniattack"]), median(detect["pytorch"])
    ratio = mine / theirs if mine and theirs else None
    line("detector images/s vs PyTorch no_grad", ratio, ">= 1.0", verdict(ratio, 1.0),
         f"{mine or 0:.1f} vs {theirs or 0:.1f} images/s")

    loader = loader_images_per_s(outs)
    demand = max((v for v in (ours("la", p, k) for p in ("f32", "bf16") for k in (False, True))
                  if v), default=None)
    ratio = loader[1] / demand if loader and demand else None
    line("loader images/s / fastest step's images/s", ratio, ">= 1.0", verdict(ratio, 1.0),
         f"{loader[0]} workers: {loader[1]:.0f} images/s" if loader else "")

    print("-- checks")
    for out in outs:
        if len(outs) > 1:
            print(f"{out}:")
        plain_losses = train_losses(out / "demo-f32" / "metrics.jsonl")
        nccl_losses = train_losses(out / "demo-nccl" / "metrics.jsonl")
        if (out / "demo-nccl.log").is_file():
            # gpu_checks.sh's rule: identical expected, within 1e-5 relative
            # passes.
            steps = len(nccl_losses) if nccl_losses is not None else 0
            if not plain_losses or not nccl_losses or len(plain_losses) != steps:
                state = "NO (a run is missing or shorter)"
            elif plain_losses == nccl_losses:
                state = "identical"
            else:
                worst = max(abs(a - b) / max(abs(a), 1e-12)
                            for a, b in zip(plain_losses, nccl_losses))
                state = f"within 1e-5 ({worst:.1e})" if worst <= 1e-5 else f"NO ({worst:.1e})"
            print(f"{'NCCL world size 1 losses against the plain run':<46} {state} ({steps} steps)")
        for precision in ("f32", "bf16"):
            report = out / f"demo-{precision}" / "report.json"
            if (out / f"demo-{precision}.log").is_file():
                print(f"{'demo on CUDA, ' + precision:<46} "
                      f"{'report written' if report.is_file() else 'NO report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
