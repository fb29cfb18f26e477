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

_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "special_tokens_map.json", "preprocessor_config.json", "video_preprocessor_config.json", "vocab.json",
         "merges.txt", "dvr1_tiny.json")


def gather_tp(p: torch.nn.Parameter, name: str, value: torch.Tensor | None = None) -> torch.Tensor:
    """The full tensor of a (possibly) TP-sharded megatron parameter `p` (or of `value`, a tensor laid out like `p`,
    e.g. its `main_grad`)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if not getattr(p, "tensor_model_parallel", False) or not ps.model_parallel_is_initialized() \
            or ps.get_tensor_model_parallel_world_size() == 1:
        return (p if value is None else value).detach()
    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(p) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, (p if value is None else value).detach().contiguous(), group=group)
    if name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(torch.chunk(x, 2, dim=0) for x in parts))
        return torch.cat(list(gates) + list(ups), dim=0)
    return torch.cat(parts, dim=p.partition_dim)


def _pp() -> tuple[int, int]:
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return 0, 1
    return ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()


def state_for_hf(policy) -> dict[str, torch.Tensor]:
    """HF-named full tensors of this PP stage (language model via the mapping table, vision tower as-is).

    Layers are split evenly over PP stages (as `dvr1.train.job.build_policy` builds them). A tied output layer on
    the last stage (megatron's copy of the embedding) is not exported: HF ties it to `model.embed_tokens`.
    """
    pp_rank, pp = _pp()
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
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    local = state_for_hf(policy)
    pp_rank, pp = _pp()
    if pp == 1:
        yield from local.items()
        return
    group = ps.get_pipeline_model_parallel_group()
    ranks = dist.get_process_group_ranks(group)
    device = next(iter(local.values())).device
    for stage in range(pp):
        meta = [[(k, tuple(v.shape), v.dtype) for k, v in local.items()] if stage == pp_rank else None]
        dist.broadcast_object_list(meta, src=ranks[stage], group=group)
        for name, shape, dtype in meta[0]:
            t = local[name].contiguous() if stage == pp_rank else torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(t, src=ranks[stage], group=group)
            yield name, t


def export_hf(policy, src_dir: str, out_dir: str) -> str:
    """Write the HF checkpoint (`model.safetensors`, or one shard per PP stage + index) and the config/tokenizer
    files of `src_dir` to `out_dir`. Every rank must call it (TP gathers are collective); TP/DP rank 0 of each stage
    writes its shard into `out_dir.tmp`, which global rank 0 renames to `out_dir` when all shards are there."""
    import json

    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from safetensors.torch import save_file

    state = state_for_hf(policy)  # collective under TP: every rank calls it
    pp_rank, pp = _pp()
    distributed = dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    writer = not ps.model_parallel_is_initialized() or (
        ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0)
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
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    if dist.is_initialized():
        dist.barrier()
    return out_dir
