"""A tiny Qwen2.5-VL checkpoint made locally (random init + a locally trained tokenizer); no hub access.

It is a real Hugging Face `Qwen2_5_VLForConditionalGeneration` directory (config.json, model.safetensors,
tokenizer files), so every loader in dvr1 reads it exactly as it reads Qwen2.5-VL-3B..72B.
Text head_dim is 32 (vLLM's CPU attention accepts it); mrope_section sums to head_dim/2 as transformers requires.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from dvr1.models.tokenizer import special_ids, train_tokenizer

TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    mrope_section=[4, 6, 6],
)
TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def tiny_config(ids: dict[str, int], vocab_size: int, tie_word_embeddings: bool = True, text=None, vision=None):
    """A `Qwen2_5_VLConfig` of the tiny policy. `ids` from `dvr1.models.tokenizer.special_ids`."""
    from transformers import Qwen2_5_VLConfig

    t = dict(TINY_TEXT, **(text or {}))
    v = dict(TINY_VISION, **(vision or {}))
    mrope = t.pop("mrope_section")
    theta = t.pop("rope_theta")
    v["out_hidden_size"] = t["hidden_size"]
    text_config = dict(
        t,
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope},
        bos_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=tie_word_embeddings,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=v,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=tie_word_embeddings,
    )


def write_processor_config(out_dir: str, vision_config=None, min_pixels: int = 3136, max_pixels: int = 12845056) -> str:
    """Write `preprocessor_config.json` as released Qwen2.5-VL checkpoints have it (patch 14, temporal patch 2,
    merge 2, CLIP mean/std, pixel bounds in pixels), so `AutoProcessor` -- and vLLM, which builds its multi-modal
    processor from it -- load the checkpoint. Plain JSON: no image-processor class (and no torchvision) is needed
    to write it. `vision_config` defaults to the one in `out_dir/config.json`. Returns the file's path."""
    if vision_config is None:
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(out_dir).vision_config
    from dvr1.data.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = os.path.join(out_dir, "preprocessor_config.json")
    with open(path, "w") as f:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
                   "patch_size": vision_config.patch_size, "temporal_patch_size": vision_config.temporal_patch_size,
                   "merge_size": vision_config.spatial_merge_size, "min_pixels": min_pixels,
                   "max_pixels": max_pixels, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
                   "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                   "do_convert_rgb": True}, f, indent=1)
    return path


def make_tiny_checkpoint(
    out_dir: str,
    texts: Iterable[str],
    seed: int = 0,
    vocab_size: int = 2048,
    tie_word_embeddings: bool = True,
    text=None,
    vision=None,
    model_vocab: int | None = None,
) -> str:
    """Train the tokenizer on `texts`, build a random-init tiny Qwen2.5-VL and `save_pretrained` both to `out_dir`.

    The model's vocabulary is the tokenizer's rounded up to a multiple of 128 (divisible by any TP size we use), or
    `model_vocab` (>= the tokenizer's; e.g. 152,064 for a 7B-shaped benchmark policy). `text` / `vision` override
    :data:`TINY_TEXT` / :data:`TINY_VISION` entries. Returns `out_dir`.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = train_tokenizer(texts, vocab_size, out_dir)
    vocab = _round_up(len(tok), 128)
    if model_vocab is not None:
        if model_vocab < len(tok):
            raise ValueError(f"make_tiny_checkpoint: model_vocab={model_vocab} < the tokenizer's {len(tok)} tokens")
        vocab = model_vocab
    cfg = tiny_config(special_ids(tok), vocab, tie_word_embeddings, text, vision)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).float()
    model.save_pretrained(out_dir)
    write_processor_config(out_dir, cfg.vision_config)
    with open(os.path.join(out_dir, "dvr1_tiny.json"), "w") as f:
        json.dump({"seed": seed, "tokenizer_vocab": len(tok), "model_vocab": cfg.text_config.vocab_size}, f)
    return out_dir
