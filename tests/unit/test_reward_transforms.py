"""The reward transforms of issue 17, against hand-worked values from their equations (docs/ALGORITHMS.md §9):
DAPO's soft overlong punishment (DAPO Eq. 13) and T-GRPO's temporal-contrast bonus (Video-R1 Eq. 1 and its code)."""

import pytest

from dvr1.config import ConfigError, load_config
from dvr1.rl.rewards import overlong_penalty
from dvr1.rl.temporal import shuffled_group_size, temporal_bonus


@pytest.mark.parametrize("length,want", [
    (0, 0.0), (12, 0.0),  # |y| <= L_max - L_cache = 12: no punishment
    (13, -0.25), (14, -0.5), (15, -0.75),  # ((12 - |y|) / 4)
    (16, -1.0),  # |y| = L_max: the linear part reaches -1
    (17, -1.0), (100, -1.0),  # beyond the budget
])
def test_overlong_penalty_at_and_around_the_boundaries(length, want):
    assert overlong_penalty(length, 16, 4) == want


def test_overlong_penalty_window_equal_to_budget_and_bad_arguments():
    assert overlong_penalty(0, 8, 8) == 0.0 and overlong_penalty(2, 8, 8) == -0.25
    for args in ((-1, 16, 4), (3, 16, 0), (3, 16, 17)):
        with pytest.raises(ValueError):
            overlong_penalty(*args)


def test_overlong_config_defaults_off_and_checks_the_window():
    cfg = load_config(None, [])
    assert cfg.reward.overlong is False and cfg.reward.temporal_contrast is False
    assert cfg.rl.dynamic_sampling is False and cfg.rl.dynamic_sampling_max_rounds == 10
    with pytest.raises(ConfigError, match="reward.overlong_cache"):
        load_config(None, ["reward.overlong=true", "rollout.max_new_tokens=8", "reward.overlong_cache=9"])
    load_config(None, ["reward.overlong=true", "reward.overlong_max=32", "reward.overlong_cache=20"])
    with pytest.raises(ConfigError, match="rl.dynamic_sampling_metric"):
        load_config(None, ["rl.dynamic_sampling_metric=iou"])
    with pytest.raises(ConfigError, match="rl.dynamic_sampling_max_rounds"):
        load_config(None, ["rl.dynamic_sampling_max_rounds=0"])


def test_temporal_bonus_when_ordered_beats_mu_times_shuffled():
    # p = 3/8 = 0.375 >= 0.8 * (1/4) = 0.2: each correct ordered response gets +0.3
    tb = temporal_bonus([1, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0])
    assert tb.holds and tb.p == 0.375 and tb.p_shuffled == 0.25
    assert tb.bonus == [0.3, 0.0, 0.3, 0.0, 0.0, 0.3, 0.0, 0.0]


def test_temporal_bonus_not_given_when_shuffled_frames_do_as_well():
    # p = 2/8 = 0.25 < 0.8 * (2/4) = 0.4
    tb = temporal_bonus([1, 0, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0])
    assert not tb.holds and tb.bonus == [0.0] * 8


def test_temporal_bonus_at_equality_p_equals_mu_times_p_shuffled():
    # p = 2/5 = 0.4 and 0.8 * (1/2) = 0.4 exactly in binary floating point: ">=" gives the bonus
    assert 2 / 5 == 0.8 * (2 / 4)
    tb = temporal_bonus([1, 1, 0, 0, 0], [1, 1, 0, 0])
    assert tb.holds and tb.bonus == [0.3, 0.3, 0.0, 0.0, 0.0]
    # one more correct shuffled response tips it: 0.4 < 0.8 * 0.75 = 0.6
    assert not temporal_bonus([1, 1, 0, 0, 0], [1, 1, 1, 0]).holds


def test_temporal_bonus_with_no_correct_shuffled_response():
    tb = temporal_bonus([0, 1, 0, 1], [0, 0])  # p~ = 0: the rule always holds
    assert tb.holds and tb.bonus == [0.0, 0.3, 0.0, 0.3]
    tb = temporal_bonus([0, 0, 0, 0], [0, 0])  # holds (0 >= 0), but no correct response gets anything
    assert tb.holds and tb.bonus == [0.0] * 4


def test_temporal_bonus_partial_credit_threshold_and_custom_mu_alpha():
    # Video-R1's "correct" is accuracy > 0.1; p = (0.5 + 0.1 + 0.05) / 3
    tb = temporal_bonus([0.5, 0.1, 0.05], [0.9], mu=0.2, alpha=0.5)
    assert tb.holds and tb.bonus == [0.5, 0.0, 0.0]
    assert not temporal_bonus([0.5, 0.1, 0.05], [0.9], mu=0.8).holds
    with pytest.raises(ValueError):
        temporal_bonus([1.0], [])


def test_shuffled_group_size_is_half_the_group():
    assert [shuffled_group_size(g) for g in (2, 3, 8, 9)] == [1, 1, 4, 4]
