"""What the video backends share: the error type, the decoded-clip types, the frame-sampling rule, opening a file.

Layout (one direction, no cycle): this module <- :mod:`dvr1.data.pyav` (PyAV backend) and :mod:`dvr1.data.dali`
(DALI backend), which never import each other <- :mod:`dvr1.data.video` (``load_frames`` / ``load_clip``: picks the
backend, and falls back from DALI to PyAV per file).

The sampling rule follows Qwen2.5-VL's ``qwen_vl_utils.fetch_video`` (uniform ``linspace`` indices, frame count a
multiple of the temporal patch size 2) with one difference noted in :func:`sample_frame_indices`: clips shorter than
the requested count repeat frames instead of failing.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

BACKENDS = ("pyav", "dali")
TEMPORAL_PATCH = 2  # Qwen2.5-VL temporal_patch_size; sampled frame counts are multiples of it
DEFAULT_FPS = 2.0  # qwen_vl_utils FPS


class VideoError(RuntimeError):
    """A video that cannot be read. Message: ``"{path}: {reason}"``."""


@dataclass
class VideoClip:
    """Decoded frames of one video.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB.
        indices: the decoded frame index of each of the T frames (may repeat for very short videos).
        timestamps: presentation time of each frame in seconds, relative to the first frame of the video.
        video_fps: the stream's average frame rate (frames per second).
        duration: the video's duration in seconds (``num_total / video_fps``).
    """

    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    video_fps: float
    duration: float


@dataclass
class NormalizedClip:
    """A decoded, resized, normalised (and optionally augmented) clip.

    Attributes:
        video: float32 ``[T, 3, H', W']`` (as :func:`dvr1.data.processing.normalize_frames`), on the GPU when
            DALI decoded it there.
        masked: int64 ``[k]`` sorted indices (into T) of the frames set to 0 by frame masking.
        indices, timestamps, video_fps, duration: as :class:`VideoClip`.
        backend: the backend that decoded it, ``"dali"`` or ``"pyav"`` (also after DALI's per-file fallback).
    """

    video: torch.Tensor
    masked: torch.Tensor
    indices: list[int]
    timestamps: list[float]
    video_fps: float
    duration: float
    backend: str


def check_backend(backend: str) -> None:
    """Raises ValueError ``"unknown video backend 'x'; valid: pyav, dali"`` for a name outside :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(BACKENDS)}")


def _even_floor(x: float) -> int:
    return int(math.floor(x / TEMPORAL_PATCH)) * TEMPORAL_PATCH


def _even_ceil(x: float) -> int:
    return int(math.ceil(x / TEMPORAL_PATCH)) * TEMPORAL_PATCH


def sample_frame_indices(
    num_total: int,
    video_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    min_frames: int = 2,
) -> list[int]:
    """Indices of the frames to decode, uniformly spread over the video (the rule of both backends).

    Exact rule (``E(x)`` = round to a multiple of 2 as Python's ``round(x / 2) * 2``, half to even;
    ``lo = ceil_even(min_frames)``; ``hi = floor_even(max_frames)``):

    - ``num_frames`` given: ``n = clamp(E(num_frames), lo, hi)`` (as ``qwen_vl_utils``'s ``nframes``).
    - otherwise (``fps``, default 2.0 as ``qwen_vl_utils``): ``n = num_total / video_fps * fps``, clamped to
      ``[lo, floor_even(min(max_frames, num_total))]`` then floored to even; if ``num_total < lo``, ``n = lo``.
    - indices: ``round(linspace(0, num_total - 1, n))`` in float64 with numpy's half-to-even rounding.

    ``n`` is always even and ``>= 2``. When ``n > num_total`` some frames repeat (``qwen_vl_utils`` raises
    instead); temporal patches of 2 then still line up.

    Args:
        num_total: number of frames in the video, ``>= 1``.
        video_fps: the video's frame rate (frames per second), ``> 0``.
        num_frames: a fixed frame count (mutually exclusive with ``fps``).
        fps: frames per second to sample.
        max_frames: upper bound on the count (made even downwards).
        min_frames: lower bound on the count (made even upwards, at least 2).

    Returns:
        ``n`` non-decreasing frame indices in ``[0, num_total - 1]``.

    Raises:
        ValueError: both ``num_frames`` and ``fps`` given, or a non-positive argument.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps are mutually exclusive")
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1, got {num_total}")
    if not video_fps > 0:
        raise ValueError(f"video_fps must be > 0, got {video_fps}")
    lo = max(TEMPORAL_PATCH, _even_ceil(min_frames))
    hi = _even_floor(max_frames)
    if hi < lo:
        raise ValueError(f"max_frames={max_frames} is below min_frames={min_frames} (after rounding to even)")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        n = min(max(round(num_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH, lo), hi)
    else:
        fps = DEFAULT_FPS if fps is None else fps
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        cap = _even_floor(min(max_frames, num_total))
        if cap < lo:
            n = lo
        else:
            n = _even_floor(min(max(num_total / video_fps * fps, lo), cap))
    return np.linspace(0, num_total - 1, n).round().astype(np.int64).tolist()


def open_video(path: str):
    """``av.open(path)`` of a file with at least one video stream (the caller closes it).

    Raises:
        VideoError: ``"{path}: file not found"``, ``"{path}: cannot open: {av's message}"``,
            ``"{path}: no video stream"``.
    """
    import av

    if not os.path.isfile(path):
        raise VideoError(f"{path}: file not found")
    try:
        container = av.open(path)
    except Exception as exc:  # PyAV raises several error types (InvalidDataError, OSError, ...)
        raise VideoError(f"{path}: cannot open: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


@contextmanager
def video_stream(path: str) -> Iterator[tuple[object, object, float]]:
    """``with video_stream(path) as (container, stream, fps):`` the first video stream and its average frame rate
    (frames per second, the guessed rate when the average is unknown), for demuxing; closed on exit.

    Any error inside the block other than a VideoError becomes ``VideoError("{path}: corrupt stream: {exc}")``.

    Raises:
        VideoError: as :func:`open_video`, ``"{path}: unknown frame rate"``, ``"{path}: corrupt stream: ..."``.
    """
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoError(f"{path}: unknown frame rate")
        yield container, stream, float(rate)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"{path}: corrupt stream: {exc}") from None
    finally:
        container.close()
