"""SFT cold start: teach the `<think>…</think><answer>…</answer>` format (DVR1 §4.1 starts RL from an SFT model).

Targets (`dvr1.data.prompts.sft_target`): the record's own `reasoning`, else its construction metadata (the synthetic
set, so the reasoning is true of the clip), else the answer alone in the same format; each step counts which
(`sft/target_reasoning`, `sft/target_meta`, `sft/target_answer_only`: records of this rank's batch). Loss: mean
negative log-likelihood per response token (the `<|im_end|>` stop token included), through the same vocab-parallel
log-prob path as RL. `sft.answer_weight` (default 1: plain mean) multiplies the NLL of the answer tokens
(`dvr1.data.prompts.answer_spans`: what ``<answer>`` holds and the reasoning's "option X" of the answer letter) while
the normaliser stays the response-token count: ``loss = Σ_t w_t·NLL_t / n_tokens``, ``w_t = answer_weight`` on answer
tokens, 1 elsewhere (docs/ALGORITHMS.md §12); each step also logs the unweighted mean NLL as `nll`. In the tiny
synthetic set the letter is 1-2 of ~60 response tokens; without the weight the 4-layer LM never learns to find the
stated value among the options (docs/SEEING_POLICY.md).

Validation (`sft.val_every`): the same NLL, without gradients, over the whole `val` split (`validate`), logged as
`val_loss` every `val_every` steps and at the last step (`periodic`), and the mean NLL of the answer tokens alone
(unweighted) as `val_answer_loss` (ln 4 = 1.386 nats is chance for a 4-way letter); it reads no training sample and no
random state, so a resumed run logs the same rows.
"""

from __future__ import annotations

import logging
import math

import torch

from dvr1.data.prompts import SFT_SOURCES, answer_spans, sft_target
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
        self.answer_weight = float(cfg.sft.answer_weight)
        if self.answer_weight < 0:
            raise ValueError(f"sft.answer_weight must be >= 0, got {self.answer_weight}")
        if self.answer_weight != 1.0 and not getattr(tokenizer, "is_fast", False):
            raise ValueError("sft.answer_weight != 1 needs a fast tokenizer (token offsets locate the answer tokens)")

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.sampler.load_state_dict(s["sampler"])

    def target(self, record) -> tuple[list[int], str]:
        """(target token ids ending with `<|im_end|>`, where its reasoning came from: `SFT_SOURCES`)."""
        ids, _, source = self.target_tokens(record)
        return ids, source

    def target_ids(self, record) -> list[int]:
        return self.target(record)[0]

    def target_tokens(self, record) -> tuple[list[int], list[bool], str]:
        """(target token ids ending with `<|im_end|>`, answer-token flags of the same length: the tokens whose
        characters overlap `answer_spans` (`<|im_end|>` never; all False with a slow tokenizer, which has no
        offsets), source)."""
        text, source = sft_target(record)
        if not getattr(self.tok, "is_fast", False):
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            return ids + [self.eos], [False] * (len(ids) + 1), source
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = answer_spans(record, text)
        flags = [any(a < e and b > s_ for s_, e in spans) for a, b in enc["offset_mapping"]]
        return enc["input_ids"] + [self.eos], flags + [False], source

    @staticmethod
    def _answer_mask(batch, flags: list[list[bool]]) -> torch.Tensor:
        """`[N, T]` float: 1 on the answer tokens of each row of `batch` (laid out like `batch.resp_mask`)."""
        out = torch.zeros_like(batch.resp_mask)
        for i, f in enumerate(flags):
            out[i, :len(f)] = torch.tensor(f, dtype=out.dtype)
        return out

    def step(self) -> dict:
        items, flags, sources = [], [], dict.fromkeys(SFT_SOURCES, 0)
        while len(items) < self.batch_per_rank:
            rec = self.sampler.next()
            # a trained tower encodes the clip inside the training pass (no rollout needs the no-grad embeddings)
            p = prepare_or_skip(self.builder, rec, self.sampler, strict=self.cfg.data.strict, embed=False)
            if p is not None:
                ids, flag, source = self.target_tokens(rec)
                items.append((p, ids))
                flags.append(flag)
                sources[source] += 1
        batch = build_batch(items, self.pad)
        n_tok = batch.resp_mask.sum()
        weight = batch.resp_mask
        if self.answer_weight != 1.0:  # w_t = answer_weight on answer tokens, 1 elsewhere; same normaliser
            weight = batch.resp_mask + (self.answer_weight - 1.0) * self._answer_mask(batch, flags)

        def loss_fn(logp, _entropy, rows):  # this microbatch's share of the batch-mean (weighted) NLL
            return -(logp * weight[rows].to(logp.device)).sum() / n_tok, {}

        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        m = self.cfg.model
        res = forward_backward(self.model, batch, loss_fn, forward_only=False, fused=m.fused_logprobs,
                               chunk_size=m.logprob_chunk, packing=m.packing,
                               rows_per_microbatch=self.cfg.sft.micro_batch_size)  # grads DP-reduced inside
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        # the unweighted mean NLL per response token beside the (weighted) loss: comparable with val_loss
        nll = None if res is None else -float((res.logp.double().cpu() * batch.resp_mask.double()).sum() / n_tok)
        loss, nll = grid.broadcast_from_last_stage(None if res is None else (float(res.loss), nll))
        return {"loss": loss, "nll": nll, "grad_norm": float(grad_norm or 0.0),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens": float(n_tok),
                **{f"sft/target_{k}": float(v) for k, v in sources.items()}}

    def periodic(self, step: int, last: int) -> dict:
        """`{"val_loss": ..., "val_answer_loss": ...}` (`validate`) when `step` is a multiple of `sft.val_every` or
        the last step `last`; else {} (also with `sft.val_every=0`, no val records, or none of them usable; without
        answer tokens, e.g. a slow tokenizer, no `val_answer_loss`). Collective (every rank calls it at the same
        steps)."""
        every = self.cfg.sft.val_every
        if not every or not self.val_records or (step % every and step != last):
            return {}
        loss, answer = self.validate(answer=True)
        if math.isnan(loss):
            return {}
        return {"val_loss": loss, **({} if math.isnan(answer) else {"val_answer_loss": answer})}

    def validate(self, answer: bool = False):
        """Mean negative log-likelihood per response token (nats; `<|im_end|>` included, as the training loss,
        unweighted) of the SFT targets of `val_records` under the current model; with `answer`, the pair (that, the
        mean NLL of the answer tokens alone: `target_tokens`' flags). Teacher-forced, no gradients, in batches of
        `sft.batch_size` (each DP rank the records ``dp_rank::dp``, its `batch_size / dp` per batch, microbatches of
        at most `sft.micro_batch_size`), token sums and counts summed over DP with `grid.dp_all_reduce`, so every
        rank returns the same value. A record whose clip or prompt fails is reported once and left out (strict:
        raises). Consumes no training sample and no random number. nan where no (answer) token was scored."""
        from dvr1.parallel.forward import forward_backward

        rank, dp = grid.dp_layout()
        mine = [r for r in self.val_records[rank::dp] if r.id not in self._val_bad]
        m = self.cfg.model
        total = torch.zeros(4, dtype=torch.float64)  # [NLL sum, response tokens, answer NLL sum, answer tokens]
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[torch.cuda.current_device()]
                                                    if torch.cuda.is_available() else []):
            for i in range(0, len(mine), self.batch_per_rank):
                items, flags = [], []
                for rec in mine[i:i + self.batch_per_rank]:
                    p = prepare_or_skip(self.val_builder, rec, strict=self.cfg.data.strict)
                    if p is None:
                        self._val_bad.add(rec.id)
                    else:
                        ids, flag, _ = self.target_tokens(rec)
                        items.append((p, ids))
                        flags.append(flag)
                if not items:
                    continue
                batch = build_batch(items, self.pad)
                micro = self.cfg.sft.micro_batch_size
                rows = math.gcd(len(items), micro) if micro else 0  # equal microbatches (PP), none over `micro`

                def loss_fn(logp, _entropy, rows_):
                    return -(logp.double() * batch.resp_mask[rows_].to(logp.device)).sum(), {}

                res = forward_backward(self.model, batch, loss_fn, forward_only=True, fused=m.fused_logprobs,
                                       chunk_size=m.logprob_chunk, rows_per_microbatch=rows)
                amask = self._answer_mask(batch, flags)
                a_nll = None if res is None else -float((res.logp.double().cpu() * amask.double()).sum())
                nll, a_nll = grid.broadcast_from_last_stage(None if res is None else (float(res.loss), a_nll))
                total += torch.tensor([nll, float(batch.resp_mask.sum()), a_nll, float(amask.sum())],
                                      dtype=torch.float64)
        grid.dp_all_reduce(total)
        mean = lambda s_, n: float(s_ / n) if n > 0 else float("nan")  # noqa: E731
        loss = mean(total[0], total[1])
        return (loss, mean(total[2], total[3])) if answer else loss
