"""Generates the reference fixtures of the `clip-moe` crate's tests.

A tiny random Hugging Face `transformers` `CLIPModel` (vision: 32 px images,
8 px patches, width 32, 2 layers, 4 heads; text: a few hundred tokens, width
32, 2 layers, 4 heads, 16 positions; projection 24) and a matching CLIP
tokenizer are written to `crates/clip-moe/tests/fixtures/tiny_clip/`
(`config.json`, `model.safetensors`, `tokenizer.json`, the files a hub model
directory holds), together with what `transformers` computes from them:

* `expected.safetensors`: `pixel_values` (2, 3, 32, 32), `input_ids` (3, 16)
  (padded with `<|endoftext|>`, as CLIP's tokenizer pads), the pooled vision
  and text states, the projected features, the L2-normalised embeddings and
  `logits_per_image` / `logits_per_text`, and, for the losses, a (6, 2)
  logit matrix with labels, its cross-entropy and the paper's eq. 1;
* `tokens.json`: prompts and the token ids the Python tokenizer gives them,
  unpadded and padded/truncated to the context length.

The tokenizer is `transformers.CLIPTokenizer` (CLIP's pipeline: NFC +
whitespace + lowercase normaliser, CLIP's regex split + byte-level
pre-tokenizer, BPE with the `</w>` end-of-word suffix, `<|startoftext|> ...
<|endoftext|>` post-processor) over a vocabulary laid out like CLIP's (256
byte symbols, the same with `</w>`, the merges, then the two special tokens, so
`<|endoftext|>` is the last id) whose merges are learned by the `tokenizers`
BPE trainer on the paper's prompt templates.

Every weight is redrawn with unit-scale statistics (transformers' own init,
std 0.02, would make the outputs nearly constant and the comparison weak).

Run from the repository root (no network needed):

    python3 -m venv /tmp/venv-clip
    /tmp/venv-clip/bin/pip install torch transformers tokenizers safetensors numpy
    /tmp/venv-clip/bin/python scripts/clip_moe/gen_fixtures.py

Generated with torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3,
safetensors 0.8.0 (CPU, float32).
"""

import json
import math
import pathlib
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "clip-moe" / "tests" / "fixtures" / "tiny_clip"
CONTEXT = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# The paper's prompt templates (Table 4) and a few other sentences: the BPE
# corpus, so that the prompts tokenise into multi-character tokens.
TEMPLATES = [
    "There is a {} face in this photo.",
    "{} face is in this photo.",
    "A photo of a {} face.",
    "This is an example of a {} face.",
    "This is how a {} face looks like.",
    "This photo contains {} face.",
    "The picture is a {} face.",
    "This is an image of a {} face.",
]
CORPUS = [t.format(c) for t in TEMPLATES for c in ("fake", "live")] + [
    "a photo of a cat",
    "a photo of a dog",
    "spoof attack print replay mask",
    "bona fide genuine real person",
]

PROMPTS = [
    "This is an image of a fake face.",
    "This is an image of a live face.",
    "A photo of a cat",
]
TOKENIZER_CASES = PROMPTS + [
    "  THIS   is   an IMAGE, of a Fake face!!  ",
    "There is a live face in this photo. There is a fake face in this photo too.",
    "émoji 🙂 and digits 2024",
    "",
]


def bytes_to_unicode():
    """GPT-2 / CLIP byte-to-symbol table (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def learn_merges():
    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trainer_tok.train_from_iterator(CORPUS, trainer)
    merges = json.loads(trainer_tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def build_tokenizer():
    merges = learn_merges()
    symbols = bytes_to_unicode()
    vocab = {}
    for token in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]:
        vocab.setdefault(token, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges), len(vocab)


def randomise(model):
    """Unit-scale random weights: O(1) activations everywhere."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and "embedding" not in name:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif "embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main():
    torch.manual_seed(0)
    tokenizer, vocab_size = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    assert eos_id == vocab_size - 1, (eos_id, vocab_size)

    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=24,
        logit_scale_init_value=2.6592,
    )
    model = CLIPModel(config).eval()
    randomise(model)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    model.save_pretrained(OUT, safe_serialization=True)
    for extra in OUT.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    tokenizer.backend_tokenizer.save(str(OUT / "tokenizer.json"))

    unpadded = [tokenizer(p)["input_ids"] for p in TOKENIZER_CASES]
    padded = tokenizer(
        TOKENIZER_CASES, padding="max_length", truncation=True, max_length=CONTEXT
    )["input_ids"]
    (OUT / "tokens.json").write_text(
        json.dumps(
            {
                "context_length": CONTEXT,
                "bos_id": bos_id,
                "eos_id": eos_id,
                "prompts": TOKENIZER_CASES,
                "ids": unpadded,
                "padded_ids": padded,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )

    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    input_ids = torch.tensor(
        tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"]
    )
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values)
        text = model.text_model(input_ids=input_ids)
        out = model(pixel_values=pixel_values, input_ids=input_ids)
        image_features = model.visual_projection(vision.pooler_output)
        text_features = model.text_projection(text.pooler_output)
    # Losses on a (6, 2) image-prompt logit matrix: the two-prompt
    # cross-entropy, and the paper's eq. 1 with text j = prompt of image j's
    # class, S_ij = logits[i, label_j].
    loss_logits = 3.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(11))
    loss_labels = torch.tensor([0, 1, 1, 0, 1, 1])
    similarity = loss_logits[:, loss_labels]
    diagonal = torch.arange(6)
    loss_clip = (F.cross_entropy(similarity, diagonal) + F.cross_entropy(similarity.T, diagonal)) / 2
    loss_prompt_ce = F.cross_entropy(loss_logits, loss_labels)

    tensors = {
        "loss_logits": loss_logits,
        "loss_labels": loss_labels,
        "loss_clip": loss_clip,
        "loss_prompt_ce": loss_prompt_ce,
        "pixel_values": pixel_values,
        "input_ids": input_ids.to(torch.int64),
        "vision_pooled": vision.pooler_output,
        "text_pooled": text.pooler_output,
        "image_features": image_features,
        "text_features": text_features,
        "image_embeds": out.image_embeds,
        "text_embeds": out.text_embeds,
        "logits_per_image": out.logits_per_image,
        "logits_per_text": out.logits_per_text,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "expected.safetensors"))
    print("wrote", OUT, "vocab", vocab_size, "eos", eos_id)
    print("logits_per_image", out.logits_per_image)


if __name__ == "__main__":
    main()
