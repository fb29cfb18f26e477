"""Video decoding: frame sampling and ``load_frames`` (PyAV backend).

The sampling rule follows Qwen2.5-VL's ``qwen_vl_utils.fetch_video`` (uniform ``linspace`` indices,
frame count a multiple of the temporal patch size 2) with one difference noted in
:func:`sample_frame_indices`: clips shorter than the requested count repeat frames instead of failing.
The DALI backend (:mod:`dvr1.data.dali`) plugs in behind :func:`load_frames` with the same return type.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

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
    """Indices of the frames to decode, uniformly spread over the video.

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


def _open(path: str):
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


def _probe(path: str) -> tuple[int, float]:
    """``(number of video frames, average fps)``; frames counted by demuxing (WebM stores no count)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoError(f"{path}: unknown frame rate")
        if stream.frames:
            return int(stream.frames), float(rate)
        return sum(1 for p in container.demux(stream) if p.size), float(rate)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"{path}: corrupt stream: {exc}") from None
    finally:
        container.close()


def _decode(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], dict[int, float | None], int]:
    """Decode ``path``; return frames and times (s) for the ``wanted`` indices and the decoded count."""
    container = _open(path)
    frames: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = None
        for i, frame in enumerate(container.decode(stream)):
            n = i + 1
            t = frame.time
            if t0 is None:
                t0 = t
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
                times[i] = (t - t0) if (t is not None and t0 is not None) else None
    except Exception as exc:
        raise VideoError(f"{path}: corrupt stream: {exc}") from None
    finally:
        container.close()
    return frames, times, n


def load_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    backend: str = "pyav",
) -> VideoClip:
    """Decode frames sampled by :func:`sample_frame_indices`.

    Args:
        path: a video file (any container/codec FFmpeg reads; the builder writes VP9 WebM).
        num_frames, fps, max_frames: see :func:`sample_frame_indices` (neither given: 2 fps).
        backend: ``"pyav"`` or ``"dali"`` (:func:`dvr1.data.dali.load_frames_dali`: same indices and return type;
            on CPU, codecs DALI's CPU decoder cannot read fall back to PyAV per file).

    Returns:
        :class:`VideoClip` with frames uint8 ``[T, H, W, 3]``, T even.

    Raises:
        ValueError: unknown backend (names the valid ones), bad sampling arguments.
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt or empty video.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "dali":
        from dvr1.data.dali import load_frames_dali  # lazy: DALI is an optional dependency

        return load_frames_dali(path, num_frames, fps, max_frames)
    path = os.fspath(path)
    total, video_fps = _probe(path)
    if total == 0:
        raise VideoError(f"{path}: no frames")
    for _ in range(2):
        indices = sample_frame_indices(total, video_fps, num_frames, fps, max_frames)
        got, times, decoded = _decode(path, set(indices))
        if decoded == total:
            break
        if decoded == 0:
            raise VideoError(f"{path}: no decodable frames")
        total = decoded  # packet count and decoded count disagree: resample on what decodes
    else:
        raise VideoError(f"{path}: frame count unstable between decodes")
    frames = np.stack([got[i] for i in indices])
    timestamps = [times[i] if times[i] is not None else i / video_fps for i in indices]
    return VideoClip(frames, indices, timestamps, video_fps, total / video_fps)
