"""Atomic, resumable checkpoints: megatron-core ``dist_checkpointing`` for model + optimizer, plus per-rank RNG and
dvr1 state.

Layout under ``run_dir``::

    ckpt/latest                    text: the step of the newest complete checkpoint (written last, atomically)
    ckpt/step_{N}/dist/            megatron-core dist checkpoint (torch_dist): model (+ optimizer, scheduler)
    ckpt/step_{N}/extra/rank_{r}.pt   per rank: RNG states (python, numpy, torch CPU, torch CUDA if present,
                                      megatron RNG tracker) and ``extra_state`` (data position, reward history, ...)
    ckpt/step_{N}/meta.json        step, world size, TP/PP/DP sizes (human-readable)
    ckpt/step_{N}.tmp/             a save in progress (or killed): never read, removed by the next save

A save writes everything into ``step_{N}.tmp``, then rank 0 renames it to ``step_{N}`` and only then rewrites
``latest``; so ``latest`` always names a complete checkpoint. Upstream: megatron-core 0.16.1
``dist_checkpointing/serialization.py:314`` (save), ``:61`` (load); sharded state dicts from
``MegatronModule.sharded_state_dict`` and ``MegatronOptimizer.sharded_state_dict`` (``optimizer/optimizer.py:307``);
the DistributedOptimizer uses the ``dp_reshardable`` format, the only DistOpt format that works on CPU in megatron-core
0.16.1 (``fully_reshardable`` calls ``.cuda()`` at ``distrib_optimizer.py:1089``; ``fully_sharded_model_space``
fails with "ShardedTensor.flattened_range is not supported"). Because the model and optimizer are sharded
checkpoints, a TP/PP/DP layout change on resume is allowed (megatron reshards); per-rank RNG states are then not
restored (logged).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from dvr1.parallel import grid

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_DISTOPT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


class CheckpointError(RuntimeError):
    """Raised for a missing or malformed checkpoint (message names the path)."""


def _ckpt_root(run_dir: Union[str, Path]) -> Path:
    return Path(run_dir) / "ckpt"


def _step_dir(run_dir: Union[str, Path], step: int) -> Path:
    return _ckpt_root(run_dir) / f"step_{step}"


_rank = grid.global_rank


def _world() -> int:
    return grid.layout()["world_size"]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _chunks(model_chunks) -> List[torch.nn.Module]:
    from megatron.core.utils import unwrap_model

    chunks = [model_chunks] if isinstance(model_chunks, torch.nn.Module) else list(model_chunks)
    return unwrap_model(chunks)


def _sharded_state_dict(chunks: List[torch.nn.Module], optimizer, scheduler, is_loading: bool) -> Dict[str, Any]:
    """Megatron-LM's layout: ``model`` (or ``model0``, ``model1``, ... for virtual-pipeline chunks),
    ``optimizer`` (built from the model's sharded dict), ``opt_param_scheduler`` (common, plain dict)."""
    state: Dict[str, Any] = {}
    if len(chunks) == 1:
        state["model"] = chunks[0].sharded_state_dict()
    else:
        for i, chunk in enumerate(chunks):
            state[f"model{i}"] = chunk.sharded_state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=_DISTOPT_METADATA)
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    return state


def _inner_adams(optimizer):
    """The torch Adam(W) inside each megatron sub-optimizer: yields ``(sub_optimizer, torch_optimizer)``."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            yield sub, inner


def _has_stepped(optimizer) -> bool:
    """True if any rank's optimizer holds Adam state (torch creates it lazily on the first step)."""
    stepped = torch.tensor(float(any(len(inner.state) > 0 for _, inner in _inner_adams(optimizer))))
    if dist.is_initialized():
        dist.all_reduce(stepped, op=dist.ReduceOp.MAX)
    return bool(stepped.item())


def _materialize_adam_state(optimizer) -> None:
    """Give a never-stepped optimizer the Adam state torch would create lazily (step 0, zero moments), so that the
    *loading* sharded state dict can be built; the values are then overwritten from the checkpoint.

    Needed for the DistributedOptimizer: without apex/TE its ``state_dict`` asserts every param state has a
    ``step`` (megatron-core 0.16.1 ``optimizer/distrib_optimizer.py:641``).
    """
    for _, inner in _inner_adams(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _restore_distopt_step(optimizer) -> None:
    """Set each DistributedOptimizer param state's Adam ``step`` to the saved param-group ``step``.

    Without apex/TE the DistributedOptimizer stores the (common) Adam step in the param groups
    (``distrib_optimizer.py:673``); the dp_reshardable param-state load writes back the loading template's step,
    which for a fresh optimizer is the 0 of :func:`_materialize_adam_state`.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub, inner in _inner_adams(optimizer):
        if not isinstance(sub, DistributedOptimizer):
            continue
        for group in inner.param_groups:
            if "step" in group:
                for p in group["params"]:
                    inner.state[p]["step"] = torch.tensor(float(group["step"]))


def get_rng_state() -> Dict[str, Any]:
    """All RNG states of this rank: ``python`` (tuple), ``numpy`` (tuple), ``torch_cpu`` (uint8 tensor),
    ``torch_cuda`` (uint8 tensor or None), ``tracker`` (megatron RNG tracker name -> state, or None)."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {k: v.clone() for k, v in tracker.get_states().items()} if tracker.is_initialized() else None,
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states produced by :func:`get_rng_state`."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
    if state.get("tracker") is not None:
        get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state["tracker"].items()})


def latest_step(run_dir: Union[str, Path]) -> Optional[int]:
    """The step in ``run_dir/ckpt/latest``, or None if there is no complete checkpoint.

    Raises CheckpointError if ``latest`` is not an integer or names a missing ``step_{N}`` directory.
    """
    path = _ckpt_root(run_dir) / "latest"
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: expected a step number, got {text!r}")
    step = int(text)
    if not _step_dir(run_dir, step).is_dir():
        raise CheckpointError(f"{path}: names step {step} but {_step_dir(run_dir, step)} does not exist")
    return step


def list_steps(run_dir: Union[str, Path]) -> List[int]:
    """Steps of the complete checkpoint directories ``ckpt/step_{N}`` (``.tmp`` ones excluded), ascending."""
    root = _ckpt_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def save_checkpoint(
    run_dir: Union[str, Path],
    step: int,
    model_chunks: Union[torch.nn.Module, Sequence[torch.nn.Module]],
    optimizer=None,
    scheduler=None,
    extra_state: Optional[Dict[str, Any]] = None,
    keep_last: Optional[int] = None,
) -> Path:
    """Save model, optimizer, scheduler, RNG and ``extra_state`` as ``run_dir/ckpt/step_{step}``; collective.

    Args:
        run_dir: run directory (shared by all ranks). step: optimizer step count (>= 0).
        model_chunks: the model (or DDP-wrapped chunks from ``build_optimizer``; wrappers are unwrapped).
        optimizer: a megatron-core ``MegatronOptimizer`` or None. scheduler: ``OptimizerParamScheduler`` or None.
        extra_state: this rank's picklable dvr1 state (data position, reward history, ...); stored per rank.
        keep_last: keep only the newest ``keep_last`` complete checkpoints (None keeps all).

    Returns the final directory. Raises ValueError for ``step < 0`` or ``keep_last < 1``.
    """
    from megatron.core import dist_checkpointing

    if step < 0:
        raise ValueError(f"dvr1.train.checkpoint.save_checkpoint: step={step} must be >= 0")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"dvr1.train.checkpoint.save_checkpoint: keep_last={keep_last} must be >= 1 or None")
    root, final = _ckpt_root(run_dir), _step_dir(run_dir, step)
    tmp = root / f"step_{step}.tmp"
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "dist").mkdir(parents=True)
        (tmp / "extra").mkdir()
    _barrier()

    chunks = _chunks(model_chunks)
    # A never-stepped Adam has no state to save (megatron-core cannot round-trip step 0: optimizer.py:1033 drops a
    # zero common step); it is recorded as "fresh" and re-created empty on load, which is what it was.
    optimizer_kind = "none" if optimizer is None else ("saved" if _has_stepped(optimizer) else "fresh")
    state = _sharded_state_dict(chunks, optimizer if optimizer_kind == "saved" else None, scheduler, is_loading=False)
    dist_checkpointing.save(state, str(tmp / "dist"))
    torch.save(
        {"rng": get_rng_state(), "extra_state": dict(extra_state or {}), "rank": _rank()},
        tmp / "extra" / f"rank_{_rank():05d}.pt",
    )
    _barrier()

    if _rank() == 0:
        (tmp / "meta.json").write_text(json.dumps({"step": step, "optimizer": optimizer_kind, **grid.layout()}, indent=1))
        if final.exists():  # re-saving a step (e.g. after resuming from an older one): replace it
            old = root / f"step_{step}.old.tmp"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        latest_tmp = root / "latest.tmp"
        latest_tmp.write_text(f"{step}\n")
        os.replace(latest_tmp, root / "latest")
        if keep_last is not None:
            for old_step in list_steps(run_dir)[:-keep_last]:
                if old_step != step:
                    shutil.rmtree(_step_dir(run_dir, old_step))
    _barrier()
    return final


def load_checkpoint(
    run_dir: Union[str, Path],
    model_chunks: Union[torch.nn.Module, Sequence[torch.nn.Module]],
    optimizer=None,
    scheduler=None,
    step: Optional[int] = None,
    restore_rng: bool = True,
) -> Optional[Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` into existing model / optimizer / scheduler; collective.

    Args:
        step: which step; None means ``latest``. optimizer / scheduler: None skips them (e.g. evaluation).
        restore_rng: restore this rank's RNG states (only when the world size matches the saved one).

    Returns this rank's ``extra_state`` dict (rank 0's if the world size changed), or None when ``run_dir`` has no
    checkpoint and ``step`` is None.

    Raises CheckpointError if ``step`` is given but ``ckpt/step_{step}`` does not exist or is incomplete.
    """
    from megatron.core import dist_checkpointing

    if step is None:
        step = latest_step(run_dir)
        if step is None:
            return None
    path = _step_dir(run_dir, step)
    if not (path / "dist" / "metadata.json").exists() or not (path / "meta.json").exists():
        raise CheckpointError(f"{path}: no complete checkpoint for step {step} (missing dist/metadata.json)")
    meta = json.loads((path / "meta.json").read_text())
    if optimizer is not None and meta["optimizer"] == "none":
        raise CheckpointError(f"{path}: saved without an optimizer; pass optimizer=None to load the model only")
    load_optimizer = optimizer is not None and meta["optimizer"] == "saved"
    chunks = _chunks(model_chunks)
    if load_optimizer:
        _materialize_adam_state(optimizer)
    sharded = _sharded_state_dict(chunks, optimizer if load_optimizer else None, scheduler, is_loading=True)
    # no_grad: the dp_reshardable DistributedOptimizer load copies into leaf params (module docstring).
    with torch.no_grad():
        loaded = dist_checkpointing.load(sharded, str(path / "dist"))
        if len(chunks) == 1:
            chunks[0].load_state_dict(loaded["model"], strict=True)
        else:
            for i, chunk in enumerate(chunks):
                chunk.load_state_dict(loaded[f"model{i}"], strict=True)
        if load_optimizer:
            optimizer.load_state_dict(loaded["optimizer"])
            _restore_distopt_step(optimizer)
        elif optimizer is not None:  # saved before its first step: back to the fresh (empty) Adam state
            for _, inner in _inner_adams(optimizer):
                inner.state.clear()
    if scheduler is not None:
        scheduler.num_steps = 0  # upstream load_state_dict *adds* the saved count (optimizer_param_scheduler.py:384)
        scheduler.load_state_dict(loaded["opt_param_scheduler"])

    same_world = meta.get("world_size") == _world()
    rank_file = path / "extra" / f"rank_{(_rank() if same_world else 0):05d}.pt"
    if not rank_file.exists():
        raise CheckpointError(f"{rank_file}: missing per-rank state")
    extra = torch.load(rank_file, map_location="cpu", weights_only=False)
    if restore_rng and same_world:
        set_rng_state(extra["rng"])
    elif restore_rng:
        logger.warning(
            "%s: saved with world_size=%s, now %s: RNG states not restored", path, meta.get("world_size"), _world()
        )
    _barrier()
    return extra["extra_state"]
