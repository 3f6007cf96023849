"""Writes the PyTorch-pickle copy of the tiny CLIP fixture,
`crates/clip-moe/tests/fixtures/tiny_clip/pytorch_model.bin`, for the tests
of the `pytorch_model.bin` fallback (older hub repositories hold only that
file).

The state dict is read from the fixture's `model.safetensors` (written by
`gen_fixtures.py`) and saved with `torch.save`, PyTorch's default zip
format, exactly as `transformers` saved checkpoints before safetensors. The
Rust test checks that both files load to identical parameters.

    /tmp/venv-clip/bin/python scripts/clip_moe/gen_pytorch_bin.py

Generated with torch 2.15.0, safetensors 0.8.0.
"""

import pathlib

import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIR = ROOT / "crates" / "clip-moe" / "tests" / "fixtures" / "tiny_clip"


def main():
    state = load_file(str(DIR / "model.safetensors"))
    torch.save(state, DIR / "pytorch_model.bin")
    print(f"wrote {len(state)} tensors to {DIR / 'pytorch_model.bin'}")


if __name__ == "__main__":
    main()
