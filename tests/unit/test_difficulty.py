"""Difficulty assessment for DA-Aug (ALGORITHMS §4, DVR1 Eq. 9)."""

import json

import pytest

from dvr1.config import ConfigError, DAAugConfig, load_config
from dvr1.rl.difficulty import Decision, DifficultyController, RewardHistory, round_half_up


def _ctl(history_values=(), window=100, **cfg):
    h = RewardHistory(window)
    h.push(history_values)
    return DifficultyController(DAAugConfig(**cfg), h), h


def test_history_window_mean_and_len():
    h = RewardHistory(window=3)
    assert h.mean() is None and len(h) == 0
    h.push([1.0, 2.0])
    assert h.mean() == 1.5 and len(h) == 2
    h.push([3.0, 4.0])  # 1.0 falls out
    assert len(h) == 3 and h.mean() == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"RewardHistory.push: value \[1\] is not finite: nan"):
        h.push([1.0, float("nan")])
    assert h.state_dict()["values"] == [2.0, 3.0, 4.0]  # failed push changed nothing
    with pytest.raises(ValueError, match=r"RewardHistory: window must be an int >= 1, got 0"):
        RewardHistory(0)


def test_history_state_dict_round_trip_exact():
    h = RewardHistory(window=5)
    vals = [0.1, 1 / 3, 2 / 7, 1.9999999, 0.3, 0.7]
    h.push(vals)
    state = json.loads(json.dumps(h.state_dict()))  # survives a text checkpoint bit-exactly
    h2 = RewardHistory(window=5)
    h2.load_state_dict(state)
    assert h2.mean() == h.mean() and len(h2) == 5
    h.push([0.25])
    h2.push([0.25])
    assert h2.state_dict() == h.state_dict()
    with pytest.raises(ValueError, match=r"RewardHistory.load_state_dict: checkpoint window 5 != configured window 4"):
        RewardHistory(4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"RewardHistory.load_state_dict: missing key 'values'"):
        RewardHistory(5).load_state_dict({"window": 5})


def test_branches_adaptive_relative():
    ctl, h = _ctl([1.0, 1.0])  # r_ref = 1.0
    d = ctl.assess([0.0, 1.9, 1.0, 0.4, -0.6])
    # Δ = 1.0, −0.9, 0.0, 0.6, 1.6
    assert d[0] == Decision("decrease", 1.0, 2, 0.0)  # round(1.0)+1 = 2
    assert d[1].direction == "increase" and d[1].delta == pytest.approx(-0.9)
    assert d[1].perturb_level == pytest.approx(1.9) and d[1].guide_level == 0
    assert d[2] == Decision("none", 0.0, 0, 0.0)
    assert d[3] == Decision("decrease", pytest.approx(0.6), 2, 0.0)  # round(0.6)+1 = 2
    assert d[4].guide_level == 3  # round(1.6)+1 = 3 = max_level
    # history pushed AFTER the decisions
    assert len(h) == 7 and h.mean() == pytest.approx((2.0 + 0.0 + 1.9 + 1.0 + 0.4 - 0.6) / 7)


@pytest.mark.parametrize(
    "x,n",
    [(0.0, 0), (0.5, 1), (1.5, 2), (2.5, 3), (3.5, 4), (0.49999999999999994, 0), (1.4999999999999998, 1),
     (2.4999999999999996, 2), (0.5000000000000001, 1), (2.0**52 - 0.5, 2**52), (2.0**53, 2**53)],
)
def test_round_half_up_ties_and_neighbours(x, n):
    # issue 19 item 8: ties go UP (Python's round gives 0, 2, 2, 4 for 0.5, 1.5, 2.5, 3.5) and the double just below a
    # tie goes down (floor(x + 0.5) gives 1 for 0.49999999999999994: the sum rounds to 1.0)
    assert round_half_up(x) == n


def test_guide_level_tie_exact():
    # Δ = r_ref − mean is exact here (0.5, 1.5, 2.5, 0.5 - 2**-54): levels round(Δ) + 1 with ties up, capped at L = 5
    ctl, _ = _ctl(reference="absolute", r_ref=3.0, max_level=5)
    assert [d.guide_level for d in ctl.assess([2.5, 1.5, 0.5])] == [2, 3, 4]
    ctl, _ = _ctl(reference="absolute", r_ref=0.49999999999999994, max_level=5)
    assert ctl.assess([0.0])[0] == Decision("decrease", 0.49999999999999994, 1, 0.0)


def test_level_rounding_and_cap():
    ctl, _ = _ctl(reference="absolute", r_ref=2.0, max_level=3)
    d = ctl.assess([1.6, 1.5, 0.5, 0.0])  # Δ = 0.4, 0.5, 1.5, 2.0
    assert [x.guide_level for x in d] == [1, 2, 3, 3]  # half rounds up; cap at 3
    ctl, _ = _ctl(reference="absolute", r_ref=2.0, max_level=2)
    assert [x.guide_level for x in ctl.assess([1.6, 0.0])] == [1, 2]
    ctl, _ = _ctl(reference="absolute", r_ref=0.0)
    assert [x.perturb_level for x in ctl.assess([0.5, 2.0])] == [1.5, 3.0]  # uncapped


def test_fixed_scale():
    ctl, _ = _ctl(reference="absolute", r_ref=1.0, scale="fixed")
    d = ctl.assess([-1.0, 3.0, 1.0])
    assert d[0] == Decision("decrease", 2.0, 1, 0.0)
    assert d[1] == Decision("increase", -2.0, 0, 1.0)
    assert d[2].direction == "none"


def test_margin():
    ctl, _ = _ctl(reference="absolute", r_ref=1.0, margin=0.25)
    d = ctl.assess([0.8, 0.7, 1.25, 1.3, 0.75])
    assert [x.direction for x in d] == ["none", "decrease", "none", "increase", "none"]


def test_directions():
    ctl, _ = _ctl(reference="absolute", r_ref=1.0, directions="up")
    assert [x.direction for x in ctl.assess([0.0, 2.0])] == ["none", "increase"]
    ctl, _ = _ctl(reference="absolute", r_ref=1.0, directions="down")
    assert [x.direction for x in ctl.assess([0.0, 2.0])] == ["decrease", "none"]


def test_relative_empty_history_then_order():
    ctl, h = _ctl(window=4)
    d = ctl.assess([0.0, 2.0])
    assert all(x == Decision("none", 0.0, 0, 0.0) for x in d)
    # batch 2 uses r_ref = mean of batch 1 = 1.0, not including its own values
    d = ctl.assess([0.5, 1.5, 1.0])
    assert [x.direction for x in d] == ["decrease", "increase", "none"]
    assert [x.delta for x in d] == [0.5, -0.5, 0.0]
    # window 4 now holds [2.0, 0.5, 1.5, 1.0] → r_ref = 1.25
    assert ctl.assess([1.25])[0].direction == "none"


def test_absolute_ignores_history_but_records_it():
    ctl, h = _ctl([5.0], reference="absolute", r_ref=0.5)
    d = ctl.assess([1.0])
    assert d[0].direction == "increase" and d[0].delta == -0.5
    assert len(h) == 2


def test_config_errors():
    # the controller reads the run config's da_aug section, checked when the config loads
    for override, message in [
        ("da_aug.r_ref=inf", "da_aug.r_ref=inf: must be a finite number"),
        ("da_aug.reference=x", "da_aug.reference='x': must be one of relative, absolute"),
        ("da_aug.margin=-1", "da_aug.margin=-1.0: must be >= 0"),
        ("da_aug.max_level=0", "da_aug.max_level=0: must be >= 1"),
        ("da_aug.scale=log", "da_aug.scale='log': must be one of adaptive, fixed"),
        ("da_aug.directions=sideways", "da_aug.directions='sideways': must be one of both, up, down"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert str(e.value) == message
    ctl, h = _ctl([1.0])
    with pytest.raises(ValueError, match=r"DifficultyController.assess: value \[0\] is not finite: inf"):
        ctl.assess([float("inf")])
    assert len(h) == 1
