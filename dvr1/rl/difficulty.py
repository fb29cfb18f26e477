"""Difficulty assessment for DA-Aug (ALGORITHMS §4, DVR1 Eq. 9, §3.3)::

    Δ_R(x) = r_ref − (1/G) Σ_j R(x, y_j)

Δ_R > +m → hard → difficulty DECREASE (hint, level ``l_guide = round(|Δ_R|) + 1`` capped at L);
Δ_R < −m → easy → difficulty INCREASE (frame noise, level ``l_perturb = |Δ_R| + 1``); otherwise unchanged.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Decision", "DifficultyController", "RewardHistory", "round_half_up"]


def _finite_floats(fn: str, values: Iterable[float]) -> list[float]:
    out = []
    for k, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{fn}: value [{k}] is not a number: {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{fn}: value [{k}] is not finite: {v!r}")
        out.append(f)
    return out


def round_half_up(x: float) -> int:
    """``x`` (finite, >= 0) rounded to the nearest integer, ties UP (0.5 → 1, 2.5 → 3; Python's ``round`` would give
    0 and 2). Exact: ``x - floor(x)`` is computed without rounding error for every double, so no value below a tie
    rounds up (``floor(x + 0.5)`` gives 1 for 0.49999999999999994 because the sum rounds to 1.0)."""
    whole = math.floor(x)
    return whole + (1 if x - whole >= 0.5 else 0)


class RewardHistory:
    """Reward-history buffer: the most recent ``window`` group-mean rewards (ALGORITHMS §4, W = 100).

    ``r_ref`` of the relative reference is ``mean()``. Values are Python floats, so ``state_dict()`` →
    ``load_state_dict()`` restores the buffer (and its mean) bit-exactly.
    """

    def __init__(self, window: int = 100):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"RewardHistory: window must be an int >= 1, got {window!r}")
        self.window = window
        self._values: deque[float] = deque(maxlen=window)

    def push(self, group_mean_rewards: Iterable[float]) -> None:
        """Append one group-mean reward per sample (in order; the oldest fall out beyond ``window``).
        Raises ValueError on a non-finite value (nothing is pushed then)."""
        self._values.extend(_finite_floats("RewardHistory.push", group_mean_rewards))

    def mean(self) -> float | None:
        """Mean of the buffered values, ``None`` when empty."""
        return sum(self._values) / len(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)

    def state_dict(self) -> dict:
        """``{"window": int, "values": list[float]}`` (oldest first)."""
        return {"window": self.window, "values": list(self._values)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``. Raises ValueError on a missing key, a different window, or more values
        than the window holds."""
        for key in ("window", "values"):
            if key not in state:
                raise ValueError(f"RewardHistory.load_state_dict: missing key {key!r}")
        if state["window"] != self.window:
            raise ValueError(
                f"RewardHistory.load_state_dict: checkpoint window {state['window']} != configured window {self.window}"
            )
        values = _finite_floats("RewardHistory.load_state_dict", state["values"])
        if len(values) > self.window:
            raise ValueError(
                f"RewardHistory.load_state_dict: {len(values)} values exceed window {self.window}"
            )
        self._values = deque(values, maxlen=self.window)


@dataclass
class Decision:
    """DA-Aug decision for one sample (ALGORITHMS §4).

    Attributes:
        direction: ``"decrease"`` (hard: add a hint), ``"increase"`` (easy: perturb the video) or ``"none"``.
        delta: Δ_R = r_ref − group-mean reward (0.0 when no reference exists yet).
        guide_level: hint level ``min(round_half_up(|Δ_R|) + 1, L)`` (ties up) for ``"decrease"``; 1 under
            ``scale="fixed"``; 0 for other directions.
        perturb_level: noise level ``|Δ_R| + 1`` (float, uncapped) for ``"increase"``; 1.0 under ``scale="fixed"``;
            0.0 for other directions.
    """

    direction: str
    delta: float
    guide_level: int
    perturb_level: float


class DifficultyController:
    """Turns group-mean rewards into DA-Aug decisions (ALGORITHMS §4, DVR1 Eq. 9).

    Order inside ``assess``: (1) r_ref is read from the history BEFORE this batch (all samples of the batch share
    it); (2) decisions are made; (3) the batch's group means are pushed into the history (also under the absolute
    reference, so the history stays a true record). With ``reference="relative"`` and an empty history, every
    decision is ``"none"`` (delta 0). Push only the groups of ORIGINAL samples, not of augmented rollouts.
    """

    def __init__(self, cfg, history: RewardHistory):
        """Args: cfg: the run config's ``da_aug`` section (``dvr1.config.DAAugConfig``, validated when it loaded):
        ``reference`` ("relative": r_ref = history mean | "absolute": the fixed ``r_ref``), ``margin`` m >= 0
        (|Δ_R| <= m is "unchanged"; paper: 0), ``max_level`` L >= 1 (guidance-level cap), ``scale`` ("adaptive":
        levels from |Δ_R| | "fixed": every level 1, paper Table 8), ``directions`` ("both" | "up" | "down");
        history: the reward-history buffer."""
        self.cfg = cfg
        self.history = history

    def _decide(self, mean_reward: float, r_ref: float | None) -> Decision:
        cfg = self.cfg
        if r_ref is None:
            return Decision("none", 0.0, 0, 0.0)
        delta = r_ref - mean_reward
        mag = abs(delta)
        if delta > cfg.margin and cfg.directions in ("both", "down"):
            level = 1 if cfg.scale == "fixed" else min(round_half_up(mag) + 1, cfg.max_level)
            return Decision("decrease", delta, int(level), 0.0)
        if delta < -cfg.margin and cfg.directions in ("both", "up"):
            return Decision("increase", delta, 0, 1.0 if cfg.scale == "fixed" else mag + 1.0)
        return Decision("none", delta, 0, 0.0)

    def assess(self, group_mean_rewards: list[float], history_values: list[float] | None = None) -> list[Decision]:
        """One decision per sample, in order.

        Args:
            group_mean_rewards: ``[batch]`` group-mean rewards ``(1/G) Σ_j R(x, y_j)`` of this step's samples.
            history_values: what to push into the history afterwards (default: ``group_mean_rewards``). Under data
                parallelism: the group means of the whole global batch, in the DP=1 order, so that every rank's
                history is the run's (the last W samples of the run, docs/ALGORITHMS.md §4) and the decisions do
                not depend on the DP size.
        Returns: ``list[Decision]`` of length batch.
        Raises: ValueError on a non-finite reward (the history is left unchanged).
        """
        values = _finite_floats("DifficultyController.assess", group_mean_rewards)
        pushed = values if history_values is None else _finite_floats("DifficultyController.assess", history_values)
        r_ref = self.history.mean() if self.cfg.reference == "relative" else float(self.cfg.r_ref)
        decisions = [self._decide(v, r_ref) for v in values]
        self.history.push(pushed)
        return decisions
