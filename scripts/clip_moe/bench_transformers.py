"""Times Hugging Face transformers' CLIPVisionModel (ViT-B/16, random init,
224 px, batch 2) forward and forward + backward on the CPU, as the reference
for `cargo bench -p clip-moe` (crates/clip-moe/benches/vision_throughput.rs).

The loss is the same as the Rust bench: sum(pooler_output * w) with a fixed
random w. Forward runs under torch.no_grad() (inference, PyTorch's best
case) and, for comparison, with autograd recording. Prints median seconds per
batch and images/s.

    /tmp/venv-clip/bin/python scripts/clip_moe/bench_transformers.py [--threads 2] [--batch 2] [--runs 10]

`--device cuda` runs on GPU 0 and ends each timed run with
torch.cuda.synchronize(), as the Rust bench synchronises candle's device.

Versions used for docs/benchmarks.md: torch 2.15.0, transformers 5.24.0.
"""

import argparse
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


def median_seconds(step, runs, sync, warmup=2):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = CLIPVisionConfig(patch_size=16, attn_implementation="eager")
    model = CLIPVisionModel(config).train().to(device)
    pixels = torch.randn(args.batch, 3, 224, 224, device=device)
    weight = torch.randn(args.batch, config.hidden_size, device=device)

    def forward_no_grad():
        with torch.no_grad():
            model(pixel_values=pixels).pooler_output

    def forward_recorded():
        model(pixel_values=pixels).pooler_output

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss = (model(pixel_values=pixels).pooler_output * weight).sum()
        loss.backward()

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}")
    for name, step in [
        ("forward (no_grad)", forward_no_grad),
        ("forward (autograd on)", forward_recorded),
        ("forward_backward", forward_backward),
    ]:
        seconds = median_seconds(step, args.runs, sync)
        print(f"{name:24s} median {seconds * 1e3:8.1f} ms  {args.batch / seconds:6.2f} images/s")


if __name__ == "__main__":
    main()
