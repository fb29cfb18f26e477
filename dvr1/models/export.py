"""Export the megatron-core policy to a Hugging Face Qwen2.5-VL checkpoint directory (transformers/vLLM load it).

TP shards are gathered over the TP group (column-parallel on dim 0, row-parallel on dim 1; `linear_fc1` as
[gate_r; up_r] per rank is re-assembled to [gate; up]). Under PP each stage writes its own layers as one shard
`model-0000k-of-0000P.safetensors` and rank 0 writes `model.safetensors.index.json`, the sharded HF layout.
"""

from __future__ import annotations

import os
import shutil

import torch

from dvr1.models.hf_mapping import megatron_to_hf
from dvr1.parallel import grid

_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "special_tokens_map.json", "preprocessor_config.json", "video_preprocessor_config.json", "vocab.json",
         "merges.txt", "dvr1_tiny.json")


def gather_tp(p: torch.nn.Parameter, name: str, value: torch.Tensor | None = None) -> torch.Tensor:
    """The full tensor of a (possibly) TP-sharded megatron parameter `p` (or of `value`, a tensor laid out like `p`,
    e.g. its `main_grad`)."""
    if not getattr(p, "tensor_model_parallel", False) or grid.tp_layout()[1] == 1:
        return (p if value is None else value).detach()
    parts = grid.tp_all_gather((p if value is None else value).detach())
    if name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(torch.chunk(x, 2, dim=0) for x in parts))
        return torch.cat(list(gates) + list(ups), dim=0)
    return torch.cat(parts, dim=p.partition_dim)


def state_for_hf(policy) -> dict[str, torch.Tensor]:
    """HF-named full tensors of this PP stage (language model via the mapping table, vision tower as-is).

    Layers are split evenly over PP stages (as `dvr1.train.job.build_policy` builds them). A tied output layer on
    the last stage (megatron's copy of the embedding) is not exported: HF ties it to `model.embed_tokens`.
    """
    pp_rank, pp = grid.pp_layout()
    full = {n: gather_tp(p, n) for n, p in policy.lm.named_parameters()}
    offset = pp_rank * (policy.shape.num_layers // pp)
    out = dict(megatron_to_hf(full, policy.shape, layer_offset=offset, te=policy.spec == "te"))
    if policy.visual is not None:
        out.update({f"visual.{k}": v for k, v in policy.visual.state_dict().items()})
    return out


def iter_full_state_for_hf(policy):
    """Yield ``(HF name, full tensor)`` for the WHOLE model on every rank: TP shards gathered (`state_for_hf`), and
    under PP each stage's tensors broadcast to the other stages over the PP group, stage by stage, one tensor at a
    time (peak extra memory: one full tensor). Every rank must consume the iterator to the end in order (the
    broadcasts are collective). This is the weights iterator of the colocated vLLM refit (`dvr1.rollout.vllm`)."""
    local = state_for_hf(policy)
    pp_rank, pp = grid.pp_layout()
    if pp == 1:
        yield from local.items()
        return
    device = next(iter(local.values())).device
    for stage in range(pp):
        meta = grid.pp_broadcast_object(
            [(k, tuple(v.shape), v.dtype) for k, v in local.items()] if stage == pp_rank else None, stage)
        for name, shape, dtype in meta:
            t = local[name].contiguous() if stage == pp_rank else torch.empty(shape, dtype=dtype, device=device)
            yield name, grid.pp_broadcast(t, stage)


MROPE_RULE_KEY = "dvr1_mrope_rule"  # config.json key of an exported checkpoint: the rule it was trained with


def export_hf(policy, src_dir: str, out_dir: str) -> str:
    """Write the HF checkpoint (`model.safetensors`, or one shard per PP stage + index) and the config/tokenizer
    files of `src_dir` to `out_dir`. Every rank must call it (TP gathers are collective); TP/DP rank 0 of each stage
    writes its shard into `out_dir.tmp`, which global rank 0 renames to `out_dir` when all shards are there."""
    import json

    import torch.distributed as dist
    from safetensors.torch import save_file

    state = state_for_hf(policy)  # collective under TP: every rank calls it
    pp_rank, pp = grid.pp_layout()
    distributed = dist.is_initialized()
    rank = grid.global_rank()
    writer = grid.is_stage_writer()
    tmp = out_dir.rstrip("/") + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    if distributed:
        dist.barrier()
    name = "model.safetensors" if pp == 1 else f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    if writer:
        save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(tmp, name),
                  metadata={"format": "pt"})
    names = [(name, sorted(state))] if writer else []
    if distributed:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = [x for g in gathered for x in g]
    if rank != 0:
        dist.barrier()
        return out_dir
    if pp > 1:
        weight_map = {k: file for file, keys in names for k in keys}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=1)
    for f in _COPY:
        if os.path.exists(os.path.join(src_dir, f)):
            shutil.copy(os.path.join(src_dir, f), tmp)
    # the mrope rule these weights were trained with (model.mrope_rule); dvr1.train.job.build_policy refuses to load
    # them under another one. Hugging Face keeps the unknown key as a config attribute; vLLM ignores it
    with open(os.path.join(tmp, "config.json")) as f:
        hf_config = json.load(f)
    hf_config[MROPE_RULE_KEY] = policy.info.mrope_rule
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    if dist.is_initialized():
        dist.barrier()
    return out_dir
