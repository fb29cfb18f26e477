"""Packed sequences (`model.packing`): a microbatch's sequences laid end to end in one row, no padding between them.

A right-padded microbatch (`dvr1.train.inputs.SeqBatch`: `N` rows of `S` tokens, row `i` holding `seq_lens[i]` real
tokens) becomes one row of `P = sum(seq_lens)` tokens (plus, only where asked, a tail of `P - sum(seq_lens)` filler
tokens: a common length for every microbatch under pipeline parallelism, a multiple of TP under sequence parallel).
Each sequence keeps its own mrope positions (`dvr1.models.rope`: the padded batch's `position_ids[:, i, :len_i]`),
so rotary embeddings are unchanged; attention is restricted to the sequence:

- TransformerEngine spec (GPUs): megatron-core's THD layout, `PackedSeqParams(qkv_format="thd", cu_seqlens_q/kv,
  max_seqlen_q/kv)` (megatron-core 0.16.1 `packed_seq_params.py`), passed by `GPTModel.forward` to every
  `TransformerLayer` -> `SelfAttention` -> `TEDotProductAttention`, which runs TE's varlen (flash / cuDNN) kernels with
  mask type `padding_causal` (`extensions/transformer_engine.py:1397`). mrope is exact there: the rotary table made
  from the packed `position_ids` has one row per packed token, `freqs.size(0) == cu_seqlens[-1]`, which is the
  "exact mapping with offsets" case of `models/common/embeddings/rope_utils.py:_apply_rotary_pos_emb_thd` (so a filler
  tail is its own segment in `cu_seqlens`, never outside it). Needs TransformerEngine; `model_inputs` raises a
  RuntimeError naming it otherwise.
- Local spec (CPU, or GPU without TE): megatron's `DotProductAttention` refuses `packed_seq_params`
  (`transformer/dot_product_attention.py:153`), so it gets an explicit block-diagonal causal mask, bool
  `[1, 1, P, P]`, True = masked (its `attention_mask_func` fills -10000 there, exactly as the default causal mask the
  padded path uses, `transformer/utils.py:35`): the same probabilities, so the same numbers as padded. It still
  computes the full `P x P` score matrix; what packing saves there is the padded rows of every GEMM (QKV, output
  projection, MLP, output layer) and of the `N x S x S` attention of the padded layout.

Response log-probs: the padded layout's `resp_index[i, j]` indexes row `i`'s shifted target space `[S - 1]`
(position `k` predicts token `k + 1`); packed, it becomes `offsets[i] + resp_index[i, j]` in the packed row's shifted
target space `[P - 1]` (`PackedBatch.resp_index`, still `[N, T]`), so `forward.response_logprobs` returns the same
`[N, T]` log-probs and the losses see nothing new. The packed row also predicts each sequence's first token from the
previous sequence's last one; no response index points there (a response token's index is at most `len_i - 2` of its
own sequence; padding slots, masked by `resp_mask`, are clamped into their own sequence).

Units: lengths and offsets in tokens. `pack` works on whatever device the batch is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PackedBatch:
    """One microbatch packed into one row.

    Attributes:
        input_ids: int64 `[1, P]`; position_ids: int64 `[3, 1, P]` (each sequence's own mrope positions, the filler
            tail 0, 1, ...); video_mask: bool `[1, P]`; video_embeds: the batch's `[video tokens, hidden]` (row order
            is packed order) or None.
        resp_index: int64 `[N, T]` indices into the packed shifted-target space `[P - 1]`; resp_mask float32 `[N, T]`
            (the padded batch's).
        seq_lens: the `N` real lengths (tokens); cu_seqlens: int32 `[K + 1]` segment starts (K = N, or N + 1 with
            a filler tail as its own segment), cu_seqlens[-1] == P; max_seqlen: the longest segment (tokens).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: Optional[torch.Tensor]
    video_mask: torch.Tensor
    resp_index: torch.Tensor
    resp_mask: torch.Tensor
    seq_lens: list[int]
    cu_seqlens: torch.Tensor
    max_seqlen: int

    packed = True  # `dvr1.parallel.forward.response_logprobs` gathers from the one packed row

    @property
    def num_rows(self) -> int:
        """The number of sequences N (not the one packed row)."""
        return len(self.seq_lens)

    @property
    def length(self) -> int:
        """P, the packed row's length in tokens."""
        return self.input_ids.shape[1]

    def attention_mask(self) -> torch.Tensor:
        """Block-diagonal causal mask, bool `[1, 1, P, P]`, True where attention is NOT allowed (megatron's
        convention, `transformer/utils.py:attention_mask_func`): token q sees token k iff same segment and k <= q."""
        P = self.length
        seg_len = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        seg = torch.repeat_interleave(torch.arange(len(seg_len), device=seg_len.device), seg_len)
        idx = torch.arange(P, device=seg.device)
        mask = (seg.view(-1, 1) != seg.view(1, -1)) | (idx.view(1, -1) > idx.view(-1, 1))
        return mask.view(1, 1, P, P).to(self.input_ids.device)

    def packed_seq_params(self):
        """megatron-core `PackedSeqParams` for TE's THD attention (cu_seqlens int32 on the batch's device)."""
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(device=self.input_ids.device, dtype=torch.int32)
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=self.max_seqlen,
                               max_seqlen_kv=self.max_seqlen)


def packed_length(seq_lens, multiple: int = 1) -> int:
    """sum(seq_lens) rounded up to a multiple of `multiple` (tokens)."""
    n = int(sum(seq_lens))
    return -(-n // multiple) * multiple


def pack(batch, length: Optional[int] = None, multiple: int = 1) -> PackedBatch:
    """Pack a right-padded microbatch (`dvr1.train.inputs.SeqBatch` with `seq_lens`) into one row.

    Args:
        batch: `input_ids` `[N, S]`, `position_ids` `[3, N, S]`, `video_mask` `[N, S]`, `video_embeds`, `resp_index`
            / `resp_mask` `[N, T]`, `seq_lens` (N ints, each <= S).
        length: the packed row's length P (>= the sum of lengths; the rest is a filler tail), e.g. the longest
            microbatch's under pipeline parallelism; None: the sum of lengths.
        multiple: round P up to a multiple of this (TP size under sequence parallel).
    Raises:
        ValueError: the batch has no `seq_lens`, a length outside [1, S], or `length` below the sum of lengths.
    """
    lens = [int(x) for x in getattr(batch, "seq_lens", None) or []]
    N, S = batch.input_ids.shape
    if len(lens) != N:
        raise ValueError(f"pack: the batch has {N} rows but {len(lens)} seq_lens (build it with build_batch)")
    if any(n < 1 or n > S for n in lens):
        raise ValueError(f"pack: seq_lens {lens} outside [1, {S}]")
    total = sum(lens)
    P = packed_length([max(total, length or 0)], multiple)
    if length is not None and length < total:
        raise ValueError(f"pack: length {length} < the microbatch's {total} tokens")
    dev = batch.input_ids.device
    valid = torch.arange(S, device=dev).view(1, S) < torch.tensor(lens, device=dev).view(N, 1)  # [N, S]
    fill = P - total
    ids = torch.cat([batch.input_ids[valid], batch.input_ids.new_zeros(fill)]).view(1, P)
    tail = torch.arange(fill, device=dev, dtype=batch.position_ids.dtype).expand(3, fill)
    pos = torch.cat([batch.position_ids[:, valid], tail], dim=1).view(3, 1, P)
    vmask = torch.cat([batch.video_mask[valid], batch.video_mask.new_zeros(fill)]).view(1, P)
    offsets = torch.tensor([0] + lens[:-1], device=dev).cumsum(0)  # [N]
    last = torch.tensor(lens, device=dev).view(N, 1) - 2  # the last target of each sequence (len_i - 2)
    index = offsets.view(N, 1) + torch.minimum(batch.resp_index, last.clamp_min(0))
    segs = lens + ([fill] if fill else [])
    cu = torch.tensor([0] + segs, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return PackedBatch(ids, pos, batch.video_embeds, vmask, index.clamp(max=max(P - 2, 0)), batch.resp_mask, lens,
                       cu, max(segs))


def unpack(x: torch.Tensor, packed: PackedBatch, dim: int = 0, pad: float = 0) -> torch.Tensor:
    """The inverse layout. `x`: a tensor whose axis `dim` is the packed token axis (size P; drop the one-row axis
    first, e.g. `logits[0]` `[P, V]`, `hidden[:, 0]` `[P, H]`, `position_ids[:, 0]` `[3, P]` with dim=1) ->
    `[N, S_max, *other axes]` right-padded with `pad`, S_max = max(seq_lens); the filler tail is dropped."""
    x = x.movedim(dim, 0)
    parts = torch.split(x[: sum(packed.seq_lens)], packed.seq_lens)
    return torch.nn.utils.rnn.pad_sequence(list(parts), batch_first=True, padding_value=pad)


def padding_fraction(seq_lens) -> float:
    """Share of padding tokens when the sequences are right-padded to the longest (as `build_batch` pads):
    1 - sum(len) / (N * max(len)). 0.0 for no sequences."""
    lens = list(seq_lens)
    if not lens:
        return 0.0
    return 1.0 - sum(lens) / (len(lens) * max(lens))


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
