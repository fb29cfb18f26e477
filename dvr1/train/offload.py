"""Trainer-state offload while the colocated rollout engine generates (``rollout.offload_trainer_state``).

What moves (per trainable parameter, bf16 policy + fp32 grads + Adam):
- the gradients: megatron DDP's grad buffers (``param.main_grad`` views, fp32, 4 bytes/param) are *freed*, not
  copied: the next update zeroes them before its backward (``zero_grad_buffer``), so nothing is lost. This is
  megatron-core 0.16.1's own ``DistributedDataParallel.offload_grad_buffers`` / ``restore_grad_buffers``
  (``distributed/distributed_data_parallel.py:575``; ``storage().resize_(0)`` keeps every view object valid,
  ``param_and_grad_buffer.py:964``), which runs unchanged on CPU tensors.
- the optimizer state: every tensor in the torch optimizer's ``state`` (Adam ``exp_avg`` / ``exp_avg_sq``, TE
  FusedAdam's ``master_param``; 8 bytes/param) and the optimizer's own parameters that are not model weights (the
  fp32 main params of the bf16 / distributed optimizer, 4 bytes/param; / DP with the distributed optimizer) are
  copied to a host buffer (pinned on CUDA, allocated once and reused) and their device storage resized to 0.
- with ``weights=True`` (``rollout.engine=vllm``: the engine holds its own copy) also the storage of the trainable
  model weights (megatron DDP's param buffer under the distributed optimizer, else each parameter's own); frozen
  parameters (the vision tower, which the input builder runs during the rollout phase) stay.

The move works on storages, as veRL does for its megatron workers (volcengine/verl ``verl/utils/megatron_utils.py``
``offload_megatron_model_to_cpu`` / ``offload_megatron_optimizer``): the tensor objects, their views and the
optimizer's ``state`` keys stay the same, and onload copies the bytes back, so the state after ``onload`` is
bit-identical and the next update equals one without offload. On a CPU-only host "host" and "device" are the same
memory, but the same code runs: the device storage is freed (size 0) and restored from the separate host copy.

Megatron-core 0.16.1's ``MegatronOptimizer.offload_to_cpu`` / ``restore_from_cpu`` (``optimizer/optimizer.py:344``)
are not used: they re-bind ``p.data`` of the optimizer's params, which for the fp32 optimizer are the model's own
weights and for the fp32 distributed optimizer views into DDP's param buffer (the re-bound copy no longer aliases
it), and they do nothing for CPU tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch

_ATTR = "_dvr1_offload"


class OffloadError(RuntimeError):
    """Raised when the model is not megatron DDP-wrapped or a buffer layout cannot be offloaded safely."""


@dataclass
class _Storage:
    """One device storage and its host copy (``host`` a flat uint8 tensor of ``nbytes``)."""

    owner: torch.Tensor  # a tensor on the storage (kept alive so the storage and its key stay valid)
    nbytes: int
    host: torch.Tensor


@dataclass
class _State:
    """What is offloaded now, and the host buffers kept for reuse (keyed by ``id(owner)``)."""

    grads: List[torch.nn.Module] = field(default_factory=list)  # the DDP chunks whose grad buffers are freed
    optimizer: List[_Storage] = field(default_factory=list)
    weights: List[_Storage] = field(default_factory=list)
    host: Dict[int, _Storage] = field(default_factory=dict)
    cuda: bool = False


def _chunks(model) -> List[torch.nn.Module]:
    return [model] if isinstance(model, torch.nn.Module) else list(model)


def _state(optimizer) -> _State:
    s = getattr(optimizer, _ATTR, None)
    if s is None:
        s = _State()
        setattr(optimizer, _ATTR, s)
    return s


def _torch_optimizers(optimizer):
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if inner is not None:
            yield inner


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _unique(tensors, exclude: set) -> List[torch.Tensor]:
    """One tensor per distinct non-empty storage of ``tensors``, in order, skipping storages in ``exclude``."""
    seen, out = set(exclude), []
    for t in tensors:
        if t.untyped_storage().nbytes() == 0:
            continue
        k = _key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The whole storage of ``t`` as a flat uint8 tensor."""
    s = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(s, 0, (s.nbytes(),))


def _move_out(tensors: List[torch.Tensor], st: _State) -> List[_Storage]:
    """Copy each tensor's storage to its host buffer, then free the device storage (size 0)."""
    moved = []
    for t in tensors:
        nbytes = t.untyped_storage().nbytes()
        rec = st.host.get(id(t))
        if rec is None or rec.nbytes != nbytes or rec.owner is not t:
            host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=t.is_cuda)
            rec = _Storage(t, nbytes, host)
            st.host[id(t)] = rec
        rec.host.copy_(_flat(t), non_blocking=t.is_cuda)
        moved.append(rec)
    if any(r.owner.is_cuda for r in moved):
        torch.cuda.synchronize()  # the copies must land before the memory is handed back
    for r in moved:
        r.owner.untyped_storage().resize_(0)
    return moved


def _move_in(moved: List[_Storage]) -> None:
    for r in moved:
        r.owner.untyped_storage().resize_(r.nbytes)
        _flat(r.owner).copy_(r.host, non_blocking=r.owner.is_cuda)


def is_offloaded(optimizer) -> bool:
    """True while any part of the trainer state of ``optimizer`` (and its model) is offloaded."""
    s = getattr(optimizer, _ATTR, None)
    return s is not None and bool(s.grads or s.optimizer or s.weights)


@torch.no_grad()
def offload(model, optimizer, weights: bool = False) -> float:
    """Release the gradients and the optimizer state (and with ``weights`` the trainable weights) of the trainer.

    Args:
        model: the megatron ``DistributedDataParallel`` chunk(s) from ``dvr1.train.optim.build_optimizer``.
        optimizer: the megatron optimizer built over them.
        weights: also move the trainable weights (only when the rollout engine holds its own copy).

    Parts already offloaded stay so (idempotent). Until :func:`onload`, the released tensors have 0-byte storage
    and must not be read (megatron: "undefined behavior"; on CPU a read can crash the process); checkpoint save and
    load onload first (dvr1.train.checkpoint). Returns wall seconds. Raises OffloadError for a chunk that is not megatron DDP or a
    buffer whose params and grads share memory (megatron's ``reuse_grad_buf_for_mxfp8_param_ag``).
    """
    t0 = time.perf_counter()
    chunks, st = _chunks(model), _state(optimizer)
    params = [p for c in chunks for p in c.parameters()]
    cuda = st.cuda = any(p.is_cuda for p in params)
    if not st.grads:
        for c in chunks:
            if not hasattr(c, "offload_grad_buffers"):
                raise OffloadError(f"dvr1.train.offload: {type(c).__name__} is not megatron DDP (build_optimizer)")
            for b in c.buffers + c.expert_parallel_buffers:
                if b.param_data is not None and _key(b.param_data) == _key(b.grad_data):
                    raise OffloadError("dvr1.train.offload: a DDP buffer shares param and grad memory")
        for c in chunks:
            c.offload_grad_buffers(synchronize=cuda, empty_cache=False)
        st.grads = chunks
    weight_keys = {_key(p) for p in params if p.untyped_storage().nbytes() > 0}
    opt_tensors = [v for inner in _torch_optimizers(optimizer) for s in inner.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.dim() > 0]
    opt_tensors += [p for inner in _torch_optimizers(optimizer) for g in inner.param_groups for p in g["params"]]
    trainable = [p for p in params if p.requires_grad]
    # host buffers of tensors no longer there (state replaced by a checkpoint load) are dropped
    alive = {id(t) for t in opt_tensors + trainable}  # a record keeps its owner alive: equal ids, same tensor
    st.host = {k: r for k, r in st.host.items() if k in alive}
    if not st.optimizer:
        st.optimizer = _move_out(_unique(opt_tensors, weight_keys), st)
    if weights and not st.weights:
        st.weights = _move_out(_unique(trainable, set()), st)
    if cuda:
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


@torch.no_grad()
def onload(optimizer) -> float:
    """Bring back everything :func:`offload` released for ``optimizer``: weights and optimizer state byte for byte,
    the grad buffers (of the DDP chunks given to ``offload``) zeroed. A no-op when nothing is offloaded. Returns wall
    seconds."""
    t0 = time.perf_counter()
    st = getattr(optimizer, _ATTR, None)
    if st is not None:
        _move_in(st.weights + st.optimizer)
        for c in st.grads:
            c.restore_grad_buffers(synchronize=False)
        st.grads, st.optimizer, st.weights = [], [], []
        if st.cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def released_bytes(optimizer) -> int:
    """Bytes of trainer state currently released (host copies of optimizer state / weights + freed grad buffers)."""
    st = getattr(optimizer, _ATTR, None)
    if st is None:
        return 0
    n = sum(r.nbytes for r in st.optimizer + st.weights)
    if st.grads:
        n += sum(b.grad_data_size * b.grad_data.element_size()
                 for c in st.grads for b in c.buffers + c.expert_parallel_buffers)
    return n

