#!/usr/bin/env python3
"""PyTorch eager reference timings for `cargo bench -p softmoe`.

Same shapes and the same work as crates/softmoe/benches/moe_throughput.rs:
batch 8, 197 tokens, dim 768, expert hidden 3072, float32, parameters with
requires_grad (so the forward records the graph, as candle's does), and
forward + backward of sum(out * w) with respect to the input and every
parameter. The Soft MoE here is written the way an efficient eager PyTorch
module would be (batched matmuls, baddbmm for expert biases), not the float64
einsum of the fixture generator.

Run with the machine's core count as threads, next to the Rust bench:
    /tmp/venv/bin/python scripts/softmoe/bench_torch.py --threads 2
Prints the median over --iters timed runs after --warmup runs. With
`--device cuda` the layers run on GPU 0 and each timed run ends with
torch.cuda.synchronize(), as the Rust bench synchronises candle's device.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

B, N, D, H = 8, 197, 768, 3072


class SoftMoE(nn.Module):
    """Soft MoE / La-SoftMoE with vmoe's normalised router, as `softmoe`.

    `d`, `h`: token and expert hidden width; `quick_gelu`: CLIP's activation
    instead of exact GELU; `zero_output`: zero `fc2` (clip-moe's default
    initialisation). Also used by scripts/uniattack/bench_train_step_torch.py.
    """

    def __init__(self, e, s, la_combine, d=D, h=H, quick_gelu=False, zero_output=False):
        super().__init__()
        self.e, self.s, self.la, self.quick_gelu = e, s, la_combine, quick_gelu
        self.phi = nn.Parameter(torch.randn(e, s, d) * d ** -0.5)
        self.scale = nn.Parameter(torch.ones(()))
        bound1, bound2 = d ** -0.5, h ** -0.5
        self.w1 = nn.Parameter(torch.empty(e, h, d).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.empty(e, h).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(e, d, h).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.empty(e, d).uniform_(-bound2, bound2))
        if zero_output:
            nn.init.zeros_(self.w2)
            nn.init.zeros_(self.b2)

    def combine(self, logits):
        if not self.la:
            return logits.softmax(-1)
        q = F.elu(logits) + 1.0  # Q = K = V = logits, phi = elu + 1
        num = q @ (q.transpose(1, 2) @ logits)
        den = q @ q.sum(1).unsqueeze(-1) + 1e-6
        return F.instance_norm(num / den, eps=1e-5)

    def forward(self, x):
        b, n, d = x.shape
        e, s = self.e, self.s
        m = e * s
        xn = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)
        phi = self.phi.reshape(m, d)
        phin = phi * torch.rsqrt(phi.pow(2).sum(-1, keepdim=True) + 1e-6) * self.scale
        logits = xn @ phin.t()
        dispatch = logits.softmax(1)
        combine = self.combine(logits)
        slots = dispatch.transpose(1, 2) @ x
        xs = slots.view(b, e, s, d).transpose(0, 1).reshape(e, b * s, d)
        pre = torch.baddbmm(self.b1.unsqueeze(1), xs, self.w1.transpose(1, 2))
        hidden = pre * torch.sigmoid(1.702 * pre) if self.quick_gelu else F.gelu(pre)
        ys = torch.baddbmm(self.b2.unsqueeze(1), hidden, self.w2.transpose(1, 2))
        ys = ys.view(e, b, s, d).transpose(0, 1).reshape(b, m, d)
        return combine @ ys


def median_ms(fn, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="also the experts x slots sweep")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [("soft_moe_4x49", SoftMoE(4, 49, False)), ("la_soft_moe_4x49", SoftMoE(4, 49, True)),
             ("dense_mlp_3072", nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D)))]
    if args.sweep:
        for e, s in [(1, 196), (2, 98), (8, 25), (16, 12)]:
            cases += [(f"soft_moe_{e}x{s}", SoftMoE(e, s, False)), (f"la_soft_moe_{e}x{s}", SoftMoE(e, s, True))]
    cases = [(name, layer.to(device)) for name, layer in cases]
    x = torch.randn(B, N, D, device=device, requires_grad=True)
    w = torch.randn(B, N, D, device=device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, median of {args.iters}")
    print("| layer | forward ms | fwd+bwd ms | fwd+bwd tokens/s |")
    print("|---|---|---|---|")
    for name, layer in cases:
        def fwd():
            layer(x)

        def fwd_bwd():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            (layer(x) * w).sum().backward()

        f = median_ms(fwd, args.warmup, args.iters, sync)
        fb = median_ms(fwd_bwd, args.warmup, args.iters, sync)
        print(f"| {name} | {f:.2f} | {fb:.2f} | {B * N / fb * 1e3:.0f} |")


if __name__ == "__main__":
    main()
