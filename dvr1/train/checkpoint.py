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
``latest`` (itself written to ``latest.tmp`` and renamed); so a save killed at any moment never becomes ``latest``.
Pruned and replaced checkpoints are first renamed to ``*.tmp`` names too, so no half-deleted directory is ever a
``step_{N}``. Stale ``*.tmp`` entries are removed by the next save.

Every file dvr1 writes here loads with ``torch.load(weights_only=True)``: the per-rank file holds only tensors,
lists, tuples, dicts, ints, floats, bools, strings and None (the numpy RNG state is stored as a dict with a tensor
key; a save whose ``extra_state`` holds anything else raises). The dist checkpoint is read by megatron-core.

Loading the newest checkpoint (``step=None``) checks it first (``meta.json``, ``dist/metadata.json``,
``dist/common.pt``, every shard file's size against the DCP ``.metadata``, this rank's per-rank file); a checkpoint
that cannot be read is skipped with a warning naming the file and the step it falls back to, down to the oldest
complete one, then :class:`CheckpointError` naming the file. Fault-injection points for the chaos test
(``dvr1.train.faults``, ``ckpt.*``) sit between the writes. Upstream: megatron-core 0.16.1
``dist_checkpointing/serialization.py:314`` (save), ``:61`` (load); sharded state dicts from
``MegatronModule.sharded_state_dict`` and ``MegatronOptimizer.sharded_state_dict`` (``optimizer/optimizer.py:307``);
the DistributedOptimizer uses the ``dp_reshardable`` format, the only DistOpt format that works on CPU in megatron-core
0.16.1 (``fully_reshardable`` calls ``.cuda()`` at ``distrib_optimizer.py:1089``; ``fully_sharded_model_space``
fails with "ShardedTensor.flattened_range is not supported"). Because the model and optimizer are sharded
checkpoints, a TP/PP/DP layout change on resume is allowed (megatron reshards); per-rank RNG states are then not
restored (logged).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from dvr1.parallel import grid
from dvr1.train import faults
from dvr1.train.offload import is_offloaded, onload

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_DISTOPT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


class CheckpointError(RuntimeError):
    """Raised for a missing or malformed checkpoint (message names the path)."""


class _Unreadable(CheckpointError):
    """A checkpoint file is missing, truncated or corrupt: :func:`load_checkpoint` may fall back to an older one."""


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
    """All RNG states of this rank, in types ``torch.load(weights_only=True)`` accepts: ``python``
    (``random.getstate()``, a tuple of ints), ``numpy`` (``{"bit_generator": str, "key": int64 tensor [624],
    "pos": int, "has_gauss": int, "cached_gaussian": float}``, the legacy MT19937 state), ``torch_cpu`` (uint8
    tensor), ``torch_cuda`` (uint8 tensor or None), ``tracker`` (megatron RNG tracker name -> state, or None)."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {k: v.clone() for k, v in tracker.get_states().items()} if tracker.is_initialized() else None,
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states produced by :func:`get_rng_state` (the streams continue bit for bit)."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
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


def _reason(e: BaseException) -> str:
    """One line for a load error: torch's weights_only refusal names the global it refused; else the first line."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        refused = text.split("WeightsUnpickler error:", 1)[1].strip().split(" was not an allowed global")[0]
        return f"not loadable with torch.load(weights_only=True): {refused.splitlines()[0]}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _load_pt(path: Path):
    """``torch.load(path, weights_only=True)`` on CPU; CheckpointError naming the file if it cannot be read."""
    if not path.is_file():
        raise _Unreadable(f"{path}: missing")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        raise _Unreadable(f"{path}: truncated or corrupt (not a complete torch.save zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _Unreadable(f"{path}: unreadable ({_reason(e)})") from e


def _load_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise _Unreadable(f"{path}: missing")
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Unreadable(f"{path}: unreadable ({_reason(e)})") from e
    if not isinstance(out, dict):
        raise _Unreadable(f"{path}: unreadable (a JSON {type(out).__name__}, not an object)")
    return out


def _check_dist(dist_dir: Path) -> None:
    """Cheap integrity checks of a megatron torch_dist checkpoint before megatron reads it: ``metadata.json`` and
    ``common.pt`` load, DCP's ``.metadata`` loads, and every shard file it names holds the bytes it indexes (a
    truncated shard is named with its size). Raises CheckpointError naming the first bad file."""
    from torch.distributed.checkpoint import FileSystemReader

    backend = _load_json(dist_dir / "metadata.json").get("sharded_backend")
    _load_pt(dist_dir / "common.pt")
    if backend != "torch_dist":
        return
    index = dist_dir / ".metadata"
    if not index.is_file():
        raise _Unreadable(f"{index}: missing")
    try:
        storage = FileSystemReader(str(dist_dir)).read_metadata().storage_data
    except Exception as e:
        raise _Unreadable(f"{index}: unreadable ({_reason(e)})") from e
    need: Dict[str, int] = {}
    for info in storage.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        shard = dist_dir / name
        have = shard.stat().st_size if shard.is_file() else None
        if have is None:
            raise _Unreadable(f"{shard}: missing")
        if have < size:
            raise _Unreadable(f"{shard}: truncated ({have} of at least {size} bytes)")


def _write_rank_file(path: Path, state: Dict[str, Any]) -> None:
    """``torch.save`` this rank's state, after checking it loads back with ``weights_only=True`` (ValueError
    otherwise, naming what torch refused). Written in two halves with the ``ckpt.rank_file`` fault point between."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            "dvr1.train.checkpoint.save_checkpoint: extra_state must hold only tensors, lists, tuples, dicts, ints, "
            f"floats, bools, strings and None ({_reason(e)})"
        ) from e
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        faults.point("ckpt.rank_file")
        f.write(data[len(data) // 2:])


def _remove(path: Path) -> None:
    """Delete a checkpoint directory: renamed to a ``.tmp`` name first, so a kill mid-delete leaves no partial
    ``step_{N}`` (the next save removes the ``.tmp``)."""
    doomed = path.with_name(path.name + ".del.tmp")
    if doomed.exists():
        shutil.rmtree(doomed)
    path.rename(doomed)
    shutil.rmtree(doomed)


def _onload_first(optimizer, what: str) -> None:
    """Bring offloaded trainer state back before a save reads it or a load writes into it."""
    if optimizer is not None and is_offloaded(optimizer):
        logger.info("checkpoint %s: trainer state is offloaded; bringing it back first", what)
        onload(optimizer)


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
        extra_state: this rank's dvr1 state (data position, reward history, ...); stored per rank, so it must hold
            only what ``torch.load(weights_only=True)`` reads back: tensors, lists, tuples, dicts, ints, floats,
            bools, strings, None.
        keep_last: keep only the newest ``keep_last`` complete checkpoints up to ``step`` (None keeps all).

    Returns the final directory. Raises ValueError for ``step < 0``, ``keep_last < 1`` or an ``extra_state`` that
    does not load back with ``weights_only=True`` (nothing becomes ``latest`` then).

    Trainer state offloaded by ``dvr1.train.offload`` (``rollout.offload_trainer_state``) is brought back first and
    stays on the device (the next ``offload`` releases it again).
    """
    from megatron.core import dist_checkpointing

    if step < 0:
        raise ValueError(f"dvr1.train.checkpoint.save_checkpoint: step={step} must be >= 0")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"dvr1.train.checkpoint.save_checkpoint: keep_last={keep_last} must be >= 1 or None")
    root, final = _ckpt_root(run_dir), _step_dir(run_dir, step)
    tmp = root / f"step_{step}.tmp"
    if _rank() == 0:
        if root.is_dir():  # saves (or deletions) killed earlier
            for stale in root.glob("*.tmp"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        (tmp / "dist").mkdir(parents=True)
        (tmp / "extra").mkdir()
    _barrier()
    faults.point("ckpt.begin")

    _onload_first(optimizer, "save")
    chunks = _chunks(model_chunks)
    # A never-stepped Adam has no state to save (megatron-core cannot round-trip step 0: optimizer.py:1033 drops a
    # zero common step); it is recorded as "fresh" and re-created empty on load, which is what it was.
    optimizer_kind = "none" if optimizer is None else ("saved" if _has_stepped(optimizer) else "fresh")
    state = _sharded_state_dict(chunks, optimizer if optimizer_kind == "saved" else None, scheduler, is_loading=False)
    dist_checkpointing.save(state, str(tmp / "dist"))
    faults.point("ckpt.dist")
    _write_rank_file(tmp / "extra" / f"rank_{_rank():05d}.pt",
                     {"rng": get_rng_state(), "extra_state": dict(extra_state or {}), "rank": _rank()})
    _barrier()
    faults.point("ckpt.meta")

    if _rank() == 0:
        (tmp / "meta.json").write_text(json.dumps({"step": step, "optimizer": optimizer_kind, **grid.layout()}, indent=1))
        if final.exists():  # re-saving a step (e.g. after resuming from an older one): replace it
            old = root / f"step_{step}.old.tmp"
            final.rename(old)
            faults.point("ckpt.swap")
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        faults.point("ckpt.rename")
        latest_tmp = root / "latest.tmp"
        latest_tmp.write_text(f"{step}\n")
        os.replace(latest_tmp, root / "latest")
        faults.point("ckpt.latest")
        if keep_last is not None:
            for old_step in [s for s in list_steps(run_dir) if s <= step][:-keep_last]:
                _remove(_step_dir(run_dir, old_step))
    _barrier()
    return final


def _all_ok(ok: bool) -> bool:
    """True if every rank is ok (so all ranks take the same fall-back decision before a collective load)."""
    flag = torch.tensor(0.0 if ok else 1.0)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0


def _load_step(run_dir, step: int, chunks, optimizer, scheduler, restore_rng: bool) -> Dict[str, Any]:
    """Check, then load ``ckpt/step_{step}`` (see :func:`load_checkpoint`). Raises CheckpointError naming the first
    file that cannot be read; the checks run on every rank and are agreed on before megatron's collective load."""
    from megatron.core import dist_checkpointing

    path = _step_dir(run_dir, step)
    err, extra, meta = None, None, None
    try:
        if not (path / "dist" / "metadata.json").exists() or not (path / "meta.json").exists():
            raise _Unreadable(f"{path}: no complete checkpoint for step {step} (missing dist/metadata.json)")
        meta = _load_json(path / "meta.json")
        if optimizer is not None and meta.get("optimizer") == "none":
            raise CheckpointError(f"{path}: saved without an optimizer; pass optimizer=None to load the model only")
        same_world = meta.get("world_size") == _world()
        rank_file = path / "extra" / f"rank_{(_rank() if same_world else 0):05d}.pt"
        extra = _load_pt(rank_file)
        if not isinstance(extra, dict) or not {"rng", "extra_state"} <= extra.keys():
            raise _Unreadable(f"{rank_file}: not a dvr1 per-rank state (no 'rng' / 'extra_state')")
        _check_dist(path / "dist")
    except _Unreadable as e:
        err = e
    if not _all_ok(err is None):
        raise err or _Unreadable(f"{path}: another rank could not read its part of step {step}")

    load_optimizer = optimizer is not None and meta["optimizer"] == "saved"
    if load_optimizer:
        _materialize_adam_state(optimizer)
    sharded = _sharded_state_dict(chunks, optimizer if load_optimizer else None, scheduler, is_loading=True)
    # no_grad: the dp_reshardable DistributedOptimizer load copies into leaf params (module docstring).
    with torch.no_grad():
        try:
            loaded = dist_checkpointing.load(sharded, str(path / "dist"))
        except Exception as e:
            raise _Unreadable(f"{path / 'dist'}: megatron-core could not load it ({_reason(e)})") from e
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

    if restore_rng and same_world:
        set_rng_state(extra["rng"])
    elif restore_rng:
        logger.warning(
            "%s: saved with world_size=%s, now %s: RNG states not restored", path, meta.get("world_size"), _world()
        )
    _barrier()
    return extra["extra_state"]


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
        step: which step; None means ``latest``, falling back to older complete checkpoints when it cannot be read
            (a warning names the broken file and the step it falls back to; if ``latest`` itself is unreadable or
            names a missing directory, the newest complete ``step_{N}`` is tried first).
        optimizer / scheduler: None skips them (e.g. evaluation).
        restore_rng: restore this rank's RNG states (only when the world size matches the saved one).

    Returns this rank's ``extra_state`` dict (rank 0's if the world size changed), or None when ``run_dir`` has no
    checkpoint and ``step`` is None. Every file is read with ``torch.load(weights_only=True)`` or by megatron-core.

    Raises CheckpointError, its message naming the file: ``step`` given and ``ckpt/step_{step}`` missing,
    incomplete or unreadable; or ``step`` None and no checkpoint left to fall back to.

    Offloaded trainer state (``dvr1.train.offload``) is brought back first, as for :func:`save_checkpoint`.
    """
    _onload_first(optimizer, "load")
    chunks = _chunks(model_chunks)
    if step is not None:
        return _load_step(run_dir, step, chunks, optimizer, scheduler, restore_rng)
    try:
        newest = latest_step(run_dir)
        if newest is None:
            return None
        candidates = [newest] + [s for s in reversed(list_steps(run_dir)) if s < newest]
    except CheckpointError as e:  # `latest` unreadable: the complete step directories, newest first
        candidates = list(reversed(list_steps(run_dir)))
        if not candidates:
            raise CheckpointError(f"{e}; no complete checkpoint to fall back to") from e
        logger.warning("%s; falling back to step %d", e, candidates[0])
    for i, s in enumerate(candidates):
        try:
            return _load_step(run_dir, s, chunks, optimizer, scheduler, restore_rng)
        except _Unreadable as e:
            if i + 1 == len(candidates):
                raise CheckpointError(f"{e}; no older complete checkpoint to fall back to") from e
            logger.warning("%s; falling back to step %d", e, candidates[i + 1])
    raise AssertionError("unreachable")
