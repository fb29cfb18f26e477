"""SFT cold start: teach the `<think>…</think><answer>…</answer>` format (DVR1 §4.1 starts RL from an SFT model).

Targets come from each record's construction metadata (`dvr1.data.prompts.sft_response`), so the reasoning is true
of the clip. Loss: mean negative log-likelihood per response token (the `<|im_end|>` stop token included), through
the same vocab-parallel log-prob path as RL.
"""

from __future__ import annotations

import logging


from dvr1.data.prompts import sft_response
from dvr1.data.sampler import PromptSampler
from dvr1.parallel import grid
from dvr1.parallel.forward import forward_backward
from dvr1.train.inputs import build_batch, prepare_or_skip

log = logging.getLogger(__name__)


class SFTTrainer:
    def __init__(self, cfg, model, optimizer, scheduler, builder, tokenizer, records):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.builder, self.tok = builder, tokenizer
        self.sampler = PromptSampler(records, cfg.seed + 5, *grid.dp_layout())
        self.batch_per_rank = grid.per_rank(cfg.sft.batch_size, "sft.batch_size")
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.sampler.load_state_dict(s["sampler"])

    def target_ids(self, record) -> list[int]:
        return self.tok(sft_response(record), add_special_tokens=False)["input_ids"] + [self.eos]

    def step(self) -> dict:
        items = []
        while len(items) < self.batch_per_rank:
            rec = self.sampler.next()
            p = prepare_or_skip(self.builder, rec, self.sampler, strict=self.cfg.data.strict)
            if p is not None:
                items.append((p, self.target_ids(rec)))
        batch = build_batch(items, self.pad)
        n_tok = batch.resp_mask.sum()

        def loss_fn(logp, _entropy, rows):  # this microbatch's share of the batch-mean NLL
            return -(logp * batch.resp_mask[rows]).sum() / n_tok, {}

        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        m = self.cfg.model
        res = forward_backward(self.model, batch, loss_fn, forward_only=False, fused=m.fused_logprobs,
                               chunk_size=m.logprob_chunk,
                               rows_per_microbatch=self.cfg.sft.micro_batch_size)  # grads DP-reduced inside
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        loss = grid.broadcast_from_last_stage(None if res is None else float(res.loss))
        return {"loss": loss, "grad_norm": float(grad_norm or 0.0),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens": float(n_tok)}
