"""Group-relative advantages and the vanishing-advantage ratio (ALGORITHMS §2, §5; DVR1 Eq. 2), and the variant each
``algo.name`` trains with (Dr. GRPO's ``R − μ`` without σ, ALGORITHMS §9.1): this module is their one owner."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GroupStats", "algo_advantages", "group_advantages", "VALID_STD_TOL"]

# A group is "valid" (non-vanishing advantage) when its reward std exceeds this tolerance. Rewards are sums of a few
# {0, 1} / [0, 1] components, so any real spread is >= ~1e-3; 1e-8 only absorbs float round-off of equal rewards.
VALID_STD_TOL = 1e-8


@dataclass
class GroupStats:
    """Per-group reward statistics (ALGORITHMS §2, §5).

    Attributes:
        advantages: ``[batch, group]`` ``Â_i = (R_i − μ_r) / (σ_r + ε_A)`` (``R_i − μ_r`` with
            ``normalize_std=False``); exactly 0 in invalid groups.
        mean: ``[batch]`` μ_r. std: ``[batch]`` σ_r (with the requested ddof).
        valid: ``[batch]`` bool, ``σ_r > VALID_STD_TOL`` (1e-8).
        vanishing_ratio: fraction of groups with σ_r = 0, ``1 − valid.float().mean()`` (DVR1 Fig. 3 left).
    """

    advantages: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    valid: torch.Tensor
    vanishing_ratio: float


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, ddof: int = 1,
                     normalize_std: bool = True) -> GroupStats:
    """GRPO group-normalised advantages (ALGORITHMS §2, DVR1 Eq. 2); ``normalize_std=False``: Dr. GRPO's
    ``Â_i = R_i − μ_r`` (arXiv 2503.20783 Sec. 3.1, ALGORITHMS §9.1), with ``eps`` unused.

    Args:
        rewards: ``[batch, group]`` floating tensor of scalar rewards R(x, y_i), finite.
        eps: ε_A added to σ_r (1e-4 as Video-R1 / SEED-Bench-R1).
        ddof: delta degrees of freedom of σ_r (1 = unbiased, torch's default; Reg-GRPO's log-ratio variance must
            use the same, ALGORITHMS §3). σ_r still decides validity with ``normalize_std=False``.
        normalize_std: divide by ``σ_r + ε_A`` (default) or only centre.
    Returns:
        GroupStats. Groups whose σ_r <= 1e-8 are invalid; their advantages are set to exactly 0 (the equation
        gives 0 up to round-off of ``R_i − μ_r``).
    Raises:
        ValueError: ``rewards`` not 2-D floating, non-finite values, ``group <= ddof``, or ``eps < 0``.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2 or not rewards.is_floating_point():
        raise ValueError(
            f"group_advantages: rewards must be a floating [batch, group] tensor, got "
            f"{getattr(rewards, 'shape', type(rewards).__name__)} {getattr(rewards, 'dtype', '')}"
        )
    if rewards.shape[1] <= ddof:
        raise ValueError(f"group_advantages: group size {rewards.shape[1]} must exceed ddof={ddof}")
    if not torch.isfinite(rewards).all():
        raise ValueError("group_advantages: rewards contain NaN or inf")
    if eps < 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    mean = rewards.mean(dim=1)
    std = rewards.std(dim=1, correction=ddof)
    valid = std > VALID_STD_TOL
    adv = rewards - mean[:, None]
    if normalize_std:
        adv = adv / (std[:, None] + eps)
    adv = torch.where(valid[:, None], adv, torch.zeros_like(adv))
    vanishing = 1.0 - valid.float().mean().item() if rewards.shape[0] > 0 else 0.0
    return GroupStats(advantages=adv, mean=mean, std=std, valid=valid, vanishing_ratio=float(vanishing))


def algo_advantages(algo, rewards: torch.Tensor) -> GroupStats:
    """The advantages ``algo.name`` trains with, from ``algo.adv_eps`` and ``algo.ddof`` (an ``AlgoConfig``):
    ``dr_grpo`` centres only (ALGORITHMS §9.1); every other algorithm standardises (§2). REBEL uses the raw rewards
    in its loss and these stats only for the metrics and validity. Same errors as :func:`group_advantages`."""
    return group_advantages(rewards, algo.adv_eps, algo.ddof, normalize_std=algo.name != "dr_grpo")
