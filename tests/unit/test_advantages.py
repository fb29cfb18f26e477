"""Group advantages and vanishing-advantage ratio (ALGORITHMS §2, §5)."""

import math

import pytest
import torch

from dvr1.rl.advantages import group_advantages


def test_hand_values_unbiased():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    st = group_advantages(rewards, eps=1e-4, ddof=1)
    # group 0: mean 1, unbiased var = (1+0+1+0)/3 → std sqrt(2/3)
    s0 = math.sqrt(2 / 3)
    assert st.mean.tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert st.std[0].item() == pytest.approx(s0)
    assert st.advantages[0].tolist() == pytest.approx([-1 / (s0 + 1e-4), 0.0, 1 / (s0 + 1e-4), 0.0], rel=1e-6)
    # group 2: mean 0.5, unbiased var = (2.25 + 3 * 0.25) / 3 = 1
    assert st.std[2].item() == pytest.approx(1.0)
    assert st.advantages[2].tolist() == pytest.approx([1.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001])
    assert st.valid.tolist() == [True, False, True]
    assert st.advantages[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert st.vanishing_ratio == pytest.approx(1 / 3)


def test_ddof0_matches_population_std():
    torch.manual_seed(0)
    rewards = torch.rand(5, 8)
    st = group_advantages(rewards, eps=0.0, ddof=0)
    ref = (rewards - rewards.mean(1, keepdim=True)) / rewards.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(st.advantages, ref)
    # population-z-scored advantages have mean 0 and mean square 1 per group
    torch.testing.assert_close(st.advantages.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close((st.advantages**2).mean(1), torch.ones(5), atol=1e-5, rtol=0)
    assert st.vanishing_ratio == 0.0


def test_constant_groups_with_roundoff_are_invalid():
    # 0.1 * 8 values: the mean is not exactly 0.1 in float32, yet the group must be flagged and zeroed.
    rewards = torch.full((2, 8), 0.1)
    rewards[1, 0] = 0.2
    st = group_advantages(rewards)
    assert st.valid.tolist() == [False, True]
    assert torch.equal(st.advantages[0], torch.zeros(8))
    assert st.vanishing_ratio == 0.5


def test_errors():
    with pytest.raises(ValueError, match=r"group_advantages: rewards must be a floating \[batch, group\] tensor"):
        group_advantages(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"group_advantages: rewards must be a floating \[batch, group\] tensor"):
        group_advantages(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"group_advantages: group size 1 must exceed ddof=1"):
        group_advantages(torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"group_advantages: rewards contain NaN or inf"):
        group_advantages(torch.tensor([[0.0, float("nan")]]))
