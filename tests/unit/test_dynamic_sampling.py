"""DAPO's dynamic sampling (docs/ALGORITHMS.md §9; dvr1/rl/dynamic_sampling.py) and T-GRPO's shuffled rollouts in
RLTrainer, with a scripted rollout engine: the plan against hand-worked flags, kept groups never all-equal, the round
bound honoured and logged (no crash), resume-exact sampler/engine state, and the shuffled responses kept out of the
training batch."""

import logging
import types

import pytest
import torch

from dvr1.config import load_config
from dvr1.data.sampler import PromptSampler
from dvr1.rl.difficulty import DifficultyController, RewardHistory
from dvr1.rl.dynamic_sampling import group_varies, need_more, plan_selection
from dvr1.rollout.base import RolloutOutput
from dvr1.train import rl as rl_mod
from dvr1.train.rl import RLTrainer

EOS = 0
WRONG = "<think>It moves.</think><answer>A</answer>"
RIGHT = "<think>It slides left.</think><answer>B</answer>"
RIGHT_LONG = "<think>It slides left, slowly, all the way.</think><answer>B</answer>"


# ---- the pure plan -----------------------------------------------------------------------------------------------
def test_group_varies():
    assert not group_varies([1.0, 1.0, 1.0]) and not group_varies([0.0] * 4) and not group_varies([2.0])
    assert group_varies([1.0, 0.0, 1.0]) and group_varies([1.3, 1.0])
    assert not group_varies([1.0, 1.0 + 1e-12])  # round-off is not variance (the §5 tolerance)


def test_plan_takes_the_first_kept_groups_in_draw_order():
    F, T = False, True
    plan = plan_selection([[F, T, F, T], [T, F, T, T]], need=4)
    assert plan.selected == [(0, 1), (0, 3), (1, 0), (1, 2)]
    assert (plan.kept, plan.used, plan.surplus, plan.dropped, plan.topped_up, plan.rounds, plan.bound_hit) == \
        (5, 4, 1, 3, 0, 2, False)


def test_plan_at_the_bound_trains_on_what_was_kept():
    F, T = False, True
    flags = [[F, T, F, F], [T, F, F, T]]  # 3 kept of need 4
    p1 = plan_selection(flags, need=4, dp=1)
    assert p1.selected == [(0, 1), (1, 0), (1, 3)] and p1.bound_hit and p1.topped_up == 0 and p1.used == 3
    p2 = plan_selection(flags, need=4, dp=2)  # topped up to a multiple of dp with the earliest all-equal group
    assert p2.selected == [(0, 0), (0, 1), (1, 0), (1, 3)] and p2.topped_up == 1 and p2.bound_hit
    p0 = plan_selection([[F, F], [F, F]], need=2, dp=1)  # nothing kept: one all-equal group, not zero
    assert p0.selected == [(0, 0)] and p0.topped_up == 1 and p0.kept == 0 and p0.dropped == 4
    with pytest.raises(ValueError):
        plan_selection([[T]], need=2, dp=2)


def test_need_more_honours_the_round_bound():
    assert need_more([[False, True]], need=2, max_rounds=3)
    assert not need_more([[False, True], [True, False]], need=2, max_rounds=3)  # full
    assert not need_more([[False, False]] * 3, need=2, max_rounds=3)  # bound
    assert not need_more([[False]], need=1, max_rounds=1)


# ---- the trainer, with a scripted engine ---------------------------------------------------------------------------
class Tok:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


class Builder:
    """`prepare` puts the record and the frame permutation into the request."""

    def __init__(self):
        self.calls = []

    def prepare(self, record, hint=None, reveal_answer=False, video=None, shuffle=None):
        order = None if shuffle is None else torch.randperm(8, generator=shuffle).tolist()
        self.calls.append((record.id, order))
        req = {"record": record, "shuffled": order is not None}
        return types.SimpleNamespace(record=record, request=req, frame_order=order)


class Engine:
    """Per record kind: "easy" records always RIGHT, "hard" always WRONG, "mixed" a seeded coin per response;
    on shuffled frames always WRONG. RNG state in state_dict, as the real engines."""

    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = []

    def generate(self, requests, sp, desc=""):
        self.calls.append((len(requests), sp.n, desc))
        out = []
        for r in requests:
            kind = r["record"].kind
            coins = torch.rand(sp.n, generator=self.gen).tolist()
            texts = [WRONG if r["shuffled"] or kind == "hard" else RIGHT if kind == "easy" else
                     (RIGHT if i % 2 else RIGHT_LONG) if kind == "easy_long" else
                     (RIGHT if c < 0.5 else WRONG) for i, c in enumerate(coins)]
            out.append(RolloutOutput([[ord(ch) for ch in t] + [EOS] for t in texts],
                                     [[0.0] * (len(t) + 1) for t in texts]))
        return out

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])

    def sync_weights(self, model):
        return 0.0


def _records(kinds):
    return [types.SimpleNamespace(id=f"r{i}", kind=k, task="motion_direction", problem_type="multiple_choice",
                                  answer="B", segments=None, options=["up", "left", "down", "right"],
                                  video=f"/videos/r{i}.webm", where=None)
            for i, k in enumerate(kinds)]


def _trainer(records, overrides=()):
    t = object.__new__(RLTrainer)
    t.cfg = load_config(None, ["rollout.group_size=4", "rl.prompts_per_step=2", "rl.dynamic_sampling=true",
                               "da_aug.enabled=false", *overrides])
    t.engine, t.builder, t.tok, t.eos = Engine(), Builder(), Tok(), EOS
    t.sampler = PromptSampler(records, seed=5)
    t.prompts_per_rank = 2
    t.history = RewardHistory(t.cfg.da_aug.window)
    t.controller = DifficultyController(t.cfg.da_aug, t.history)
    t.noise_gen = torch.Generator().manual_seed(1)
    t.shuffle_gen = torch.Generator().manual_seed(2)
    t.rollouts = {}
    return t


def _key(groups):
    return [(g.prepared.record.id, g.texts) for g in groups]


def test_kept_groups_are_never_all_equal_and_extra_rounds_are_counted():
    recs = _records(["easy", "hard", "mixed", "easy", "hard", "mixed", "mixed", "hard"])
    t = _trainer(recs, ["rl.dynamic_sampling_max_rounds=10"])
    for _ in range(4):
        t.engine.calls.clear()
        groups, st = t.policy_groups()
        assert len(groups) == 2 and not st["dyn/bound_hit"]
        assert all(group_varies([s["accuracy"] for s in g.scores]) for g in groups)
        assert all(g.prepared.record.kind == "mixed" for g in groups)
        assert st["dyn/rounds"] == len(t.engine.calls) and st["dyn/extra_rounds"] == st["dyn/rounds"] - 1
        assert st["dyn/groups_drawn"] == 2 * st["dyn/rounds"]
        assert st["dyn/groups_dropped"] + st["dyn/groups_kept"] + st["dyn/groups_surplus"] == st["dyn/groups_drawn"]
        assert st["dyn/extra_rollouts"] == (st["dyn/rounds"] - 1) * 2 * 4
    assert sum(n for n, _, _ in t.engine.calls) == 2 * st["dyn/rounds"]


def test_round_bound_is_honoured_and_logged_without_a_crash(caplog):
    t = _trainer(_records(["easy", "hard"] * 4), ["rl.dynamic_sampling_max_rounds=3"])
    with caplog.at_level(logging.WARNING, logger="dvr1.train.rl"):
        groups, st = t.policy_groups()
    assert len(t.engine.calls) == 3  # exactly the bound, the first round included
    assert st["dyn/rounds"] == 3 and st["dyn/bound_hit"] == 1.0 and st["dyn/groups_dropped"] == 6
    assert st["dyn/groups_kept"] == 0 and st["dyn/topped_up"] == 1 and len(groups) == 1
    assert "0 of 2 groups kept after 3 rounds" in caplog.text


def test_metric_total_keeps_groups_whose_accuracy_is_equal():
    """All responses correct, two lengths: the overlong punishment makes the totals differ, the accuracies do not."""
    short, long_ = len(RIGHT) + 1, len(RIGHT_LONG) + 1  # tokens, the stop token included
    over = ["rl.dynamic_sampling_max_rounds=2", "reward.overlong=true", f"reward.overlong_max={long_}",
            f"reward.overlong_cache={long_ - short + 4}"]
    recs = _records(["easy_long"] * 4)
    groups, st = _trainer(recs, ["rl.dynamic_sampling_metric=total", *over]).policy_groups()
    assert st["dyn/rounds"] == 1 and st["dyn/groups_kept"] == 2 and not st["dyn/bound_hit"]
    pens = sorted({s["overlong"] for g in groups for s in g.scores})
    assert pens == [-1.0, ((long_ - (long_ - short + 4)) - short) / (long_ - short + 4)]  # Eq. 13 by hand
    assert pens[1] == -4 / (long_ - short + 4)
    _, st = _trainer(recs, ["rl.dynamic_sampling_metric=accuracy", *over]).policy_groups()
    assert st["dyn/rounds"] == 2 and st["dyn/bound_hit"] == 1.0 and st["dyn/groups_kept"] == 0


def test_resumed_trainer_draws_exactly_what_an_uninterrupted_one_draws():
    recs = _records(["easy", "hard", "mixed", "hard", "mixed", "easy", "hard", "mixed", "easy"])
    over = ["rl.dynamic_sampling_max_rounds=4"]
    ref = _trainer(recs, over)
    want = [_key(ref.policy_groups()[0]) for _ in range(5)]
    a = _trainer(recs, over)
    got = [_key(a.policy_groups()[0]) for _ in range(2)]
    state = a.state_dict()
    b = _trainer(recs, over)  # a new process: fresh sampler, engine and generators
    b.model = None
    b.load_state_dict(state)
    got += [_key(b.policy_groups()[0]) for _ in range(3)]
    assert got == want
    assert len({r for step in want for r, _ in step}) > 2  # the run went through more than one epoch's prompts


def test_shuffled_responses_are_scored_but_never_enter_the_training_batch(monkeypatch):
    recs = _records(["easy", "mixed", "easy", "mixed"])
    t = _trainer(recs, ["rl.dynamic_sampling=false", "reward.temporal_contrast=true", "rollout.group_size=4"])
    t.pad = 1
    seen = {}

    class Stop(Exception):
        pass

    def build_batch(items, pad):
        seen["items"] = items
        raise Stop

    monkeypatch.setattr(rl_mod, "build_batch", build_batch)
    t.engine.sleep = lambda: None
    with pytest.raises(Stop):
        t.step()
    descs = [(n, k, d) for n, k, d in t.engine.calls]
    assert descs == [(2, 4, "rollout[policy]"), (2, 2, "rollout[shuffled]")]  # G/2 on the shuffled frames
    items = seen["items"]
    assert len(items) == 2 * 4  # B groups x G ordered responses, nothing else
    assert all(p.frame_order is None and not p.request["shuffled"] for p, _ in items)
    shuffled = [c for c in t.builder.calls if c[1] is not None]
    assert len(shuffled) == 2 and all(sorted(o) == list(range(8)) for _, o in shuffled)
    assert any(o != list(range(8)) for _, o in shuffled)


def test_temporal_bonus_reaches_the_total_with_the_accuracy_weight():
    recs = _records(["easy", "hard"])
    t = _trainer(recs, ["rl.dynamic_sampling=false", "reward.temporal_contrast=true", "reward.accuracy=2.0"])
    groups = t.rollout(t.draw(2), "policy")
    before = [[s["total"] for s in g.scores] for g in groups]
    st = t.temporal_contrast(groups)
    for g, b in zip(groups, before):
        easy = g.prepared.record.kind == "easy"  # p = 1 >= 0.8 * 0 (shuffled always wrong): +0.3 each
        assert [s["temporal"] for s in g.scores] == [0.3 if easy else 0.0] * 4
        assert [s["total"] for s in g.scores] == [x + (2.0 * 0.3 if easy else 0.0) for x in b]
        assert all(s["accuracy"] in (0.0, 1.0) for s in g.scores)  # the raw accuracy is kept
    assert st["temporal/rule_frac"] == 1.0 and st["temporal/bonus_frac"] == 0.5
    assert st["temporal/p"] == 0.5 and st["temporal/p_shuffled"] == 0.0
    assert t.rollouts == {"policy": 8, "shuffled": 4}
