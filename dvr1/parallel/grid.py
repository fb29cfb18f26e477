"""The parallel grid: where this process sits in TP × PP × DP, and the collectives along those axes.

The one owner of ``megatron.core.parallel_state`` outside process-group set-up (:mod:`dvr1.parallel.setup` builds the
groups; everything in dvr1 asks this module). Every function works when the grid is not initialised (a plain
process, a unit test, the converter before ``init_parallel``): the process is then alone on every axis (rank 0 of
size 1) and the collectives are identities. megatron-core is imported lazily, so importing this module is cheap.

Layout is megatron-core's default ``tp-cp-ep-dp-pp`` order (``parallel_state.initialize_model_parallel``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _ps():
    from megatron.core import parallel_state as ps

    return ps


def initialized() -> bool:
    """True once megatron-core's model-parallel groups exist in this process."""
    return _ps().model_parallel_is_initialized()


def global_rank() -> int:
    """This process's rank in the torch.distributed world (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_writer() -> bool:
    """True on the one process that writes run-level files (metrics, logs, eval JSONs): global rank 0."""
    return global_rank() == 0


def tp_layout() -> tuple[int, int]:
    """(tp_rank, tp_size); (0, 1) when the grid is not initialised."""
    if not initialized():
        return 0, 1
    ps = _ps()
    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def pp_layout() -> tuple[int, int]:
    """(pp_rank, pp_size); (0, 1) when the grid is not initialised."""
    if not initialized():
        return 0, 1
    ps = _ps()
    return ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()


def dp_layout() -> tuple[int, int]:
    """(dp_rank, dp_size); (0, 1) when the grid is not initialised."""
    if not initialized():
        return 0, 1
    ps = _ps()
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def layout() -> dict[str, int]:
    """``{"world_size", "tp_size", "pp_size", "dp_size"}`` (only ``world_size`` when the grid is not initialised)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not initialized():
        return {"world_size": world}
    return {"world_size": world, "tp_size": tp_layout()[1], "pp_size": pp_layout()[1], "dp_size": dp_layout()[1]}


def per_rank(global_size: int, what: str) -> int:
    """``global_size`` (a global batch) split over the DP ranks.

    Raises: ValueError naming the config field ``what`` when the DP size does not divide it."""
    _, dp = dp_layout()
    if global_size % dp:
        raise ValueError(f"{what}={global_size} is a global batch and must be divisible by the DP size {dp}")
    return global_size // dp


def is_last_stage() -> bool:
    """True on the last pipeline stage (always without PP)."""
    rank, size = pp_layout()
    return rank == size - 1


def is_stage_writer() -> bool:
    """True on TP rank 0 / DP rank 0 of each PP stage: the process that writes that stage's shard of a file."""
    return tp_layout()[0] == 0 and dp_layout()[0] == 0


# ---- data parallel ---------------------------------------------------------------------------------------------------
def dp_all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` in place over the DP group (identity at DP=1); returns ``t``."""
    if dp_layout()[1] > 1:
        dist.all_reduce(t, group=_ps().get_data_parallel_group())
    return t


def dp_all_gather_object(obj) -> list:
    """Every DP rank's picklable ``obj``, in DP-rank order (``[obj]`` at DP=1)."""
    _, dp = dp_layout()
    if dp == 1:
        return [obj]
    out = [None] * dp
    dist.all_gather_object(out, obj, group=_ps().get_data_parallel_group())
    return out


# ---- tensor parallel -------------------------------------------------------------------------------------------------
def tp_all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every TP rank's ``t`` (same shape on all), in TP-rank order (``[t]`` at TP=1)."""
    _, tp = tp_layout()
    if tp == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=_ps().get_tensor_model_parallel_group())
    return parts


# ---- pipeline parallel -----------------------------------------------------------------------------------------------
def _pp_group_ranks() -> list[int]:
    return dist.get_process_group_ranks(_ps().get_pipeline_model_parallel_group())


def pp_broadcast(t: torch.Tensor, stage: int) -> torch.Tensor:
    """Broadcast ``t`` in place from PP stage ``stage`` to the other stages of this PP group (identity at PP=1)."""
    if pp_layout()[1] > 1:
        dist.broadcast(t, src=_pp_group_ranks()[stage], group=_ps().get_pipeline_model_parallel_group())
    return t


def pp_broadcast_object(obj, stage: int):
    """A picklable object of PP stage ``stage``, on every stage of this PP group (``obj`` itself at PP=1)."""
    if pp_layout()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=_pp_group_ranks()[stage], group=_ps().get_pipeline_model_parallel_group())
    return box[0]


def pp_all_gather_object(obj) -> list:
    """Every PP stage's picklable ``obj``, in stage order, on every stage of this PP group (``[obj]`` at PP=1)."""
    _, pp = pp_layout()
    if pp == 1:
        return [obj]
    out = [None] * pp
    dist.all_gather_object(out, obj, group=_ps().get_pipeline_model_parallel_group())
    return out


def pp_split(n: int) -> list[int]:
    """The indices of ``n`` items this PP stage owns when a list is dealt out over the stages round-robin
    (stage s: s, s + pp, s + 2·pp, ...); ``range(n)`` at PP=1. `pp_all_gather_object` brings the parts back."""
    rank, pp = pp_layout()
    return list(range(rank, n, pp))


def broadcast_from_last_stage(obj):
    """Send a picklable object from the last PP stage to every stage of this PP group (identity at PP=1)."""
    return pp_broadcast_object(obj, pp_layout()[1] - 1)


def recv_from_prev_stage(t: torch.Tensor) -> torch.Tensor:
    """Receive ``t`` (preallocated, filled in place) from the previous PP stage; returns ``t``."""
    ps = _ps()
    dist.recv(t, src=ps.get_pipeline_model_parallel_prev_rank(), group=ps.get_pipeline_model_parallel_group())
    return t


def send_to_next_stage(t: torch.Tensor) -> None:
    """Send ``t`` to the next PP stage (blocking)."""
    ps = _ps()
    dist.send(t.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank(),
              group=ps.get_pipeline_model_parallel_group())
