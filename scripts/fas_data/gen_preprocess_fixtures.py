"""Generate the CLIP preprocessing parity fixtures of crates/fas-data.

Writes small synthetic input images (PNG, lossless so decoding is not a
variable; plus one JPEG, where it is) and the outputs of OpenAI CLIP's own
transform (clip/clip.py `_transform`, rebuilt here from torchvision) to
crates/fas-data/tests/fixtures/preprocess/:

  <name>.png                 input image (RGB, L, RGBA or LA; various sizes;
                             rgba_224x260 needs no resize at S = 224, and has
                             colour under alpha 0); and files whose PNG colour
                             type changes what Pillow does: palette and 1-bit
                             (resized NEAREST; 1-, 4- and 8-bit, alpha levels
                             in tRNS), grey and RGB with a tRNS chunk (alpha
                             ignored), 2-bit grey, 16-bit RGB (also with tRNS),
                             RGBA and LA (high byte kept); the 2- and 16-bit
                             files are encoded here, Pillow cannot write them
  face_200x160_q90.jpg       a face-like JPEG saved by Pillow at quality 90
                             with 4:2:0 chroma subsampling (PIL's default),
                             decoded by PIL (libjpeg-turbo) for its expected
                             outputs; the Rust decoder differs slightly
  <name>.expected<S>.png     Resize(S, BICUBIC) + CenterCrop(S) + convert("RGB"),
                             the uint8 image ToTensor receives (S = 224 and 64)
  palette_120x90.crop32.png  torchvision RandomResizedCrop(32, scale=(1, 1),
                             ratio=(4/3, 4/3), BICUBIC) + convert("RGB") of
                             the palette input: the whole image squashed to
                             32x32, which PIL resizes NEAREST (mode P)
  normalized32.safetensors   for one input, tensor <name>: ToTensor +
                             Normalize(CLIP mean/std) at S = 32, float32
                             (3, 32, 32); and <name>.imagenet with ImageNet
                             mean/std (normalisation is plain arithmetic, so
                             one input suffices)
  manifest.json              input names, sizes, modes and package versions

Run (from the repository root):

    python3 -m venv /tmp/venv-data
    /tmp/venv-data/bin/pip install pillow numpy safetensors torch torchvision
    /tmp/venv-data/bin/python scripts/fas_data/gen_preprocess_fixtures.py

Generated with Python 3.11.7, Pillow 13.0.0, numpy 2.4.6, torch 2.15.0,
torchvision 0.29.2, safetensors 0.8.0 (versions are also written to the
manifest). The Rust code under test is never used to produce expected values.
"""

import json
import pathlib
import struct
import sys
import zlib

import numpy as np
import PIL
import safetensors
import safetensors.numpy
import torch
import torchvision
from PIL import Image
from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    RandomResizedCrop,
    Resize,
    ToTensor,
)

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "fas-data" / "tests" / "fixtures" / "preprocess"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZES_U8 = (224, 64)
SIZE_F32 = 32
# The input whose normalised float output is stored too.
NORMALIZED = "gradient_112x112"
JPEG_NAME = "face_200x160_q90"


def _convert_image_to_rgb(image):
    return image.convert("RGB")


def clip_resize_crop(size):
    """clip.py `_transform` up to (and including) the RGB conversion."""
    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), _convert_image_to_rgb])


def clip_transform(size, mean, std):
    """clip.py `_transform(n_px)` (with a choice of normalisation)."""
    return Compose([clip_resize_crop(size), ToTensor(), Normalize(mean, std)])


def coords(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return x / max(w - 1, 1), y / max(h - 1, 1)


def gradient(w, h, rng):
    x, y = coords(w, h)
    r = 255 * x
    g = 255 * y
    b = 127.5 + 127.5 * np.sin(12 * x + 7 * y)
    return np.stack([r, g, b], -1)


def noise(w, h, rng):
    return rng.integers(0, 256, size=(h, w, 3)).astype(np.float64)


def checker_rings(w, h, rng):
    x, y = coords(w, h)
    checker = ((np.floor(x * w / 7) + np.floor(y * h / 5)) % 2) * 255
    rings = 127.5 + 127.5 * np.cos(60 * np.hypot(x - 0.4, y - 0.6))
    return np.stack([checker, rings, 255 - checker * 0.5], -1)


def face_like(w, h, rng):
    """Smooth shapes with hard edges and a little noise, like a face crop."""
    x, y = coords(w, h)
    img = np.stack([60 + 80 * y, 90 + 40 * x, 140 - 50 * y], -1)
    face = ((x - 0.5) / 0.28) ** 2 + ((y - 0.5) / 0.38) ** 2 < 1
    img[face] = [205, 160, 130]
    for ex in (0.4, 0.6):
        eye = ((x - ex) / 0.04) ** 2 + ((y - 0.42) / 0.025) ** 2 < 1
        img[eye] = [30, 30, 40]
    mouth = (np.abs(y - 0.66) < 0.012) & (np.abs(x - 0.5) < 0.08)
    img[mouth] = [150, 40, 50]
    # Fine deterministic texture (compresses better than noise, still tests rounding).
    return img + 6 * np.sin(900 * x * y)[..., None]


def to_u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def make_inputs(rng):
    """(name, PIL image) for every fixture input."""
    images = []
    images.append(("gradient_112x112", Image.fromarray(to_u8(gradient(112, 112, rng)), "RGB")))
    images.append(("noise_150x100", Image.fromarray(to_u8(noise(150, 100, rng)), "RGB")))
    images.append(("checker_97x250", Image.fromarray(to_u8(checker_rings(97, 250, rng)), "RGB")))
    images.append(("tall_224x301", Image.fromarray(to_u8(checker_rings(224, 301, rng)), "RGB")))
    images.append(("upscale_40x23", Image.fromarray(to_u8(noise(40, 23, rng)), "RGB")))
    grey = to_u8(gradient(150, 120, rng)[..., 0] * 0.5 + noise(150, 120, rng)[..., 1] * 0.5)
    images.append(("grey_150x120", Image.fromarray(grey, "L")))
    rgba = np.concatenate([to_u8(checker_rings(130, 180, rng)), to_u8(gradient(130, 180, rng)[..., :1])], -1)
    rgba[:20, :20, 3] = 0
    images.append(("rgba_130x180", Image.fromarray(rgba, "RGBA")))
    la = np.stack([to_u8(noise(90, 60, rng)[..., 0]), to_u8(gradient(90, 60, rng)[..., 1])], -1)
    images.append(("la_90x60", Image.fromarray(la, "LA")))
    # No resize at S = 224 (PIL returns the image untouched, convert drops
    # alpha); alpha 0 over coloured pixels in a band and a corner.
    rgba224 = np.concatenate([to_u8(gradient(224, 260, rng)), to_u8(checker_rings(224, 260, rng)[..., 1:2])], -1)
    rgba224[100:140, :, 3] = 0
    rgba224[:30, :50, 3] = 0
    images.append(("rgba_224x260", Image.fromarray(rgba224, "RGBA")))
    images.extend(pillow_mode_inputs(rng))
    return images


def pillow_mode_inputs(rng):
    """Files whose PNG colour type decides what Pillow does with them.

    Palette ("P") and 1-bit ("1") images are resized with NEAREST whatever
    filter is asked for; grey and RGB files with a tRNS chunk open as "L"
    and "RGB" (the transparency is only metadata, dropped by convert("RGB"));
    16-bit RGB, RGBA and LA open as 8-bit modes keeping the high byte.
    """
    images = []
    photo = Image.fromarray(to_u8(face_like(120, 90, rng)), "RGB")
    images.append(("palette_120x90", photo.quantize(colors=256, method=Image.Quantize.MEDIANCUT)))
    small = Image.fromarray(to_u8(checker_rings(33, 47, rng)), "RGB")
    images.append(("palette16_33x47", small.quantize(colors=16, method=Image.Quantize.MEDIANCUT)))
    two = Image.fromarray(to_u8(gradient(37, 23, rng)), "RGB").quantize(colors=2, method=Image.Quantize.MEDIANCUT)
    two.encoderinfo_bits = 1
    images.append(("palette2_37x23", two))
    # Index 0 transparent, with a colour under it: convert("RGB") shows the colour.
    trns = Image.fromarray(to_u8(gradient(75, 110, rng)), "RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    trns.info["transparency"] = 0
    images.append(("palette_trns_75x110", trns))
    # Several alpha levels in the palette (tRNS bytes), none of them used.
    levels = Image.fromarray(to_u8(checker_rings(41, 29, rng)), "RGB").quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    levels.info["transparency"] = bytes([0, 64, 128, 200, 255, 30, 0, 90])
    images.append(("palette_alpha_41x29", levels))
    bilevel = (checker_rings(101, 77, rng)[..., 1] > 127.5).astype(np.uint8) * 255
    images.append(("bilevel_101x77", Image.fromarray(bilevel, "L").convert("1", dither=Image.Dither.NONE)))
    grey = Image.fromarray(to_u8(checker_rings(80, 100, rng)[..., 1]), "L")
    grey.info["transparency"] = int(np.asarray(grey)[10, 10])
    images.append(("grey_trns_80x100", grey))
    rgb = Image.fromarray(to_u8(face_like(100, 70, rng)), "RGB")
    rgb.info["transparency"] = tuple(int(v) for v in np.asarray(rgb)[35, 50])
    images.append(("rgb_trns_100x70", rgb))
    return images


def deep_inputs(rng):
    """(name, width, height, PNG colour type, uint16 samples (h, w, c)): 16-bit
    files, which Pillow cannot write in these modes, so they are encoded here."""
    w, h = 70, 52
    # A smooth high byte (small expected files) over a random low byte: a
    # decoder that rounds to 8 bits instead of truncating differs often.
    low = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint16)
    high = np.concatenate([to_u8(face_like(w, h, rng)), to_u8(gradient(w, h, rng)[..., 1:2])], -1).astype(np.uint16)
    samples = (high << 8) | low
    rgb, alpha = samples[..., :3], samples[..., 3:]
    alpha[:10, :10] = 0
    return [
        ("rgb16_70x52", w, h, 2, rgb),
        # tRNS naming one pixel's colour: Pillow opens RGB, alpha ignored.
        ("rgb16_trns_70x52", w, h, 2, rgb),
        ("rgba16_70x52", w, h, 6, np.concatenate([rgb, alpha], -1)),
        ("la16_70x52", w, h, 4, np.concatenate([rgb[..., :1], alpha], -1)),
    ]


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path, width, height, depth, color_type, rows, extra=b""):
    """A minimal PNG: IHDR, `extra` chunks, one zlib IDAT of `rows` (each
    already packed, filter 0 prepended here), IEND."""
    data = b"".join(b"\x00" + row for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", zlib.compress(data, 9))
        + png_chunk(b"IEND", b"")
    )


def write_png16(path, width, height, color_type, samples, extra=b""):
    """A 16-bit PNG of `samples` (h, w, c), big-endian as PNG stores them."""
    rows = [samples[y].astype(">u2").tobytes() for y in range(height)]
    write_png(path, width, height, 16, color_type, rows, extra)


def write_grey2(path, values):
    """A 2-bit grey PNG of `values` (h, w) in 0..3, four pixels a byte,
    the first in the high bits; Pillow opens it as L, scaling by 85."""
    height, width = values.shape
    padded = np.zeros((height, (width + 3) // 4 * 4), dtype=np.uint8)
    padded[:, :width] = values
    quads = padded.reshape(height, -1, 4)
    packed = (quads[..., 0] << 6) | (quads[..., 1] << 4) | (quads[..., 2] << 2) | quads[..., 3]
    write_png(path, width, height, 2, 0, [packed[y].astype(np.uint8).tobytes() for y in range(height)])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240617)
    tensors = {}
    manifest = {
        "generator": "scripts/fas_data/gen_preprocess_fixtures.py",
        "versions": {
            "python": sys.version.split()[0],
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "safetensors": safetensors.__version__,
        },
        "inputs": [],
    }
    for stale in list(OUT.glob("*.png")) + list(OUT.glob("*.jpg")) + list(OUT.glob("*.safetensors")):
        stale.unlink()
    inputs = [(name, image, f"{name}.png") for name, image in make_inputs(rng)]
    face = Image.fromarray(to_u8(face_like(200, 160, rng)), "RGB")
    inputs.append((JPEG_NAME, face, f"{JPEG_NAME}.jpg"))
    for name, image, file_name in inputs:
        if file_name.endswith(".jpg"):
            # Pillow's default subsampling at quality 90 is 4:2:0; say so explicitly.
            image.save(OUT / file_name, quality=90, subsampling=2)
        elif getattr(image, "encoderinfo_bits", None):
            image.save(OUT / file_name, bits=image.encoderinfo_bits)
        elif "transparency" in image.info:
            image.save(OUT / file_name, optimize=True, transparency=image.info["transparency"])
        else:
            image.save(OUT / file_name, optimize=True)
        reloaded = Image.open(OUT / file_name)
        assert reloaded.mode == image.mode, (name, reloaded.mode, image.mode)
        assert ("transparency" in reloaded.info) == ("transparency" in image.info), name
        for size in SIZES_U8:
            clip_resize_crop(size)(reloaded).save(OUT / f"{name}.expected{size}.png", optimize=True)
        if name == "palette_120x90":
            # Scale and ratio leave one choice: the whole 120x90 image.
            crop = RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), interpolation=InterpolationMode.BICUBIC)
            crop(reloaded).convert("RGB").save(OUT / f"{name}.crop32.png", optimize=True)
        if name == NORMALIZED:
            tensors[name] = clip_transform(SIZE_F32, CLIP_MEAN, CLIP_STD)(reloaded).numpy().astype(np.float32)
            imagenet = clip_transform(SIZE_F32, IMAGENET_MEAN, IMAGENET_STD)(reloaded)
            tensors[f"{name}.imagenet"] = imagenet.numpy().astype(np.float32)
        manifest["inputs"].append(
            {"file": file_name, "mode": image.mode, "width": image.width, "height": image.height}
        )
    grey2 = (checker_rings(45, 31, rng)[..., 1] / 64).astype(np.uint8).clip(0, 3)
    write_grey2(OUT / "grey2_45x31.png", grey2)
    reloaded = Image.open(OUT / "grey2_45x31.png")
    assert reloaded.mode == "L" and (np.asarray(reloaded) == grey2 * 85).all()
    for size in SIZES_U8:
        clip_resize_crop(size)(reloaded).save(OUT / f"grey2_45x31.expected{size}.png", optimize=True)
    manifest["inputs"].append({"file": "grey2_45x31.png", "mode": "L", "bit_depth": 2, "width": 45, "height": 31})
    for name, width, height, color_type, samples in deep_inputs(rng):
        file_name = f"{name}.png"
        extra = b""
        if "trns" in name:
            extra = png_chunk(b"tRNS", samples[20, 30, :3].astype(">u2").tobytes())
        write_png16(OUT / file_name, width, height, color_type, samples, extra)
        reloaded = Image.open(OUT / file_name)
        # Pillow opens these as 8-bit modes, keeping each sample's high byte
        # (16-bit grey + alpha as RGBA, the grey in all three colours).
        mode = {2: "RGB", 4: "RGBA", 6: "RGBA"}[color_type]
        assert reloaded.mode == mode, (name, reloaded.mode)
        high = samples >> 8
        if color_type == 4:
            high = high[..., [0, 0, 0, 1]]
        assert (np.asarray(reloaded) == high).all(), name
        assert ("transparency" in reloaded.info) == ("trns" in name), name
        for size in SIZES_U8:
            clip_resize_crop(size)(reloaded).save(OUT / f"{name}.expected{size}.png", optimize=True)
        manifest["inputs"].append({"file": file_name, "mode": mode, "bit_depth": 16, "width": width, "height": height})
    safetensors.numpy.save_file(tensors, str(OUT / f"normalized{SIZE_F32}.safetensors"))
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest['inputs'])} fixtures to {OUT}")


if __name__ == "__main__":
    main()
