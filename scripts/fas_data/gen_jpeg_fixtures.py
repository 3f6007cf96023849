"""Generate the JPEG scan-check fixtures of crates/fas-data.

Small JPEGs written by Pillow (libjpeg-turbo), an encoder independent of the
Rust code, in the layouts a dataset holds: baseline with 4:2:0, 4:2:2 and
4:4:4 chroma, grayscale, Huffman tables optimised for the image, restart
markers, a progressive file, an odd size with partial MCUs, and quality 100
on high-contrast content (quantisers of 1, so coefficients reach the largest
magnitudes a valid file can hold). `crates/fas-data/tests/jpeg_scans.rs`
checks that every one passes the scan check (no false alarm) and that
damaging their scan data is caught.

Written to crates/fas-data/tests/fixtures/jpeg/, with manifest.json (names,
sizes, encoder settings, package versions).

Run (from the repository root):

    python3 -m venv /tmp/venv-pil
    /tmp/venv-pil/bin/pip install pillow numpy
    /tmp/venv-pil/bin/python scripts/fas_data/gen_jpeg_fixtures.py

Generated with Python 3.11, Pillow 13.0.0, numpy (see the manifest).
"""

import json
import pathlib
import sys

import numpy as np
import PIL
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/fas-data/tests/fixtures/jpeg"


def face(width, height, seed):
    """A smooth face-like picture with sensor noise: an ellipse, eyes, a
    background gradient, so scans hold both long zero runs and detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = width / 2, height / 2
    r = ((x - cx) / (0.35 * width)) ** 2 + ((y - cy) / (0.45 * height)) ** 2
    img = np.zeros((height, width, 3))
    img[..., 0] = 60 + 120 * x / width
    img[..., 1] = 80 + 60 * y / height
    img[..., 2] = 140
    skin = r < 1
    img[skin] = [205, 160, 135]
    for ex in (cx - 0.15 * width, cx + 0.15 * width):
        eye = ((x - ex) ** 2 + (y - cy + 0.1 * height) ** 2) < (0.04 * width) ** 2
        img[eye] = [40, 30, 30]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def extremes(width, height):
    """Black/white checkerboard of 1-pixel cells and 8x8 blocks: the largest
    DCT coefficients 8-bit samples allow."""
    y, x = np.mgrid[0:height, 0:width]
    fine = (x + y) % 2
    coarse = (x // 8 + y // 8) % 2
    cells = np.where((x // 16) % 2 == 0, fine, coarse) * 255
    return Image.fromarray(np.stack([cells] * 3, -1).astype(np.uint8), "RGB")


FIXTURES = [
    ("baseline_420_q75.jpg", lambda: face(64, 48, 1), dict(quality=75)),
    ("baseline_422_odd_37x29.jpg", lambda: face(37, 29, 2), dict(quality=80, subsampling=1)),
    ("baseline_444_q95.jpg", lambda: face(48, 40, 3), dict(quality=95, subsampling=0)),
    ("gray_q80.jpg", lambda: face(40, 40, 4).convert("L"), dict(quality=80)),
    ("optimized_q85.jpg", lambda: face(64, 48, 5), dict(quality=85, optimize=True)),
    ("restarts_q85.jpg", lambda: face(64, 48, 6), dict(quality=85, restart_marker_blocks=3)),
    ("progressive_q85.jpg", lambda: face(64, 48, 7), dict(quality=85, progressive=True)),
    ("extremes_q100_444.jpg", lambda: extremes(48, 32), dict(quality=100, subsampling=0)),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {
        "python": sys.version.split()[0],
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "files": [],
    }
    for name, make, options in FIXTURES:
        img = make()
        img.save(OUT / name, "JPEG", **options)
        manifest["files"].append(
            {"name": name, "size": list(img.size), "mode": img.mode, "options": options}
        )
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
