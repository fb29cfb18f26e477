"""SFT cold start: teach the `<think>…</think><answer>…</answer>` format (DVR1 §4.1 starts RL from an SFT model).

Targets (`dvr1.data.prompts.sft_target`): the record's own `reasoning`, else its construction metadata (the synthetic
set, so the reasoning is true of the clip), else the answer alone in the same format; each step counts which
(`sft/target_reasoning`, `sft/target_meta`, `sft/target_answer_only`: records of this rank's batch). Loss: mean
negative log-likelihood per response token (the `<|im_end|>` stop token included), through the same vocab-parallel
log-prob path as RL.

Validation (`sft.val_every`): the same NLL, without gradients, over the whole `val` split (`validate`), logged as
`val_loss` every `val_every` steps and at the last step (`periodic`); it reads no training sample and no random
state, so a resumed run logs the same rows.
"""

from __future__ import annotations

import logging
import math

import torch

from dvr1.data.prompts import SFT_SOURCES, sft_target
from dvr1.data.sampler import PromptSampler
from dvr1.parallel import grid
from dvr1.parallel.forward import forward_backward
from dvr1.train.inputs import build_batch, prepare_or_skip

log = logging.getLogger(__name__)


class SFTTrainer:
    """One SFT step per `step()`. `val_records` (the `val` split; None or empty: no validation) are prepared by
    `val_builder` (default `builder`; a builder of its own keeps their skips out of the training report)."""

    def __init__(self, cfg, model, optimizer, scheduler, builder, tokenizer, records, val_records=None,
                 val_builder=None):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.builder, self.tok = builder, tokenizer
        self.val_records = list(val_records or [])
        self.val_builder = val_builder or builder
        self._val_bad: set[str] = set()  # val ids whose clip or prompt failed once (reported once, then left out)
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
            # a trained tower encodes the clip inside the training pass (no rollout needs the no-grad embeddings)
            p = prepare_or_skip(self.builder, rec, self.sampler, strict=self.cfg.data.strict, embed=False)
            if p is not None:
                ids, source = self.target(rec)
                items.append((p, ids))
                sources[source] += 1
        batch = build_batch(items, self.pad)
        n_tok = batch.resp_mask.sum()

        def loss_fn(logp, _entropy, rows):  # this microbatch's share of the batch-mean NLL
            return -(logp * batch.resp_mask[rows].to(logp.device)).sum() / n_tok, {}

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

    def periodic(self, step: int, last: int) -> dict:
        """`{"val_loss": validate()}` when `step` is a multiple of `sft.val_every` or the last step `last`; else {}
        (also with `sft.val_every=0`, no val records, or none of them usable). Collective (every rank calls it at the same steps)."""
        every = self.cfg.sft.val_every
        if not every or not self.val_records or (step % every and step != last):
            return {}
        loss = self.validate()
        return {} if math.isnan(loss) else {"val_loss": loss}

    def validate(self) -> float:
        """Mean negative log-likelihood per response token (nats; `<|im_end|>` included, as the training loss) of the
        SFT targets of `val_records` under the current model: teacher-forced, no gradients, in batches of
        `sft.batch_size` (each DP rank the records ``dp_rank::dp``, its `batch_size / dp` per batch, microbatches of
        at most `sft.micro_batch_size`), token sums and counts summed over DP with `grid.dp_all_reduce`, so every
        rank returns the same value. A record whose clip or prompt fails is reported once and left out (strict:
        raises). Consumes no training sample and no random number. Returns nan when no val token was scored."""
        from dvr1.parallel.forward import forward_backward

        rank, dp = grid.dp_layout()
        mine = [r for r in self.val_records[rank::dp] if r.id not in self._val_bad]
        m = self.cfg.model
        total = torch.zeros(2, dtype=torch.float64)  # [NLL sum, response tokens]
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[torch.cuda.current_device()]
                                                    if torch.cuda.is_available() else []):
            for i in range(0, len(mine), self.batch_per_rank):
                items = []
                for rec in mine[i:i + self.batch_per_rank]:
                    p = prepare_or_skip(self.val_builder, rec, strict=self.cfg.data.strict)
                    if p is None:
                        self._val_bad.add(rec.id)
                    else:
                        items.append((p, self.target_ids(rec)))
                if not items:
                    continue
                batch = build_batch(items, self.pad)
                micro = self.cfg.sft.micro_batch_size
                rows = math.gcd(len(items), micro) if micro else 0  # equal microbatches (PP), none over `micro`

                def loss_fn(logp, _entropy, rows_):
                    return -(logp.double() * batch.resp_mask[rows_].to(logp.device)).sum(), {}

                res = forward_backward(self.model, batch, loss_fn, forward_only=True, fused=m.fused_logprobs,
                                       chunk_size=m.logprob_chunk, rows_per_microbatch=rows)
                nll = grid.broadcast_from_last_stage(None if res is None else float(res.loss))
                total += torch.tensor([nll, float(batch.resp_mask.sum())], dtype=torch.float64)
        grid.dp_all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")
