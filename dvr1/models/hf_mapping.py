"""One Hugging Face <-> megatron-core name/layout table for the Qwen2.5-VL language model.

Used by checkpoint loading (HF -> megatron at any TP/PP), export (megatron -> HF) and, later, the vLLM weight sync.
Layouts follow megatron-core and Megatron-Bridge's Qwen2.5-VL mapping:

- QKV: megatron's `linear_qkv` holds, for each of the `num_query_groups` KV groups in order, that group's
  `heads_per_group` query heads, then its key head, then its value head (each `head_dim` rows); biases likewise.
  TP splits whole groups, so rank r holds groups [r*G/tp, (r+1)*G/tp).
- SwiGLU: megatron's `linear_fc1` is [gate; up] and its first half goes through SiLU. Under TP each rank holds
  [gate_shard_r; up_shard_r].
- Column-parallel (qkv, fc1, embedding/output rows) split dim 0; row-parallel (`linear_proj`, `linear_fc2`) dim 1.
- Names are those of the local layer spec (separate `input_layernorm` / `pre_mlp_layernorm`); the
  TransformerEngine spec fuses the norms into `linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`
  (`te=True`).
- The vision tower and merger keep their HF names (`visual.*`) and are carried as-is (never TP-split).

Hugging Face names accepted on input: the checkpoint layout of Qwen2.5-VL releases (`model.layers.*`,
`model.embed_tokens`, `model.norm`, `lm_head`, `visual.*`) and transformers 5's module layout
(`model.language_model.*`, `model.visual.*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LMShape:
    """The language model's sizes (Qwen2 decoder): what the mapping needs (layers, heads, KV heads, head_dim, tying)
    and the widths tools/plan_memory.py counts parameters and activations with (hidden, SwiGLU FFN, vocabulary)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    hidden_size: int
    ffn_hidden_size: int
    vocab_size: int


def canonical_hf_name(name: str) -> str:
    """Map either HF layout to the release checkpoint layout (`model.layers...`, `visual...`, `lm_head...`)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


# ---- QKV / fc1 layouts --------------------------------------------------------------------------------------

def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: LMShape) -> torch.Tensor:
    """HF q `[heads*d, ...]`, k/v `[kv*d, ...]` -> megatron grouped `[(heads + 2*kv)*d, ...]` (weights or biases)."""
    g, d = s.num_kv_heads, s.head_dim
    hpg = s.num_heads // g
    rest = q.shape[1:]
    q = q.reshape(g, hpg * d, *rest)
    k = k.reshape(g, d, *rest)
    v = v.reshape(g, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, s: LMShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv` on the full (TP-gathered) tensor."""
    g, d = s.num_kv_heads, s.head_dim
    hpg = s.num_heads // g
    rest = qkv.shape[1:]
    x = qkv.reshape(g, (hpg + 2) * d, *rest)
    q, k, v = torch.split(x, [hpg * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def shard(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """Contiguous TP shard `rank` of `size` along `dim` (clone, so the caller may free the full tensor)."""
    if t.shape[dim] % size:
        raise ValueError(f"dimension {dim} of shape {tuple(t.shape)} is not divisible by TP={size}")
    return torch.chunk(t, size, dim=dim)[rank].clone()


def shard_fc1(gate: torch.Tensor, up: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """[gate_shard; up_shard] for TP rank `rank`."""
    return torch.cat([shard(gate, 0, rank, size), shard(up, 0, rank, size)], dim=0)


# ---- the table ----------------------------------------------------------------------------------------------

# HF per-layer suffix -> (megatron local-spec suffix, TE-spec suffix, TP split dim or None)
_LAYER_SIMPLE = {
    "input_layernorm.weight": ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight", None),
    "post_attention_layernorm.weight": ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", None),
    "self_attn.o_proj.weight": ("self_attention.linear_proj.weight",) * 2 + (1,),
    "mlp.down_proj.weight": ("mlp.linear_fc2.weight",) * 2 + (1,),
}


def hf_to_megatron(get, s: LMShape, tp_rank: int = 0, tp_size: int = 1, layers: range | None = None,
                   pre_process: bool = True, post_process: bool = True, te: bool = False):
    """Yield `(megatron_name, local_shard)` for one TP rank / PP stage, reading HF tensors lazily via `get(name)`.

    Args:
        get: `name -> torch.Tensor` in HF release layout (see `canonical_hf_name`); called once per needed tensor,
            so peak memory is about one HF tensor plus one shard.
        layers: the global layer indices this PP stage holds (default all); megatron names use local indices.
        pre_process / post_process: whether this stage holds the embedding / final norm and output layer.
    """
    layers = range(s.num_layers) if layers is None else layers
    if pre_process:
        yield "embedding.word_embeddings.weight", shard(get("model.embed_tokens.weight"), 0, tp_rank, tp_size)
    for local, i in enumerate(layers):
        p, m = f"model.layers.{i}.", f"decoder.layers.{local}."
        for hf_suffix, (loc, tes, dim) in _LAYER_SIMPLE.items():
            t = get(p + hf_suffix)
            yield m + (tes if te else loc), t if dim is None else shard(t, dim, tp_rank, tp_size)
        for kind in ("weight", "bias"):
            qkv = fuse_qkv(*(get(f"{p}self_attn.{x}_proj.{kind}") for x in "qkv"), s)
            yield f"{m}self_attention.linear_qkv.{kind}", shard(qkv, 0, tp_rank, tp_size)
        yield m + "mlp.linear_fc1.weight", shard_fc1(get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight"),
                                                     tp_rank, tp_size)
    if post_process:
        yield "decoder.final_layernorm.weight", get("model.norm.weight")
        if not s.tie_word_embeddings:
            yield "output_layer.weight", shard(get("lm_head.weight"), 0, tp_rank, tp_size)
        elif not pre_process:  # tied, last PP stage: megatron keeps a copy synced with the embedding
            yield "output_layer.weight", shard(get("model.embed_tokens.weight"), 0, tp_rank, tp_size)


def megatron_to_hf(state: dict[str, torch.Tensor], s: LMShape, layer_offset: int = 0, te: bool = False):
    """Yield `(hf_name, tensor)` from a TP-gathered (full) megatron state of one PP stage.

    `layer_offset` is the stage's first global layer. The inverse of `hf_to_megatron` at TP=1.
    """
    inv_simple = {(tes if te else loc): hf for hf, (loc, tes, _) in _LAYER_SIMPLE.items()}
    for name, t in state.items():
        if name == "embedding.word_embeddings.weight":
            yield "model.embed_tokens.weight", t
        elif name == "decoder.final_layernorm.weight":
            yield "model.norm.weight", t
        elif name == "output_layer.weight":
            if not s.tie_word_embeddings:
                yield "lm_head.weight", t
        elif name.startswith("decoder.layers."):
            _, _, idx, suffix = name.split(".", 3)
            p = f"model.layers.{int(idx) + layer_offset}."
            if suffix in inv_simple:
                yield p + inv_simple[suffix], t
            elif suffix.startswith("self_attention.linear_qkv.") and suffix.split(".")[-1] in ("weight", "bias"):
                kind = suffix.split(".")[-1]
                for x, part in zip("qkv", split_qkv(t, s)):
                    yield f"{p}self_attn.{x}_proj.{kind}", part
            elif suffix == "mlp.linear_fc1.weight":
                gate, up = torch.chunk(t, 2, dim=0)
                yield p + "mlp.gate_proj.weight", gate
                yield p + "mlp.up_proj.weight", up
            else:
                raise KeyError(f"no Hugging Face name for megatron parameter {name!r}")
        else:
            raise KeyError(f"no Hugging Face name for megatron parameter {name!r}")
