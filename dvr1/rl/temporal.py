"""T-GRPO's temporal-contrast reward (Video-R1, arXiv 2503.21776 Eq. 1; docs/ALGORITHMS.md §9), as a reward
transform usable with any loss (``reward.temporal_contrast``).

Besides the G responses on the ordered frames, the trainer samples G/2 responses on one random permutation of the
same frames (same prompt text, same mrope time positions; ``dvr1.train.inputs.InputBuilder.prepare(shuffle=...)``).
Those responses are only scored: they never enter the training batch, so no gradient flows through them. With
``p`` = mean accuracy of the ordered responses and ``p̃`` = mean accuracy of the shuffled ones (for {0, 1} accuracy:
the fractions correct), if ``p >= μ·p̃`` every correct ordered response gets ``+α`` on its accuracy reward.

Upstream (tulerfeng/Video-R1, ``src/r1-v/src/open_r1/trainer/grpo_trainer.py`` and ``vllm_grpo_trainer.py``,
``compute_loss``): ``shuffled_num_generations = num_generations // 2``; the frames are permuted with
``torch.randperm(video_inputs[0].size(0))`` over the sampled frames; ``acc_mean >= 0.8 * shuffled_acc_mean`` on the
accuracy reward (column 0), then ``mask = acc > 0.1`` ("correct") gets ``+ 0.3`` on the accuracy column before the
reward functions are summed and group-normalised; the logged ``temporal_rewards`` is 1 when the rule holds. (The
vLLM trainer of that repository sends the unshuffled ``video_inputs`` with its shuffled prompts; we follow the
HF-generate trainer and the paper: the shuffled responses see the permuted frames.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# Video-R1's "correct" mask: accuracy > 0.1 (so partial-credit rewards such as ROUGE above 0.1 count as correct)
CORRECT_ABOVE = 0.1


@dataclass
class TemporalBonus:
    """The T-GRPO decision for one group.

    bonus: per ordered response, the amount added to its accuracy reward (α or 0.0); p, p_shuffled: mean accuracy of
    the ordered / shuffled responses; holds: whether ``p >= μ·p̃`` (Video-R1's ``temporal_rewards`` = 1)."""

    bonus: list[float]
    p: float
    p_shuffled: float
    holds: bool


def temporal_bonus(acc: Sequence[float], shuffled_acc: Sequence[float], mu: float = 0.8, alpha: float = 0.3,
                   correct_above: float = CORRECT_ABOVE) -> TemporalBonus:
    """T-GRPO's bonus for one group (Video-R1 Eq. 1): ``+alpha`` for every ordered response with accuracy
    ``> correct_above`` when ``mean(acc) >= mu · mean(shuffled_acc)`` (equality counts; p̃ = 0 always satisfies it).

    Args:
        acc: accuracy rewards of the G ordered responses; shuffled_acc: those of the shuffled responses (G/2).
        mu: the ratio μ (0.8 in the code); alpha: the bonus α (0.3).
    Returns: a :class:`TemporalBonus`. Means are float64 Python means.
    Raises: ValueError for an empty ``acc`` or ``shuffled_acc``.
    """
    if not acc or not shuffled_acc:
        raise ValueError(f"temporal_bonus: need ordered and shuffled accuracies, got {len(acc)} and "
                         f"{len(shuffled_acc)}")
    p = sum(float(a) for a in acc) / len(acc)
    pt = sum(float(a) for a in shuffled_acc) / len(shuffled_acc)
    holds = p >= mu * pt
    return TemporalBonus([alpha if holds and a > correct_above else 0.0 for a in acc], p, pt, holds)


def shuffled_group_size(group_size: int) -> int:
    """How many responses T-GRPO samples on the shuffled frames: G // 2 as Video-R1 (at least 1)."""
    return max(group_size // 2, 1)
