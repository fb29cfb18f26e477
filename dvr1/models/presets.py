"""Published Qwen2.5-VL configurations (Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct config.json), as
`transformers.Qwen2_5_VLConfig` objects, so every size can be built (e.g. on the `meta` device), planned and converted
without the hub.

The vision tower is the same in all four (32 blocks, hidden 1280, windowed attention with full attention in blocks
7/15/23/31); its merger projects to the language model's hidden size.
"""

from __future__ import annotations

VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              tokens_per_second=2, hidden_act="silu")

TEXT = {
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "32B": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "72B": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
COMMON_TEXT = dict(rms_norm_eps=1e-6, max_position_embeddings=128000, hidden_act="silu", bos_token_id=151643,
                   eos_token_id=151645)
ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}


def preset_config(name: str):
    """`Qwen2_5_VLConfig` of a released size: "3B" | "7B" | "32B" | "72B". Raises KeyError naming the valid names."""
    from transformers import Qwen2_5_VLConfig

    key = name.upper().removeprefix("QWEN2.5-VL-")
    if key not in TEXT:
        raise KeyError(f"unknown Qwen2.5-VL preset {name!r}; valid: {', '.join(TEXT)}")
    text = dict(COMMON_TEXT, **TEXT[key], rope_parameters=dict(ROPE))
    vision = dict(VISION, out_hidden_size=text["hidden_size"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                            vision_start_token_id=151652, vision_end_token_id=151653,
                            tie_word_embeddings=text["tie_word_embeddings"])
