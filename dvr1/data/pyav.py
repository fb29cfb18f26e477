"""PyAV video backend: decode the frames :func:`dvr1.data.video_io.sample_frame_indices` picks.

Reads any container/codec FFmpeg reads. Frame count: the stream header's count when it has one, else the number of
non-empty demuxed packets (WebM stores no count); if decoding yields a different count, the indices are drawn again
on the decoded count. Callers normally go through :func:`dvr1.data.video.load_frames` (``backend="pyav"``).
"""

from __future__ import annotations

import os

import numpy as np

from dvr1.data.video_io import VideoClip, VideoError, open_video, sample_frame_indices, video_stream


def _probe(path: str) -> tuple[int, float]:
    """``(number of video frames, average fps)``; frames counted by demuxing when the header has no count."""
    with video_stream(path) as (container, stream, rate):
        if stream.frames:
            return int(stream.frames), rate
        return sum(1 for p in container.demux(stream) if p.size), rate


def _decode(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], dict[int, float | None], int]:
    """Decode ``path``; return frames and times (s) for the ``wanted`` indices and the decoded count."""
    container = open_video(path)
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


def load_frames_pyav(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
) -> VideoClip:
    """Decode frames sampled by :func:`dvr1.data.video_io.sample_frame_indices` with PyAV.

    Args:
        path: a video file (any container/codec FFmpeg reads; the builder writes VP9 WebM).
        num_frames, fps, max_frames: see :func:`dvr1.data.video_io.sample_frame_indices` (neither given: 2 fps).

    Returns:
        :class:`dvr1.data.video_io.VideoClip` with frames uint8 ``[T, H, W, 3]``, T even; timestamps from the
        decoded frames' presentation times (``index / fps`` where a frame has none).

    Raises:
        ValueError: bad sampling arguments.
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt or empty video.
    """
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
