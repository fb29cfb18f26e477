"""The RL step, reading like the data flow: data -> rollout -> reward -> advantage/difficulty -> loss -> optimizer.

One `RLTrainer.step()`:
  1. draw B prompts; decode + encode their videos (cached per clip and vision-tower version: a tower trained with
     `rl.freeze_vision=false` is re-encoded after each update, and the training pass runs it on the pixel values);
  2. roll out G responses each (`rollout.engine`);
  3. score them (ALGORITHMS §6) and form group advantages (§2);
  4. DA-Aug (§4): difficulty from the reward history; hard samples get a hint from a successful trace, easy ones get
     frame noise; the augmented sample is rolled out again and its group replaces (or joins) the original;
  5. reference and old-policy log-probs (no grad; the old-policy ones come from the training pass when there is one
     update per rollout, rl.reuse_old_logprobs), then `algo.ppo_epochs` optimizer updates of the objective
     `algo.name` selects (`dvr1.rl.losses.objective`: GRPO §2, Reg-GRPO §3) through the vocab-parallel log-prob path,
     one share of the batch loss per microbatch of whole groups (the loss divides by the batch's normalisers);
  6. the §5 metrics; the loss metrics are those of the (last) training pass.

Sections cite docs/ALGORITHMS.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from dvr1.data.sampler import PromptSampler
from dvr1.models.tokenizer import decode_response
from dvr1.parallel import grid
from dvr1.parallel.forward import forward_backward
from dvr1.rl.advantages import group_advantages
from dvr1.rl.augment import make_hint, select_trace
from dvr1.rl.difficulty import DifficultyController, RewardHistory
from dvr1.rl.losses import Normalizers, combine_metrics, objective
from dvr1.rl.rewards import score_response
from dvr1.rollout.base import SamplingParams
from dvr1.train.inputs import PromptTooLong, build_batch, prepare_or_skip, token_logprobs

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One prompt and its G responses: texts, token ids, rewards and their components."""

    prepared: object
    token_ids: list
    texts: list
    scores: list  # per response: {"format", "accuracy", "iou", "total"}

    @property
    def rewards(self) -> torch.Tensor:
        return torch.tensor([s["total"] for s in self.scores])


class RLTrainer:
    """Holds the models and state of the RL stage. `model` is the (DDP-wrapped) policy being trained, `reference` the
    frozen π_ref, `engine` a `RolloutEngine`, `builder` an `InputBuilder`."""

    def __init__(self, cfg, model, optimizer, scheduler, reference, engine, builder, tokenizer, records):
        self.cfg = cfg
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.reference, self.engine, self.builder, self.tok = reference, engine, builder, tokenizer
        self.sampler = PromptSampler(records, cfg.seed + 17, *grid.dp_layout())
        self.prompts_per_rank = grid.per_rank(cfg.rl.prompts_per_step, "rl.prompts_per_step")
        self.history = RewardHistory(cfg.da_aug.window)
        self.controller = DifficultyController(cfg.da_aug, self.history)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 29)
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    # ---- state for checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "history": self.history.state_dict(),
                "noise_gen": self.noise_gen.get_state(), "engine": self.engine.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.sampler.load_state_dict(s["sampler"])
        self.history.load_state_dict(s["history"])
        self.noise_gen.set_state(s["noise_gen"])
        self.engine.load_state_dict(s["engine"])
        self.engine.sync_weights(self.model)  # the resumed policy, not the checkpoint the engine started from

    # ---- stages --------------------------------------------------------------------------------------------
    def sampling(self, n=None) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=n or r.group_size, temperature=r.temperature, top_p=r.top_p,
                              max_new_tokens=r.max_new_tokens, stop_token_ids=(self.eos,))

    def rollout(self, prepared: list, kind: str, n=None) -> list[Group]:
        outs = self.engine.generate([p.request for p in prepared], self.sampling(n), desc=f"rollout[{kind}]")
        groups = []
        for p, o in zip(prepared, outs):
            texts = [decode_response(self.tok, ids, (self.eos,)) for ids in o.token_ids]
            r = p.record
            scores = [score_response(t, r.problem_type, r.answer, r.segments, self.cfg.reward) for t in texts]
            groups.append(Group(p, o.token_ids, texts, scores))
        return groups

    def augment(self, groups: list[Group], decisions) -> tuple[list[Group], dict]:
        """DA-Aug (docs/ALGORITHMS.md §4): build and roll out the augmented samples; returns their groups and counters.

        Hard (decrease): hint = partial successful trace (the group's best correct response, else the best of
        `da_aug.answer_traces` responses generated with the answer revealed), no-leak filtered by `make_hint`;
        a sample whose hint comes out empty, or whose hinted prompt exceeds `model.max_prompt_tokens`, is not
        augmented (counted in `n_hint_failed`).
        Easy (increase): frame noise sigma0 * perturb_level (+ optional frame masking) on the normalised video.
        """
        a = self.cfg.da_aug
        todo, stats = [], {"n_hint": 0, "n_noise": 0, "n_hint_failed": 0, "guide_level": [], "perturb_level": []}
        for g, d in zip(groups, decisions):
            rec = g.prepared.record
            if d.direction == "decrease":
                trace = select_trace(g.texts, [s["accuracy"] for s in g.scores], [s["total"] for s in g.scores])
                if trace is None and a.answer_traces > 0:
                    rev = prepare_or_skip(self.builder, rec, reveal_answer=True)
                    if rev is not None:
                        rg = self.rollout([rev], "reveal", n=a.answer_traces)[0]
                        trace = select_trace(rg.texts, [s["accuracy"] for s in rg.scores],
                                             [s["total"] for s in rg.scores])
                hint = make_hint(trace, d.guide_level, a.max_level, rec.answer, rec.options) if trace else ""
                try:
                    hinted = self.builder.prepare(rec, hint=hint) if hint else None
                except PromptTooLong:  # the hint does not fit model.max_prompt_tokens: not augmented
                    hinted = None
                if hinted is None:
                    stats["n_hint_failed"] += 1
                    continue
                todo.append(hinted)
                stats["n_hint"] += 1
                stats["guide_level"].append(d.guide_level)
            elif d.direction == "increase":
                video = self.builder.noisy_video(rec, a.sigma0, d.perturb_level, a.mask_fraction, self.noise_gen)
                todo.append(self.builder.prepare(rec, video=video))
                stats["n_noise"] += 1
                stats["perturb_level"].append(d.perturb_level)
        return (self.rollout(todo, "aug") if todo else []), stats

    def assess_difficulty(self, group_means: list[float]):
        """DA-Aug decisions for this rank's groups (None with DA-Aug off), from the run's reward history.

        The history receives the group means of the whole global batch (gathered over DP, in the order a DP=1 run
        draws the prompts), so every rank holds the run's history and takes the decisions a DP=1 run would take on
        the same prompts (docs/ALGORITHMS.md §4). Collective over the DP group."""
        run_means = PromptSampler.global_order(grid.dp_all_gather_object(group_means))
        if not self.cfg.da_aug.enabled:
            self.history.push(run_means)
            return None
        return self.controller.assess(group_means, history_values=run_means)

    def merge_augmented(self, groups: list[Group], aug_groups: list[Group]) -> list[Group]:
        """The step's training groups (`da_aug.mode`): "replace" puts each augmented group in its original's place
        (same record), "append" trains on the originals followed by the augmented groups."""
        if self.cfg.da_aug.mode == "replace":
            by_id = {id(g.prepared.record): g for g in aug_groups}
            return [by_id.get(id(g.prepared.record), g) for g in groups]
        return groups + aug_groups

    def step(self) -> dict:
        """One RL step over this DP rank's B/dp prompts; returns the ALGORITHMS §5 metrics of this rank (the loop
        averages them over DP). Gradients are averaged over DP by megatron DDP, so each rank's loss is the mean over
        its own groups (equal weight per rank)."""
        cfg, t = self.cfg, {}
        B, G = self.prompts_per_rank, cfg.rollout.group_size

        t0 = time.perf_counter()
        prepared = []
        while len(prepared) < B:
            p = prepare_or_skip(self.builder, self.sampler.next(), self.sampler, strict=cfg.data.strict)
            if p is not None:
                prepared.append(p)
        t["decode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        groups = orig_groups = self.rollout(prepared, "policy")
        orig_stats = group_advantages(torch.stack([g.rewards for g in groups]), cfg.algo.adv_eps, cfg.algo.ddof)
        aug_stats = {"n_hint": 0, "n_noise": 0, "n_hint_failed": 0, "guide_level": [], "perturb_level": []}
        decisions = self.assess_difficulty(orig_stats.mean.tolist())
        if decisions is not None:
            aug_groups, aug_stats = self.augment(groups, decisions)
            groups = self.merge_augmented(groups, aug_groups)
        t["rollout"] = time.perf_counter() - t0
        self.engine.sleep()  # vLLM on GPUs frees its memory while the trainer runs (no-op otherwise)

        rewards = torch.stack([g.rewards for g in groups])  # [B', G]
        stats = group_advantages(rewards, cfg.algo.adv_eps, cfg.algo.ddof)
        batch = build_batch([(g.prepared, ids) for g in groups for ids in g.token_ids], self.pad)
        Bp, T = len(groups), batch.resp_mask.shape[1]
        mask = batch.resp_mask.view(Bp, G, T)

        # old-policy and reference log-probs: on the last PP stage only (None elsewhere). On-policy (one update per
        # rollout, rl.reuse_old_logprobs) the old-policy log-probs come from the training pass itself, detached.
        rows_mb = G * cfg.rl.micro_batch_groups
        on_policy = cfg.algo.ppo_epochs == 1 and cfg.rl.reuse_old_logprobs
        t0 = time.perf_counter()
        lp_kw = dict(rows_per_microbatch=rows_mb, fused=cfg.model.fused_logprobs, chunk_size=cfg.model.logprob_chunk)
        old_logp, entropy = (None, None) if on_policy else token_logprobs(self.model, batch, compute_entropy=True,
                                                                           **lp_kw)
        ref_logp = token_logprobs(self.reference, batch, **lp_kw)[0] if cfg.algo.beta > 0 else None
        t["logprobs"] = time.perf_counter() - t0
        shaped = lambda x: None if x is None else x.view(Bp, G, T)  # noqa: E731
        norm = Normalizers.of(mask, stats.valid)  # this rank's batch: each microbatch's loss is its share

        def loss_fn(logp, _entropy, rows):
            g = slice(rows.start // G, rows.stop // G)
            old = logp.detach().view(-1, G, T) if on_policy else shaped(old_logp)[g]
            return objective(cfg.algo, logp.view(-1, G, T), old, None if ref_logp is None else shaped(ref_logp)[g],
                             stats.advantages[g], mask[g], stats.valid[g], norm)

        t0 = time.perf_counter()
        self.model.train()
        for _ in range(cfg.algo.ppo_epochs):
            self.model.zero_grad_buffer()
            self.optimizer.zero_grad()
            res = forward_backward(self.model, batch, loss_fn, forward_only=False, compute_entropy=on_policy,
                                   **lp_kw)  # grads DP-reduced inside
            ok, grad_norm, _ = self.optimizer.step()
            self.scheduler.step(1)
        t["train"] = time.perf_counter() - t0
        if on_policy and res is not None:
            entropy = res.entropy
        t["weight_sync"] = self.engine.sync_weights(self.model)
        last = None  # metrics only the last PP stage can compute
        if res is not None:  # the batch loss and its metrics, from the (last) training pass
            lm = combine_metrics(res.metrics)
            last = {"loss": float(res.loss),
                    "entropy": float((entropy * batch.resp_mask).sum() / max(float(mask.sum()), 1.0)),
                    **{f"rl/{k}" if not k.startswith(("kl", "rho", "clip", "regression")) else k: v
                       for k, v in lm.items()}}
        last = grid.broadcast_from_last_stage(last)

        n_tok = float(mask.sum())
        m = {
            **last,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "reward/mean": float(orig_stats.mean.mean()),
            "reward/std": float(orig_stats.std.mean()),
            "vanishing_advantage_ratio": orig_stats.vanishing_ratio,
            "vanishing_advantage_ratio_final": stats.vanishing_ratio,
            "reward_final/mean": float(stats.mean.mean()),
            "response_length": n_tok / (Bp * G),
            "aug/frac_down": aug_stats["n_hint"] / B,
            "aug/frac_up": aug_stats["n_noise"] / B,
            "aug/hint_failed": aug_stats["n_hint_failed"],
            "aug/guide_level": sum(aug_stats["guide_level"]) / max(len(aug_stats["guide_level"]), 1),
            "aug/perturb_level": sum(aug_stats["perturb_level"]) / max(len(aug_stats["perturb_level"]), 1),
            "reward_history_mean": self.history.mean() if len(self.history) else float("nan"),
        }
        for comp in ("format", "accuracy", "iou"):
            m[f"reward/{comp}"] = sum(s[comp] for g in orig_groups for s in g.scores) / (B * G)
        total = sum(t.values())
        m.update({f"time/{k}": v for k, v in t.items()})
        m["time/step"] = total
        m["tokens_per_s"] = n_tok / max(t["rollout"], 1e-9)
        return m
