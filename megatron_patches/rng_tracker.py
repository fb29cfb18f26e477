"""CPU fallback for megatron-core's CUDA RNG tracker (megatron-core 0.16.1).

Upstream (``megatron/core/tensor_parallel/random.py``):

- ``_get_cuda_rng_state`` (:41) reads ``torch.cuda.random.get_rng_state`` and ``_set_cuda_rng_state`` (:72) sets the
  state through ``torch.cuda._lazy_call``; on a CPU-only build the first raises and the second silently queues a
  call that never runs.
- ``CudaRNGStatesTracker.add`` (:235-238) calls ``torch.cuda.get_rng_state()`` / ``torch.cuda.manual_seed``;
  ``model_parallel_cuda_manual_seed`` (:411) calls ``torch.cuda.manual_seed`` for the data-parallel ("default") state.
- ``CudaRNGStatesTracker.fork`` (:281) logs "CPU RNG state changed within GPU RNG context" when the CPU generator
  moved inside the fork.

On CPU the tracker's "device generator" *is* the CPU default generator, so this patch routes the two state helpers
to ``torch.get_rng_state`` / ``torch.set_rng_state`` and the ``torch.cuda`` RNG calls inside ``random.py`` to the CPU
default generator. Then ``model_parallel_cuda_manual_seed(seed)`` seeds the CPU generator with ``seed`` (the
data-parallel state, as on GPU), the tracker keeps the model-parallel state (``seed + 2718 + tp_rank``) and
``fork()`` swaps the CPU generator state in and out exactly as it swaps the CUDA state on GPU (weight init of
TP-sharded layers, dropout inside TP regions, activation checkpointing). The fork warning is always a false alarm
on CPU and is filtered out of the ``megatron.core.tensor_parallel.random`` logger (only that message).
The cudagraph-safe RNG path (``use_cudagraphable_rng=True``) needs CUDA and raises ``RuntimeError``.
"""

import logging

import torch

from megatron_patches import _torch_view

NAME = "rng_tracker"

_FORK_WARNING = "CPU RNG state changed within GPU RNG context"


def _cpu_get_rng_state(device="cuda", clone=False, graph_safe=False) -> torch.Tensor:
    """CPU version of ``random._get_cuda_rng_state``: the CPU default generator state, ``uint8 [5056]``."""
    if graph_safe:
        raise RuntimeError("megatron_patches.rng_tracker: use_cudagraphable_rng needs CUDA")
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device=-1, graph_safe=False) -> None:
    """CPU version of ``random._set_cuda_rng_state``: set the CPU default generator state (``uint8 [5056]``)."""
    if graph_safe:
        raise RuntimeError("megatron_patches.rng_tracker: use_cudagraphable_rng needs CUDA")
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    """Stands for ``torch.cuda.manual_seed`` inside ``random.py``: seed the CPU default generator."""
    torch.default_generator.manual_seed(int(seed))


def _cpu_get_rng_state_plain(device="cuda") -> torch.Tensor:
    """Stands for ``torch.cuda.get_rng_state`` inside ``random.py``."""
    return torch.get_rng_state()


class _DropForkWarning(logging.Filter):
    """Drops upstream's fork() warning, which always fires on CPU (the tracked generator is the CPU one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _FORK_WARNING not in record.getMessage()


def apply() -> None:
    """Install the CPU RNG routing into ``megatron.core.tensor_parallel.random``. Idempotent."""
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    _torch_view.install(
        mrandom, cuda={"manual_seed": _cpu_manual_seed, "get_rng_state": _cpu_get_rng_state_plain}
    )
    logger = logging.getLogger(mrandom.__name__)
    if not any(isinstance(f, _DropForkWarning) for f in logger.filters):
        logger.addFilter(_DropForkWarning())
