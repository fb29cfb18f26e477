"""SFT cold start: teach the `<think>…</think><answer>…</answer>` format (DVR1 §4.1 starts RL from an SFT model).

Targets (`dvr1.data.prompts.sft_target`): the record's own `reasoning`, else its construction metadata (the synthetic
set, so the reasoning is true of the clip), else the answer alone in the same format; each step counts which
(`sft/target_reasoning`, `sft/target_meta`, `sft/target_answer_only`: records of this rank's batch). Loss: mean
negative log-likelihood per response token (the `<|im_end|>` stop token included), through the same vocab-parallel
log-prob path as RL.
"""

from __future__ import annotations

import logging


from dvr1.data.prompts import SFT_SOURCES, sft_target
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

    def target(self, record) -> tuple[list[int], str]:
        """(target token ids ending with `<|im_end|>`, where its reasoning came from: `SFT_SOURCES`)."""
        text, source = sft_target(record)
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.eos], source

    def target_ids(self, record) -> list[int]:
        return self.target(record)[0]

    def step(self) -> dict:
        items, sources = [], dict.fromkeys(SFT_SOURCES, 0)
        while len(items) < self.batch_per_rank:
            rec = self.sampler.next()
            p = prepare_or_skip(self.builder, rec, self.sampler, strict=self.cfg.data.strict)
            if p is not None:
                ids, source = self.target(rec)
                items.append((p, ids))
                sources[source] += 1
        batch = build_batch(items, self.pad)
        n_tok = batch.resp_mask.sum()

        def loss_fn(logp, _entropy, rows):  # this microbatch's share of the batch-mean NLL
            return -(logp * batch.resp_mask[rows]).sum() / n_tok, {}

        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        m = self.cfg.model
        res = forward_backward(self.model, batch, loss_fn, forward_only=False, fused=m.fused_logprobs,
                               chunk_size=m.logprob_chunk, packing=m.packing,
                               rows_per_microbatch=self.cfg.sft.micro_batch_size)  # grads DP-reduced inside
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        loss = grid.broadcast_from_last_stage(None if res is None else float(res.loss))
        return {"loss": loss, "grad_norm": float(grad_norm or 0.0),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens": float(n_tok),
                **{f"sft/target_{k}": float(v) for k, v in sources.items()}}
