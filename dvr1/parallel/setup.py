"""Process groups, seeds and device: the only place in dvr1 that knows the TP / PP / DP sizes.

``init_parallel`` brings up ``torch.distributed`` (from torchrun's env vars, or a single in-process store when run as
a plain process), applies the megatron-core CPU fallbacks (:mod:`megatron_patches`) when CUDA is absent, builds the
megatron-core model-parallel groups (``parallel_state.initialize_model_parallel``, megatron-core 0.16.1
``parallel_state.py``) and seeds every generator. Everything else in dvr1 reads sizes/ranks from the returned
:class:`ParallelInfo` or from ``megatron.core.parallel_state``.

Rank layout is megatron-core's default order ``tp-cp-ep-dp-pp``: TP ranks are adjacent, then DP, then PP.
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

import megatron_patches


class ParallelConfigError(ValueError):
    """Raised for a TP/PP layout that does not fit the world, or a conflicting re-initialisation."""


@dataclass(frozen=True)
class ParallelInfo:
    """Where this process sits in the TP x PP x DP grid (sizes and ranks are megatron-core's)."""

    rank: int
    world_size: int
    local_rank: int
    tp_size: int
    tp_rank: int
    pp_size: int
    pp_rank: int
    dp_size: int
    dp_rank: int
    device: torch.device
    is_first_stage: bool
    is_last_stage: bool
    backend: str
    seed: int


_OWNS_PROCESS_GROUP = False
_INFO: Optional[ParallelInfo] = None


def cpu_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (what Slurm / taskset / a container grant), else the
    machine's count; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _init_process_group(backend: str) -> None:
    """Initialise torch.distributed from torchrun's env (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``) or, when
    those are absent, as a world of one over an in-process ``HashStore`` (no port is opened)."""
    global _OWNS_PROCESS_GROUP
    timeout = datetime.timedelta(minutes=10)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    _OWNS_PROCESS_GROUP = True


def seed_everything(seed: int, pp_rank: int = 0) -> None:
    """Seed python, numpy and torch CPU with ``seed + 100 * pp_rank`` (Megatron-LM's ``_set_random_seed``
    convention: PP stages differ, TP/DP ranks of a stage agree), then megatron-core's RNG tracker
    (``tensor_parallel/random.py:378`` ``model_parallel_cuda_manual_seed``: data-parallel state = that seed,
    tensor-parallel state = seed + 2718 + tp_rank). Requires the model-parallel groups to exist."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    stage_seed = seed + 100 * pp_rank
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed, force_reset_rng=True)


def init_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, backend: Optional[str] = None) -> ParallelInfo:
    """Initialise distributed state, megatron-core model-parallel groups and seeds; return this rank's place.

    Args:
        tp: tensor-parallel size. pp: pipeline-parallel size. The data-parallel size is ``world_size // (tp * pp)``.
        seed: base seed (see :func:`seed_everything`).
        backend: torch.distributed backend; default ``gloo`` on CPU, ``nccl`` with CUDA.

    Returns:
        :class:`ParallelInfo`. On CUDA the device is ``cuda:{LOCAL_RANK}`` (set as current), else ``cpu``.

    Raises:
        ParallelConfigError: ``tp``/``pp`` < 1, world size not divisible by ``tp * pp``, or model-parallel state
            already initialised with other sizes (call :func:`destroy_parallel` first).

    Calling it again with the same ``tp``/``pp`` re-seeds and returns the same layout.
    """
    global _INFO
    from megatron.core import parallel_state as ps

    if tp < 1 or pp < 1:
        raise ParallelConfigError(f"dvr1.parallel.setup: tp and pp must be >= 1, got tp={tp}, pp={pp}")
    backend = backend or _default_backend()
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world % (tp * pp) != 0:
            raise ParallelConfigError(
                f"dvr1.parallel.setup: world_size={world} is not divisible by tp*pp={tp}*{pp}={tp * pp}"
            )
        _init_process_group(backend)
    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ParallelConfigError(
            f"dvr1.parallel.setup: world_size={world} is not divisible by tp*pp={tp}*{pp}={tp * pp}"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    megatron_patches.apply()

    if ps.model_parallel_is_initialized():
        have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
        if have != (tp, pp):
            raise ParallelConfigError(
                f"dvr1.parallel.setup: model parallel already initialised with tp={have[0]}, pp={have[1]}; "
                f"asked for tp={tp}, pp={pp} (call destroy_parallel() first)"
            )
    else:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)

    pp_rank = ps.get_pipeline_model_parallel_rank()
    seed_everything(seed, pp_rank)
    _INFO = ParallelInfo(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=local_rank,
        tp_size=ps.get_tensor_model_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        pp_rank=pp_rank,
        dp_size=ps.get_data_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        device=device,
        is_first_stage=ps.is_pipeline_first_stage(),
        is_last_stage=ps.is_pipeline_last_stage(),
        backend=dist.get_backend(),
        seed=seed,
    )
    return _INFO


def parallel_info() -> ParallelInfo:
    """The :class:`ParallelInfo` of the last :func:`init_parallel`. Raises RuntimeError if not initialised."""
    if _INFO is None:
        raise RuntimeError("dvr1.parallel.setup: init_parallel() has not been called")
    return _INFO


def destroy_parallel(keep_process_group: bool = False) -> None:
    """Tear down megatron-core's model-parallel groups and, if :func:`init_parallel` created it and
    ``keep_process_group`` is False, the default process group. ``keep_process_group=True`` allows a new
    :func:`init_parallel` with other TP/PP sizes in the same torchrun job. Safe to call when nothing is initialised."""
    global _OWNS_PROCESS_GROUP, _INFO
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if _OWNS_PROCESS_GROUP and dist.is_initialized() and not keep_process_group:
        dist.destroy_process_group()
        _OWNS_PROCESS_GROUP = False
    _INFO = None
