"""The RL step, reading like the data flow: data -> rollout -> reward -> advantage/difficulty -> loss -> optimizer.

One `RLTrainer.step()`:
  1. draw B prompts; decode + encode their videos (cached per clip and vision-tower version: a tower trained with
     `rl.freeze_vision=false` is re-encoded after each update, and the training pass runs it on the pixel values);
  2. roll out G responses each (`rollout.engine`) and score them (ALGORITHMS §6; plus DAPO's soft overlong punishment
     with reward.overlong, §9); with rl.dynamic_sampling (DAPO, §9) groups whose metric is equal over the group are
     dropped and further rounds of B prompts are drawn, rolled out and scored until B groups are kept (or the round
     bound is hit);
  3. with reward.temporal_contrast (T-GRPO, §9) G/2 more responses per kept group on its shuffled frames, only
     scored, and the +alpha bonus on the correct ordered responses; then group advantages (§2; Dr. GRPO's without σ, §9.1);
  4. DA-Aug (§4), on the kept groups and their transformed rewards: difficulty from the reward history; hard samples get a hint from a successful trace, easy ones get
     frame noise; the augmented sample is rolled out again and its group replaces (or joins) the original;
  5. reference and old-policy log-probs (no grad; the old-policy ones come from the training pass when there is one
     update per rollout, rl.reuse_old_logprobs), then `algo.ppo_epochs` optimizer updates of the objective
     `algo.name` selects (`dvr1.rl.losses.objective`: GRPO §2, Reg-GRPO §3, the baselines of §9) through the
     vocab-parallel log-prob path, one share of the batch loss per microbatch of whole groups (the loss divides by
     the batch's normalisers);
  6. the §5 metrics; the loss metrics are those of the (last) training pass.

With rollout.offload_trainer_state the grads and optimizer state (and under vLLM the trainable weights) are released
to host memory (`dvr1.train.offload`) from the end of one update, through the refit and the rollout phase, to the
next step's old-policy log-probs.

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
from dvr1.config import overlong_max
from dvr1.rl.advantages import algo_advantages
from dvr1.rl.augment import make_hint, select_trace
from dvr1.rl.difficulty import DifficultyController, RewardHistory
from dvr1.rl.dynamic_sampling import group_varies, need_more, plan_selection
from dvr1.rl.losses import Normalizers, combine_metrics, objective, rebel_pairs, setting
from dvr1.rl.rewards import overlong_penalty, score_response
from dvr1.rl.temporal import shuffled_group_size, temporal_bonus
from dvr1.rollout.base import SamplingParams
from dvr1.train.inputs import PromptTooLong, build_batch, prepare_or_skip, token_logprobs
from dvr1.train.offload import offload, onload

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One prompt and its G responses: texts, token ids, rewards and their components."""

    prepared: object
    token_ids: list
    texts: list
    scores: list  # per response: {"format", "accuracy", "iou", "total"} (+ "overlong", "temporal" when enabled)

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
        # T-GRPO's frame permutations: one stream per DP rank (its TP/PP ranks draw the same), checkpointed
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 31 + 1000 * grid.dp_layout()[0])
        self.rollouts: dict[str, int] = {}  # this step's responses generated on this rank, by rollout kind
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.steps_done = 0  # RL steps finished (seeds REBEL's pairs, docs/ALGORITHMS.md §9.7)
        # a mixture of problem types (docs/ALGORITHMS.md §10.1) logs each type's mean reward (every rank holds all
        # records, so all take the same decision)
        self.mixed_types = len({r.problem_type for r in records}) > 1

    # ---- state for checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "history": self.history.state_dict(),
                "noise_gen": self.noise_gen.get_state(), "shuffle_gen": self.shuffle_gen.get_state(),
                "engine": self.engine.state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, s: dict) -> None:
        self.sampler.load_state_dict(s["sampler"])
        self.history.load_state_dict(s["history"])
        self.noise_gen.set_state(s["noise_gen"])
        if "shuffle_gen" in s:  # absent in checkpoints written before T-GRPO existed
            self.shuffle_gen.set_state(s["shuffle_gen"])
        self.steps_done = int(s.get("steps_done", 0))  # absent in checkpoints written before REBEL
        self.engine.load_state_dict(s["engine"])
        self.engine.sync_weights(self.model)  # the resumed policy, not the checkpoint the engine started from

    # ---- stages --------------------------------------------------------------------------------------------
    def sampling(self, n=None) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=n or r.group_size, temperature=r.temperature, top_p=r.top_p,
                              max_new_tokens=r.max_new_tokens, stop_token_ids=(self.eos,))

    def rollout(self, prepared: list, kind: str, n=None) -> list[Group]:
        """Generate `n` (default G) responses per prompt and score them (ALGORITHMS §6); with reward.overlong the soft
        overlong punishment of each response's token count is added to its total (§9, `overlong_penalty`)."""
        sp = self.sampling(n)
        outs = self.engine.generate([p.request for p in prepared], sp, desc=f"rollout[{kind}]")
        if hasattr(self, "rollouts"):
            self.rollouts[kind] = self.rollouts.get(kind, 0) + len(prepared) * sp.n
        rw = self.cfg.reward
        groups = []
        for p, o in zip(prepared, outs):
            texts = [decode_response(self.tok, ids, (self.eos,)) for ids in o.token_ids]
            r = p.record
            scores = [score_response(t, r.problem_type, r.answer, r.segments, rw) for t in texts]
            if rw.overlong:
                for s, ids in zip(scores, o.token_ids):
                    s["overlong"] = overlong_penalty(len(ids), overlong_max(self.cfg), rw.overlong_cache)
                    s["total"] += s["overlong"]
            groups.append(Group(p, o.token_ids, texts, scores))
        return groups

    def draw(self, n: int) -> list:
        """The next `n` usable prompts of this rank's sampler, prepared (unreadable / over-long records skipped)."""
        prepared = []
        while len(prepared) < n:
            p = prepare_or_skip(self.builder, self.sampler.next(), self.sampler, strict=self.cfg.data.strict)
            if p is not None:
                prepared.append(p)
        return prepared

    def policy_groups(self) -> tuple[list[Group], dict]:
        """This rank's groups of the step, and the dynamic-sampling counters (empty with rl.dynamic_sampling off).

        Off: B/dp prompts drawn and rolled out. On (DAPO, docs/ALGORITHMS.md §9; `dvr1.rl.dynamic_sampling`): rounds
        of B/dp prompts per rank; after each, every rank's keep flags (`group_varies` of rl.dynamic_sampling_metric)
        are gathered over DP in the DP=1 draw order, so every rank takes the same decision to go on
        (`need_more`) and computes the same `plan_selection`; its global list of training groups is dealt out so that
        rank r trains on groups r, r + dp, ... (a DP=1 run trains on all, in the same order). A group rolled out on
        another rank travels as (record, token ids, texts, scores) and is prepared again here (the clean clip, the
        same prompt). Collective over the DP group when on. The counters are global (equal on every rank)."""
        cfg = self.cfg
        B = self.prompts_per_rank
        if not cfg.rl.dynamic_sampling:
            return self.rollout(self.draw(B), "policy"), {}
        dp_rank, dp = grid.dp_layout()
        metric, rounds, flags = cfg.rl.dynamic_sampling_metric, [], []
        while not flags or need_more(flags, cfg.rl.prompts_per_step, cfg.rl.dynamic_sampling_max_rounds):
            groups = self.rollout(self.draw(B), "policy")
            rounds.append(groups)
            local = [group_varies([s[metric] for s in g.scores]) for g in groups]
            flags.append(PromptSampler.global_order(grid.dp_all_gather_object(local)))
        plan = plan_selection(flags, cfg.rl.prompts_per_step, dp)
        owned = lambda j: j % dp == dp_rank  # noqa: E731  (global position j of a round: rank j % dp, index j // dp)
        if dp > 1:
            send = {n: (g.prepared.record, g.token_ids, g.texts, g.scores)
                    for n, (k, j) in enumerate(plan.selected) if owned(j) and n % dp != dp_rank
                    for g in [rounds[k][j // dp]]}
            received = {n: x for part in grid.dp_all_gather_object(send) for n, x in part.items()}
        out = []
        for n, (k, j) in enumerate(plan.selected):
            if n % dp != dp_rank:
                continue
            if owned(j):
                out.append(rounds[k][j // dp])
            else:
                record, ids, texts, scores = received[n]
                out.append(Group(self.builder.prepare(record), ids, texts, scores))
        drawn = [g for groups in rounds for g in groups]
        G = cfg.rollout.group_size
        if plan.bound_hit:
            log.warning("rl.dynamic_sampling: %d of %d groups kept after %d rounds (rl.dynamic_sampling_max_rounds); "
                        "training on them%s", plan.kept, cfg.rl.prompts_per_step, plan.rounds,
                        f" and {plan.topped_up} all-equal groups" if plan.topped_up else "")
        stats = {"dyn/rounds": plan.rounds, "dyn/extra_rounds": plan.rounds - 1,
                 "dyn/groups_drawn": len(flags) * cfg.rl.prompts_per_step, "dyn/groups_dropped": plan.dropped,
                 "dyn/groups_kept": plan.used, "dyn/groups_surplus": plan.surplus, "dyn/topped_up": plan.topped_up,
                 "dyn/bound_hit": float(plan.bound_hit),
                 "dyn/extra_rollouts": (plan.rounds - 1) * cfg.rl.prompts_per_step * G,
                 # a per-rank mean over this rank's drawn groups; the DP average of equal counts is the global mean
                 "dyn/reward_mean_drawn": sum(s["total"] for g in drawn for s in g.scores) / (len(drawn) * G)}
        return out, stats

    def temporal_contrast(self, groups: list[Group]) -> dict:
        """T-GRPO (docs/ALGORITHMS.md §9; `dvr1.rl.temporal`): G/2 responses per group on one permutation of its
        frames (`InputBuilder.prepare(shuffle=...)`, drawn from the checkpointed `shuffle_gen`), scored only: they
        are not returned and never enter the training batch (no gradient through them). Where p >= mu * p_shuffled
        every ordered response with accuracy > 0.1 gets +alpha: ``score["temporal"]`` = the bonus and ``total`` +=
        ``reward.accuracy * bonus`` (in place; the "accuracy" component itself stays the raw score). Groups without
        a video are left alone. Returns this rank's T-GRPO means."""
        rw = self.cfg.reward
        video = [g for g in groups if getattr(g.prepared.record, "video", None)]
        shuffled = [self.builder.prepare(g.prepared.record, shuffle=self.shuffle_gen) for g in video]
        n = shuffled_group_size(self.cfg.rollout.group_size)
        sgroups = self.rollout(shuffled, "shuffled", n=n) if shuffled else []
        ps, pts, holds, given = [], [], [], []
        for g in groups:
            for s in g.scores:
                s["temporal"] = 0.0
        for g, sg in zip(video, sgroups):
            tb = temporal_bonus([s["accuracy"] for s in g.scores], [s["accuracy"] for s in sg.scores],
                                rw.temporal_mu, rw.temporal_alpha)
            for s, b in zip(g.scores, tb.bonus):
                s["temporal"] = b
                s["total"] += rw.accuracy * b
            ps.append(tb.p), pts.append(tb.p_shuffled), holds.append(tb.holds), given.append(any(tb.bonus))
        mean = lambda x: sum(x) / len(x) if x else 0.0  # noqa: E731
        return {"temporal/p": mean(ps), "temporal/p_shuffled": mean(pts), "temporal/rule_frac": mean(holds),
                "temporal/bonus_frac": mean(given), "temporal/video_frac": len(video) / max(len(groups), 1)}

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

    def reward_by_type(self, groups: list[Group]) -> dict[str, float]:
        """``{"reward/<problem_type>": mean total reward}`` over the responses of the whole global batch's groups of
        each problem type present (gathered over DP, so every rank returns the same values and keys). Collective
        over the DP group."""
        sums: dict[str, list[float]] = {}
        for rank_part in grid.dp_all_gather_object([(g.prepared.record.problem_type, float(g.rewards.sum()),
                                                     len(g.scores)) for g in groups]):
            for pt, total, n in rank_part:
                acc = sums.setdefault(pt, [0.0, 0])
                acc[0] += total
                acc[1] += n
        return {f"reward/{pt}": total / n for pt, (total, n) in sorted(sums.items())}

    def step(self) -> dict:
        """One RL step over this DP rank's B/dp prompts; returns the ALGORITHMS §5 metrics of this rank (the loop
        averages them over DP). Gradients are averaged over DP by megatron DDP, so each rank's loss is the mean over
        its own groups (equal weight per rank)."""
        cfg, t = self.cfg, {}
        G = cfg.rollout.group_size
        self.rollouts = {}
        offloading = cfg.rollout.offload_trainer_state  # grads + optimizer (+ weights under vLLM) off during rollout
        if offloading:
            t["offload"] = offload(self.model, self.optimizer, weights=cfg.rollout.engine == "vllm")

        t0 = time.perf_counter()
        if cfg.rl.dynamic_sampling:  # the draws happen round by round, inside the rollout phase
            t["decode"] = 0.0
            groups, dyn_stats = self.policy_groups()
        else:
            prepared = self.draw(self.prompts_per_rank)
            t["decode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            groups, dyn_stats = self.rollout(prepared, "policy"), {}
        tem_stats = self.temporal_contrast(groups) if cfg.reward.temporal_contrast else {}
        orig_groups = groups
        B = len(orig_groups)  # prompts_per_step / dp, unless dynamic sampling hit its round bound
        orig_stats = algo_advantages(cfg.algo, torch.stack([g.rewards for g in groups]))
        aug_stats = {"n_hint": 0, "n_noise": 0, "n_hint_failed": 0, "guide_level": [], "perturb_level": []}
        decisions = self.assess_difficulty(orig_stats.mean.tolist())
        if decisions is not None:
            aug_groups, aug_stats = self.augment(groups, decisions)
            groups = self.merge_augmented(groups, aug_groups)
        t["rollout"] = time.perf_counter() - t0
        self.engine.sleep()  # vLLM on GPUs frees its memory while the trainer runs (no-op otherwise)
        if offloading:
            t["onload"] = onload(self.optimizer)

        rewards = torch.stack([g.rewards for g in groups])  # [B', G]
        stats = algo_advantages(cfg.algo, rewards)
        batch = build_batch([(g.prepared, ids) for g in groups for ids in g.token_ids], self.pad)
        Bp, T = len(groups), batch.resp_mask.shape[1]
        mask = batch.resp_mask.view(Bp, G, T)

        # old-policy and reference log-probs: on the last PP stage only (None elsewhere). On-policy (one update per
        # rollout, rl.reuse_old_logprobs) the old-policy log-probs come from the training pass itself, detached.
        rows_mb = G * cfg.rl.micro_batch_groups
        on_policy = cfg.algo.ppo_epochs == 1 and cfg.rl.reuse_old_logprobs
        t0 = time.perf_counter()
        lp_kw = dict(rows_per_microbatch=rows_mb, fused=cfg.model.fused_logprobs, chunk_size=cfg.model.logprob_chunk,
                     packing=cfg.model.packing)
        old_logp, entropy = (None, None) if on_policy else token_logprobs(self.model, batch, compute_entropy=True,
                                                                           **lp_kw)
        ref_logp = token_logprobs(self.reference, batch, **lp_kw)[0] if setting(cfg.algo, "beta") > 0 else None
        t["logprobs"] = time.perf_counter() - t0
        shaped = lambda x: None if x is None else x.view(Bp, G, T)  # noqa: E731
        norm = Normalizers.of(mask, stats.valid)  # this rank's batch: each microbatch's loss is its share
        pairs = None
        if cfg.algo.name == "rebel":  # each group's pairs from (seed, step, its position in the global batch)
            dp_rank, dp = grid.dp_layout()
            pairs = rebel_pairs([i * dp + dp_rank for i in range(Bp)], G, cfg.seed, self.steps_done)

        def loss_fn(logp, _entropy, rows):
            g = slice(rows.start // G, rows.stop // G)
            dev = logp.device  # the policy's (CUDA on GPUs); rewards and advantages are computed on the CPU
            old = logp.detach().view(-1, G, T) if on_policy else shaped(old_logp)[g].to(dev)
            return objective(cfg.algo, logp.view(-1, G, T), old,
                             None if ref_logp is None else shaped(ref_logp)[g].to(dev),
                             stats.advantages[g].to(dev), mask[g].to(dev), stats.valid[g].to(dev), norm,
                             rewards=rewards[g].to(dev), pairs=None if pairs is None else pairs[g].to(dev),
                             max_new_tokens=cfg.rollout.max_new_tokens)

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
        if offloading:  # grads and optimizer state are not needed until the next update: off before vLLM wakes
            t["offload"] += offload(self.model, self.optimizer)
        if on_policy and res is not None:
            entropy = res.entropy
        t["weight_sync"] = self.engine.sync_weights(self.model)
        self.steps_done += 1
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
        comps = ("format", "accuracy", "iou") + (("overlong",) if cfg.reward.overlong else ()) + \
            (("temporal",) if cfg.reward.temporal_contrast else ())
        for comp in comps:
            m[f"reward/{comp}"] = sum(s[comp] for g in orig_groups for s in g.scores) / (B * G)
        if self.mixed_types:
            m.update(self.reward_by_type(orig_groups))
        m.update(dyn_stats)
        m.update(tem_stats)
        # responses generated in the step, over all DP ranks (x dp: the loop averages the metrics over DP)
        dp = grid.dp_layout()[1]
        for kind in ("policy", "shuffled", "reveal", "aug"):
            m[f"rollouts/{kind}"] = self.rollouts.get(kind, 0) * dp
        m["rollouts/total"] = sum(self.rollouts.values()) * dp
        total = sum(t.values())
        m.update({f"time/{k}": v for k, v in t.items()})
        m["time/step"] = total
        m["tokens_per_s"] = n_tok / max(t["rollout"], 1e-9)
        return m
