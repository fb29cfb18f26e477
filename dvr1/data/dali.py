"""NVIDIA DALI video backend: decode, sample, resize, normalise and DA-Aug-augment clips in one DALI pipeline.

The same clip goes through the same steps as the PyAV path (:func:`dvr1.data.pyav.load_frames_pyav`, then
:func:`dvr1.data.processing.normalize_frames`, then :func:`dvr1.data.noise.add_frame_noise` / ``mask_frames``):

1. probe (PyAV demux only, no decoding): frame count, fps, codec, size, packet timestamps, header;
2. frame indices from :func:`dvr1.data.video_io.select_frames` on the frame times (identical indices to the PyAV
   backend by construction: DALI reads by frame index, the probe turns target times into indices);
3. ``fn.decoders.video`` on the file's bytes (external source) with ``frames=indices`` (device ``cpu``, or
   ``mixed`` = NVDEC on a GPU);
4. ``fn.resize`` (cubic, antialiased, uint8 result, as the HF processors resize uint8 images) to
   ``smart_resize(H, W, 28, min_pixels, max_pixels)``;
5. ``fn.crop_mirror_normalize`` with 255 x OPENAI CLIP mean/std -> float32 ``[T, 3, H', W']``;
6. DA-Aug (ALGORITHMS §4, DVR1 Eq. 9): ``fn.noise.gaussian`` with a per-sample ``stddev = sigma0 * level``
   (external source, so the difficulty controller sets it per clip) and frame masking by a per-sample
   ``[T, 1, 1, 1]`` 0/1 multiplier (masked frames become 0 = the mean in normalised space).

DALI's CPU decoder reads VP8, VP9 and MJPEG only (DALI 2.4 ``fn.decoders.video`` docs; docs/VIDEO.md). On CPU, a
clip in any other codec raises :class:`CodecUnsupported` (with one log line per file) before anything is decoded;
:mod:`dvr1.data.video` catches it and decodes that file with PyAV. This module does not import the PyAV backend.
Install: ``nvidia-dali-cuda120==2.4.0`` (runs without a GPU with ``device_id=None``).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch

from dvr1.data.noise import check_fraction, check_noise_level, masked_frame_indices
from dvr1.data.processing import MAX_PIXELS, MIN_PIXELS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PATCH_SIZE, MERGE_SIZE
from dvr1.data.processing import smart_resize
from dvr1.data.video_io import (NormalizedClip, StreamInfo, VideoClip, VideoError, check_truncated, probe_stream,
                                select_frames)

log = logging.getLogger(__name__)

CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI's CPU video decoder reads (DALI 2.4)
_CODEC_ALIASES = {"libvpx": "vp8", "libvpx-vp9": "vp9", "libdav1d": "av1", "libaom-av1": "av1"}
_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
_warned: set[str] = set()  # files already reported as falling back to PyAV
NOISE_SEEDS = 8  # pipelines are cached per seed; a small seed space bounds the cache (and the builds) per run


class CodecUnsupported(VideoError):
    """DALI on this device cannot decode the file's codec (on CPU: a codec outside :data:`CPU_CODECS`).
    Message: ``"{path}: codec {codec} is not readable by DALI's CPU video decoder"``."""


ProbeInfo = StreamInfo  # the demux facts DALI's pipelines are fed from (dvr1.data.video_io.StreamInfo)


def probe(path: str | os.PathLike) -> StreamInfo:
    """Frame count, fps, codec (DALI's names: ``libvpx-vp9`` -> ``vp9``), size, frame times and the header of
    ``path``'s first video stream, by demuxing (:func:`dvr1.data.video_io.probe_stream`).

    The frame count is the number of non-empty packets (what DALI's decoder indexes).

    Raises:
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable or empty file, or an unknown frame rate.
    """
    path = os.fspath(path)
    info = probe_stream(path)
    if info.num_frames == 0:
        raise VideoError(f"{path}: no frames")
    return dataclasses.replace(info, codec=_CODEC_ALIASES.get(info.codec, info.codec))


def default_device() -> str:
    """``"gpu"`` when torch sees a CUDA device, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


class DaliVideoPipeline:
    """A built DALI pipeline, in one of two modes.

    ``mode="decode"``: decoder only -> uint8 ``[T, H, W, 3]`` RGB (the "bare decoder").
    ``mode="full"``: decode -> resize -> normalise [-> noise] [-> mask] -> float32 ``[T, 3, H', W']``.

    Per-sample inputs (external sources, one entry per clip of the batch): the file bytes ``[nbytes]`` uint8,
    the frame indices ``[T]`` int32; in full mode also the output size ``[2]`` float32 (H', W'), and, when built
    with them, the noise std (scalar float32, normalised units) and the frame keep-mask ``[T, 1, 1, 1]`` float32.
    Noise and masking are separate graph variants because their cost is paid per element even at std 0 / no
    masked frame (on CPU, ``noise.gaussian`` alone costs ~6x the decode of a 16-frame 112x112 clip).

    Args:
        mode: ``"decode"`` or ``"full"``.
        resize: full mode: include ``fn.resize`` (False only when every clip already has the output size).
        noise, mask: full mode: include the DA-Aug noise / frame-masking operators.
        device: ``"cpu"`` or ``"gpu"`` (decoder ``mixed``, i.e. NVDEC, then GPU operators).
        batch_size: most clips per :meth:`run` call.
        num_threads: DALI CPU worker threads.
        seed: DALI's random seed (noise); the same seed and the same call sequence give the same noise.
    """

    def __init__(self, mode: str = "full", device: str = "cpu", batch_size: int = 1, num_threads: int = 1,
                 seed: int = 0, resize: bool = True, noise: bool = True, mask: bool = True):
        from nvidia.dali import fn, pipeline_def, types

        if mode not in ("decode", "full"):
            raise ValueError(f"DaliVideoPipeline: mode must be 'decode' or 'full', got {mode!r}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"DaliVideoPipeline: device must be 'cpu' or 'gpu', got {device!r}")
        self.mode, self.device, self.batch_size = mode, device, batch_size
        self.resize, self.noise, self.mask = resize, noise, mask
        device_id = torch.cuda.current_device() if device == "gpu" else None
        mean = [255.0 * m for m in OPENAI_CLIP_MEAN]
        std = [255.0 * s for s in OPENAI_CLIP_STD]

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                      prefetch_queue_depth=1)
        def graph():
            data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
            idx = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            v = fn.decoders.video(data, device="mixed" if device == "gpu" else "cpu", frames=idx)
            if mode == "decode":
                return v
            if resize:
                size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
                v = fn.resize(v, size=size, interp_type=types.INTERP_CUBIC, antialias=True, dtype=types.UINT8)
            v = fn.crop_mirror_normalize(v, dtype=types.FLOAT, output_layout="FCHW", mean=mean, std=std)
            if noise:
                v = fn.noise.gaussian(v, stddev=fn.external_source(name="stddev", dtype=types.FLOAT, ndim=0))
            if mask:
                keep = fn.external_source(name="keep", dtype=types.FLOAT, ndim=4)
                v = v * (keep.gpu() if device == "gpu" else keep)
            return v

        self.pipe = graph()
        self.pipe.build()

    def run(self, data: list[np.ndarray], frames: list[np.ndarray], size: list[tuple[int, int]] | None = None,
            stddev: list[float] | None = None, keep: list[np.ndarray] | None = None) -> list[torch.Tensor]:
        """Run one batch of ``len(data) <= batch_size`` clips.

        Args:
            data: file bytes, uint8 ``[nbytes]`` each; frames: int ``[T_i]`` frame indices each.
            size, stddev, keep: full mode only (each where the pipeline was built with resize / noise / mask):
                output ``(H', W')`` pixels, noise std, float ``[T_i]`` 0/1 keep-mask.

        Returns:
            one torch tensor per clip: uint8 ``[T, H, W, 3]`` (decode) or float32 ``[T, 3, H', W']`` (full), on
            the GPU for ``device="gpu"``.

        Raises:
            RuntimeError: DALI's error (a corrupt stream, an index past the end); the pipeline is unusable after.
        """
        n = len(data)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"DaliVideoPipeline.run: 1..{self.batch_size} clips per batch, got {n}")
        self.pipe.feed_input("data", data)
        self.pipe.feed_input("frames", [np.asarray(f, dtype=np.int32) for f in frames])
        if self.mode == "full" and self.resize:
            self.pipe.feed_input("size", [np.asarray(s, dtype=np.float32) for s in size])
        if self.mode == "full" and self.noise:
            self.pipe.feed_input("stddev", [np.float32(s) for s in stddev])
        if self.mode == "full" and self.mask:
            self.pipe.feed_input("keep", [np.asarray(k, dtype=np.float32).reshape(-1, 1, 1, 1) for k in keep])
        (out,) = self.pipe.run()
        return [_to_torch(out[i]) for i in range(n)]


def _to_torch(t) -> torch.Tensor:
    """A DALI TensorCPU/TensorGPU -> torch tensor (a copy) on the same device."""
    from nvidia.dali.backend import TensorGPU

    if isinstance(t, TensorGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=torch.device("cuda"))
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_numpy(np.array(t))


_pipes: dict[tuple, DaliVideoPipeline] = {}


def get_pipeline(mode: str = "full", device: str | None = None, batch_size: int = 1, num_threads: int = 1,
                 seed: int = 0, resize: bool = True, noise: bool = True, mask: bool = True) -> DaliVideoPipeline:
    """A cached :class:`DaliVideoPipeline` (built once per argument set; ``device=None`` = :func:`default_device`)."""
    key = (mode, device or default_device(), batch_size, num_threads, seed, resize, noise, mask)
    if key not in _pipes:
        _pipes[key] = DaliVideoPipeline(*key)
    return _pipes[key]


def _reset(pipe: DaliVideoPipeline) -> None:
    """Drop a pipeline after a DALI error (its executor state is not reusable)."""
    for k, v in list(_pipes.items()):
        if v is pipe:
            del _pipes[k]


def _read_bytes(path: str) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise VideoError(f"{path}: cannot read: {exc}") from None


def _check_codec(path: str, codec: str, device: str) -> None:
    """Raises :class:`CodecUnsupported` (one log line per file) when DALI on ``device`` cannot decode ``codec``."""
    if device == "gpu" or codec in CPU_CODECS:
        return
    if path not in _warned:
        _warned.add(path)
        log.warning("%s: codec %s is not readable by DALI's CPU video decoder; decoding this file with PyAV", path, codec)
    raise CodecUnsupported(f"{path}: codec {codec} is not readable by DALI's CPU video decoder")


def draw_seed(generator: torch.Generator | None) -> int:
    """A pipeline seed in ``[0, NOISE_SEEDS)`` drawn from ``generator`` (one ``torch.randint`` draw), so a run's
    DALI noise follows its checkpointed generator while at most :data:`NOISE_SEEDS` noise pipelines get built."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) % NOISE_SEEDS


def _decode(pipe: DaliVideoPipeline, path: str, **feeds) -> torch.Tensor:
    try:
        return pipe.run(**feeds)[0]
    except RuntimeError as exc:
        _reset(pipe)
        raise VideoError(f"{path}: DALI decode failed: {_dali_reason(exc)}") from None


def _dali_reason(exc: Exception) -> str:
    """The operator's own message from DALI's multi-line pipeline error (the line after ``encountered:``)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines[:-1]):
        if ln == "encountered:":
            return lines[i + 1]
    return lines[-1] if lines else type(exc).__name__


def _sample(path: str, info: StreamInfo, num_frames, fps, max_frames,
            strict: bool) -> tuple[list[int], list[float], float]:
    """The PyAV backend's frame choice (:func:`dvr1.data.video_io.select_frames` on the demuxed frame times: DALI
    reads by frame index, so timestamps become indices here), their times, the duration; truncation is checked."""
    indices, duration = select_frames(info.times, info.fps, num_frames, fps, max_frames,
                                      last_duration=info.last_duration)
    check_truncated(path, info, info.num_frames, duration, strict)
    return indices, [info.times[i] for i in indices], duration


def load_frames_dali(path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
                     max_frames: int = 32, device: str | None = None, num_threads: int = 1,
                     strict: bool = False) -> VideoClip:
    """DALI counterpart of :func:`dvr1.data.pyav.load_frames_pyav` (``dvr1.data.video.load_frames(...,
    backend="dali")`` calls it and decodes with PyAV on :class:`CodecUnsupported`).

    Same frame indices (:func:`dvr1.data.video_io.select_frames` on the demuxed frame times and fps: by
    presentation time, the index rule for a constant frame rate) and the same return type; pixels differ from
    PyAV's by the decoders' YUV->RGB conversion (see tests/unit/test_dali.py). ``strict``: raise on a truncated
    file (:func:`dvr1.data.video_io.check_truncated`) instead of warning.

    Returns:
        :class:`VideoClip` with frames uint8 ``[T, H, W, 3]`` (a CPU numpy array, also after a GPU decode).

    Raises:
        CodecUnsupported: on CPU, a codec outside :data:`CPU_CODECS` (one log line per file).
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt, empty or (strict) truncated video.
        ValueError: bad sampling arguments.
    """
    path = os.fspath(path)
    device = device or default_device()
    info = probe(path)
    _check_codec(path, info.codec, device)
    indices, times, duration = _sample(path, info, num_frames, fps, max_frames, strict)
    pipe = get_pipeline("decode", device, 1, num_threads)
    frames = _decode(pipe, path, data=[_read_bytes(path)], frames=[indices])
    return VideoClip(frames.cpu().numpy(), indices, times, info.fps, duration)


def load_video_dali(path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
                    max_frames: int = 32, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                    sigma0: float = 0.0, level: float = 0.0, mask_fraction: float = 0.0,
                    generator: torch.Generator | None = None, device: str | None = None, num_threads: int = 1,
                    seed: int = 0, strict: bool = False) -> NormalizedClip:
    """Decode, sample, resize, normalise and DA-Aug-augment one clip in DALI (the full pipeline).

    Equivalent to ``normalize_frames(load_frames_pyav(...).frames)`` then ``add_frame_noise(v, sigma0, level)`` and
    ``mask_frames(v, mask_fraction, generator)`` (ALGORITHMS §4, DVR1 Eq. 9: ``v̂ = v + σ0·level·N(0, I)``).
    The masked frames are chosen exactly as ``mask_frames`` chooses them
    (:func:`dvr1.data.noise.masked_frame_indices`: one ``torch.randperm(T, generator)`` draw, also when none is
    masked); the noise comes from DALI's generator (``seed``), not ``generator``.
    :func:`dvr1.data.video.load_clip` (``backend="dali"``) calls it and falls back to PyAV + the torch ops on
    :class:`CodecUnsupported`.

    Args:
        path: a video file; num_frames, fps, max_frames: as :func:`dvr1.data.video_io.sample_frame_indices`;
        min_pixels, max_pixels: resize area bounds (pixels); sigma0 >= 0 (normalised units), level >= 0;
        mask_fraction in [0, 1]; device: ``"cpu"``/``"gpu"``/None (auto); seed: DALI pipeline seed;
        strict: raise on a truncated file instead of warning.

    Returns:
        :class:`dvr1.data.video_io.NormalizedClip` with video float32 ``[T, 3, H', W']``, backend ``"dali"``.

    Raises:
        CodecUnsupported: on CPU, a codec outside :data:`CPU_CODECS` (one log line per file; no generator draw).
        VideoError: ``"{path}: {reason}"`` for a missing, unreadable, corrupt, empty or (strict) truncated video.
        ValueError: bad sampling arguments, negative/non-finite sigma0 or level, mask_fraction outside [0, 1].
    """
    check_noise_level("load_video_dali", sigma0, level)
    check_fraction("load_video_dali", "mask_fraction", mask_fraction)
    path = os.fspath(path)
    device = device or default_device()
    info = probe(path)
    _check_codec(path, info.codec, device)
    indices, times, duration = _sample(path, info, num_frames, fps, max_frames, strict)
    T = len(indices)
    masked = masked_frame_indices(T, mask_fraction, generator)
    keep = np.ones(T, dtype=np.float32)
    keep[masked.numpy()] = 0.0
    h, w = smart_resize(info.height, info.width, factor=_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    std = float(sigma0) * float(level)
    pipe = get_pipeline("full", device, 1, num_threads, seed, (h, w) != (info.height, info.width), std > 0,
                        masked.numel() > 0)
    video = _decode(pipe, path, data=[_read_bytes(path)], frames=[indices], size=[(h, w)], stddev=[std], keep=[keep])
    return NormalizedClip(video, masked, indices, times, info.fps, duration, "dali")
