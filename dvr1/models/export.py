"""Export the megatron-core policy to a Hugging Face Qwen2.5-VL checkpoint directory (transformers/vLLM load it).

TP shards are gathered over the TP group (column-parallel on dim 0, row-parallel on dim 1; `linear_fc1` as
[gate_r; up_r] per rank is re-assembled to [gate; up]). PP>1 export is not supported yet: it raises
NotImplementedError naming the setting.
"""

from __future__ import annotations

import os
import shutil

import torch

from dvr1.models.hf_mapping import megatron_to_hf

_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "special_tokens_map.json", "preprocessor_config.json", "video_preprocessor_config.json", "vocab.json",
         "merges.txt", "dvr1_tiny.json")


def gather_tp(p: torch.nn.Parameter, name: str) -> torch.Tensor:
    """The full tensor of a (possibly) TP-sharded megatron parameter."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if not getattr(p, "tensor_model_parallel", False) or not ps.model_parallel_is_initialized() \
            or ps.get_tensor_model_parallel_world_size() == 1:
        return p.detach()
    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(p) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, p.detach().contiguous(), group=group)
    if name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(torch.chunk(x, 2, dim=0) for x in parts))
        return torch.cat(list(gates) + list(ups), dim=0)
    return torch.cat(parts, dim=p.partition_dim)


def state_for_hf(policy) -> dict[str, torch.Tensor]:
    """HF-named full tensors of the policy (language model via the mapping table, vision tower as-is)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError("HF export with parallel.pp > 1 is not supported yet; export from a PP=1 run")
    full = {n: gather_tp(p, n) for n, p in policy.lm.named_parameters()}
    out = dict(megatron_to_hf(full, policy.shape, te=policy.spec == "te"))
    if policy.visual is not None:
        out.update({f"visual.{k}": v for k, v in policy.visual.state_dict().items()})
    return out


def export_hf(policy, src_dir: str, out_dir: str) -> str:
    """Write `out_dir/model.safetensors` + the config/tokenizer files of `src_dir`. Rank 0 writes; atomic rename."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    state = state_for_hf(policy)  # collective under TP: every rank calls it
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return out_dir
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    for f in _COPY:
        if os.path.exists(os.path.join(src_dir, f)):
            shutil.copy(os.path.join(src_dir, f), tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    if dist.is_initialized():
        dist.barrier()
    return out_dir
