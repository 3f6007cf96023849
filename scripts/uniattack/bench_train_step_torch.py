"""PyTorch reference of `train_uniattack`'s training step, for
`scripts/uniattack/bench_train_step.sh`.

The same step as the Rust binary with `--model random:vit-b16`: transformers'
CLIPModel (ViT-B/16 vision tower, default text tower, random weights) with
a La-SoftMoE (or Soft MoE) branch beside the MLP of every vision block
(X + MLP(LN2 X) + MoE(LN2 X): the branch wraps `layer.mlp`), 4 experts x 49
slots with quick-GELU experts, the two class prompts through the trainable
text tower, the paper's CLIP loss with each image's class prompt as its
text, backward, and torch.optim.Adam (lr 1e-6). Inputs are fixed random
tensors (no image decoding: PyTorch's best case; the Rust binary decodes and
augments its batches on the same cores).

Prints one JSON object: median seconds per step over --steps after
--warmup steps, images/s, the process's peak RSS and, on CUDA, the peak GPU
memory. On CUDA, `--tf32` allows TF32 matmuls (as `train_uniattack` does by
default) and `--amp bf16` runs the vision tower under
`torch.autocast(dtype=torch.bfloat16)` (as `--precision bf16`: F32 weights
and Adam state, loss in F32).

    /tmp/venv/bin/pip install torch transformers
    /tmp/venv/bin/python scripts/uniattack/bench_train_step_torch.py --threads 2 --batch 8

Versions used for docs/benchmarks.md: torch 2.15.0, transformers (see the
printed "transformers" field).
"""

import argparse
import json
import resource
import statistics
import time

import pathlib
import sys

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "softmoe"))
from bench_torch import SoftMoE  # noqa: E402  (the Soft MoE module of the softmoe bench)


class MlpPlusMoe(nn.Module):
    def __init__(self, mlp, moe):
        super().__init__()
        self.mlp, self.moe = mlp, moe

    def forward(self, x):
        return self.mlp(x) + self.moe(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--moe", choices=["none", "soft", "la"], default="la")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--profile-phases", action="store_true",
                        help="also time forward, backward and Adam apart, synchronising "
                             "the device between them (train_uniattack --profile-phases)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    config = CLIPConfig(vision_config={"patch_size": 16}, attn_implementation="eager")
    model = CLIPModel(config)
    if args.moe != "none":
        vc = config.vision_config
        for layer in model.vision_model.encoder.layers:
            moe = SoftMoE(4, 49, args.moe == "la", vc.hidden_size, vc.intermediate_size,
                          quick_gelu=True, zero_output=True)
            layer.mlp = MlpPlusMoe(layer.mlp, moe)
    model = model.train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    pixels = torch.randn(args.batch, 3, 224, 224, device=device)
    # Two prompts of 77 tokens, end-of-text at position 10 (T-8's length).
    ids = torch.randint(1, 600, (2, 77), device=device)
    ids[:, 10:] = 49407
    labels = torch.arange(args.batch, device=device) % 2

    def vision():
        if args.amp == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                pooled = model.vision_model(pixel_values=pixels).pooler_output
            return pooled.float()
        return model.vision_model(pixel_values=pixels).pooler_output

    phases = []

    def step():
        marks = [time.perf_counter()]

        def mark():
            if args.profile_phases:
                sync()
                marks.append(time.perf_counter())

        image = model.visual_projection(vision())
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        s = logits[:, labels]
        target = torch.arange(args.batch, device=device)
        loss = (F.cross_entropy(s, target) + F.cross_entropy(s.t(), target)) / 2
        mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        opt.step()
        mark()
        if args.profile_phases:
            phases.append({name: b - a for name, a, b in
                           zip(["forward", "backward", "update"], marks, marks[1:])})

    for _ in range(args.warmup):
        step()
    sync()
    phases.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch", "moe": args.moe, "batch": args.batch, "threads": args.threads,
        "median_step_s": median, "images_per_s": args.batch / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tf32": args.tf32, "amp": args.amp,
        "peak_gpu_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                         if device.type == "cuda" else None),
        **({"profiled": True,
            "phase_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]}}
           if phases else {}),
    }))


if __name__ == "__main__":
    main()
