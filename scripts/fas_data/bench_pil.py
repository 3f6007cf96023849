"""Time PIL + torchvision's CLIP transform on the fas-data bench images.

The reference for `cargo bench -p fas-data --bench preprocess`: same files
(640x480 JPEGs the Rust bench writes to $TMPDIR/fas-data-bench-jpegs/, so run
it first), one thread (torch.set_num_threads(1)), per image
Image.open + clip.py `_transform(224)` (Resize(224, BICUBIC), CenterCrop(224),
convert("RGB"), ToTensor(), Normalize(CLIP mean, std)).

Run:

    /tmp/venv-data/bin/python scripts/fas_data/bench_pil.py [DIR] [--repeats 15]

Prints the median and min time per pass over all images and images/s.
Measured with Python 3.11.7, Pillow 13.0.0 (libjpeg-turbo 3.2.0),
torch 2.15.0, torchvision 0.29.2.
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import PIL
import torch
import torchvision
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor


def clip_transform(size=224):
    return Compose(
        [
            Resize(size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(size),
            lambda image: image.convert("RGB"),
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", nargs="?", default=os.path.join(tempfile.gettempdir(), "fas-data-bench-jpegs"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(pathlib.Path(args.dir).glob("bench_*.jpg"))
    if not paths:
        raise SystemExit(f"no bench_*.jpg in {args.dir}: run `cargo bench -p fas-data --bench preprocess` first")
    transform = clip_transform()
    passes = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                transform(image)
        passes.append(time.perf_counter() - start)
    passes = passes[1:]  # the first pass warms caches
    median = statistics.median(passes)
    print(f"Pillow {PIL.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, 1 thread")
    print(f"{len(paths)} images, {args.repeats} passes: median {median * 1e3:.1f} ms/pass, min {min(passes) * 1e3:.1f} ms")
    print(f"median {len(paths) / median:.1f} images/s ({median / len(paths) * 1e3:.2f} ms/image)")


if __name__ == "__main__":
    main()
