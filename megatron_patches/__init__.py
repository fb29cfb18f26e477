"""CPU fallbacks for megatron-core 0.16.1: one small module per upstream behaviour, each citing upstream file:line.

``apply()`` installs them only when ``torch.cuda.is_available()`` is False (``force=True`` installs them anyway, for
tests). Every patch replaces a module attribute inside the megatron-core module that makes the CUDA call (see
:mod:`megatron_patches._torch_view`) or wraps one megatron-core method; torch itself is not changed. The one exception, the ``Tensor.type`` alias needed
by the bf16 and Distributed optimizers, is opt-in and off by default (:mod:`megatron_patches.tensor_type_alias`).

Modules (``NAME``):
    rng_tracker          tensor_parallel/random.py: RNG tracker / model_parallel_cuda_manual_seed on the CPU generator
    current_device       torch.cuda.current_device() as allocation device (mappings, RoPE, memory buffer, DDP buffers)
    causal_mask          transformer/utils.py: default causal / sliding-window mask on "cuda"
    pipeline_schedules   pipeline_parallel/schedules.py + p2p_communication.py
    optimizer            optimizer/optimizer.py, clip_grads.py, utils.py L2 norm, distrib_optimizer load buffers
    dist_checkpointing   dist_checkpointing/strategies/filesystem_async.py synchronize, state_dict_saver.py flags
    inference_kv_cache   transformer/attention.py static KV-cache allocation
    tied_embeddings      language_module.py: tied embedding copy across PP stages (.cuda() before all-reduce)
    sequence_parallel_norm  transformer/torch_norm.py: the local norm under sequence parallel (no TE/apex)
    softmax_threads      fusions/fused_softmax.py: the attention softmax's gradient independent of the CPU thread count
    tensor_type_alias    (opt-in) Tensor.type() CUDA spelling inside the bf16 / DistributedOptimizer constructors
"""

import logging
import os
from typing import List, Optional

import torch

from megatron_patches import (
    causal_mask,
    current_device,
    dist_checkpointing,
    inference_kv_cache,
    optimizer,
    pipeline_schedules,
    rng_tracker,
    sequence_parallel_norm,
    softmax_threads,
    tied_embeddings,
)
from megatron_patches import tensor_type_alias as type_alias_patch

logger = logging.getLogger(__name__)

#: Patches applied by default on a CPU-only host, in order.
DEFAULT_PATCHES = (
    rng_tracker,
    current_device,
    causal_mask,
    pipeline_schedules,
    optimizer,
    dist_checkpointing,
    inference_kv_cache,
    tied_embeddings,
    sequence_parallel_norm,
    softmax_threads,
)

TENSOR_TYPE_ALIAS_ENV = "DVR1_MEGATRON_TENSOR_TYPE_ALIAS"

_applied: List[str] = []


def apply(force: bool = False, tensor_type_alias: Optional[bool] = None) -> List[str]:
    """Apply the CPU fallbacks to megatron-core if CUDA is absent (or ``force``); idempotent.

    Args:
        force: apply even when ``torch.cuda.is_available()`` is True (tests).
        tensor_type_alias: also apply the opt-in :mod:`megatron_patches.tensor_type_alias`; None reads the env
            var ``DVR1_MEGATRON_TENSOR_TYPE_ALIAS`` ("1" = on). Needed only for bf16 params or the
            DistributedOptimizer on CPU.

    Returns:
        The ``NAME`` of every patch applied by this call, in order ([] when CUDA is available and not forced).
        Logs one INFO line listing them.
    """
    if torch.cuda.is_available() and not force:
        return []
    if tensor_type_alias is None:
        tensor_type_alias = os.environ.get(TENSOR_TYPE_ALIAS_ENV, "0") == "1"
    patches = list(DEFAULT_PATCHES) + ([type_alias_patch] if tensor_type_alias else [])
    names = []
    for patch in patches:
        patch.apply()
        names.append(patch.NAME)
        if patch.NAME not in _applied:
            _applied.append(patch.NAME)
    logger.info("megatron_patches applied: %s", ", ".join(names))
    return names


def applied() -> List[str]:
    """Names of all patches applied so far in this process."""
    return list(_applied)
