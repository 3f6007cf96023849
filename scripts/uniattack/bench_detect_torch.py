"""PyTorch reference of `detect`'s work, for scripts/uniattack/bench_detect.sh:
transformers' CLIPModel ViT-B/16 with La-SoftMoE branches (as in
bench_train_step_torch.py, random weights), images decoded with PIL and put
through CLIP's transform, scored under torch.no_grad() in batches against
two fixed prompt embeddings. Prints images/s of the scoring loop (model
construction, the prompt embeddings and DataLoader worker start-up
excluded) as JSON.

    /tmp/venv/bin/python scripts/uniattack/bench_detect_torch.py --threads 2 --batch 16 IMAGE_DIR
    python3 scripts/uniattack/bench_detect_torch.py --device cuda --tf32 --workers 16 --batch 64 IMAGE_DIR
"""

import argparse
import json
import pathlib
import time

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from bench_train_step_torch import MlpPlusMoe, SoftMoE

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def clip_transform(path, size=224):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return (x.permute(2, 0, 1).float() / 255.0 - MEAN) / STD


def transform_batch(paths):
    """A DataLoader worker's batch (module level: workers may be spawned)."""
    return torch.stack([clip_transform(p) for p in paths])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader processes decoding the images (0: in the scoring loop)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA (uniattack's default)")
    parser.add_argument("images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = CLIPConfig(vision_config={"patch_size": 16}, attn_implementation="eager")
    model = CLIPModel(config)
    vc = config.vision_config
    for layer in model.vision_model.encoder.layers:
        moe = SoftMoE(4, 49, True, vc.hidden_size, vc.intermediate_size, quick_gelu=True)
        layer.mlp = MlpPlusMoe(layer.mlp, moe)
    model.eval().to(device)
    paths = sorted(p for p in pathlib.Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    ids = torch.randint(1, 600, (2, 77)).to(device)
    ids[:, 10:] = 49407
    if args.workers > 0:
        batches = torch.utils.data.DataLoader(paths, batch_size=args.batch, num_workers=args.workers,
                                              collate_fn=transform_batch)
    else:
        batches = (torch.stack([clip_transform(p) for p in paths[i:i + args.batch]])
                   for i in range(0, len(paths), args.batch))
    with torch.no_grad():
        text = F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)
        # Worker processes start with the iterator, outside the timed part
        # (uniattack's figure leaves out its start-up the same way).
        batches = iter(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = []
        for pixels in batches:
            pixels = pixels.to(device)
            image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
            logits = model.logit_scale.exp() * image @ text.t()
            scores.extend(logits.softmax(-1)[:, 1].tolist())
        seconds = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "device": args.device, "images": len(paths), "seconds": seconds,
                      "images_per_s": len(paths) / seconds, "batch": args.batch, "workers": args.workers}))


if __name__ == "__main__":
    main()
