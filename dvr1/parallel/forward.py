"""Forward (and backward) of the policy over a batch of sequences through megatron-core's schedules.

One code path for every layout: `megatron.core.pipeline_parallel.get_forward_backward_func()` picks the
no-pipelining schedule at PP=1 and 1F1B across stages at PP>1 (p2p of `[seq, rows, hidden]` activations over the PP
group). The whole batch is one microbatch, because GRPO/Reg-GRPO normalise within groups and the RL loss needs every
group's log-probs at once; `loss_fn` runs on the last stage only. After a training pass the schedule calls
`config.finalize_model_grads_func` (DP all-reduce, tied-embedding sync across stages; set by
`dvr1.train.optim.build_optimizer`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from dvr1.parallel.logprobs import vocab_parallel_logprobs


def response_logprobs(logits: torch.Tensor, batch, compute_entropy: bool = False):
    """Logits `[rows, S, vocab/tp]` -> response-token log-probs `[rows, T]` (and entropy), zero on padding.

    Uses the vocab-parallel log-prob function: only the max, sum-exp and target logit are all-reduced over TP.
    """
    lp, ent = vocab_parallel_logprobs(logits[:, :-1], batch.input_ids[:, 1:], compute_entropy=compute_entropy)
    lp = lp.gather(1, batch.resp_index) * batch.resp_mask
    if compute_entropy:
        ent = ent.gather(1, batch.resp_index) * batch.resp_mask
    return lp, ent


def forward_backward(model, batch, loss_fn: Optional[Callable] = None, forward_only: bool = True,
                     compute_entropy: bool = False):
    """Run the policy on `batch` (a `dvr1.train.inputs.SeqBatch`).

    Args:
        model: the (DDP-wrapped) policy of this PP stage.
        loss_fn: `(logp [rows, T], entropy or None) -> (scalar loss, metrics dict)`; with `forward_only=False` its
            loss is back-propagated through every stage.
    Returns:
        On the last PP stage: `(logp, entropy, loss, metrics)` (loss/metrics None without `loss_fn`); elsewhere None.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    out: dict = {}

    def loss_func(output_tensor):
        logp, ent = response_logprobs(output_tensor, batch, compute_entropy)
        out["logp"], out["entropy"] = logp, ent
        if loss_fn is None:
            return output_tensor.new_zeros(()), {}
        loss, metrics = loss_fn(logp, ent)
        out["loss"], out["metrics"] = loss, metrics
        return loss, {}

    def forward_step(data_iterator, m):
        b = next(data_iterator)
        logits = m(b.input_ids, b.position_ids, video_embeds=b.video_embeds, video_mask=b.video_mask)
        return logits, loss_func

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([batch]),
        model=[model],
        num_microbatches=1,
        seq_length=batch.input_ids.shape[1],
        micro_batch_size=batch.input_ids.shape[0],
        forward_only=forward_only,
    )
    if not ps.is_pipeline_last_stage():
        return None
    return out["logp"], out.get("entropy"), out.get("loss"), out.get("metrics")


def broadcast_from_last_stage(obj):
    """Send a picklable object from the last PP stage to every stage of this PP group (identity at PP=1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized() or ps.get_pipeline_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=ps.get_pipeline_model_parallel_last_rank(),
                               group=ps.get_pipeline_model_parallel_group())
    return box[0]
