"""Build tiny KOSMOS-2.5 checkpoints for tests and demos (no download needed).

The checkpoints have the real architecture classes and a small fast tokenizer that
carries the real prompt tokens (`<image>`, `</image>`, `<ocr>`, `<md>`), the
`<bbox>`/`</bbox>` markers and all `<x_0>`..`<x_4095>` / `<y_0>`..`<y_4095>`
coordinate tokens. They are saved with `save_pretrained` and loaded by the CLI
through exactly the code path used for `microsoft/kosmos-2.5`.

- `build_random_checkpoint`: random weights; output is arbitrary but deterministic.
- `build_trained_checkpoint`: overfit for well under a minute on CPU so that greedy
  decoding answers every image with `TRAINED_OCR` after `<ocr>` and `TRAINED_MD`
  after `<md>`; end-to-end tests can then assert exact rescaled boxes.

Run as a script to write a trained checkpoint: `python tests/tiny_checkpoint.py DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Coordinates refer to the resized image the processor produces (cols*16 x rows*16).
# With MAX_PATCHES=256 a 400x200 image becomes 352x176 (22x11 patches); tests use that.
TRAINED_OCR = (
    "<bbox><x_16><y_8><x_176><y_40></bbox>TOTAL 12.50\n"
    "<bbox><x_200><y_100><x_400><y_300></bbox>Clipped box\n"
    "<bbox><x_90><y_90><x_40><y_120></bbox>Degenerate box\n"
)
TRAINED_MD = "# Receipt\n\n- **Total** 12.50\n"
MAX_PATCHES = 256
LATENT_QUERIES = 16
COORDINATE_BINS = 4096


def build_tokenizer(vocab_size: int | None = None):
    """A byte-level fast tokenizer with the real special, prompt, box and coordinate tokens.

    `vocab_size` pads the base vocabulary with filler tokens so that the tokenizer
    covers a full-size model's vocabulary (108481 for microsoft/kosmos-2.5).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<s>", "<pad>", "</s>", "<unk>"]
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(base + sorted(byte_chars))}
    added = 4 + 2 + 2 * COORDINATE_BINS
    for filler in range(len(vocab), (vocab_size or 0) - added):
        vocab[f"<filler_{filler}>"] = filler
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"boi_token": "<image>", "eoi_token": "</image>", "image_token": "<s>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "</image>", "<ocr>", "<md>"]})
    layout_tokens = ["<bbox>", "</bbox>"]
    layout_tokens += [f"<x_{i}>" for i in range(COORDINATE_BINS)]
    layout_tokens += [f"<y_{i}>" for i in range(COORDINATE_BINS)]
    tokenizer.add_tokens(layout_tokens)
    return tokenizer


def _build_model(vocab_size: int, seed: int):
    import torch
    from transformers import Kosmos2_5Config, Kosmos2_5ForConditionalGeneration

    torch.manual_seed(seed)
    config = Kosmos2_5Config(
        latent_query_num=LATENT_QUERIES,
        text_config={
            "vocab_size": vocab_size,
            "embed_dim": 64,
            "layers": 2,
            "ffn_dim": 128,
            "attention_heads": 4,
            "max_position_embeddings": 512,
            "dropout": 0.0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "head_dim": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_num_patches": MAX_PATCHES,
        },
    )
    return Kosmos2_5ForConditionalGeneration(config)


def build_processor(tokenizer, max_patches: int = MAX_PATCHES, image_tokens: int = LATENT_QUERIES):
    """The KOSMOS-2.5 processor around `tokenizer`."""
    from transformers import Kosmos2_5ImageProcessor, Kosmos2_5Processor

    image_processor = Kosmos2_5ImageProcessor(max_patches=max_patches)
    return Kosmos2_5Processor(image_processor, tokenizer, num_image_tokens=image_tokens)


def build_random_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny KOSMOS-2.5 with random weights and its processor to `out_dir`."""
    tokenizer = build_tokenizer()
    model = _build_model(len(tokenizer), seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    build_processor(tokenizer).save_pretrained(out_dir)
    return out_dir


def _training_images(count: int):
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(1234)
    images = []
    for _ in range(count):
        width, height = rng.randint(60, 900), rng.randint(60, 900)
        image = Image.new("RGB", (width, height), tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = rng.randint(0, width - 1), rng.randint(0, height - 1)
            draw.rectangle([x, y, x + rng.randint(1, 80), y + rng.randint(1, 30)], fill=(0, 0, 0))
        images.append(image)
    return images


def build_trained_checkpoint(out_dir: Path, steps: int = 400, seed: int = 0) -> Path:
    """Save a tiny KOSMOS-2.5 overfit to answer `TRAINED_OCR` / `TRAINED_MD` for any image."""
    import torch

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = _build_model(len(tokenizer), seed)
    model.train()
    images = _training_images(24)
    targets = {"<ocr>": TRAINED_OCR, "<md>": TRAINED_MD}
    batches = []
    for task, answer in targets.items():
        for start in range(0, len(images), 4):
            chunk = images[start : start + 4]
            prompt = processor(text=[task] * len(chunk), images=chunk, max_patches=MAX_PATCHES, return_tensors="pt")
            answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            answer_ids = torch.tensor([answer_ids] * len(chunk))
            input_ids = torch.cat([prompt["input_ids"], answer_ids], dim=1)
            labels = input_ids.clone()
            labels[:, : prompt["input_ids"].shape[1]] = -100
            pad = torch.zeros_like(answer_ids)
            batches.append(
                {
                    "input_ids": input_ids,
                    "labels": labels,
                    "attention_mask": torch.ones_like(input_ids),
                    "image_embeds_position_mask": torch.cat([prompt["image_embeds_position_mask"], pad], dim=1),
                    "flattened_patches": prompt["flattened_patches"],
                }
            )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_checkpoint.py OUT_DIR")
    print(build_trained_checkpoint(Path(sys.argv[1])))
