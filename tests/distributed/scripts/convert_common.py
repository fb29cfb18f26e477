"""Shared inputs for the conversion tests (tests/unit/test_convert.py, tests/distributed/test_convert_tp_pp.py).

Tiny Qwen2.5-VL variants (the shapes of tests/unit/test_policy.py VARIANTS: tied / untied embeddings, GQA ratios 2, 1
and 4, three mrope sections), one video + text input, Hugging Face reference logits, the dvr1 policy's logits at
TP=1/PP=1, and a summary of a dist checkpoint's DCP metadata for exact comparison.
"""

from __future__ import annotations

import numpy as np
import torch

TEXTS = ["Is this video played forward or in reverse? A. forward B. reversed "
         "<think>I look.</think><answer>A</answer>"] * 20

VARIANTS = {
    # name: (tie_word_embeddings, text overrides)
    "tied_gqa2": (True, {}),
    "untied_gqa1": (False, {"num_key_value_heads": 4, "mrope_section": [8, 4, 4]}),
    "tied_gqa4": (True, {"num_key_value_heads": 1, "num_hidden_layers": 2, "mrope_section": [2, 7, 7]}),
}


def make_variant(out_dir: str, name: str) -> str:
    """Tiny random HF checkpoint of VARIANTS[name] in `out_dir` (seed 3, tokenizer vocab 400)."""
    from dvr1.models.tiny import make_tiny_checkpoint

    tie, text = VARIANTS[name]
    return make_tiny_checkpoint(out_dir, TEXTS, seed=3, vocab_size=400, tie_word_embeddings=tie, text=text)


def video_inputs(seed: int = 0, frames: int = 6, h: int = 90, w: int = 120):
    """(pixel_values_videos [patches, 1176] float32, video_grid_thw [1, 3]) of a random uint8 video."""
    from dvr1.data.processing import normalize_frames, patchify

    g = np.random.default_rng(seed)
    video = normalize_frames(g.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), max_pixels=112 * 112)
    pv, grid = patchify(video)
    return pv, grid.view(1, 3)


def model_inputs(hf_cfg, seed: int = 0, pre: int = 7, post: int = 15):
    """dict(ids [1, seq], pos [3, 1, seq], pv, grid, spg [1]): random text around one video."""
    from dvr1.data.processing import num_video_tokens
    from dvr1.models.rope import get_rope_index

    pv, grid = video_inputs(seed)
    g = torch.Generator().manual_seed(seed)
    n = num_video_tokens(grid[0])
    ids = torch.cat([torch.randint(20, 380, (pre,), generator=g),
                     torch.tensor([hf_cfg.vision_start_token_id] + [hf_cfg.video_token_id] * n
                                  + [hf_cfg.vision_end_token_id]),
                     torch.randint(20, 380, (post,), generator=g)]).view(1, -1)
    spg = torch.tensor([0.5])
    pos = get_rope_index(ids, hf_cfg.video_token_id, grid, spg, hf_cfg.vision_config.spatial_merge_size,
                         hf_cfg.vision_config.tokens_per_second)
    # hf_logits lets HF's model compute its own (transformers 5.19) positions: an input where both rules agree
    assert torch.equal(pos, get_rope_index(ids, hf_cfg.video_token_id, grid, spg, 2, 2, "transformers5"))
    return dict(ids=ids, pos=pos, pv=pv, grid=grid, spg=spg)


@torch.no_grad()
def hf_logits(path: str, x: dict) -> torch.Tensor:
    """transformers' Qwen2_5_VLForConditionalGeneration logits [1, seq, vocab] (fp32) of checkpoint `path`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    mm = (x["ids"] == hf.config.video_token_id).int() * 2
    return hf(input_ids=x["ids"], pixel_values_videos=x["pv"], video_grid_thw=x["grid"],
              second_per_grid_ts=x["spg"], mm_token_type_ids=mm).logits


@torch.no_grad()
def policy_logits(policy, x: dict) -> torch.Tensor:
    """dvr1 policy logits [1, seq, vocab] at TP=1/PP=1."""
    policy.eval()
    return policy(x["ids"], x["pos"], pixel_values_videos=x["pv"], video_grid_thw=x["grid"])


def dcp_summary(dist_dir: str) -> dict:
    """{key: (global shape, dtype, sorted chunk (offsets, sizes))} or "bytes" for objects, from DCP .metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(dist_dir).read_metadata()
    out = {}
    for k, v in md.state_dict_metadata.items():
        if hasattr(v, "chunks"):
            out[k] = (tuple(v.size), v.properties.dtype,
                      sorted((tuple(c.offsets), tuple(c.sizes)) for c in v.chunks))
        else:
            out[k] = "bytes"
    return out
