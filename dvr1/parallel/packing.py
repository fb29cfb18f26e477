"""Packed sequences (`model.packing`): a microbatch's sequences laid end to end, no padding between them.

A right-padded microbatch (`dvr1.train.inputs.SeqBatch`: `N` rows of `S` tokens, row `i` holding `seq_lens[i]` real
tokens; `build_batch` pads every row to the longest of the whole batch) becomes `R` packed rows of `C` tokens. Each
sequence keeps its own mrope positions (`dvr1.models.rope`: the padded batch's `position_ids[:, i, :len_i]`), so the
rotary embeddings are unchanged, and attends only within itself. Two layouts, chosen by the layer spec (`plan`):

- TransformerEngine spec (GPUs): ONE row, `R = 1`, `C = sum(seq_lens)`, in megatron-core's THD format:
  `PackedSeqParams(qkv_format="thd", cu_seqlens_q/kv, max_seqlen_q/kv)` (megatron-core 0.16.1 `packed_seq_params.py`),
  which `GPTModel.forward` hands to every `TransformerLayer` -> `SelfAttention` -> `TEDotProductAttention`; TE runs
  its varlen (flash / cuDNN) kernels with mask type `padding_causal` (`extensions/transformer_engine.py:1397`), i.e.
  only each sequence's own causal block. mrope stays exact: the rotary table made from the packed `position_ids` has
  one row per packed token, `freqs.size(0) == cu_seqlens[-1]`, the "exact mapping with offsets" case of
  `models/common/embeddings/rope_utils.py:_apply_rotary_pos_emb_thd` (so a filler tail is its own segment inside
  `cu_seqlens`, never outside it). Needs TransformerEngine; `model_inputs` raises a RuntimeError naming it otherwise.
- Local spec (CPU, or a GPU without TE): megatron's `DotProductAttention` refuses `packed_seq_params`
  (`transformer/dot_product_attention.py:153`) and computes full `C x C` scores per row, so one row of all `N`
  sequences would cost `(sum L)^2` attention instead of the padded `N S^2`. Here the sequences go, first-fit
  decreasing, into bins of `C = max(seq_lens)` tokens (the microbatch's longest; shorter sequences share a row), and
  an explicit block-diagonal causal mask, bool `[R, 1, C, C]`, True = masked, keeps them apart (megatron's
  `attention_mask_func` fills -10000 there, as for the default causal mask of the padded path,
  `transformer/utils.py:35`; exp(-10000) underflows to 0 in fp32, so the probabilities, and the numbers, are the
  padded ones). Saved: the rows (GEMM tokens and `S x S` attention blocks) the padding took. The rest of each bin
  is filler, its own masked segment.

Under pipeline parallelism every microbatch gets the same shape (the p2p tensor `[C, R, hidden]`): the longest
one's `C` (one row) or the batch's longest sequence as `C` and the most bins as `R` (filler rows where fewer);
under sequence parallel `C` is a multiple of TP (`plan`).

Response log-probs: the padded layout's `resp_index[i, j]` indexes row `i`'s shifted target space `[S - 1]`
(position `k` predicts token `k + 1`). Packed, sequence `i` starts at column `o_i` of row `r_i`, and the index becomes
`r_i (C - 1) + o_i + resp_index[i, j]` in the flattened shifted target space `[R (C - 1)]` (`PackedBatch.resp_index`,
still `[N, T]`), so `dvr1.parallel.forward.response_logprobs` returns the same `[N, T]` and the losses see nothing
new. A packed row also predicts a sequence's first token from the previous one's last; no response index points
there (a response token's target is at most `len_i - 2` into its own sequence; padding slots, zeroed by `resp_mask`,
are clamped into their own sequence).

Units: lengths, offsets and capacities in tokens. Works on whatever device the batch is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PackedBatch:
    """One microbatch packed into `R` rows of `C` tokens.

    Attributes:
        input_ids: int64 `[R, C]`; position_ids: int64 `[3, R, C]` (each sequence's own mrope positions; filler
            0, 1, ...); video_mask: bool `[R, C]`; video_embeds: `[video tokens, hidden]` in packed order, or None.
        resp_index: int64 `[N, T]` into the flattened shifted-target space `[R (C - 1)]`; resp_mask: float32
            `[N, T]` (the padded batch's).
        seq_lens: the `N` lengths (tokens), in the padded batch's order; starts: each sequence's first token in the
            flattened `[R C]` layout; cu_seqlens: int32 `[K + 1]` segment boundaries over the flattened layout
            (sequences and filler segments), cu_seqlens[-1] == R C; max_seqlen: the longest segment (tokens).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: Optional[torch.Tensor]
    video_mask: torch.Tensor
    resp_index: torch.Tensor
    resp_mask: torch.Tensor
    seq_lens: list[int]
    starts: list[int]
    cu_seqlens: torch.Tensor
    max_seqlen: int

    packed = True  # `dvr1.parallel.forward.response_logprobs` gathers through the flattened layout

    @property
    def num_rows(self) -> int:
        """The number of sequences N (not of packed rows)."""
        return len(self.seq_lens)

    @property
    def shape(self) -> tuple[int, int]:
        """(R, C): packed rows and their length in tokens."""
        return tuple(self.input_ids.shape)

    def attention_mask(self) -> torch.Tensor:
        """Block-diagonal causal mask, bool `[R, 1, C, C]`, True where attention is NOT allowed (megatron's
        convention, `transformer/utils.py:attention_mask_func`): token q sees token k iff same segment and k <= q."""
        R, C = self.shape
        dev = self.input_ids.device
        seg_len = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long().to(dev)
        seg = torch.repeat_interleave(torch.arange(len(seg_len), device=dev), seg_len).view(R, C)
        idx = torch.arange(C, device=dev)
        mask = (seg.unsqueeze(2) != seg.unsqueeze(1)) | (idx.view(1, 1, C) > idx.view(1, C, 1))
        return mask.unsqueeze(1)

    def packed_seq_params(self):
        """megatron-core `PackedSeqParams` for TE's THD attention (one row only; cu_seqlens int32 on its device).
        Raises ValueError for more than one packed row."""
        from megatron.core.packed_seq_params import PackedSeqParams

        if self.shape[0] != 1:
            raise ValueError(f"the THD layout is one packed row, got {self.shape[0]} (pack with capacity=None)")
        cu = self.cu_seqlens.to(device=self.input_ids.device, dtype=torch.int32)
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=self.max_seqlen,
                               max_seqlen_kv=self.max_seqlen)


def _round(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def bins(seq_lens, capacity: int) -> list[list[int]]:
    """First-fit decreasing: the sequences' indices grouped into bins of at most `capacity` tokens (longest first,
    ties by index; each bin in placement order). Raises ValueError for a sequence longer than `capacity`."""
    lens = [int(x) for x in seq_lens]
    if lens and max(lens) > capacity:
        raise ValueError(f"bins: a sequence of {max(lens)} tokens exceeds the capacity {capacity}")
    out, free = [], []
    for i in sorted(range(len(lens)), key=lambda i: (-lens[i], i)):
        for b, f in enumerate(free):
            if lens[i] <= f:
                out[b].append(i)
                free[b] -= lens[i]
                break
        else:
            out.append([i])
            free.append(capacity - lens[i])
    return out


def pack(batch, capacity: Optional[int] = None, length: Optional[int] = None, rows: Optional[int] = None,
         multiple: int = 1) -> PackedBatch:
    """Pack a right-padded microbatch (`dvr1.train.inputs.SeqBatch` with `seq_lens`).

    Args:
        batch: `input_ids` `[N, S]`, `position_ids` `[3, N, S]`, `video_mask` `[N, S]`, `video_embeds` (row order,
            `video_tokens[i]` rows each), `resp_index` / `resp_mask` `[N, T]`, `seq_lens` (N ints in [1, S]).
        capacity: None: ONE row (the THD layout) of `C = max(sum(seq_lens), length)`; else bins of
            `C = max(capacity, max(seq_lens))` tokens, first-fit decreasing (`bins`), at least `rows` rows.
        multiple: round `C` up to a multiple of this (TP size under sequence parallel).
    Raises:
        ValueError: no `seq_lens`, a length outside [1, S], or `length` below the sum of the lengths.
    """
    lens = [int(x) for x in getattr(batch, "seq_lens", None) or []]
    N, S = batch.input_ids.shape
    if len(lens) != N:
        raise ValueError(f"pack: the batch has {N} rows but {len(lens)} seq_lens (build it with build_batch)")
    if any(n < 1 or n > S for n in lens):
        raise ValueError(f"pack: seq_lens {lens} outside [1, {S}]")
    total = sum(lens)
    if capacity is None:
        if length is not None and length < total:
            raise ValueError(f"pack: length {length} < the microbatch's {total} tokens")
        C = _round(max(total, length or 0), multiple)
        layout = [list(range(N))]
    else:
        C = _round(max(capacity, max(lens)), multiple)
        layout = bins(lens, C)
    layout += [[] for _ in range(max(0, (rows or 0) - len(layout)))]
    R, dev = len(layout), batch.input_ids.device
    order = [i for b in layout for i in b]  # packed order of the sequences
    starts, segs, fills = [0] * N, [], []
    for r, b in enumerate(layout):
        o = r * C
        for i in b:
            starts[i] = o
            segs.append(lens[i])
            o += lens[i]
        if o < (r + 1) * C:
            segs.append((r + 1) * C - o)
            fills.append((o, (r + 1) * C))
    src = torch.cat([i * S + torch.arange(lens[i], device=dev) for i in order])  # flat padded index, packed order
    dst = torch.cat([starts[i] + torch.arange(lens[i], device=dev) for i in order])
    ids = batch.input_ids.new_zeros(R * C)
    ids[dst] = batch.input_ids.reshape(-1)[src]
    pos = batch.position_ids.new_zeros(3, R * C)
    pos[:, dst] = batch.position_ids.reshape(3, -1)[:, src]
    for a, b in fills:
        pos[:, a:b] = torch.arange(b - a, device=dev)
    vmask = batch.video_mask.new_zeros(R * C)
    vmask[dst] = batch.video_mask.reshape(-1)[src]
    embeds = batch.video_embeds
    if embeds is not None and order != list(range(N)):
        parts = torch.split(embeds, list(batch.video_tokens))
        embeds = torch.cat([parts[i] for i in order])
    row = torch.tensor([s // C for s in starts], device=dev)
    first = torch.tensor(starts, device=dev) - row  # = r_i (C - 1) + o_i: the sequence's first target, flattened
    last = (torch.tensor(lens, device=dev) - 2).clamp_min(0).view(N, 1)
    index = first.view(N, 1) + torch.minimum(batch.resp_index, last)
    cu = torch.tensor([0] + segs, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return PackedBatch(ids.view(R, C), pos.view(3, R, C), embeds, vmask.view(R, C), index, batch.resp_mask, lens,
                       starts, cu, max(segs))


def unpack(x: torch.Tensor, packed: PackedBatch, pad: float = 0) -> torch.Tensor:
    """The inverse layout: `x` with the packed `[R, C]` as its first two axes (logits `[R, C, V]`, `input_ids`;
    hidden states `[C, R, H]` as `hidden.transpose(0, 1)`, positions `[3, R, C]` as `pos.movedim(0, -1)`) ->
    `[N, S_max, *rest]` in the padded batch's row order, right-padded with `pad`, S_max = max(seq_lens)."""
    flat = x.reshape(-1, *x.shape[2:])
    parts = [flat[s:s + n] for s, n in zip(packed.starts, packed.seq_lens)]
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True, padding_value=pad)


def padding_fraction(seq_lens, rows: Optional[int] = None, length: Optional[int] = None) -> float:
    """Share of padding among the tokens a layout computes: 1 - sum(len) / (rows x length); default the padded
    layout, every sequence right-padded to the longest (`build_batch`). 0.0 for no sequences."""
    lens = list(seq_lens)
    if not lens:
        return 0.0
    return 1.0 - sum(lens) / ((rows or len(lens)) * (length or max(lens)))


def plan(micro_seq_lens: list[list[int]], spec: str, multiple: int = 1, same_shape: bool = False):
    """The `pack` arguments of each microbatch and the schedule's (seq_length, micro_batch_size).

    Args:
        micro_seq_lens: each microbatch's `seq_lens`.
        spec: "te" -> one THD row per microbatch; otherwise bins of the microbatch's longest sequence (module doc).
        multiple: `C` is a multiple of this (TP size under sequence parallel).
        same_shape: every microbatch the same `[R, C]` (pipeline parallelism: the p2p shape is fixed).
    Returns:
        (list of kwargs for `pack`, one per microbatch; seq_length C; micro_batch_size R), C and R the largest.
    """
    if spec == "te":
        lengths = [_round(sum(s), multiple) for s in micro_seq_lens]
        kws = [dict(length=max(lengths) if same_shape else None, multiple=multiple) for _ in micro_seq_lens]
        return kws, max(lengths), 1
    caps = [_round(max(s), multiple) for s in micro_seq_lens]
    if same_shape:
        caps = [max(caps)] * len(caps)
    n_rows = [len(bins(s, c)) for s, c in zip(micro_seq_lens, caps)]
    kws = [dict(capacity=c, rows=max(n_rows) if same_shape else None, multiple=multiple) for c in caps]
    return kws, max(caps), max(n_rows)


def model_inputs(packed: PackedBatch, spec: str) -> dict:
    """The attention inputs of a packed forward: `{"packed_seq_params": ...}` for the TE spec (THD layout),
    `{"attention_mask": ...}` (block-diagonal causal) for the local spec.

    Raises:
        RuntimeError: spec "te" when transformer_engine cannot be imported (THD attention is TE's kernel).
    """
    if spec == "te":
        try:
            import transformer_engine  # noqa: F401
        except Exception as e:  # ImportError, or RuntimeError when CUDA/cuDNN libraries are missing
            raise RuntimeError(f"model.packing with model.spec=te uses TransformerEngine's THD attention, but "
                               f"importing transformer_engine failed: {e}") from e
        return {"packed_seq_params": packed.packed_seq_params()}
    return {"attention_mask": packed.attention_mask()}
