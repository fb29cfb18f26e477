"""Per-token log-probs (and entropy) of the target tokens over a vocabulary split across TP ranks.

Every RL loss in dvr1 consumes `l_t = log pi(y_t | x, y_<t)` per response token (ALGORITHMS §1; the GRPO ratio
DVR1 Eq. 2, the Reg-GRPO log-ratio rho DVR1 Eqs. 3-8, the k3 KL of §2 and the M-DPO log-probs of §7) and logs the
policy entropy (§5). This module computes them from the output layer without ever building a full-vocabulary tensor:

- `vocab_parallel_logprobs(logits, target)`: from the local logits shard `[..., vocab/tp]` (the output of megatron's
  ColumnParallelLinear output layer with `gather_output=False`).
- `fused_linear_logprobs(hidden, weight, target)`: from the final hidden states and the local output-layer weight
  shard; the logits are produced, reduced and discarded chunk by chunk, in forward and again in backward.

Across TP the only communication is two all-reduces of per-token scalars in forward: MAX of the per-rank maximum
logit, then one SUM of the stacked [sum-exp (rescaled to the global max), target logit (non-zero on the one rank
that owns the target id), entropy partial sum]. The backward needs no communication for the logits (the gradient
on a shard is `g * (onehot - softmax)` restricted to that shard). This is the same reduction that megatron-core
0.16.1 uses for the loss in `tensor_parallel/cross_entropy.py:122-189` (`_VocabParallelCrossEntropy.forward`), done
here in a single pass per chunk (per-rank log-sum-exp, combined across ranks), chunked over tokens, returning
log-probs rather than a loss, and without keeping the softmax for backward (it is recomputed per chunk).

Vocabulary layout: rank r of a TP group of size T holds the ids `[r * V_local, (r + 1) * V_local)`, as megatron's
`VocabUtility.vocab_range_from_per_partition_vocab_size` (`tensor_parallel/utils.py:105`); the global vocabulary is
`T * V_local` (megatron pads it to a multiple of T).
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["vocab_parallel_logprobs", "fused_linear_logprobs"]


# ----------------------------------------------------------------------------------------------------------------
# process group and input checks


def _resolve_tp_group(tp_group):
    """The TP group to reduce over, or None for a single shard.

    `tp_group=None` means megatron's TP group when `parallel_state` has been initialised in this process (it is only
    looked up if megatron.core.parallel_state is already imported, so this module never pays megatron's import),
    else no communication.
    """
    if tp_group is not None:
        return tp_group
    ps = sys.modules.get("megatron.core.parallel_state")
    if ps is None:
        return None
    return ps.get_tensor_model_parallel_group(check_initialized=False)


def _group_size_rank(group) -> Tuple[int, int]:
    if group is None:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _check_inputs(fn: str, logits_shape, vocab_local: int, target: torch.Tensor, world: int, rank: int,
                  vocab_start: Optional[int], chunk_size: Optional[int]) -> int:
    """Validate shapes/values; returns the resolved vocab_start. Raises ValueError naming the offending field."""
    batch_shape = tuple(logits_shape[:-1])
    if tuple(target.shape) != batch_shape:
        raise ValueError(
            f"{fn}: target shape {tuple(target.shape)} must equal the token shape {batch_shape} "
            f"(input shape {tuple(logits_shape)} without its last dim)"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"{fn}: target must be an integer tensor (token ids), got dtype {target.dtype}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"{fn}: chunk_size must be a positive int or None, got {chunk_size!r}")
    vocab_total = vocab_local * world
    if vocab_start is None:
        vocab_start = rank * vocab_local
    if not (0 <= vocab_start and vocab_start + vocab_local <= vocab_total):
        raise ValueError(
            f"{fn}: vocab_start={vocab_start} with {vocab_local} local ids lies outside the vocabulary "
            f"[0, {vocab_total}) of a TP group of size {world}"
        )
    if target.numel() > 0:
        lo, hi = int(target.min()), int(target.max())  # one host sync per call
        if lo < 0 or hi >= vocab_total:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{fn}: target value {bad} out of range [0, {vocab_total}) "
                f"(target shape {tuple(target.shape)}, vocab {vocab_local} per rank x TP {world})"
            )
    return vocab_start


# ----------------------------------------------------------------------------------------------------------------
# the per-chunk math shared by both Functions


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reduction dtype: fp32 for bf16/fp16/fp32 inputs (fp64 stays fp64, which lets tests use gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _local_target(target: torch.Tensor, vocab_start: int, vocab_local: int):
    """target [n] -> (local index [n] clamped into the shard, in-shard mask [n] bool)."""
    local = target - vocab_start
    in_shard = (local >= 0) & (local < vocab_local)
    return local.masked_fill(~in_shard, 0), in_shard


def _chunk_stats(z: torch.Tensor, local_t: torch.Tensor, in_shard: torch.Tensor, d: torch.Tensor,
                 e: Optional[torch.Tensor]):
    """Per-token statistics of one chunk of local logits.

    z: [c, V_local] any float dtype. d: [c, V_local] fp32 scratch for z - max (may be z itself, which is then
    overwritten); e: a second fp32 scratch for exp(z - max) when the entropy is wanted, else None.
    Returns fp32 [c] tensors: m (local max), s = sum exp(z - m), zt (target logit, 0 where the target is on another
    rank), w = sum exp(z - m) * (z - m) (entropy only, else None).
    """
    acc = d.dtype
    m = z.amax(dim=-1).to(acc)
    zt = z.gather(-1, local_t.unsqueeze(-1)).squeeze(-1).to(acc).masked_fill_(~in_shard, 0.0)
    torch.sub(z, m.unsqueeze(-1), out=d)
    if e is not None:
        torch.exp(d, out=e)
        s = e.sum(-1)
        w = torch.matmul(e.unsqueeze(-2), d.unsqueeze(-1)).reshape(-1)  # row-wise dot, no [c, V] temporary
        return m, s, zt, w
    s = d.exp_().sum(-1)
    return m, s, zt, None


def _combine(m, s, zt, w, group):
    """Combine per-rank statistics (fp32 [n] each) into (logprob, lse, entropy|None) across the TP group.

    All-reduces: MAX of m, then one SUM of the stacked [s * exp(m - M), zt, (w + (m - M) s) exp(m - M)].
    """
    if group is not None and dist.get_world_size(group) > 1:
        big_m = m.clone()
        dist.all_reduce(big_m, op=dist.ReduceOp.MAX, group=group)
        scale = torch.exp(m - big_m)
        parts = [s * scale, zt]
        if w is not None:
            parts.append((w + (m - big_m) * s) * scale)
        stacked = torch.stack(parts)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
        s, zt = stacked[0], stacked[1]
        w = stacked[2] if w is not None else None
        m = big_m
    log_s = torch.log(s)
    lse = m + log_s
    logprob = (zt - m) - log_s  # shift first: exact for large logits, as torch.log_softmax does
    entropy = (log_s - w / s) if w is not None else None  # H = lse - sum p z = log S - sum p (z - M)
    return logprob, lse, entropy


class _TokenStats:
    """Per-token statistics of a chunked reduction (fp32 `[n]` each: m, s, zt, and w when the entropy is wanted),
    filled row range by row range with `_chunk_stats`, then combined across TP by `_combine`."""

    def __init__(self, n: int, acc: torch.dtype, device, compute_entropy: bool):
        self.m = torch.empty(n, dtype=acc, device=device)
        self.s, self.zt = torch.empty_like(self.m), torch.empty_like(self.m)
        self.w = torch.empty_like(self.m) if compute_entropy else None

    def add(self, a: int, b: int, z: torch.Tensor, local_t, in_shard, d: torch.Tensor, e: Optional[torch.Tensor]):
        """Reduce `z` (the logits of rows a:b) with scratch `d` (and `e`), as `_chunk_stats`."""
        m, s, zt, w = _chunk_stats(z, local_t[a:b], in_shard[a:b], d, e)
        self.m[a:b], self.s[a:b], self.zt[a:b] = m, s, zt
        if self.w is not None:
            self.w[a:b] = w

    def combine(self, group):
        return _combine(self.m, self.s, self.zt, self.w, group)


def _dlogits(z: torch.Tensor, lse: torch.Tensor, local_t, in_shard, g: torch.Tensor, p: torch.Tensor):
    """g * d logprob / d logits for one chunk, written into p (fp32 [c, V_local], may be z itself):
    p = g * (onehot(target) - softmax(z)) = g * onehot - g * exp(z - lse)."""
    torch.sub(z, lse.unsqueeze(-1), out=p)
    p.exp_().mul_(-g.unsqueeze(-1))
    rows = torch.arange(z.shape[0], device=z.device)[in_shard]
    p.index_put_((rows, local_t[in_shard]), g[in_shard], accumulate=True)
    return p


class _Scratch:
    """[rows, cols] buffers allocated once per call and reused by every chunk (no per-chunk allocation)."""

    def __init__(self, rows: int, cols: int, device):
        self.rows, self.cols, self.device, self.bufs = rows, cols, device, {}

    def get(self, name: str, c: int, dtype: torch.dtype) -> torch.Tensor:
        if name not in self.bufs:
            self.bufs[name] = torch.empty(self.rows, self.cols, dtype=dtype, device=self.device)
        return self.bufs[name][:c]


def _chunks(n: int, chunk_size: Optional[int]):
    step = n if not chunk_size else chunk_size
    return [(i, min(i + step, n)) for i in range(0, n, max(step, 1))]


# ----------------------------------------------------------------------------------------------------------------
# vocab-parallel log-probs from given logits


class _VocabParallelLogprobs(torch.autograd.Function):
    """Autograd Function over the local logits shard; see `vocab_parallel_logprobs`."""

    @staticmethod
    def forward(ctx, logits, target, group, vocab_start, compute_entropy, chunk_size):
        n, v = logits.shape
        acc = _acc_dtype(logits.dtype)
        local_t, in_shard = _local_target(target, vocab_start, v)
        stats = _TokenStats(n, acc, logits.device, compute_entropy)
        chunks = _chunks(n, chunk_size)
        scratch = _Scratch(max((b - a for a, b in chunks), default=0), v, logits.device)
        for a, b in chunks:
            e = scratch.get("e", b - a, acc) if compute_entropy else None
            stats.add(a, b, logits[a:b], local_t, in_shard, scratch.get("d", b - a, acc), e)
        del scratch
        logprob, lse, entropy = stats.combine(group)
        ctx.save_for_backward(logits, local_t, in_shard, lse)
        ctx.chunk_size = chunk_size
        if entropy is None:
            return logprob
        ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, *unused_grad_entropy):
        logits, local_t, in_shard, lse = ctx.saved_tensors
        g = grad_logprob.to(lse.dtype)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        chunks = _chunks(logits.shape[0], ctx.chunk_size)
        scratch = _Scratch(max((b - a for a, b in chunks), default=0), logits.shape[1], logits.device)
        for a, b in chunks:
            # fp32 logits: compute straight into the gradient; bf16/fp16: in fp32 scratch, then one rounding
            p = grad[a:b] if grad.dtype == lse.dtype else scratch.get("p", b - a, lse.dtype)
            _dlogits(logits[a:b], lse[a:b], local_t[a:b], in_shard[a:b], g[a:b], p)
            if p.data_ptr() != grad[a:b].data_ptr():
                grad[a:b].copy_(p)
        return grad, None, None, None, None, None


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    target: torch.Tensor,
    tp_group=None,
    vocab_start: Optional[int] = None,
    compute_entropy: bool = False,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log-prob `log softmax(z)[target]` of a vocabulary split across TP ranks (ALGORITHMS §1).

    Args:
        logits: `[..., V_local]` this rank's logits shard (e.g. `[seq, batch, V/tp]` from megatron's output layer),
            any float dtype (bf16/fp16/fp32); all reductions are fp32 (fp64 input: fp64). Receives a gradient of
            the same shape and dtype.
        target: `[...]` (= logits.shape[:-1]) int64 global token ids in `[0, V_local * tp)`.
        tp_group: the TP process group; None = megatron's TP group if `parallel_state` is initialised, else no
            communication (a single shard holding the whole vocabulary).
        vocab_start: first global id of this shard; default `rank * V_local` (megatron's layout).
        compute_entropy: also return the policy entropy `H = logsumexp(z) - sum_v softmax(z)_v z_v` per token
            (ALGORITHMS §5, for logging). It carries NO gradient (marked non-differentiable).
        chunk_size: tokens per chunk along the flattened token dim; None = all tokens in one chunk.

    Returns:
        `(logprobs, entropy)`: fp32 `[...]` (fp64 for fp64 logits), and the same or None. Identical on every rank
        of the TP group.

    Communication (forward only, over `tp_group`, skipped for a group of size 1): all_reduce(MAX) of the per-token
    local max `[n]`, then one all_reduce(SUM) of `[2 or 3, n]` = (sum-exp rescaled to the global max, target logit
    contributed by the owning rank only, entropy partial sum). Backward: no communication; the local-shard gradient
    is `g * (onehot(target) - softmax(z))`, recomputed chunk by chunk from the saved logits and the fp32 per-token
    log-sum-exp.

    Memory: beyond the inputs/outputs (the logits gradient is an output of the logits' size and dtype) and O(n)
    fp32 per-token vectors: forward, one `[chunk, V_local]` fp32 scratch reused by every chunk (two with
    `compute_entropy`); backward, none for fp32 logits (computed straight into the gradient), one fp32 scratch for
    bf16/fp16 logits.

    Raises:
        ValueError: target shape != logits.shape[:-1]; non-integer target; a target id outside
            `[0, V_local * tp)` (names the value); vocab_start out of range; chunk_size not a positive int.
    """
    fn = "vocab_parallel_logprobs"
    if logits.dim() < 1 or not logits.dtype.is_floating_point:
        raise ValueError(f"{fn}: logits must be a float tensor [..., vocab], got shape {tuple(logits.shape)} "
                         f"dtype {logits.dtype}")
    group = _resolve_tp_group(tp_group)
    world, rank = _group_size_rank(group)
    v = logits.shape[-1]
    vocab_start = _check_inputs(fn, logits.shape, v, target, world, rank, vocab_start, chunk_size)
    out = _VocabParallelLogprobs.apply(
        logits.reshape(-1, v), target.reshape(-1).long(), group if world > 1 else None, vocab_start,
        compute_entropy, chunk_size,
    )
    logprob, entropy = (out if compute_entropy else (out, None))
    shape = target.shape
    return logprob.view(shape), (entropy.view(shape) if entropy is not None else None)


# ----------------------------------------------------------------------------------------------------------------
# output layer fused with the log-probs


class _FusedLinearLogprobs(torch.autograd.Function):
    """Autograd Function for `logprob(hidden @ weight.T)` chunked over tokens; see `fused_linear_logprobs`."""

    @staticmethod
    def forward(ctx, hidden, weight, target, group, vocab_start, compute_entropy, chunk_size, to_main_grad,
                keep_last):
        n = hidden.shape[0]
        v = weight.shape[0]
        acc = _acc_dtype(hidden.dtype)
        local_t, in_shard = _local_target(target, vocab_start, v)
        stats = _TokenStats(n, acc, hidden.device, compute_entropy)
        chunks = _chunks(n, chunk_size)
        scratch = _Scratch(max((b - a for a, b in chunks), default=0), v, hidden.device)
        ctx.kept = None
        for i, (a, b) in enumerate(chunks):
            z = torch.matmul(hidden[a:b], weight.t(), out=scratch.get("z", b - a, hidden.dtype))  # fp32-acc GEMM
            if keep_last and i == len(chunks) - 1:
                # the last chunk's logits stay in z for backward: reduce them in row blocks with small scratch
                sub = _Scratch(_KEEP_ROWS, v, hidden.device)
                for r0 in range(0, b - a, _KEEP_ROWS):
                    r1 = min(r0 + _KEEP_ROWS, b - a)
                    e = sub.get("e", r1 - r0, acc) if compute_entropy else None
                    stats.add(a + r0, a + r1, z[r0:r1], local_t, in_shard, sub.get("d", r1 - r0, acc), e)
                ctx.kept = scratch.bufs["z"]
                continue
            e = scratch.get("e", b - a, acc) if compute_entropy else None
            stats.add(a, b, z, local_t, in_shard, z if z.dtype == acc else scratch.get("d", b - a, acc), e)
        del scratch
        logprob, lse, entropy = stats.combine(group)
        ctx.save_for_backward(hidden, weight, local_t, in_shard, lse)
        ctx.chunk_size, ctx.to_main_grad = chunk_size, to_main_grad
        if entropy is None:
            return logprob
        ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, *unused_grad_entropy):
        hidden, weight, local_t, in_shard, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_logprob.to(lse.dtype)
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
        into_main = need_w and ctx.to_main_grad and has_main_grad(weight)
        grad_w = (weight.main_grad if into_main else torch.zeros_like(weight)) if need_w else None
        chunks = _chunks(hidden.shape[0], ctx.chunk_size)
        scratch = _Scratch(max((b - a for a, b in chunks), default=0), weight.shape[0], hidden.device)
        kept, ctx.kept = ctx.kept, None
        if kept is not None:
            scratch.bufs["z"] = kept  # holds the last chunk's logits; reused as the GEMM buffer afterwards
        for i, (a, b) in enumerate(reversed(chunks)):  # last chunk first: its logits were kept by forward
            h = hidden[a:b]
            if i == 0 and kept is not None:
                z = kept[: b - a]
            else:
                z = torch.matmul(h, weight.t(), out=scratch.get("z", b - a, hidden.dtype))  # recompute the logits
            p = z if z.dtype == lse.dtype else scratch.get("p", b - a, lse.dtype)
            _dlogits(z, lse[a:b], local_t[a:b], in_shard[a:b], g[a:b], p)
            if need_w and grad_w.dtype != z.dtype:  # fp32 main_grad of bf16 weights: accumulate the fp32 dz
                grad_w.addmm_(p.t(), h.to(grad_w.dtype))
            if p.data_ptr() != z.data_ptr():
                z.copy_(p)  # dz in the GEMM dtype (bf16/fp16), reusing the logits buffer
            if need_h:
                torch.matmul(z, weight, out=grad_h[a:b])
            if need_w and grad_w.dtype == z.dtype:
                grad_w.addmm_(z.t(), h)
        if into_main:
            # megatron's gradient-accumulation-fusion contract (tensor_parallel/layers.py:581): the gradient is in
            # main_grad already; a dummy (never written, so on CPU never resident) keeps DDP's hook on this thread
            weight.grad_added_to_main_grad = True
            grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        return grad_h, grad_w, None, None, None, None, None, None, None


_KEEP_ROWS = 64  # row block for reducing the kept last chunk in forward (scratch [64, V_local] fp32)


def has_main_grad(weight) -> bool:
    """Whether ``weight`` is wrapped by megatron DDP: it has the fp32 ``main_grad`` buffer and the
    ``grad_added_to_main_grad`` flag (``distributed/distributed_data_parallel.py:119, 437``)."""
    return getattr(weight, "main_grad", None) is not None and hasattr(weight, "grad_added_to_main_grad")


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    tp_group=None,
    chunk_size: Optional[int] = 1024,
    compute_entropy: bool = False,
    vocab_start: Optional[int] = None,
    weight_grad_to_main_grad: bool = False,
    sequence_parallel: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log-probs of `target` under `softmax(hidden @ weight.T)` without materialising the logits.

    The output-layer GEMM is fused into the chunk loop of `vocab_parallel_logprobs`: per chunk of tokens,
    `z = hidden_c @ weight.T` (`[c, V_local]`, computed in the input dtype by a GEMM that accumulates in fp32, then
    reduced in fp32), only the per-token log-prob and log-sum-exp are kept; backward recomputes `z` per chunk and
    accumulates `grad_hidden = dz @ weight` and `grad_weight += dz.T @ hidden_c`, `dz = g (onehot - softmax(z))`.
    Full logits `[n, V_local]` exist neither in forward nor in backward. When a backward will follow, forward keeps
    the last chunk's logits (reduced in 64-row blocks) and backward walks the chunks in reverse, so only the other
    chunks are recomputed: with k chunks, 3 + (k - 1)/k GEMMs of the output layer's size instead of 3 (k = 1: no
    recompute, but the whole logits are kept -- that is the chunk_size trade-off).

    Args:
        hidden: `[n, h]` or `[s, b, h]` final hidden states (after the final norm), float dtype. Under TP this must
            be the TP-replicated activation (the input of megatron's ColumnParallelLinear output layer).
        weight: `[V_local, h]` this rank's output-layer (or tied embedding) weight shard, same dtype as hidden.
        target: `hidden.shape[:-1]` int64 global token ids in `[0, V_local * tp)`.
        tp_group, vocab_start, compute_entropy: as in `vocab_parallel_logprobs` (entropy has no gradient).
        chunk_size: tokens per chunk (default 1024); None = one chunk.

    Returns:
        `(logprobs, entropy)`: fp32 `hidden.shape[:-1]` (fp64 for fp64 inputs), and the same or None.

    Gradients: both `hidden` and `weight` (each only if it requires grad). `grad_weight` is accumulated over chunks
    in the weight's dtype (fp32 weights: exact fp32 accumulation; bf16: one rounding per chunk) -- or, with
    `weight_grad_to_main_grad` and a weight wrapped by megatron DDP (`has_main_grad`), added straight into its
    ``main_grad`` as megatron's gradient-accumulation fusion does (``tensor_parallel/layers.py:561-610``), so no
    weight-gradient tensor is written; autograd gets an unwritten dummy of the weight's shape (megatron does the
    same; on CPU its pages are never touched, so it costs no memory; on a GPU the allocator still reserves it, so
    there the gain is fp32 accumulation of bf16 gradients and one add pass less, not memory). Only for a weight
    this call is the sole user of in the step (an untied output layer): a tied embedding's lookup gradient would be
    summed with the dummy and then skipped by DDP's hook. Under TP (group
    size > 1) the hidden is first passed through megatron's `copy_to_tensor_model_parallel_region`
    (`tensor_parallel/mappings.py:197-214, 469`): identity in forward, all-reduce(SUM) of `grad_hidden` across TP in
    backward, exactly as in ColumnParallelLinear; the weight gradient needs no communication.

    Communication: as `vocab_parallel_logprobs` in forward (MAX + one SUM of per-token scalars), plus the one
    all-reduce of `grad_hidden` `[n, h]` in backward under TP.

    `sequence_parallel`: `hidden` is a sequence-parallel activation already all-gathered over the sequence by
    megatron's `gather_from_sequence_parallel_region` (`tensor_parallel/mappings.py:499`; what
    `dvr1.models.qwen2_5_vl.Qwen25VLPolicy.forward(return_hidden=True)` returns under SP), whose backward
    reduce-scatters, i.e. already sums `grad_hidden` over TP; the copy-to-TP-region all-reduce is then skipped (it
    would sum twice), as ColumnParallelLinear does under SP (`tensor_parallel/layers.py:993-1000`, gather at :431).

    Memory: on top of inputs, outputs, `grad_hidden` and `grad_weight` (none under DDP: it goes to `main_grad`), one
    `[chunk, V_local]` buffer for the GEMM output reused by every chunk (fp32 inputs: reduced in place, nothing
    else), which with a backward to come lives from forward to backward (it holds the last chunk's logits);
    bf16/fp16 inputs add one fp32 `[chunk, V_local]` scratch; `compute_entropy` adds one more fp32 scratch in
    forward.

    Raises:
        ValueError: hidden not 2-D/3-D, weight not `[V_local, h]` with hidden's h and dtype, target shape !=
            hidden.shape[:-1], target id out of `[0, V_local * tp)` (names the value), bad chunk_size/vocab_start.
    """
    fn = "fused_linear_logprobs"
    if hidden.dim() not in (2, 3) or not hidden.dtype.is_floating_point:
        raise ValueError(f"{fn}: hidden must be a float tensor [n, h] or [s, b, h], got shape "
                         f"{tuple(hidden.shape)} dtype {hidden.dtype}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{fn}: weight shape {tuple(weight.shape)} must be [V_local, {hidden.shape[-1]}] "
                         f"(hidden shape {tuple(hidden.shape)})")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{fn}: weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}")
    group = _resolve_tp_group(tp_group)
    world, rank = _group_size_rank(group)
    v, h = weight.shape
    vocab_start = _check_inputs(fn, tuple(hidden.shape[:-1]) + (v,), v, target, world, rank, vocab_start,
                                chunk_size)
    hidden2d = hidden.reshape(-1, h)
    if world > 1 and not sequence_parallel:
        from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

        hidden2d = copy_to_tensor_model_parallel_region(hidden2d, group=group)
    out = _FusedLinearLogprobs.apply(
        hidden2d, weight, target.reshape(-1).long(), group if world > 1 else None, vocab_start, compute_entropy,
        chunk_size, weight_grad_to_main_grad,
        torch.is_grad_enabled() and (hidden2d.requires_grad or weight.requires_grad),  # keep the last chunk's logits
    )
    logprob, entropy = (out if compute_entropy else (out, None))
    shape = target.shape
    return logprob.view(shape), (entropy.view(shape) if entropy is not None else None)
