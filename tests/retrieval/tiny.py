"""A tiny, seeded CLIP of the real classes, written into a folder, for tests: no CLIP weights ship offline.

    folder = make_tiny_clip(tmp_path / "tiny-clip")
    clip = shared.clip.load_dual_encoder(str(folder), "cpu", torch.float32)
    clip.embed_texts(["a cat"]); clip.embed_images([image])

The folder holds a random `CLIPModel` (2 layers, 32 wide, 16-d projection, 32x32 images) and a `CLIPProcessor`
whose tokenizer is a byte-level BPE we write ourselves: every byte is a token (with and without the
end-of-word mark `</w>`) plus a few merges, so any text tokenises without the real 49k-token vocabulary.
The same seed writes the same weights, so two calls give the same embeddings (and the same model key).
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
PROJECTION_DIM = 16
MERGES = ("a t</w>", "c at</w>", "o g</w>", "d og</w>", "t h", "th e</w>")  # enough to exercise the BPE path


def byte_characters() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table; CLIP's tokenizer rebuilds it)."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of a minimal byte-level BPE that CLIPTokenizer accepts."""
    characters = byte_characters()
    tokens = characters + [c + "</w>" for c in characters]
    tokens += ["".join(merge.split()) for merge in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random CLIPModel and its CLIPProcessor into `folder` (created); returns the folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # 1. The tokenizer (the fast one, saved with its tokenizer.json so loading converts nothing) and the image
    # processor, saved as one processor.
    write_tokenizer_files(folder)
    tokenizer = CLIPTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    # 2. The model: small towers; the text tower pools at the tokenizer's own end-of-text id.
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77, **special},
        vision_config={"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    return folder
