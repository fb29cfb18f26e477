"""M-DPO (VidChain metric-based DPO; ALGORITHMS §7).

Pair construction (:func:`build_pairs`): for every turn k of a CoTasks chain, the earlier turns are fixed to the
ground truth, the policy samples ``k_samples`` (=3) answers at temperature 0.8, each is scored with that step's
evaluation metric on a 0-100 scale (:func:`score_step`: count error, SODA-style temporal IoU for segments, METEOR with
the ground-truth segments swapped in for captions), and every (winner, loser) pair whose score gap is >= the
threshold (10) is kept (:func:`select_pairs`).

Loss (:func:`mdpo_loss_fn`): the sigmoid DPO loss of `dvr1.rl.losses.dpo_loss` (β = 0.5) on sequence log-probs
summed over the generated assistant turn, computed through the same per-token vocab-parallel log-prob path as the RL
losses (`dvr1.parallel.forward.forward_backward`); reference log-probs come from a frozen copy of the initial policy.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from dvr1.models.tokenizer import decode_response
from dvr1.parallel.forward import broadcast_from_last_stage, forward_backward
from dvr1.rl.losses import dpo_loss
from dvr1.rollout.base import SamplingParams
from dvr1.train.inputs import build_batch, token_logprobs
from dvr1.vidchain.cotasks import events_percent, parse_captions, parse_count, parse_segments
from dvr1.vidchain.metrics import captions_score, count_score, segments_score

log = logging.getLogger(__name__)


@dataclass
class PreferencePair:
    """One M-DPO pair: the shared prompt (`Prepared`), winner / loser response token ids (stop token included when
    sampled), their step scores (0-100), and the step kind ("count" | "segments" | "captions")."""

    prepared: object
    chosen_ids: list
    rejected_ids: list
    chosen_score: float
    rejected_score: float
    kind: str


def score_step(kind: str, text: str, events, captions, duration: float, meteor) -> float:
    """Score one generated turn (0-100) against the ground truth of the record.

    Args:
        kind: "count" | "segments" | "captions".
        text: the decoded assistant answer.
        events: ground-truth ``[(start, end)]`` seconds of the events this turn is about; captions: theirs.
        meteor: pycocoevalcap-style scorer for the caption step.
    Raises: ValueError for an unknown kind.
    """
    if kind == "count":
        return count_score(parse_count(text), len(events))
    if kind == "segments":
        return segments_score(parse_segments(text), events_percent(events, duration))
    if kind == "captions":
        return captions_score(parse_captions(text), list(captions), meteor)
    raise ValueError(f"unknown chain step kind {kind!r}")


def select_pairs(scores: list[float], threshold: float = 10.0) -> list[tuple[int, int]]:
    """All ordered (winner, loser) index pairs with ``scores[w] - scores[l] >= threshold`` (ALGORITHMS §7: gap >= 10
    on the 0-100 scale), in (w, l) lexicographic order."""
    return [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] - scores[j] >= threshold]


def build_pairs(engine, inputs, tokenizer, records, chains, k_samples: int = 3, temperature: float = 0.8,
                max_new_tokens: int = 48, threshold: float = 10.0, meteor=None, rng: random.Random | None = None):
    """Sample and score every turn of every chain for ``records``; return (pairs, stats).

    Args:
        engine: rollout engine (`generate([request], SamplingParams)`); inputs: `ChainInputs`.
        records: `DenseCaptionRecord` list; chains: chain names (for "ground" one random event per record).
    Returns:
        (list of :class:`PreferencePair`, ``{"pairs", "samples", "score/<kind>", "gap"}``) where ``score/<kind>`` is
        the mean sampled score of that step and ``gap`` the mean winner - loser score.
    """
    rng = rng or random.Random(0)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sp = SamplingParams(n=k_samples, temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=(eos,))
    pairs, by_kind, n_samples = [], {}, 0
    for rec in records:
        for chain in chains:
            ev = rng.randrange(len(rec.events))
            turns = inputs.turns(rec, chain, ev)
            events = [rec.events[ev]] if chain == "ground" else rec.events
            caps = [rec.captions[ev]] if chain == "ground" else rec.captions
            for k, turn in enumerate(turns):
                prepared = inputs.prepare(rec, turns, k)
                out = engine.generate([prepared.request], sp)[0]
                texts = [decode_response(tokenizer, ids, (eos,)) for ids in out.token_ids]
                scores = [score_step(turn.kind, t, events, caps, rec.duration, meteor) for t in texts]
                by_kind.setdefault(turn.kind, []).extend(scores)
                n_samples += len(scores)
                for w, lo in select_pairs(scores, threshold):
                    pairs.append(PreferencePair(prepared, list(out.token_ids[w]), list(out.token_ids[lo]), scores[w],
                                                scores[lo], turn.kind))
    stats = {"pairs": float(len(pairs)), "samples": float(n_samples),
             "gap": sum(p.chosen_score - p.rejected_score for p in pairs) / len(pairs) if pairs else 0.0}
    stats.update({f"score/{kind}": sum(v) / len(v) for kind, v in by_kind.items()})
    return pairs, stats


def pair_batch(pairs: list[PreferencePair], pad_id: int):
    """Rows ``[chosen_0..chosen_{N-1}, rejected_0..rejected_{N-1}]`` as one `SeqBatch`."""
    return build_batch([(p.prepared, p.chosen_ids) for p in pairs] + [(p.prepared, p.rejected_ids) for p in pairs],
                       pad_id)


def mdpo_loss_fn(n_pairs: int, ref_seq_logp: torch.Tensor, beta: float = 0.5):
    """A `forward_backward` loss function for a :func:`pair_batch` of ``n_pairs`` pairs.

    Args:
        ref_seq_logp: float ``[2N]`` reference sequence log-probs (summed over each row's response tokens).
    Returns: ``loss_fn(logp [2N, T], entropy, *rows) -> (loss, metrics)``; the per-token log-probs (already 0 on
        padding) are summed per row and passed to `dpo_loss` (ALGORITHMS §7).
    """

    def loss_fn(logp, _entropy=None, *_rows):
        seq = logp.sum(-1)
        return dpo_loss(seq[:n_pairs], seq[n_pairs:], ref_seq_logp[:n_pairs], ref_seq_logp[n_pairs:], beta=beta)

    return loss_fn


class MDPOTrainer:
    """One `step()`: draw ``records_per_step`` records, build pairs with the current policy, one DPO update.

    Args: model/optimizer/scheduler from `optimizer_for`; reference: frozen policy (π_ref); engine: rollout engine
    on the trained policy; inputs: `ChainInputs`; opts: :class:`dvr1.vidchain.job.VidChainOptions`; meteor: caption
    scorer. A step without any pair makes no update and reports ``pairs = 0``.
    """

    def __init__(self, model, optimizer, scheduler, reference, engine, inputs, tokenizer, records, opts, meteor,
                 seed: int = 0):
        self.model, self.optimizer, self.scheduler, self.reference = model, optimizer, scheduler, reference
        self.engine, self.inputs, self.tok, self.records, self.opts = engine, inputs, tokenizer, list(records), opts
        self.meteor = meteor
        self.rng = random.Random(seed)
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "engine": self.engine.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.rng.setstate(s["rng"])
        self.engine.load_state_dict(s["engine"])

    def step(self) -> dict:
        o = self.opts
        recs = [self.records[self.rng.randrange(len(self.records))] for _ in range(o.records_per_step)]
        pairs, stats = build_pairs(self.engine, self.inputs, self.tok, recs, o.mdpo_chains, o.k_samples, o.temperature,
                                   o.max_new_tokens, o.pair_threshold, self.meteor, self.rng)
        if len(pairs) > o.max_pairs_per_step:
            pairs = self.rng.sample(pairs, o.max_pairs_per_step)
        metrics = dict(stats, pairs_used=float(len(pairs)))
        if not pairs:
            zeros = dict.fromkeys(("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy",
                                   "grad_norm"), 0.0)  # same keys every step (DP metric reduction)
            return dict(metrics, **zeros, lr=self.optimizer.param_groups[0]["lr"])
        batch = pair_batch(pairs, self.pad)
        ref_lp, _ = token_logprobs(self.reference, batch)
        ref_seq = ref_lp.sum(-1) if ref_lp is not None else torch.zeros(batch.num_rows)
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        res = forward_backward(self.model, batch, mdpo_loss_fn(len(pairs), ref_seq, o.beta), forward_only=False)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        dm = None
        if res is not None:
            dm = res[3][0] if isinstance(res[3], list) else res[3]
        dm = broadcast_from_last_stage(dm)
        return dict(metrics, **dm, grad_norm=float(grad_norm or 0.0), lr=self.optimizer.param_groups[0]["lr"])
