"""Video loading, above both backends: :func:`load_frames` (uint8 frames) and :func:`load_clip` (normalised,
optionally DA-Aug-augmented tensors) for ``backend="pyav"`` (:mod:`dvr1.data.pyav`) or ``"dali"``
(:mod:`dvr1.data.dali`).

The backends share :mod:`dvr1.data.video_io` (errors, clip types, the sampling rule, opening a file) and never import
each other; the per-file fallback from DALI to PyAV (a codec DALI's CPU decoder cannot read) happens here. The names
of :mod:`dvr1.data.video_io` (``VideoError``, ``VideoClip``, ``sample_frame_indices``, ...) are importable from here.
A directory is a frame folder (:func:`dvr1.data.pyav.load_frames_folder`, at the record's ``meta["frame_fps"]``),
decoded with PyAV whatever the backend.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import torch

from dvr1.data import dali, pyav
from dvr1.data.noise import FrameNoise, add_frame_noise, mask_frames
from dvr1.data.processing import MAX_PIXELS, MIN_PIXELS, normalize_frames
from dvr1.data.video_io import (BACKENDS, DEFAULT_FPS, TEMPORAL_PATCH, NormalizedClip, VideoClip, VideoError,
                                check_backend, sample_frame_indices)

__all__ = ["BACKENDS", "DEFAULT_FPS", "TEMPORAL_PATCH", "FrameNoise", "NormalizedClip", "Sampling", "VideoClip",
           "VideoError", "load_clip", "load_frames", "sample_frame_indices"]


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip, at what size.

    Attributes:
        num_frames, fps, max_frames: as :func:`dvr1.data.video_io.sample_frame_indices` (at most one of
            ``num_frames`` / ``fps``; neither: 2 fps);
        min_pixels, max_pixels: bounds on the resized frame area (pixels), as
            :func:`dvr1.data.processing.normalize_frames`.
    """

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int = 32
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS

    @classmethod
    def from_config(cls, video_cfg) -> "Sampling":
        """From a ``VideoConfig`` (``dvr1.config``): ``num_frames`` 0 means "sample at ``fps``"."""
        v = video_cfg
        return cls(num_frames=v.num_frames or None, fps=None if v.num_frames else v.fps, max_frames=v.max_frames,
                   min_pixels=v.min_pixels, max_pixels=v.max_pixels)


def load_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    backend: str = "pyav",
    strict: bool = False,
    frame_fps: float | None = None,
) -> VideoClip:
    """Decode frames sampled by presentation time (:func:`dvr1.data.video_io.select_frames`: for a constant frame
    rate exactly :func:`sample_frame_indices`).

    Args:
        path: a video file (any container/codec FFmpeg reads; the builder writes VP9 WebM).
        num_frames, fps, max_frames: see :func:`sample_frame_indices` (neither given: 2 fps).
        backend: ``"pyav"`` (:func:`dvr1.data.pyav.load_frames_pyav`) or ``"dali"``
            (:func:`dvr1.data.dali.load_frames_dali`: same indices and return type; on CPU, codecs DALI's CPU
            decoder cannot read fall back to PyAV per file).
        strict: a truncated file (:func:`dvr1.data.video_io.check_truncated`) raises instead of warning.
        frame_fps: the frame rate of a frame folder ``path`` (a directory; frames per second); unused for a file.

    Returns:
        :class:`VideoClip` with frames uint8 ``[T, H, W, 3]``, T even.

    Raises:
        ValueError: unknown backend (names the valid ones), bad sampling arguments.
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt, empty or (strict) truncated video.
    """
    check_backend(backend)
    if os.path.isdir(path):
        return pyav.load_frames_folder(path, frame_fps, num_frames, fps, max_frames)
    if backend == "dali":
        try:
            return dali.load_frames_dali(path, num_frames, fps, max_frames, strict=strict)
        except dali.CodecUnsupported:
            pass
    return pyav.load_frames_pyav(path, num_frames, fps, max_frames, strict=strict)


def _pyav_clip(path, s: Sampling, strict: bool = False, frame_fps: float | None = None) -> NormalizedClip:
    """PyAV decode (a file, or a frame folder at ``frame_fps``) + torch resize/normalise; nothing masked."""
    clip = load_frames(path, s.num_frames, s.fps, s.max_frames, "pyav", strict, frame_fps)
    video = normalize_frames(clip.frames, min_pixels=s.min_pixels, max_pixels=s.max_pixels)
    return NormalizedClip(video, torch.zeros(0, dtype=torch.long), clip.indices, clip.timestamps, clip.video_fps,
                          clip.duration, "pyav")


def load_clip(
    path: str | os.PathLike,
    backend: str,
    sampling: Sampling,
    noise: FrameNoise | None = None,
    clean: Callable[[], NormalizedClip] | None = None,
    device: str | None = None,
    strict: bool = False,
    frame_fps: float | None = None,
) -> NormalizedClip:
    """One clip, decoded, sampled, resized, normalised and (with ``noise``) DA-Aug-augmented (ALGORITHMS §4).

    - ``"pyav"``: PyAV decode, then :func:`dvr1.data.processing.normalize_frames`. With ``noise``: the clean clip
      (``clean()`` when given, e.g. a cache, else decoded here) plus :func:`dvr1.data.noise.add_frame_noise`
      (``noise.generator``), then :func:`dvr1.data.noise.mask_frames` (``noise.generator``) when
      ``mask_fraction > 0``; the noise is reproducible from the generator.
    - ``"dali"``: :func:`dvr1.data.dali.load_video_dali` runs all of it in one pipeline. With ``noise``, its
      pipeline seed is first drawn from ``noise.generator`` (:func:`dvr1.data.dali.draw_seed`), then the masked
      frames; ``clean`` is not used. A codec DALI's CPU decoder cannot read (one log line per file) is decoded with
      PyAV instead, then noise from torch's default generator when ``sigma0 * level > 0`` and
      :func:`~dvr1.data.noise.mask_frames` (one frame-choice draw, also when nothing is masked).

    Args:
        path: a video file; backend: ``"pyav"`` or ``"dali"``; sampling: frames and size; noise: the DA-Aug draw
            (None: the clean clip); clean: returns this path's clean clip (PyAV with noise only);
            device: DALI's ``"cpu"``/``"gpu"`` (None: GPU when torch sees CUDA); strict: a truncated file
            (:func:`dvr1.data.video_io.check_truncated`) raises instead of warning (``data.strict``);
            frame_fps: the rate of a frame folder ``path`` (decoded with PyAV, as DALI's fallback when ``"dali"``).

    Returns:
        :class:`NormalizedClip`, video float32 ``[T, 3, H', W']`` (on the GPU after a DALI GPU decode).

    Raises:
        ValueError: unknown backend, bad sampling arguments, bad noise arguments.
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt, empty or (strict) truncated video.
    """
    check_backend(backend)
    s = sampling
    if backend == "dali":
        draw = {} if noise is None else dict(sigma0=noise.sigma0, level=noise.level,
                                             mask_fraction=noise.mask_fraction, generator=noise.generator)
        seed = 0 if noise is None else dali.draw_seed(noise.generator)
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(path)  # a frame folder: DALI's fallback path
            return dali.load_video_dali(path, s.num_frames, s.fps, s.max_frames, min_pixels=s.min_pixels,
                                        max_pixels=s.max_pixels, device=device, seed=seed, strict=strict, **draw)
        except (dali.CodecUnsupported, IsADirectoryError):
            clip = _pyav_clip(path, s, strict, frame_fps)
            n = noise or FrameNoise(0.0, 0.0, 0.0, None)
            video = clip.video
            if n.sigma0 * n.level > 0:
                video = add_frame_noise(video, n.sigma0, n.level)
            video, masked = mask_frames(video, n.mask_fraction, n.generator)
            return dataclasses.replace(clip, video=video, masked=masked)
    if noise is None:
        return _pyav_clip(path, s, strict, frame_fps)
    clip = clean() if clean is not None else _pyav_clip(path, s, strict, frame_fps)
    video = add_frame_noise(clip.video, noise.sigma0, noise.level, noise.generator)
    masked = torch.zeros(0, dtype=torch.long)
    if noise.mask_fraction > 0:
        video, masked = mask_frames(video, noise.mask_fraction, noise.generator)
    return dataclasses.replace(clip, video=video, masked=masked)
