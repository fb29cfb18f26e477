"""DA-Aug's difficulty increase on normalised video (docs/ALGORITHMS.md §4, DVR1 Eq. 9): frame-level Gaussian noise
``v̂ = v + σ_0 · level · N(0, I)`` and optional frame masking.

The torch ops used by the PyAV path and the frame choice the DALI pipeline shares with them, so both backends mask
the same frames for the same generator. :mod:`dvr1.rl.augment` re-exports :func:`add_frame_noise` and
:func:`mask_frames`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["FrameNoise", "add_frame_noise", "check_fraction", "check_noise_level", "mask_frames",
           "masked_frame_indices"]


@dataclass(frozen=True)
class FrameNoise:
    """One difficulty-increase draw for :func:`dvr1.data.video.load_clip`.

    Attributes:
        sigma0: σ_0 >= 0 (normalised units); level: ``l_perturb`` >= 0 (noise std = ``sigma0 * level``);
        mask_fraction: fraction of frames set to 0, in [0, 1]; generator: CPU ``torch.Generator`` for the draws.
    """

    sigma0: float
    level: float
    mask_fraction: float
    generator: torch.Generator | None


def check_noise_level(where: str, sigma0: float, level: float) -> None:
    """Raises ValueError ``"{where}: sigma0 must be finite and >= 0, got -0.1"`` (same for ``level``)."""
    for name, v in (("sigma0", sigma0), ("level", level)):
        if not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"{where}: {name} must be finite and >= 0, got {v!r}")


def check_fraction(where: str, name: str, fraction: float) -> None:
    """Raises ValueError ``"{where}: {name} must be in [0, 1], got 1.5"``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{where}: {name} must be in [0, 1], got {fraction!r}")


def add_frame_noise(video: torch.Tensor, sigma0: float, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame-level Gaussian noise for a difficulty increase (ALGORITHMS §4): ``v̂ = v + σ_0 · level · N(0, I)``.

    Args:
        video: ``[T, C, H, W]`` floating tensor in NORMALISED space (any shape works; noise is elementwise).
        sigma0: σ_0 >= 0 (normalised units); level: ``l_perturb`` >= 0 (``Decision.perturb_level``);
        generator: a ``torch.Generator`` on the video's device for reproducible noise.
    Returns: a new tensor, same shape/dtype/device (the input is not modified).
    Raises: ValueError for a non-floating video or a negative/non-finite sigma0 or level.
    """
    if not isinstance(video, torch.Tensor) or not video.is_floating_point():
        raise ValueError(f"add_frame_noise: video must be a floating tensor, got {getattr(video, 'dtype', type(video))}")
    check_noise_level("add_frame_noise", sigma0, level)
    noise = torch.randn(video.shape, generator=generator, dtype=video.dtype, device=video.device)
    return video + (sigma0 * level) * noise


def masked_frame_indices(num_frames: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The frames :func:`mask_frames` zeroes: the first ``floor(fraction · T + 0.5)`` of
    ``torch.randperm(T, generator)``, sorted; int64 ``[k]`` on the CPU. One ``randperm`` draw, also when k = 0."""
    k = math.floor(fraction * num_frames + 0.5)
    return torch.randperm(num_frames, generator=generator)[:k].sort().values


def mask_frames(
    video: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero ``floor(fraction · T + 0.5)`` randomly chosen frames (0 = the mean in normalised space; ALGORITHMS §4's
    optional frame masking).

    Args:
        video: ``[T, ...]`` floating tensor, frames first (e.g. ``[T, C, H, W]``); fraction: in [0, 1];
        generator: CPU ``torch.Generator`` for the frame choice (:func:`masked_frame_indices`).
    Returns: (new tensor with those frames zeroed, ``[k]`` int64 sorted masked frame indices).
    Raises: ValueError for a non-floating / 0-dim video or a fraction outside [0, 1].
    """
    if not isinstance(video, torch.Tensor) or not video.is_floating_point() or video.dim() < 1:
        raise ValueError("mask_frames: video must be a floating [T, ...] tensor")
    check_fraction("mask_frames", "fraction", fraction)
    idx = masked_frame_indices(video.shape[0], fraction, generator)
    out = video.clone()
    out[idx.to(video.device)] = 0
    return out, idx
