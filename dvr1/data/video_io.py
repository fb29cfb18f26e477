"""What the video backends share: the error type, the decoded-clip types, the frame-sampling rule, opening a file.

Layout (one direction, no cycle): this module <- :mod:`dvr1.data.pyav` (PyAV backend) and :mod:`dvr1.data.dali`
(DALI backend), which never import each other <- :mod:`dvr1.data.video` (``load_frames`` / ``load_clip``: picks the
backend, and falls back from DALI to PyAV per file).

The sampling rule follows Qwen2.5-VL's ``qwen_vl_utils.fetch_video`` (uniform ``linspace`` indices, frame count a
multiple of the temporal patch size 2) with one difference noted in :func:`sample_frame_indices`: clips shorter than
the requested count repeat frames instead of failing. ``qwen_vl_utils`` samples by frame index with the stream's
average rate; :func:`select_frames` samples by presentation time, which is the same thing for a constant frame rate
(the same indices, exactly) and honours variable frame rates and GIF frame delays otherwise.

:func:`probe_stream` demuxes a file once (no decoding): frame times, keyframes and the header's frame count and
duration; :func:`check_truncated` compares the header with what the file holds (a truncated file).
"""

from __future__ import annotations

import bisect
import logging
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
UNIFORM_TOLERANCE = 0.25  # frame times within this fraction of an interval of a uniform grid: constant frame rate
TRUNCATED_FRACTION = 0.9  # a file holding under this fraction of its header's duration ...
TRUNCATED_SECONDS = 1.0  # ... and more than this many seconds short of it is reported as truncated

log = logging.getLogger(__name__)
_warned_truncated: set[str] = set()  # files already reported as truncated (one warning per file and process)


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
    n = _frame_count(num_total, num_total / video_fps, num_frames, fps, max_frames, min_frames)
    return np.linspace(0, num_total - 1, n).round().astype(np.int64).tolist()


def _frame_count(num_total: int, seconds: float, num_frames, fps, max_frames: int, min_frames: int) -> int:
    """The sampled frame count of :func:`sample_frame_indices` for a clip of ``num_total`` frames lasting
    ``seconds`` (``num_total / video_fps`` there, the clip's duration in time for a variable frame rate)."""
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps are mutually exclusive")
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1, got {num_total}")
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
            n = _even_floor(min(max(seconds * fps, lo), cap))
    return n


def is_constant_rate(times: list[float]) -> bool:
    """True when every frame time lies within :data:`UNIFORM_TOLERANCE` of an interval of the uniform grid from
    the first to the last frame (``|t_i - t_0 - i * step| <= step / 4``, ``step = (t_last - t_0) / (N - 1)``).

    Timestamps rounded to the container's time base (e.g. 29.97 fps in milliseconds) pass; a GIF with mixed frame
    delays or a variable-frame-rate phone clip whose rate changes does not. Clips of 1-2 frames, and clips whose
    times do not increase (no usable timestamps), count as constant rate (the index rule is all one can do).
    """
    n = len(times)
    if n <= 2:
        return True
    t = np.asarray(times, dtype=np.float64)
    step = (t[-1] - t[0]) / (n - 1)
    if not step > 0:
        return True
    return bool(np.abs(t - t[0] - np.arange(n) * step).max() <= UNIFORM_TOLERANCE * step)


def select_frames(
    times: list[float],
    video_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    min_frames: int = 2,
    last_duration: float | None = None,
) -> tuple[list[int], float]:
    """Frames to decode, uniformly spread over the clip's duration in presentation time (the rule of both backends).

    - Constant frame rate (:func:`is_constant_rate`): exactly :func:`sample_frame_indices` on ``len(times)`` frames
      and ``video_fps`` (Qwen2.5-VL's index rule, which for such clips is the time rule), duration
      ``len(times) / video_fps``.
    - Otherwise (variable frame rate, GIF delays): duration ``D = t_last - t_0 + last_duration`` (the last frame's
      own display time; the mean interval when unknown). The count ``n`` follows :func:`sample_frame_indices` with
      ``D`` in place of ``num_total / video_fps``; the target times are ``linspace(t_0, t_last, n)`` (first and last
      frame included, as the index rule) and each takes the frame whose presentation time is NEAREST to it (ties:
      the earlier frame). The same frame may be taken twice when frames are sparse in time.

    Args:
        times: presentation time of each frame in seconds, in presentation order ``[N]``, ``N >= 1``.
        video_fps: the stream's average frame rate (frames per second), ``> 0``.
        num_frames, fps, max_frames, min_frames: as :func:`sample_frame_indices`.
        last_duration: display time of the last frame in seconds (None: the mean frame interval).

    Returns:
        ``(indices, duration)``: ``n`` non-decreasing indices into ``times`` (``n`` even, ``>= 2``) and the clip's
        duration in seconds.

    Raises:
        ValueError: as :func:`sample_frame_indices`.
    """
    num_total = len(times)
    if num_total < 1 or is_constant_rate(times):
        indices = sample_frame_indices(num_total, video_fps, num_frames, fps, max_frames, min_frames)
        return indices, num_total / video_fps
    t = np.asarray(times, dtype=np.float64)
    span = float(t[-1] - t[0])
    if not (last_duration is not None and last_duration > 0):
        last_duration = span / (num_total - 1)
    duration = span + last_duration
    n = _frame_count(num_total, duration, num_frames, fps, max_frames, min_frames)  # duration for N / video_fps
    targets = np.linspace(t[0], t[-1], n)
    right = np.searchsorted(t, targets, side="left").clip(1, num_total - 1)  # first frame at or after the target
    left = right - 1
    nearest = np.where(targets - t[left] <= t[right] - targets, left, right)
    return nearest.astype(np.int64).tolist(), duration


@dataclass
class StreamInfo:
    """What demuxing a file's first video stream says (no decoding).

    Attributes:
        num_frames: non-empty video packets (= decoded frames for the usual codecs).
        fps: average frame rate (frames per second; the guessed rate when the average is unknown).
        codec: FFmpeg codec name (``"vp9"``, ``"h264"``, ``"gif"``, ...).
        width, height: frame size in pixels.
        times: presentation time of each frame in seconds from the first, in presentation order ``[num_frames]``
            (``index / fps`` when a packet has no timestamp).
        pts: the frames' presentation timestamps in the stream's time base, sorted ``[num_frames]`` (None when a
            packet has no timestamp: then nothing can be sought).
        key_pts: sorted presentation timestamps of the keyframes (seek points); empty when ``pts`` is None.
        last_duration: display time of the last frame in seconds (its packet's duration; None when unknown).
        header_frames: the header's frame count (0: none).
        header_seconds: the header's duration in seconds (``header_frames / fps`` when there is a count, else the
            stream's, else the container's duration; None: none).
        discard: some packet is flagged corrupt or to be discarded (the decoded count may differ from
            ``num_frames``).
    """

    num_frames: int
    fps: float
    codec: str
    width: int
    height: int
    times: list[float]
    pts: list[int] | None
    key_pts: list[int]
    last_duration: float | None
    header_frames: int
    header_seconds: float | None
    discard: bool


def probe_stream(path: str | os.PathLike) -> StreamInfo:
    """Demux ``path``'s first video stream once: frame count and times, keyframes, header count and duration.

    Raises:
        VideoError: as :func:`video_stream` (missing, unreadable, no video stream, unknown rate, corrupt stream).
    """
    path = os.fspath(path)
    with video_stream(path) as (container, stream, rate):
        tb = stream.time_base
        packets = [(p.pts, p.is_keyframe, p.duration, p.is_discard or p.is_corrupt)
                   for p in container.demux(stream) if p.size]
        codec = stream.codec_context.name
        header_frames = int(stream.frames or 0)
        if header_frames:
            header_seconds = header_frames / rate
        elif stream.duration and tb is not None:
            header_seconds = float(stream.duration * tb)
        elif container.duration:
            header_seconds = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            header_seconds = None
        width, height = stream.width, stream.height
    pts, key_pts, last_duration = None, [], None
    if tb is not None and packets and all(p[0] is not None for p in packets):
        order = sorted(range(len(packets)), key=lambda i: packets[i][0])
        pts = [packets[i][0] for i in order]
        ts = [float(p * tb) for p in pts]
        times = [x - ts[0] for x in ts]
        key_pts = sorted(p[0] for p in packets if p[1])
        last = packets[order[-1]][2]
        last_duration = float(last * tb) if last else None
    else:
        times = [i / rate for i in range(len(packets))]
    return StreamInfo(len(packets), rate, codec, width, height, times, pts, key_pts, last_duration, header_frames,
                      header_seconds, any(p[3] for p in packets))


def check_truncated(path: str, info: StreamInfo, num_frames: int, duration: float, strict: bool = False) -> None:
    """Report a file that holds far less than its header says (a truncated download or copy).

    Truncated when the header's duration ``H`` is known and the decoded duration ``D`` is below
    :data:`TRUNCATED_FRACTION` ``* H`` and more than :data:`TRUNCATED_SECONDS` short of it (short clips and rounding
    of the last frame's duration never trigger it). Message: ``"{path}: truncated file: the header says 280 frames /
    10.00 s, the file holds 136 frames / 4.86 s"`` (``"the header says 10.00 s"`` without a header frame count).
    Logged once per file as a warning (the clip is used), or raised under ``strict``.

    Args:
        path: the file; info: its :func:`probe_stream`; num_frames, duration: what it holds (frames, seconds).

    Raises:
        VideoError: that message, when ``strict``.
    """
    h = info.header_seconds
    if h is None or not (duration < TRUNCATED_FRACTION * h and h - duration > TRUNCATED_SECONDS):
        return
    said = f"{info.header_frames} frames / {h:.2f} s" if info.header_frames else f"{h:.2f} s"
    msg = f"{path}: truncated file: the header says {said}, the file holds {num_frames} frames / {duration:.2f} s"
    if strict:
        raise VideoError(msg)
    if path not in _warned_truncated:
        _warned_truncated.add(path)
        log.warning("%s; using the frames it holds", msg)


def keyframe_before(info: StreamInfo, pts: int) -> int | None:
    """The presentation timestamp of the last keyframe at or before ``pts`` (None: there is none)."""
    k = bisect.bisect_right(info.key_pts, pts) - 1
    return info.key_pts[k] if k >= 0 else None


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
