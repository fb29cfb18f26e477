"""M-DPO (VidChain metric-based DPO; ALGORITHMS §7).

Pair construction (:func:`build_pairs`): for every turn k of a CoTasks chain, the earlier turns are fixed to the
ground truth, the policy samples ``k_samples`` (=3) answers at temperature 0.8, each is scored with that step's
evaluation metric on a 0-100 scale (:func:`score_step`: count error, SODA-style temporal IoU for segments, METEOR with
the ground-truth segments swapped in for captions), and every (winner, loser) pair whose score gap is >= the
threshold (10) is kept (:func:`select_pairs`).

Loss (:func:`mdpo_loss_fn`): the sigmoid DPO loss of `dvr1.rl.losses.dpo_loss` (β = 0.5) on sequence log-probs
summed over the generated assistant turn, computed through the same per-token vocab-parallel log-prob path as the RL
losses (`dvr1.parallel.forward.forward_backward`); reference log-probs come from a frozen copy of the initial policy.

Parallelism (:class:`MDPOTrainer`): TP/PP ranks of one DP rank sample the same tokens (same engine seed), so they
build the same pairs. DP ranks take disjoint shares of each step's records; the loss is the mean over the pairs of
ALL DP ranks (each rank weights its pair-sum by ``dp / n_pairs_global``, and megatron DDP averages gradients over
DP), so a step equals one process on all the pairs whatever their split; a DP rank without a pair joins the
collective backward with a zero-weight pair. Microbatches (``vidchain.micro_batch_pairs``) hold whole pairs
(:func:`pair_batch`) and each pair carries its weight, so the loss and the DPO metrics of the microbatches are shares
that sum to the batch's (`dvr1.rl.losses.combine_metrics`).

Metrics per step (TRL's ``DPOTrainer`` names): ``rewards/chosen``, ``rewards/rejected`` (implicit rewards
β·(log π_θ − log π_ref) summed over the response), ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
``logps/rejected``, ``loss``; and of the pair construction ``pairs``, ``pairs/<kind>``, ``gap``, ``gap/<kind>``,
``score/<kind>`` per chain step kind (:func:`pair_stats`), all over the pairs of every DP rank.

The trainer state in a checkpoint holds the record/event RNG, this rank's pair-subsample RNG and the rollout
engine's generator, so a resumed stage samples what it would have.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from dvr1.models.tokenizer import decode_response
from dvr1.parallel import grid
from dvr1.parallel.forward import forward_backward
from dvr1.rl.losses import DPO_METRICS, combine_metrics, dpo_loss
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


KINDS = ("count", "segments", "captions")  # chain step kinds (`dvr1.vidchain.cotasks.Turn.kind`)


def build_pairs(engine, inputs, tokenizer, records, chains, k_samples: int = 3, temperature: float = 0.8,
                max_new_tokens: int = 48, threshold: float = 10.0, meteor=None, rng: random.Random | None = None,
                score_fn=score_step):
    """Sample and score every turn of every chain for ``records``; return (pairs, sums).

    Args:
        engine: rollout engine (`generate([request], SamplingParams)`); inputs: `ChainInputs`.
        records: `DenseCaptionRecord` list; chains: chain names (for "ground" one random event per record, drawn
            from ``rng``: one draw per record and chain).
        score_fn: the step metric, :func:`score_step`'s signature (another metric can be plugged in).
    Returns:
        (list of :class:`PreferencePair`, :func:`pair_sums` of the step: additive counts and score sums, which DP
        ranks add up before :func:`pair_stats` turns them into the logged means).
    """
    rng = rng or random.Random(0)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sp = SamplingParams(n=k_samples, temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=(eos,))
    pairs, by_kind = [], {}
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
                scores = [score_fn(turn.kind, t, events, caps, rec.duration, meteor) for t in texts]
                by_kind.setdefault(turn.kind, []).extend(scores)
                for w, lo in select_pairs(scores, threshold):
                    pairs.append(PreferencePair(prepared, list(out.token_ids[w]), list(out.token_ids[lo]), scores[w],
                                                scores[lo], turn.kind))
    return pairs, pair_sums(pairs, by_kind)


def pair_sums(pairs: list[PreferencePair], scores_by_kind: dict[str, list[float]]) -> dict[str, float]:
    """Additive statistics of one step's pair construction (the same keys whatever the data, so DP ranks can sum
    them): ``pairs``, ``samples``, ``gap_sum`` and, per chain step kind k of :data:`KINDS`, ``pairs/k``,
    ``samples/k``, ``score_sum/k`` (sampled scores, 0-100) and ``gap_sum/k`` (winner − loser scores).
    Raises ValueError for a kind outside :data:`KINDS`."""
    for kind in list(scores_by_kind) + [p.kind for p in pairs]:
        if kind not in KINDS:
            raise ValueError(f"pair_sums: unknown chain step kind {kind!r}; must be one of {KINDS}")
    out = {"pairs": float(len(pairs)), "samples": float(sum(len(v) for v in scores_by_kind.values())),
           "gap_sum": float(sum(p.chosen_score - p.rejected_score for p in pairs))}
    for kind in KINDS:
        mine = [p for p in pairs if p.kind == kind]
        out[f"pairs/{kind}"] = float(len(mine))
        out[f"samples/{kind}"] = float(len(scores_by_kind.get(kind, [])))
        out[f"score_sum/{kind}"] = float(sum(scores_by_kind.get(kind, [])))
        out[f"gap_sum/{kind}"] = float(sum(p.chosen_score - p.rejected_score for p in mine))
    return out


def pair_stats(sums: dict[str, float]) -> dict[str, float]:
    """The logged pair metrics from :func:`pair_sums` (of one rank or summed over DP): ``pairs`` (pairs formed,
    before the ``max_pairs_per_step`` cap), ``samples``, ``gap`` (mean winner − loser score over the pairs; 0 with
    none) and per chain step kind k that was sampled: ``pairs/k``, ``score/k`` (mean sampled score) and ``gap/k``
    (mean gap of its pairs; absent when it formed none)."""
    out = {"pairs": sums["pairs"], "samples": sums["samples"],
           "gap": sums["gap_sum"] / sums["pairs"] if sums["pairs"] else 0.0}
    for kind in KINDS:
        if not sums[f"samples/{kind}"]:
            continue
        out[f"pairs/{kind}"] = sums[f"pairs/{kind}"]
        out[f"score/{kind}"] = sums[f"score_sum/{kind}"] / sums[f"samples/{kind}"]
        if sums[f"pairs/{kind}"]:
            out[f"gap/{kind}"] = sums[f"gap_sum/{kind}"] / sums[f"pairs/{kind}"]
    return out


def pair_batch(pairs: list[PreferencePair], pad_id: int, pairs_per_microbatch: int = 0):
    """One `SeqBatch`, grouped by microbatch of ``pairs_per_microbatch`` pairs (0 = all in one): for each group the
    rows ``[chosen_a..chosen_b, rejected_a..rejected_b]``, so microbatches of ``2 * pairs_per_microbatch`` rows
    hold whole pairs (with one group: ``[chosen_0..chosen_{N-1}, rejected_0..rejected_{N-1}]``)."""
    m = pairs_per_microbatch or len(pairs)
    items = []
    for a in range(0, len(pairs), m):
        group = pairs[a:a + m]
        items += [(p.prepared, p.chosen_ids) for p in group] + [(p.prepared, p.rejected_ids) for p in group]
    return build_batch(items, pad_id)


def mdpo_loss_fn(ref_seq_logp: torch.Tensor, weights: torch.Tensor, beta: float = 0.5):
    """A `forward_backward` loss function for a :func:`pair_batch` (any microbatch of it holding whole groups).

    Args:
        ref_seq_logp: float ``[2N]`` reference sequence log-probs of the batch rows (summed over each row's response
            tokens), in :func:`pair_batch`'s row order.
        weights: float ``[N]`` per-pair weights (pair order): ``1/N`` for the mean over this batch; the trainer uses
            ``dp / N_global`` (DP-average of the ranks = mean over all pairs) and 0 for padding / null pairs.
        beta: β of the DPO loss.
    Returns: ``loss_fn(logp [2n, T], entropy, rows) -> (loss, metrics)``: for the microbatch covering batch ``rows``
        (its n pairs' chosen rows, then their rejected rows), the per-token log-probs (already 0 on padding) are
        summed per row and passed to `dpo_loss` with the pairs' weights, so the loss and the metrics
        (`dvr1.rl.losses.DPO_METRICS`) are shares that sum over microbatches (`combine_metrics`; ALGORITHMS §7).
    """

    def loss_fn(logp, _entropy=None, rows=None):
        rows = rows if rows is not None else slice(0, logp.shape[0])
        n = (rows.stop - rows.start) // 2
        seq, ref = logp.sum(-1), ref_seq_logp[rows].to(logp.device)
        w = weights[rows.start // 2: rows.start // 2 + n]
        return dpo_loss(seq[:n], seq[n:], ref[:n], ref[n:], beta=beta, weights=w)

    return loss_fn


def _dp_sum(x: int) -> int:
    """Sum of an int over the data-parallel group (itself without DP)."""
    return int(grid.dp_all_reduce(torch.tensor([float(x)], dtype=torch.float64)).item())


def _dp_sum_dict(d: dict[str, float]) -> dict[str, float]:
    """Every value summed over the data-parallel group (all ranks pass the same keys; itself without DP)."""
    keys = sorted(d)
    t = grid.dp_all_reduce(torch.tensor([float(d[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


class MDPOTrainer:
    """One `step()`: draw ``records_per_step`` records (global; each DP rank takes its share), build pairs with the
    current policy, one DPO update over the pairs of all DP ranks (module docstring).

    Args: model/optimizer/scheduler from `optimizer_for`; reference: frozen policy (π_ref); engine: rollout engine
    on the trained policy (a different seed per DP rank, the same within a DP rank: `dvr1.train.job.rollout_engine`);
    inputs: `ChainInputs`; opts: :class:`dvr1.config.VidChainOptions`; meteor: caption scorer; seed: the record /
    event RNG (equal on every rank); score_fn: step metric (:func:`score_step`).
    A step in which no DP rank has a pair makes no update and reports ``pairs_used = 0`` and zero DPO metrics.
    Every metric a step returns is the same on all DP ranks or a share whose DP average is the global value
    (`dvr1.train.metrics.reduce_metrics`), so the logged numbers do not depend on the DP / TP / PP layout or on
    ``micro_batch_pairs``.
    Raises ValueError when ``records_per_step`` / ``max_pairs_per_step`` do not divide by the DP size.
    """

    def __init__(self, model, optimizer, scheduler, reference, engine, inputs, tokenizer, records, opts, meteor,
                 seed: int = 0, score_fn=score_step):
        self.model, self.optimizer, self.scheduler, self.reference = model, optimizer, scheduler, reference
        self.engine, self.inputs, self.tok, self.records, self.opts = engine, inputs, tokenizer, list(records), opts
        self.meteor, self.score_fn = meteor, score_fn
        self.dp_rank, self.dp_size = grid.dp_layout()
        self.records_per_rank = grid.per_rank(opts.records_per_step, "vidchain.records_per_step")
        self.pairs_per_rank = grid.per_rank(opts.max_pairs_per_step, "vidchain.max_pairs_per_step")
        self.rng = random.Random(seed)  # the same stream on every rank: record and event draws
        self.pair_rng = random.Random(seed + 7919 * (self.dp_rank + 1))  # this DP rank's pair subsample
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "pair_rng": self.pair_rng.getstate(), "engine": self.engine.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.rng.setstate(s["rng"])
        if "pair_rng" in s:  # checkpoints written before the DP split have none
            self.pair_rng.setstate(s["pair_rng"])
        self.engine.load_state_dict(s["engine"])
        self.engine.sync_weights(self.model)  # a vLLM engine must sample from the resumed policy (native: no-op)

    def step(self) -> dict:
        """Returns the step's metrics: :func:`pair_stats` over the pairs of ALL DP ranks (``pairs``, ``samples``,
        ``gap``, ``pairs/<kind>``, ``score/<kind>``, ``gap/<kind>``), those of :meth:`update`, ``weight_sync_s``."""
        o = self.opts
        draw = [self.records[self.rng.randrange(len(self.records))] for _ in range(o.records_per_step)]
        recs = draw[self.dp_rank::self.dp_size]
        pairs, sums = build_pairs(self.engine, self.inputs, self.tok, recs, o.mdpo_chains, o.k_samples, o.temperature,
                                  o.max_new_tokens, o.pair_threshold, self.meteor, self.rng, self.score_fn)
        stats = pair_stats(_dp_sum_dict(sums))
        self.engine.sleep()  # vLLM on GPUs frees its memory during the update (no-op otherwise)
        if len(pairs) > self.pairs_per_rank:
            pairs = self.pair_rng.sample(pairs, self.pairs_per_rank)
        rec = recs[0]
        null_prompt = lambda: self.inputs.prepare(rec, self.inputs.turns(rec, o.mdpo_chains[0]), 0)  # noqa: E731
        metrics = self.update(pairs, null_prompt)
        # refit a colocated vLLM engine with the updated policy (native engine: a no-op returning 0)
        return dict(stats, **metrics, weight_sync_s=self.engine.sync_weights(self.model))

    def update(self, pairs: list[PreferencePair], null_prompt=None) -> dict:
        """One DPO optimizer step on this DP rank's ``pairs`` (collective over all ranks; every rank calls it).

        The loss is the mean DPO loss over the pairs of all DP ranks (module docstring), run in microbatches of
        ``vidchain.micro_batch_pairs`` pairs (0: one microbatch); with pipeline parallelism the last microbatch is
        filled up with zero-weight copies of a pair (every PP microbatch needs the same rows). ``null_prompt``: a
        callable returning a `Prepared` prompt, used for a zero-weight pair when this rank has none but another has.
        Returns float metrics: ``pairs_used`` (over all DP ranks), the DPO metrics `dvr1.rl.losses.DPO_METRICS`
        (``rewards/*``, ``logps/*``, ``loss``) as this rank's share of the global mean (their DP average, as
        `reduce_metrics` takes, is the mean over all pairs), ``grad_norm``, ``lr``.
        Raises ValueError when this rank has no pair, another has, and ``null_prompt`` is None.
        """
        n_global = _dp_sum(len(pairs))
        metrics = {"pairs_used": float(n_global)}
        if n_global == 0:
            return dict(metrics, **dict.fromkeys(DPO_METRICS, 0.0), grad_norm=0.0,
                        lr=self.optimizer.param_groups[0]["lr"])  # same keys every step (DP metric reduction)
        weights = [self.dp_size / n_global] * len(pairs)
        if not pairs:
            if null_prompt is None:
                raise ValueError("MDPOTrainer.update: this DP rank has no pair while others have; pass null_prompt")
            pairs, weights = [PreferencePair(null_prompt(), [self.eos], [self.eos], 0.0, 0.0, "null")], [0.0]
        per_mb = min(self.opts.micro_batch_pairs or len(pairs), len(pairs))
        if grid.pp_layout()[1] > 1 and len(pairs) % per_mb:
            fill = per_mb - len(pairs) % per_mb
            pairs, weights = pairs + [pairs[0]] * fill, weights + [0.0] * fill
        batch = pair_batch(pairs, self.pad, per_mb)
        rows_mb = 2 * per_mb
        ref_lp, _ = token_logprobs(self.reference, batch, rows_per_microbatch=rows_mb)
        ref_seq = ref_lp.sum(-1) if ref_lp is not None else torch.zeros(batch.num_rows)
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss_fn = mdpo_loss_fn(ref_seq, torch.tensor(weights, dtype=torch.float32), self.opts.beta)
        res = forward_backward(self.model, batch, loss_fn, forward_only=False,
                               rows_per_microbatch=rows_mb)  # gradients DP-averaged inside
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        dm = grid.broadcast_from_last_stage(None if res is None else combine_metrics(res.metrics))
        return dict(metrics, **dm, grad_norm=float(grad_norm or 0.0), lr=self.optimizer.param_groups[0]["lr"])
