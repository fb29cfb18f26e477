"""RLTrainer.augment and the merge of augmented groups (docs/ALGORITHMS.md §4), with a scripted rollout engine.

The engine answers each request from what the builder put into it (hint, revealed answer, noisy video), so the test
sees exactly which samples were built, with which settings, and what the trainer did with their rollouts."""

import types

import pytest
import torch

from dvr1.config import load_config
from dvr1.rl.augment import make_hint
from dvr1.rl.difficulty import Decision
from dvr1.rollout.base import RolloutOutput
from dvr1.train.rl import Group, RLTrainer

EOS = 0
WRONG = "<think>It moves. Hard to say.</think><answer>A</answer>"
RIGHT = "<think>The cup starts on the right. It slides to the left edge. So B.</think><answer>B</answer>"


class Tok:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


class Builder:
    """`prepare` records its arguments in the request; `noisy_video` records its call."""

    def __init__(self):
        self.calls = []

    def prepare(self, record, hint=None, reveal_answer=False, video=None):
        self.calls.append(("prepare", record.id, hint, reveal_answer, video))
        return types.SimpleNamespace(record=record, request={"hint": hint, "reveal": reveal_answer, "video": video})

    def noisy_video(self, record, sigma0, level, mask_fraction, generator):
        self.calls.append(("noisy_video", record.id, sigma0, level, mask_fraction))
        return torch.full((1,), float(level), dtype=torch.float64)


class Engine:
    """Wrong answers unless the answer is revealed (then `RIGHT`, in the last position); logs (n, desc)."""

    def __init__(self, reveal_right=True):
        self.calls, self.reveal_right = [], reveal_right

    def generate(self, requests, sp, desc=""):
        self.calls.append((len(requests), sp.n, desc))
        out = []
        for r in requests:
            texts = [WRONG] * sp.n
            if r["reveal"] and self.reveal_right:
                texts[-1] = RIGHT
            out.append(RolloutOutput([[ord(c) for c in t] + [EOS] for t in texts], [[0.0] * (len(t) + 1)
                                                                                       for t in texts]))
        return out


def _record(i):
    return types.SimpleNamespace(id=f"r{i}", task="motion_direction", problem_type="multiple_choice", answer="B",
                                 segment=None, segments=None, options=["up", "left", "down", "right"])


def _trainer(overrides=(), reveal_right=True):
    t = object.__new__(RLTrainer)
    t.cfg = load_config(None, ["rollout.group_size=4", *overrides])
    t.engine, t.builder, t.tok, t.eos = Engine(reveal_right), Builder(), Tok(), EOS
    t.noise_gen = torch.Generator().manual_seed(0)
    return t


def _groups(t, n):
    return t.rollout([t.builder.prepare(_record(i)) for i in range(n)], "policy")


def test_hard_sample_gets_a_hint_from_a_revealed_answer_trace():
    t = _trainer(["da_aug.answer_traces=3", "da_aug.max_level=3"])
    groups = _groups(t, 1)
    assert all(s["accuracy"] == 0.0 for s in groups[0].scores)  # no correct response: the reveal path must run
    t.builder.calls.clear(), t.engine.calls.clear()
    aug, stats = t.augment(groups, [Decision("decrease", 0.9, 2, 0.0)])
    want_hint = make_hint(RIGHT, 2, 3, "B", _record(0).options)
    assert want_hint  # a non-empty, answer-free part of the trace
    assert t.builder.calls == [("prepare", "r0", None, True, None), ("prepare", "r0", want_hint, False, None)]
    assert t.engine.calls == [(1, 3, "rollout[reveal]"), (1, 4, "rollout[aug]")]  # answer_traces, then G
    assert stats == {"n_hint": 1, "n_noise": 0, "n_hint_failed": 0, "guide_level": [2], "perturb_level": []}
    assert len(aug) == 1 and aug[0].prepared.request["hint"] == want_hint and len(aug[0].texts) == 4


def test_hard_sample_without_any_correct_trace_is_not_augmented():
    t = _trainer(["da_aug.answer_traces=2"], reveal_right=False)
    groups = _groups(t, 1)
    t.engine.calls.clear()
    aug, stats = t.augment(groups, [Decision("decrease", 0.9, 1, 0.0)])
    assert aug == [] and stats["n_hint_failed"] == 1 and stats["n_hint"] == 0
    assert t.engine.calls == [(1, 2, "rollout[reveal]")]  # no augmented rollout


def test_no_reveal_when_answer_traces_is_zero():
    t = _trainer(["da_aug.answer_traces=0"])
    groups = _groups(t, 1)
    t.engine.calls.clear()
    aug, stats = t.augment(groups, [Decision("decrease", 0.9, 1, 0.0)])
    assert aug == [] and stats["n_hint_failed"] == 1 and t.engine.calls == []


def test_easy_sample_gets_frame_noise_at_its_level():
    t = _trainer(["da_aug.sigma0=0.25", "da_aug.mask_fraction=0.5"])
    groups = _groups(t, 2)
    t.builder.calls.clear()
    aug, stats = t.augment(groups, [Decision("increase", -0.7, 0, 1.7), Decision("none", 0.0, 0, 0.0)])
    assert t.builder.calls[0] == ("noisy_video", "r0", 0.25, 1.7, 0.5)
    assert t.builder.calls[1][:4] == ("prepare", "r0", None, False) and float(t.builder.calls[1][4]) == 1.7
    assert len(t.builder.calls) == 2  # the "none" sample is left alone
    assert stats["n_noise"] == 1 and stats["perturb_level"] == [1.7] and len(aug) == 1


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_merge_augmented(mode):
    t = _trainer([f"da_aug.mode={mode}"])
    groups = _groups(t, 3)
    aug = [Group(groups[1].prepared, [], [], [])]  # an augmented group of record r1
    merged = t.merge_augmented(groups, aug)
    if mode == "replace":
        assert merged == [groups[0], aug[0], groups[2]]
    else:
        assert merged == [groups[0], groups[1], groups[2], aug[0]]


def test_a_hint_that_does_not_fit_the_prompt_budget_is_not_augmented():
    from dvr1.train.inputs import PromptTooLong

    t = _trainer(["da_aug.answer_traces=3"])
    groups = _groups(t, 1)
    t.engine.calls.clear()

    def prepare(record, hint=None, reveal_answer=False, video=None):
        if hint:
            raise PromptTooLong(f"{record.id}: the hinted prompt is over model.max_prompt_tokens")
        return types.SimpleNamespace(record=record, request={"hint": None, "reveal": reveal_answer, "video": video})

    t.builder.prepare = prepare
    aug, stats = t.augment(groups, [Decision("decrease", 0.9, 3, 0.0)])
    assert aug == [] and stats["n_hint_failed"] == 1 and stats["n_hint"] == 0
    assert t.engine.calls == [(1, 3, "rollout[reveal]")]  # the run goes on; no augmented rollout
