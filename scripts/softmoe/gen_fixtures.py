#!/usr/bin/env python3
"""Reference fixtures for the `softmoe` crate's parity tests.

An independent PyTorch implementation of Soft MoE written from the equations
(Puigcerver et al. eq. 2-4, vmoe's SoftRouter normalisation) and of
La-SoftMoE from Algorithm 2 of Zou et al. (linear attention of Katharopoulos
et al. + torch.nn.functional.instance_norm), in float64 with einsum. For each
case it writes, to crates/softmoe/tests/fixtures/:

  <case>.json         the SoftMoeConfig, as the Rust crate deserialises it
  <case>.safetensors  parameters under their Rust names, `input`, `loss_weight`,
                      `output`, `dispatch`, `combine` (b, n, e, s), and
                      `grad.<name>` of loss = sum(output * loss_weight) for the
                      input and every parameter.

Run (torch 2.x, safetensors, numpy):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch safetensors numpy
    /tmp/venv/bin/python scripts/softmoe/gen_fixtures.py
Generated with torch 2.15.0, safetensors 0.8.0.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/softmoe/tests/fixtures"
B, N, D, E, S, H = 2, 7, 8, 3, 2, 16
M = E * S


def l2_normalize(x, dim):
    # vmoe: x * rsqrt(sum(x^2) + 1e-6), epsilon inside the root
    return x * torch.rsqrt((x * x).sum(dim, keepdim=True) + 1e-6)


def activation(h, name):
    if name == "gelu":
        return F.gelu(h)  # exact erf GELU
    return h * torch.sigmoid(1.702 * h)


def la_combine(logits, p, la):
    """Algorithm 2 lines 6-8 on logits (b, n, m)."""
    if la["projection"] == "linear":
        q, k, v = (logits + logits @ p[f"combine.{t}_proj.weight"].T + p[f"combine.{t}_proj.bias"]
                   for t in ("q", "k", "v"))
    else:
        q = k = v = logits
    fmap = (lambda t: F.elu(t) + 1.0) if la["feature_map"] == "elu_plus_one" else F.relu
    qf, kf = fmap(q), fmap(k)
    kv = torch.einsum("bjm,bjk->bmk", kf, v)          # sum over tokens j
    out = torch.einsum("bim,bmk->bik", qf, kv)
    if la["normalizer_eps"] is not None:
        den = torch.einsum("bim,bm->bi", qf, kf.sum(1)) + la["normalizer_eps"]
        out = out / den[..., None]
    if la["norm_axis"] == "per_token":
        # InstanceNorm1d on (N=b, C=n, L=m): each token over its slots
        out = F.instance_norm(out, eps=la["norm_eps"])
    else:
        w = p.get("combine.norm.weight")
        bias = p.get("combine.norm.bias")
        out = F.instance_norm(out.transpose(1, 2), weight=w, bias=bias, eps=la["norm_eps"]).transpose(1, 2)
    if la["output"] == "sigmoid":
        out = torch.sigmoid(out)
    elif la["output"] == "softmax":
        out = torch.softmax(out, dim=-1)
    return out


def soft_moe(x, p, cfg):
    phi = p["phi"]  # (e, s, d)
    if cfg["normalize"]:
        logits = torch.einsum("bnd,esd->bnes", l2_normalize(x, -1), l2_normalize(phi, -1)) * p["scale"]
    else:
        logits = torch.einsum("bnd,esd->bnes", x, phi)
    dispatch = torch.softmax(logits, dim=1)                       # eq. 2, over tokens
    slots = torch.einsum("bnes,bnd->besd", dispatch, x)            # raw tokens
    hidden = torch.einsum("besd,ehd->besh", slots, p["experts.fc1.weight"]) + p["experts.fc1.bias"][None, :, None, :]
    hidden = activation(hidden, cfg["activation"])
    ys = torch.einsum("besh,edh->besd", hidden, p["experts.fc2.weight"]) + p["experts.fc2.bias"][None, :, None, :]
    flat = logits.reshape(B, N, M)
    if cfg["combine"] == "softmax":
        combine = torch.softmax(flat, dim=-1)                       # eq. 4, over all slots
    else:
        combine = la_combine(flat, p, cfg["combine"]["linear_attention"])
    out = torch.einsum("bnm,bmd->bnd", combine, ys.reshape(B, M, D))
    return out, dispatch, combine.reshape(B, N, E, S)


def base_config(activation_name, normalize, combine):
    return {
        "dim": D, "num_experts": E, "slots_per_expert": S, "expert_hidden_dim": H,
        "activation": activation_name, "normalize": normalize, "combine": combine,
        "expert_init": "torch_linear",
    }


def la(**overrides):
    cfg = {"projection": "identity", "feature_map": "elu_plus_one", "normalizer_eps": 1e-6,
           "norm_axis": "per_token", "norm_affine": False, "norm_eps": 1e-5, "output": "normalized"}
    cfg.update(overrides)
    return {"linear_attention": cfg}


CASES = {
    "soft_moe_normalized": base_config("gelu", True, "softmax"),
    "soft_moe_raw": base_config("quick_gelu", False, "softmax"),
    "la_soft_moe_default": base_config("gelu", True, la()),
    "la_soft_moe_raw": base_config("gelu", False, la()),
    "la_soft_moe_projected": base_config(
        "quick_gelu", True,
        la(projection="linear", feature_map="relu", norm_axis="per_slot", norm_affine=True, output="sigmoid")),
    "la_soft_moe_softmax_unnormalized": base_config(
        "gelu", True, la(normalizer_eps=None, norm_axis="per_slot", output="softmax")),
}


def make_params(cfg, gen):
    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    p = {
        "phi": randn(E, S, D, std=D ** -0.5),
        "experts.fc1.weight": randn(E, H, D, std=D ** -0.5),
        "experts.fc1.bias": randn(E, H, std=0.1),
        "experts.fc2.weight": randn(E, D, H, std=H ** -0.5),
        "experts.fc2.bias": randn(E, D, std=0.1),
    }
    if cfg["normalize"]:
        # not 1, so that a missing scale multiplication fails the test
        p["scale"] = torch.tensor(2.5, dtype=torch.float64)
    if cfg["combine"] != "softmax":
        la_cfg = cfg["combine"]["linear_attention"]
        if la_cfg["projection"] == "linear":
            for t in ("q", "k", "v"):
                p[f"combine.{t}_proj.weight"] = randn(M, M, std=0.2)
                p[f"combine.{t}_proj.bias"] = randn(M, std=0.1)
        if la_cfg["norm_affine"]:
            p["combine.norm.weight"] = 1.0 + randn(M, std=0.3)
            p["combine.norm.bias"] = randn(M, std=0.3)
    return p


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, cfg) in enumerate(CASES.items()):
        gen = torch.Generator().manual_seed(1234 + i)
        params = {k: v.requires_grad_(True) for k, v in make_params(cfg, gen).items()}
        x = (torch.randn(B, N, D, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
        loss_weight = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
        out, dispatch, combine = soft_moe(x, params, cfg)
        (out * loss_weight).sum().backward()
        tensors = {k: v.detach() for k, v in params.items()}
        tensors.update({"input": x.detach(), "loss_weight": loss_weight, "output": out.detach(),
                        "dispatch": dispatch.detach(), "combine": combine.detach(), "grad.input": x.grad})
        tensors.update({f"grad.{k}": v.grad for k, v in params.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}.safetensors"))
        (OUT / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"{name}: |out| = {out.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
