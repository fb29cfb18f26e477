"""Qwen2.5-VL video preprocessing: resize to the 28-px grid, normalise, temporal patches.

Produces the two model inputs of Hugging Face's Qwen2-VL / Qwen2.5-VL video processor
(``transformers/models/qwen2_vl/video_processing_qwen2_vl.py``, ``Qwen2VLVideoProcessor``):
``pixel_values_videos`` float32 ``[N, 3 * 2 * 14 * 14]`` and ``video_grid_thw`` ``[3]`` (t, h, w in patches).
It runs without torchvision (which that HF module imports and which is not installed here).
DA-Aug's noise (ALGORITHMS §4, DVR1 Eq. 9) is added to the output of :func:`normalize_frames`,
before :func:`patchify`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

try:  # transformers 4.x; in 5.x this module imports torchvision
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
except ImportError:
    try:  # transformers 5.x PIL backend, same function ("Copied from ... smart_resize")
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:

        def smart_resize(
            height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
        ) -> tuple[int, int]:
            """Same as transformers' Qwen2-VL ``smart_resize``: (h, w) divisible by ``factor``, area in
            ``[min_pixels, max_pixels]``, aspect ratio kept as closely as possible."""
            if max(height, width) / min(height, width) > 200:
                raise ValueError(
                    f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
                )
            h_bar = round(height / factor) * factor
            w_bar = round(width / factor) * factor
            if h_bar * w_bar > max_pixels:
                beta = math.sqrt((height * width) / max_pixels)
                h_bar = max(factor, math.floor(height / beta / factor) * factor)
                w_bar = max(factor, math.floor(width / beta / factor) * factor)
            elif h_bar * w_bar < min_pixels:
                beta = math.sqrt(min_pixels / (height * width))
                h_bar = math.ceil(height * beta / factor) * factor
                w_bar = math.ceil(width * beta / factor) * factor
            return h_bar, w_bar


# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (the Qwen2-VL processor's image_mean/std)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56  # HF Qwen2-VL image processor default; keeps 112x112 clips at 112x112
MAX_PIXELS = 28 * 28 * 768  # HF Qwen2-VL video processor default (longest_edge)


def _resize_uint8(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of float ``[T, 3, H, W]`` holding uint8 values, as PIL does it:
    a horizontal pass, rounding/clipping to uint8, then a vertical pass (PIL ``ImagingResample``);
    agrees with PIL's ``Image.resize(BICUBIC)`` to within 1 grey level."""
    if x.shape[-1] != width:
        x = F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


def normalize_frames(
    frames: np.ndarray | torch.Tensor,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    factor: int = PATCH_SIZE * MERGE_SIZE,
) -> torch.Tensor:
    """Resize, rescale and normalise video frames as the Qwen2.5-VL processor does.

    Steps: bicubic resize to ``smart_resize(H, W, factor, min_pixels, max_pixels)`` (uint8 precision, as the
    HF processors resize uint8 images), ``x / 255``, ``(x - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD`` per channel.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB.
        min_pixels, max_pixels: area bounds of the resized frame (pixels).
        factor: side multiple (``patch_size * merge_size`` = 28).

    Returns:
        float32 ``[T, 3, H', W']`` with ``H'``, ``W'`` multiples of ``factor``.

    Raises:
        ValueError: frames not uint8 ``[T, H, W, 3]`` with ``T >= 1``.
    """
    x = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {x.dtype} {tuple(x.shape)}")
    h, w = smart_resize(int(x.shape[1]), int(x.shape[2]), factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    x = _resize_uint8(x.permute(0, 3, 1, 2).to(torch.float32), h, w)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x * (1.0 / 255.0) - mean) / std).contiguous()


def patchify(
    video: torch.Tensor | np.ndarray,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a normalised video into Qwen2-VL vision patches, in HF's exact order.

    Layout (HF ``Qwen2VLVideoProcessor.patchify``): T is padded to a multiple of ``temporal_patch_size`` by
    repeating the last frame; rows are ordered ``(t, h_block, w_block, h_in_block, w_in_block)`` with
    ``merge_size x merge_size`` blocks (so the vision merger can fuse consecutive rows); each row is
    ``(channel, temporal, patch_row, patch_col)`` flattened.

    Args:
        video: float ``[T, 3, H, W]`` (output of :func:`normalize_frames`); H, W multiples of
            ``patch_size * merge_size``.

    Returns:
        ``pixel_values_videos`` float32 ``[grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2]``
        and ``video_grid_thw`` int64 ``[3]`` = ``(ceil(T / temporal_patch_size), H / patch_size, W / patch_size)``.

    Raises:
        ValueError: wrong rank/channels, or H, W not multiples of ``patch_size * merge_size``.
    """
    x = torch.as_tensor(video, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        raise ValueError(f"video must be [T, 3, H, W] with T >= 1, got {tuple(x.shape)}")
    t, c, h, w = x.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size * merge_size = {unit}")
    if pad := -t % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
        t += pad
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = x.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size,
                  patch_size)
    # (gt, gh/m, gw/m, m_h, m_w, C, tp, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size).contiguous()
    return pixel_values, torch.tensor([gt, gh, gw], dtype=torch.long)


def num_video_tokens(video_grid_thw: torch.Tensor, merge_size: int = MERGE_SIZE) -> int:
    """Number of ``<|video_pad|>`` tokens the LLM sees for one video: ``prod(grid_thw) // merge_size**2``."""
    return int(torch.prod(torch.as_tensor(video_grid_thw)).item()) // (merge_size * merge_size)


def preprocess_video(
    frames: np.ndarray | torch.Tensor,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalize_frames` then :func:`patchify`: uint8 ``[T, H, W, 3]`` ->
    (``pixel_values_videos`` float32 ``[N, 1176]``, ``video_grid_thw`` int64 ``[3]``)."""
    return patchify(normalize_frames(frames, min_pixels, max_pixels))
