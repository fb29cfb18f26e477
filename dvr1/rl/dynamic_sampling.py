"""DAPO's dynamic sampling (arXiv 2503.14476 §3.2; docs/ALGORITHMS.md §9), usable with any loss
(``rl.dynamic_sampling``): groups whose rewards are all equal under the chosen metric are dropped, and prompts are
drawn and rolled out in further rounds until the step holds ``rl.prompts_per_step`` kept groups, for at most
``rl.dynamic_sampling_max_rounds`` rounds (the first included).

Upstream: verl ``recipe/dapo/dapo_ray_trainer.py`` (``algorithm.filter_groups``: a group is kept when the std of
its ``metric`` is > 0; rounds are counted by ``num_gen_batches`` against ``max_num_gen_batches``, default 10 in the
DAPO recipe; a surplus of kept groups is cut to the train batch size). Where verl raises when the bound is hit, dvr1
trains on what was kept (this module's :func:`plan_selection`) and logs it.

The planning here is pure: the trainer gathers every DP rank's keep flags of a round in the order one DP=1 sampler
draws the prompts (``PromptSampler.global_order``), so every rank computes the same plan, and the plan is the one a
DP=1 run computes from the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dvr1.rl.advantages import VALID_STD_TOL

METRICS = ("accuracy", "total")


def group_varies(values: Sequence[float]) -> bool:
    """Whether a group's metric values are not all equal: their population std exceeds
    ``dvr1.rl.advantages.VALID_STD_TOL`` (the §5 vanishing-advantage test, so with ``metric=total`` a kept group is
    exactly a group with a non-vanishing advantage). A group of one value never varies."""
    n = len(values)
    if n < 2:
        return False
    mean = sum(values) / n
    return (sum((v - mean) ** 2 for v in values) / n) ** 0.5 > VALID_STD_TOL


def need_more(flags: Sequence[Sequence[bool]], need: int, max_rounds: int) -> bool:
    """After ``len(flags)`` rounds (``flags[k]``: the keep flags of round k's groups, global order): whether to roll
    out another round: fewer than ``need`` kept so far and fewer than ``max_rounds`` rounds done."""
    return sum(sum(f) for f in flags) < need and len(flags) < max_rounds


@dataclass
class Plan:
    """Which drawn groups the step trains on.

    selected: ``(round, global position)`` of each training group, in draw order; DP rank r trains on
    ``selected[r::dp]``. kept: varying groups drawn (all rounds); used: how many of them are selected (``min(kept,
    need)``); surplus: varying groups left out because the step was full (``kept - used``); dropped: all-equal groups
    drawn; topped_up: all-equal groups selected anyway (only when the round bound is hit, see
    :func:`plan_selection`); rounds: rounds rolled out; bound_hit: the step ended with fewer than ``need`` kept."""

    selected: list[tuple[int, int]]
    kept: int
    used: int
    surplus: int
    dropped: int
    topped_up: int
    rounds: int
    bound_hit: bool


def plan_selection(flags: Sequence[Sequence[bool]], need: int, dp: int = 1) -> Plan:
    """The step's training groups from the keep flags of every round (``flags[k][j]``: global position j of round k).

    The first ``need`` varying groups in draw order (round, then position). When there are fewer (the round bound was
    hit), all varying groups, topped up with the earliest all-equal groups to the next multiple of ``dp`` (and to at
    least ``dp``), so that every DP rank trains on the same number of groups and no rank has none; at DP=1 this tops up
    only a step that kept nothing (one all-equal group: zero advantage, so only the KL term acts).

    Raises: ValueError when ``need`` or ``dp`` is < 1, or fewer than ``dp`` groups were drawn.
    """
    if need < 1 or dp < 1:
        raise ValueError(f"plan_selection: need={need} and dp={dp} must be >= 1")
    order = [(k, j) for k, f in enumerate(flags) for j in range(len(f))]
    if len(order) < dp:
        raise ValueError(f"plan_selection: {len(order)} groups drawn, fewer than dp={dp}")
    keep = [kj for kj in order if flags[kj[0]][kj[1]]]
    equal = [kj for kj in order if not flags[kj[0]][kj[1]]]
    if len(keep) >= need:
        chosen, topped = keep[:need], 0
    else:
        target = max(dp, -(-len(keep) // dp) * dp)
        topped = target - len(keep)
        chosen = sorted(keep + equal[:topped])
    used = min(len(keep), need)
    return Plan(selected=chosen, kept=len(keep), used=used, surplus=len(keep) - used, dropped=len(equal),
                topped_up=topped, rounds=len(flags), bound_hit=len(keep) < need)
