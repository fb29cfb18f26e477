"""PyAV video backend: decode the frames :func:`dvr1.data.video_io.select_frames` picks.

Reads any container/codec FFmpeg reads. One demux pass (:func:`dvr1.data.video_io.probe_stream`) gives the frame
times and keyframes; the frames are chosen by presentation time (:func:`~dvr1.data.video_io.select_frames`: the
index rule for a constant frame rate, nearest timestamps otherwise), then decoded one of two ways:

- **seeking** (when it decodes under half the frames, :func:`seek_cost`): for each target, seek to the keyframe at
  or before it (``container.seek``) and decode forward to it; a target in the GOP already being decoded is reached by
  decoding on. The decoded pixels are those of a full decode (same decoder state from the keyframe on).
- **sequential**: decode every frame and keep the chosen ones; if decoding yields a different frame count than the
  demux (or seeking does not land on a chosen frame), the frames are chosen again on what decodes.

A file that holds far less than its header says is reported (:func:`dvr1.data.video_io.check_truncated`). A
**frame folder** (a directory of image files, e.g. MVBench's Episodic Reasoning TVQA frames ``00001.jpg ...``) is a
video of constant rate ``frame_fps`` (:func:`load_frames_folder`). Callers normally go through
:func:`dvr1.data.video.load_frames` (``backend="pyav"``).
"""

from __future__ import annotations

import bisect
import os

import numpy as np

from dvr1.data.video_io import (StreamInfo, VideoClip, VideoError, check_truncated, keyframe_before, open_video,
                                probe_stream, sample_frame_indices, select_frames)

SEEK_FRAMES = 4  # the cost of one seek, in decoded frames (demuxer repositioning + decoder flush), for seek_cost
SEEK_FRACTION = 0.5  # seek only when it decodes under this fraction of the frames
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # the files of a frame folder (case-insensitive)


def seek_cost(info: StreamInfo, indices: list[int]) -> int | None:
    """Frames decoded (plus :data:`SEEK_FRAMES` per seek) to reach ``indices`` by seeking; None: cannot seek (no
    timestamps or keyframe list, or corrupt/discarded packets, where the decoded order may not match the demux)."""
    if info.pts is None or not info.key_pts or info.discard:
        return None
    cost, pos = 0, -1  # pos: index of the last decoded frame
    for i in sorted(set(indices)):
        kf = keyframe_before(info, info.pts[i])
        if kf is None:
            return None
        k = bisect.bisect_left(info.pts, kf)  # the keyframe's index in presentation order
        if k <= pos:
            cost += i - pos  # same GOP as the decoder's position: decode on
        else:
            cost += i - k + 1 + SEEK_FRAMES
        pos = i
    return cost


def _decode_seek(path: str, info: StreamInfo, indices: list[int]) -> dict[int, tuple[np.ndarray, float]] | None:
    """Decode the frames ``indices`` by seeking; ``{index: (rgb frame, time in s)}``, or None when the decoder does
    not land on one of them (then the caller decodes sequentially)."""
    container = open_video(path)
    out: dict[int, tuple[np.ndarray, float]] = {}
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = float(info.pts[0] * stream.time_base)
        frames, pos = None, None  # the decode iterator and the pts of its last frame
        for i in sorted(set(indices)):
            target = info.pts[i]
            kf = keyframe_before(info, target)
            if frames is None or pos is None or kf > pos:
                container.seek(kf, backward=True, any_frame=False, stream=stream)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    return None
                pos = frame.pts
                if pos >= target:
                    break
            else:
                return None
            if pos != target:
                return None
            out[i] = (frame.to_ndarray(format="rgb24"), frame.time - t0)
    except Exception as exc:
        raise VideoError(f"{path}: corrupt stream: {exc}") from None
    finally:
        container.close()
    return out


def _decode(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], list[float | None]]:
    """Decode all of ``path``; the frames for the ``wanted`` indices and every decoded frame's time (s, from the
    first; None where a frame has no timestamp)."""
    container = open_video(path)
    frames: dict[int, np.ndarray] = {}
    times: list[float | None] = []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = None
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time
            if t0 is None:
                t0 = t
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            times.append((t - t0) if (t is not None and t0 is not None) else None)
    except Exception as exc:
        raise VideoError(f"{path}: corrupt stream: {exc}") from None
    finally:
        container.close()
    return frames, times


def load_frames_pyav(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    strict: bool = False,
    seek: bool | None = None,
) -> VideoClip:
    """Decode the frames :func:`dvr1.data.video_io.select_frames` picks, with PyAV.

    Args:
        path: a video file (any container/codec FFmpeg reads; the builder writes VP9 WebM).
        num_frames, fps, max_frames: see :func:`dvr1.data.video_io.sample_frame_indices` (neither given: 2 fps).
        strict: raise on a truncated file instead of warning (:func:`dvr1.data.video_io.check_truncated`).
        seek: None: seek when :func:`seek_cost` is under :data:`SEEK_FRACTION` of the frames; True: seek whenever
            possible; False: always decode sequentially. The frames are the same either way.

    Returns:
        :class:`dvr1.data.video_io.VideoClip` with frames uint8 ``[T, H, W, 3]``, T even; timestamps from the
        decoded frames' presentation times (``index / fps`` where a frame has none).

    Raises:
        ValueError: bad sampling arguments.
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt, empty or (strict) truncated video.
    """
    path = os.fspath(path)
    info = probe_stream(path)
    if info.num_frames == 0:
        raise VideoError(f"{path}: no frames")
    video_fps = info.fps
    times, last = info.times, info.last_duration
    indices, duration = select_frames(times, video_fps, num_frames, fps, max_frames, last_duration=last)
    if seek is not False:
        cost = seek_cost(info, indices)
        if cost is not None and (seek or cost < SEEK_FRACTION * info.num_frames):
            got = _decode_seek(path, info, indices)
            if got is not None:
                check_truncated(path, info, info.num_frames, duration, strict)
                return VideoClip(np.stack([got[i][0] for i in indices]), indices, [got[i][1] for i in indices],
                                 video_fps, duration)
    total = info.num_frames
    for _ in range(2):
        got, decoded_times = _decode(path, set(indices))
        decoded = len(decoded_times)
        if decoded == total:
            break
        if decoded == 0:
            raise VideoError(f"{path}: no decodable frames")
        # packet count and decoded count disagree: choose again on what decodes
        total = decoded
        times = [t if t is not None else i / video_fps for i, t in enumerate(decoded_times)]
        last = None
        indices, duration = select_frames(times, video_fps, num_frames, fps, max_frames)
    else:
        raise VideoError(f"{path}: frame count unstable between decodes")
    check_truncated(path, info, total, duration, strict)
    frames = np.stack([got[i] for i in indices])
    timestamps = [decoded_times[i] if decoded_times[i] is not None else i / video_fps for i in indices]
    return VideoClip(frames, indices, timestamps, video_fps, duration)


def frame_files(path: str) -> list[str]:
    """The image files (:data:`IMAGE_EXTS`) of the frame folder ``path``, in name order (the frame order of
    zero-padded names such as MVBench's ``00001.jpg``). Raises VideoError when there is none."""
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS)
                   and os.path.isfile(os.path.join(path, n)))
    if not names:
        raise VideoError(f"{path}: frame folder without image files ({', '.join(IMAGE_EXTS)})")
    return [os.path.join(path, n) for n in names]


def _decode_image(path: str) -> np.ndarray:
    """One image file as uint8 RGB ``[H, W, 3]``, decoded by PyAV (FFmpeg's image2 demuxer)."""
    container = open_video(path)
    try:
        frame = next(container.decode(container.streams.video[0]))
        return frame.to_ndarray(format="rgb24")
    except Exception as exc:
        raise VideoError(f"{path}: cannot decode image: {exc}") from None
    finally:
        container.close()


def load_frames_folder(
    path: str | os.PathLike,
    frame_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
) -> VideoClip:
    """A frame folder as a video: its image files in name order (:func:`frame_files`), frame ``i`` at ``i /
    frame_fps`` seconds (a constant rate, so :func:`dvr1.data.video_io.select_frames`'s rule is exactly
    :func:`~dvr1.data.video_io.sample_frame_indices` on ``N`` files at ``frame_fps``); only the chosen files are
    decoded. MVBench's official ``read_frame`` reads its TVQA frame folders at ``fps=3`` (OpenGVLab/Ask-Anything
    ``video_chat2/mvbench.ipynb``).

    Args:
        path: the directory; frame_fps: the rate the frames were extracted at (frames per second, ``> 0``);
        num_frames, fps, max_frames: as :func:`dvr1.data.video_io.sample_frame_indices`.

    Returns:
        :class:`dvr1.data.video_io.VideoClip`: frames uint8 ``[T, H, W, 3]`` (T even), timestamps ``index /
        frame_fps``, ``video_fps = frame_fps``, duration ``N / frame_fps`` seconds.

    Raises:
        ValueError: bad sampling arguments.
        VideoError: ``"{path}: ..."`` for a folder without images, an undecodable image, images of different sizes,
            a non-positive ``frame_fps``.
    """
    path = os.fspath(path)
    if not (isinstance(frame_fps, (int, float)) and frame_fps > 0):
        raise VideoError(f"{path}: a frame folder needs its frame rate (frame_fps > 0), got {frame_fps!r}")
    files = frame_files(path)
    indices = sample_frame_indices(len(files), float(frame_fps), num_frames, fps, max_frames)
    decoded = {i: _decode_image(files[i]) for i in sorted(set(indices))}
    shapes = {a.shape for a in decoded.values()}
    if len(shapes) > 1:
        raise VideoError(f"{path}: frame images of different sizes {sorted(shapes)}")
    return VideoClip(np.stack([decoded[i] for i in indices]), indices, [i / frame_fps for i in indices],
                     float(frame_fps), len(files) / frame_fps)
