"""Forward (and backward) of the policy over a batch of sequences through megatron-core's schedules.

One code path for every layout: `megatron.core.pipeline_parallel.get_forward_backward_func()` picks the
no-pipelining schedule at PP=1 and 1F1B across stages at PP>1 (p2p of `[seq, rows, hidden]` activations over the PP
group). The batch is split into microbatches of whole rows (`rows_per_microbatch`; the RL trainer makes them whole
groups, since GRPO/Reg-GRPO normalise within groups); `loss_fn` runs on the last stage only, once per microbatch,
and returns that microbatch's share of the batch loss (the losses take the batch's normalisers, dvr1.rl.losses). After
a training pass the schedule calls `config.finalize_model_grads_func` (DP all-reduce, tied-embedding sync across
stages, TP average of a trained vision tower's gradients; set by `dvr1.train.optim.build_optimizer`). A batch whose
requests carry pixel values (`model.freeze_vision=false`) runs the first stage's vision tower inside the pass, so its
gradients flow (`SeqBatch.vision_inputs`); otherwise the precomputed `video_embeds` are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from dvr1.parallel import grid
from dvr1.parallel import packing as packing_mod
from dvr1.parallel.logprobs import fused_linear_logprobs, vocab_parallel_logprobs


@dataclass
class ForwardResult:
    """What `forward_backward` returns on the last PP stage.

    Attributes:
        logp: ``[N, T]`` response-token log-probs (detached), zero on padding.
        entropy: ``[N, T]`` per-token entropy (detached) or None when not computed.
        loss: the sum of the microbatch losses (detached 0-dim tensor), or None without a ``loss_fn``.
        metrics: the per-microbatch metrics dicts ``loss_fn`` returned, in order.
    """

    logp: torch.Tensor
    entropy: Optional[torch.Tensor]
    loss: Optional[torch.Tensor]
    metrics: list = field(default_factory=list)


def response_logprobs(output: torch.Tensor, batch, compute_entropy: bool = False, output_weight=None,
                      chunk_size: int = 1024, weight_grad_to_main_grad: bool = False, sequence_parallel: bool = False):
    """The last stage's output -> response-token log-probs `[rows, T]` (and entropy), zero on padding.

    `output` is either logits `[rows, S, vocab/tp]` (reduced by `vocab_parallel_logprobs`: only max, sum-exp and
    target logit are all-reduced over TP) or, with `output_weight` `[vocab/tp, hidden]`, the final hidden states
    `[S, rows, hidden]`, for `fused_linear_logprobs`: the output-layer GEMM runs chunk by chunk inside the log-prob
    reduction, so no logits tensor is ever materialised (forward or backward); `weight_grad_to_main_grad` (an
    untied output layer under megatron DDP) adds its weight gradient straight into `main_grad`.
    Under sequence parallel the policy hands over full-sequence tensors of the same shapes (it pads, shards and
    gathers the sequence itself, `Qwen25VLPolicy.forward`); `sequence_parallel` tells the fused reduction that the
    hidden states' backward already sums over TP (`fused_linear_logprobs(sequence_parallel=True)`).

    A `dvr1.parallel.packing.PackedBatch` (`rows` above = its packed rows) gives the same `[N, T]`: its
    `resp_index` points into the flattened packed rows.
    """
    if output_weight is not None:
        lp, ent = fused_linear_logprobs(output[:-1], output_weight, batch.input_ids[:, 1:].t(),
                                        chunk_size=chunk_size, compute_entropy=compute_entropy,
                                        weight_grad_to_main_grad=weight_grad_to_main_grad,
                                        sequence_parallel=sequence_parallel)
        lp, ent = lp.t(), (ent.t() if ent is not None else None)
    else:
        lp, ent = vocab_parallel_logprobs(output[:, :-1], batch.input_ids[:, 1:], compute_entropy=compute_entropy)
    take = (lambda x: x.reshape(-1)[batch.resp_index]) if getattr(batch, "packed", False) else \
        (lambda x: x.gather(1, batch.resp_index))
    lp = take(lp) * batch.resp_mask
    if compute_entropy:
        ent = take(ent) * batch.resp_mask
    return lp, ent


def forward_backward(model, batch, loss_fn: Optional[Callable] = None, forward_only: bool = True,
                     compute_entropy: bool = False, rows_per_microbatch: int = 0, fused: bool = False,
                     chunk_size: int = 1024, packing: bool = False):
    """Run the policy on `batch` (a `dvr1.train.inputs.SeqBatch`), split into microbatches of
    `rows_per_microbatch` rows (0 = the whole batch is one microbatch).

    Args:
        model: the (DDP-wrapped) policy of this PP stage.
        loss_fn: `(logp [rows_k, T], entropy or None, rows: slice) -> (scalar loss_k, metrics)` for microbatch k
            covering `rows` of the batch; the losses must be weighted so that their SUM is the batch loss (megatron
            divides each by the number of microbatches; that is undone here). With `forward_only=False` the sum is
            back-propagated through every stage, gradients accumulating over microbatches.
    Returns:
        On the last PP stage a :class:`ForwardResult`; elsewhere None.
        fused: apply the output layer inside the log-prob reduction (`fused_linear_logprobs`): the logits shard
            `[rows, S, vocab/tp]` is never materialised (see docs/BENCHMARKS.md for its memory/time trade-off).
        packing: pack each microbatch's sequences without padding (`dvr1.parallel.packing`: one THD row with the
            TE spec, bins under a block-diagonal causal mask with the local spec); the results are the padded ones.
            Under PP every microbatch gets the same packed shape (the p2p shape), under sequence parallel a length
            that is a multiple of TP.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import unwrap_model

    micro = batch.split(rows_per_microbatch)
    device = next(unwrap_model(model).parameters()).device  # batches are built on the CPU; the policy may be on CUDA
    if grid.pp_layout()[1] > 1 and not packing and len({mb.num_rows for mb in micro}) > 1:
        raise ValueError(f"with pipeline parallelism every microbatch needs the same rows: {batch.num_rows} rows do "
                         f"not split evenly into microbatches of {rows_per_microbatch}")
    bounds, start = [], 0
    for mb in micro:
        bounds.append(slice(start, start + mb.num_rows))
        start += mb.num_rows
    k = len(micro)
    logps, ents, losses, metrics = [], [], [], []
    policy = unwrap_model(model)
    seq_length, mbs = batch.input_ids.shape[1], max(mb.num_rows for mb in micro)
    spec = getattr(policy, "spec", "local")
    pack_kw = [{} for _ in micro]
    if packing:  # the schedule's p2p shape is [C, R, hidden]
        multiple = grid.tp_layout()[1] if getattr(policy.config, "sequence_parallel", False) else 1
        pack_kw, seq_length, mbs = packing_mod.plan([mb.seq_lens for mb in micro], spec, multiple,
                                                    same_shape=grid.pp_layout()[1] > 1)

    def make_loss_func(mb, rows):
        def loss_func(output_tensor):
            policy = unwrap_model(model)
            weight = policy.output_weight() if fused else None
            untied = not policy.lm.share_embeddings_and_output_weights  # the output layer is the weight's only user
            logp, ent = response_logprobs(output_tensor, mb, compute_entropy, output_weight=weight,
                                          chunk_size=chunk_size, weight_grad_to_main_grad=untied,
                                          sequence_parallel=policy.config.sequence_parallel)
            logps.append(logp.detach())
            ents.append(None if ent is None else ent.detach())
            if loss_fn is None:
                return output_tensor.new_zeros(()), {}
            loss, m = loss_fn(logp, ent, rows)
            losses.append(loss.detach())
            metrics.append(m)
            return loss * k, {}  # the schedule divides by k

        return loss_func

    def forward_step(data_iterator, m):
        mb, rows, pkw = next(data_iterator)
        mb = mb.to(device)
        vision = mb.vision_inputs()
        kw = {}
        if packing:
            if vision is not None:
                raise ValueError("model.packing=true with a trained vision tower (model.freeze_vision=false) is not "
                                 "supported yet: pack with the tower frozen")
            mb = packing_mod.pack(mb, **pkw)
            kw = packing_mod.model_inputs(mb, spec)
        if vision is None:
            out = m(mb.input_ids, mb.position_ids, video_embeds=mb.video_embeds, video_mask=mb.video_mask,
                    return_hidden=fused, **kw)
        else:  # the batch carries pixel values (a trained tower): this model encodes them itself, with gradients
            pv, grid, index = vision
            out = m(mb.input_ids, mb.position_ids, pixel_values_videos=pv, video_grid_thw=grid,
                    video_token_index=index, video_mask=mb.video_mask, return_hidden=fused)
        return out, make_loss_func(mb, rows)

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(list(zip(micro, bounds, pack_kw))),
        model=[model],
        num_microbatches=k,
        # packed: the planned shape (a multiple of TP under SP); padded: SP needs a multiple of TP
        seq_length=seq_length if packing else unwrap_model(model).padded_seq_len(batch.input_ids.shape[1]),
        micro_batch_size=mbs,
        forward_only=forward_only,
    )
    if not grid.is_last_stage():
        return None
    return ForwardResult(torch.cat(logps), torch.cat(ents) if compute_entropy else None,
                         torch.stack(losses).sum() if losses else None, metrics)

