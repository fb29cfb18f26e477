"""normalize_frames / patchify against Hugging Face's Qwen2-VL processors.

HF's video processor module imports torchvision (not installed), so its ``patchify`` method is taken from the
installed source file with ``ast`` and run on its own; the PIL image processor (no torchvision) checks the
resize + rescale + normalise path and the spatial patch layout.
"""

import ast
import inspect

import numpy as np
import pytest
import torch

import dvr1  # noqa: F401  before transformers: lets an installed CUDA torchvision import (dvr1/torchvision_cpu.py)
import transformers
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_pil

from dvr1.data.processing import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    normalize_frames,
    num_video_tokens,
    patchify,
    preprocess_video,
    smart_resize,
)

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 768
# one grey level of resize disagreement, in normalised units (smallest CLIP std)
ONE_LEVEL = 1.0 / 255.0 / min(OPENAI_CLIP_STD)


def _hf_video_patchify():
    """``Qwen2VLVideoProcessor.patchify`` from the installed transformers source, without importing torchvision."""
    path = transformers.__file__.replace("__init__.py", "models/qwen2_vl/video_processing_qwen2_vl.py")
    tree = ast.parse(open(path).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    ns = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), ns)
    return ns["patchify"]


def _hf_image_processor():
    return hf_pil.Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def test_smart_resize_is_transformers():
    assert smart_resize.__module__.startswith("transformers.")
    assert smart_resize(112, 112, 28, MIN_PIXELS, MAX_PIXELS) == (112, 112)
    assert smart_resize(144, 176, 28, MIN_PIXELS, MAX_PIXELS) == (140, 168)
    assert smart_resize(720, 1280, 28, MIN_PIXELS, MAX_PIXELS) == (560, 1008)  # area capped by max_pixels
    assert smart_resize(30, 30, 28, MIN_PIXELS, MAX_PIXELS) == (56, 56)  # raised to min_pixels


@pytest.mark.parametrize("t", [4, 5])
def test_patchify_equals_hf_video_processor(t):
    hf = _hf_video_patchify()
    video = torch.randn(t, 3, 56, 84, generator=torch.Generator().manual_seed(t))
    ours, grid = patchify(video)
    ref, gt, gh, gw = hf(None, video[None].clone(), patch_size=14, merge_size=2, temporal_patch_size=2)
    assert torch.equal(ours, ref[0])  # exact, including the padded last frame for odd t
    assert grid.dtype == torch.long and grid.tolist() == [gt, gh, gw] == [(t + 1) // 2, 4, 6]
    assert ours.shape == (gt * gh * gw, 3 * 2 * 14 * 14)


def test_patchify_spatial_layout_equals_hf_image_processor():
    """A 2-frame clip of one image is exactly the image processor's output (it broadcasts t to 2)."""
    img = np.random.default_rng(0).normal(size=(3, 56, 112)).astype(np.float32)
    ref, gh, gw = _hf_image_processor().patchify(img, patch_size=14, merge_size=2, temporal_patch_size=2)
    ours, grid = patchify(torch.from_numpy(np.stack([img, img])))
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(ref)))
    assert grid.tolist() == [1, gh, gw]


def test_normalize_no_resize_matches_hf():
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 112, 112, 3), dtype=np.uint8)
    x = normalize_frames(frames)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 112, 112)
    mean = np.array(OPENAI_CLIP_MEAN, np.float64)[:, None, None]
    std = np.array(OPENAI_CLIP_STD, np.float64)[:, None, None]
    ref = (frames.transpose(0, 3, 1, 2) / 255.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-6)
    # full pipeline on a 2-frame clip of one frame vs the HF image processor
    pv, grid = preprocess_video(np.stack([frames[0], frames[0]]))
    out = _hf_image_processor()(images=[frames[0]], return_tensors="np")
    np.testing.assert_allclose(pv.numpy(), out["pixel_values"], rtol=0, atol=1e-6)
    assert grid.tolist() == out["image_grid_thw"][0].tolist() == [1, 8, 8]


@pytest.mark.parametrize("hw", [(144, 176), (60, 90), (100, 100), (272, 640)])
def test_normalize_with_resize_matches_hf_within_one_level(hw):
    """The resize is PIL's bicubic done in torch; it may differ by one grey level on a few pixels."""
    frame = np.random.default_rng(hw[0]).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    pv, grid = preprocess_video(np.stack([frame, frame]))
    out = _hf_image_processor()(images=[frame], return_tensors="np")
    ref = out["pixel_values"]
    assert grid.tolist() == out["image_grid_thw"][0].tolist()
    diff = np.abs(pv.numpy() - ref)
    assert diff.max() <= ONE_LEVEL + 1e-5
    assert (diff > 1e-5).mean() < 0.005


def test_grid_and_token_count():
    frames = np.zeros((6, 112, 112, 3), np.uint8)
    pv, grid = preprocess_video(frames)
    assert grid.tolist() == [3, 8, 8]
    assert pv.shape == (3 * 8 * 8, 1176)
    assert num_video_tokens(grid) == 3 * 8 * 8 // 4 == 48
    # odd T pads with the last frame: 7 frames -> grid_t 4
    assert preprocess_video(np.zeros((7, 112, 112, 3), np.uint8))[1].tolist() == [4, 8, 8]


def test_errors():
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, H, W, 3\] with T >= 1, got torch.float32"):
        normalize_frames(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="frame size 56x60 is not a multiple of patch_size \\* merge_size = 28"):
        patchify(torch.zeros(2, 3, 56, 60))
    with pytest.raises(ValueError, match=r"video must be \[T, 3, H, W\]"):
        patchify(torch.zeros(2, 56, 56, 3))


def test_hf_patchify_source_is_method():
    """Guard: the extracted HF function is the processor method (self, videos, ...)."""
    params = list(inspect.signature(_hf_video_patchify()).parameters)
    assert params == ["self", "videos", "patch_size", "merge_size", "temporal_patch_size"]
