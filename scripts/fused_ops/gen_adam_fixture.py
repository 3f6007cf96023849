"""Reference steps of torch.optim.Adam / AdamW for fused-ops' Adam kernel
(`crates/fused-ops/tests/common/adam.rs`) and uniattack's `Adam`
(`tests/adam_pytorch.rs`).

Writes `crates/fused-ops/tests/fixtures/adam_steps.safetensors` and
`adam_steps.json`: for
each case (hyper-parameters below), the initial parameters, the gradient of
every step, and PyTorch's parameters and moments after every step. Shapes
include odd sizes so PyTorch's scalar tails (not only its vectorised body)
are covered.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch safetensors numpy
    /tmp/venv/bin/python scripts/fused_ops/gen_adam_fixture.py

Generated with torch 2.15.0 (CPU, AVX-512 kernels).
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "fused-ops" / "tests" / "fixtures"
SHAPES = {"w": (8, 16), "b": (37,), "t": (3, 5, 7)}
STEPS = 4
CASES = {
    # The paper's optimiser: Adam, lr 1e-6, on CLIP-sized weights (std 0.02).
    "paper": dict(cls="Adam", lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, scale=0.02),
    "adam_lr1e-3": dict(cls="Adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, scale=1.0),
    # FLIP's Adam(weight_decay=1e-6), larger here so the term shows.
    "adam_coupled_wd": dict(cls="Adam", lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, scale=1.0),
    "adamw_decoupled_wd": dict(cls="AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, scale=1.0),
    # beta1 <= 0.5: the lerp weight 1 - beta1 is at least 0.5, where
    # PyTorch's lerp computes from the end point (end - (end - start)(1 - w)).
    "adam_beta1_0.4": dict(cls="Adam", lr=1e-3, betas=(0.4, 0.999), eps=1e-8, weight_decay=0.0, scale=1.0),
}


def main():
    gen = torch.Generator().manual_seed(20261202)
    tensors = {}
    meta = {"steps": STEPS, "shapes": {k: list(v) for k, v in SHAPES.items()}, "cases": {}, "torch": torch.__version__}
    for case, cfg in CASES.items():
        params = {
            name: torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float32) * cfg["scale"])
            for name, shape in SHAPES.items()
        }
        for name, p in params.items():
            tensors[f"{case}/init/{name}"] = p.detach().clone()
        cls = getattr(torch.optim, cfg["cls"])
        opt = cls(list(params.values()), lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"],
                  weight_decay=cfg["weight_decay"], foreach=False)
        for step in range(STEPS):
            for name, p in params.items():
                # Gradients of mixed magnitudes, a few exact zeros.
                g = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (10.0 ** (step - 2))
                g[(torch.rand(p.shape, generator=gen) < 0.1)] = 0.0
                p.grad = g
                tensors[f"{case}/grad{step}/{name}"] = g.clone()
            opt.step()
            for name, p in params.items():
                tensors[f"{case}/param{step}/{name}"] = p.detach().clone()
                state = opt.state[p]
                tensors[f"{case}/exp_avg{step}/{name}"] = state["exp_avg"].clone()
                tensors[f"{case}/exp_avg_sq{step}/{name}"] = state["exp_avg_sq"].clone()
        meta["cases"][case] = {
            "decay": "decoupled" if cfg["cls"] == "AdamW" else "coupled",
            "lr": cfg["lr"], "beta1": cfg["betas"][0], "beta2": cfg["betas"][1],
            "eps": cfg["eps"], "weight_decay": cfg["weight_decay"],
        }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "adam_steps.safetensors")
    (OUT / "adam_steps.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
