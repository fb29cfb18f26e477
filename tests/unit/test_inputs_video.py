"""InputBuilder's video path with both backends: the same normalised clip, and DA-Aug noise/masking of the set std."""

import types

import numpy as np
import pytest
import torch

from dvr1.config import VideoConfig
from dvr1.data.build import write_webm
from dvr1.data.schema import VideoQARecord
from dvr1.train.inputs import InputBuilder

INFO = types.SimpleNamespace(patch_size=14, temporal_patch_size=2, merge_size=2)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    # smooth, moving colour gradients (natural-video-like; per-pixel noise would exaggerate chroma-upsampling
    # differences between the two decoders' YUV->RGB conversions)
    t, y, x = np.meshgrid(np.arange(24), np.arange(84), np.arange(112), indexing="ij")
    frames = np.stack([128 + 100 * np.sin((x + 3 * t) / 15), 128 + 100 * np.cos((y - 2 * t) / 11),
                       128 + 60 * np.sin((x + y + t) / 20)], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("clip") / "clip.webm"
    write_webm(str(path), frames, fps=8)
    return VideoQARecord(id="r0", video=str(path), question="q", options=["a", "b", "c", "d"], answer="A",
                         task="arrow_of_time", segment=None, fps=8.0, duration=3.0, source="s", split="train", meta={})


def builder(backend):
    cfg = VideoConfig(backend=backend, num_frames=8, max_pixels=112 * 112)
    return InputBuilder(types.SimpleNamespace(info=INFO, visual=None), tokenizer=None, video_cfg=cfg)


def test_dali_and_pyav_give_the_same_normalised_clip(record):
    a, b = builder("pyav").video(record), builder("dali").video(record)
    assert a.video.shape == b.video.shape == (8, 3, 84, 112)
    assert a.second_per_grid == pytest.approx(b.second_per_grid)
    assert float((a.video - b.video).abs().mean()) < 0.03  # decoder differences (tests/unit/test_dali.py)


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_noisy_video_has_the_configured_std_and_masks_frames(record, backend):
    b = builder(backend)
    clean = b.video(record).video
    g = torch.Generator().manual_seed(3)
    noisy = b.noisy_video(record, sigma0=0.1, level=2.0, mask_fraction=0.25, generator=g)
    masked = [t for t in range(8) if float(noisy[t].abs().max()) == 0.0]
    assert len(masked) == 2  # floor(0.25 * 8 + 0.5)
    keep = [t for t in range(8) if t not in masked]
    diff = noisy[keep] - clean[keep]
    assert abs(float(diff.std()) - 0.2) < 0.01 and abs(float(diff.mean())) < 0.01
    again = b.noisy_video(record, 0.1, 2.0, 0.25, torch.Generator().manual_seed(3))
    if backend == "pyav":  # torch noise from the checkpointed generator: reproducible
        assert torch.equal(again, noisy)


def test_data_strict_reaches_the_decoder(tmp_path):
    """`data.strict` goes through InputBuilder: a file cut at half its bytes is a VideoError (the record is then
    skipped by prepare_or_skip) under strict, and decodes with a warning otherwise."""
    from dvr1.data.video import VideoError

    t = np.arange(80)[:, None, None, None]
    frames = np.broadcast_to((t * 3 % 255).astype(np.uint8), (80, 64, 64, 3)).copy()
    full = tmp_path / "full.webm"
    write_webm(str(full), frames, fps=8)  # 10 s
    half = tmp_path / "half.webm"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    rec = VideoQARecord(id="r1", video=str(half), question="q", options=["a", "b", "c", "d"], answer="A",
                        task="arrow_of_time", segment=None, fps=8.0, duration=10.0, source="s", split="train", meta={})
    cfg = VideoConfig(num_frames=8, max_pixels=64 * 64, min_pixels=32 * 32)
    lenient = InputBuilder(types.SimpleNamespace(info=INFO, visual=None), tokenizer=None, video_cfg=cfg)
    assert lenient._clip(rec).video.shape[0] == 8
    strict = InputBuilder(types.SimpleNamespace(info=INFO, visual=None), tokenizer=None, video_cfg=cfg, strict=True)
    with pytest.raises(VideoError, match="truncated file"):
        strict._clip(rec)
