"""DALI video backend (dvr1/data/dali.py) against the PyAV path and the torch DA-Aug ops, on DALI's CPU operators,
and the per-file fallback to PyAV in dvr1/data/video.py.

Tolerances (stated): decoders differ in YUV->RGB rounding (~1 grey level) and chroma upsampling at sharp edges,
so decoded frames agree to a mean |diff| <= 2.5 grey levels (measured 1.69); DALI's cubic antialiased resize vs the
PIL-style torch resize on the SAME decoded frames agrees to a mean <= 0.3 and a max <= 2 grey levels (measured 0.15
and 1.0); end to end the normalised tensors agree to a mean |diff| <= 0.03 (measured 0.021, ~1.4 grey levels).
"""

import logging
import math

import av
import numpy as np
import pytest
import torch

from dvr1.data import dali
from dvr1.data.build import write_webm
from dvr1.data.processing import OPENAI_CLIP_STD, normalize_frames
from dvr1.data.noise import mask_frames
from dvr1.data.video import Sampling, VideoError, load_clip, load_frames

GREY = 1.0 / (255.0 * min(OPENAI_CLIP_STD))  # one grey level in normalised units (upper bound over channels)


def _frames(T=24, H=96, W=128):
    """Smooth gradients plus a moving disc: uint8 [T, H, W, 3]."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        disc = ((xx - 10 - 4 * t) ** 2 + (yy - H / 2) ** 2) < 15**2
        out[t, ..., 0] = np.clip(xx * 255 / W + 40 * disc, 0, 255)
        out[t, ..., 1] = np.clip(yy * 255 / H - 60 * disc, 0, 255)
        out[t, ..., 2] = (128 + 100 * np.sin((xx + yy) / 20 + t / 4)).clip(0, 255)
    return out


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dali") / "clip.webm")
    write_webm(path, _frames(), fps=8.0)
    return path


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dali") / "clip.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in _frames(10, 48, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("kw", [dict(num_frames=8), dict(fps=2.0), dict(num_frames=32, max_frames=32)])
def test_same_indices_times_and_frames_as_pyav(vp9, kw):
    ref = load_frames(vp9, backend="pyav", **kw)
    got = load_frames(vp9, backend="dali", **kw)  # the dispatch in video.load_frames
    assert got.indices == ref.indices  # 32 > 24 frames: repeated indices too
    assert got.timestamps == ref.timestamps
    assert (got.video_fps, got.duration) == (ref.video_fps, ref.duration) == (8.0, 3.0)
    assert got.frames.shape == ref.frames.shape == (len(ref.indices), 96, 128, 3) and got.frames.dtype == np.uint8
    diff = np.abs(got.frames.astype(np.int16) - ref.frames.astype(np.int16))
    assert diff.mean() <= 2.5


def test_normalised_frames_agree_with_normalize_frames(vp9):
    clip = dali.load_video_dali(vp9, num_frames=8)
    assert clip.backend == "dali" and clip.masked.numel() == 0
    ref = load_frames(vp9, num_frames=8)
    assert clip.indices == ref.indices and clip.timestamps == ref.timestamps
    want = normalize_frames(ref.frames)  # smart_resize(96, 128) = (84, 140)
    assert clip.video.shape == want.shape == (8, 3, 84, 140) and clip.video.dtype == torch.float32
    assert (clip.video - want).abs().mean() <= 0.03
    # resize + normalise alone: the same decoded frames through the torch path
    same = normalize_frames(load_frames(vp9, num_frames=8, backend="dali").frames)
    d = (clip.video - same).abs()
    assert d.mean() <= 0.3 * GREY and d.max() <= 2 * GREY


def test_same_size_is_exact_normalisation(vp9):
    """With the output size equal to the decoded size, the full pipeline is exactly (x/255 - mean)/std."""
    raw = torch.from_numpy(load_frames(vp9, num_frames=2, backend="dali").frames).permute(0, 3, 1, 2).float()
    out = dali.get_pipeline("full", "cpu").run([np.fromfile(vp9, dtype=np.uint8)], [[0, 23]], size=[(96, 128)],
                                               stddev=[0.0], keep=[np.ones(2)])[0]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(out, (raw / 255 - mean) / std, atol=1e-5)


@pytest.mark.parametrize("level", [0.5, 1.0, 3.0])
def test_noise_std_is_sigma0_times_level(vp9, level):
    sigma0 = 0.1
    clean = dali.load_video_dali(vp9, num_frames=8).video
    noisy = dali.load_video_dali(vp9, num_frames=8, sigma0=sigma0, level=level, seed=level_seed(level)).video
    noise = (noisy - clean).double()
    # 8*3*84*140 = 282,240 samples: the std estimate's relative s.e. is ~0.13%; tolerance 1% of the target
    assert noise.std().item() == pytest.approx(sigma0 * level, rel=0.01)
    assert abs(noise.mean().item()) <= 0.01 * sigma0 * level
    assert abs(noise.flatten()[:-1] @ noise.flatten()[1:]).item() / noise.numel() <= 0.01 * (sigma0 * level) ** 2


def level_seed(level: float) -> int:
    return int(level * 10) + 1


def test_level_zero_adds_nothing(vp9):
    a = dali.load_video_dali(vp9, num_frames=8, sigma0=0.1, level=0.0).video
    b = dali.load_video_dali(vp9, num_frames=8).video
    assert torch.equal(a, b)


def test_per_sample_stddev_in_one_batch(vp9):
    """Two clips in one DALI batch get their own noise std (the difficulty controller's per-sample level)."""
    pipe = dali.DaliVideoPipeline("full", "cpu", batch_size=2, seed=7)
    data = np.fromfile(vp9, dtype=np.uint8)
    frames = [list(range(0, 24, 3))] * 2
    clean = pipe.run([data, data], frames, size=[(84, 140)] * 2, stddev=[0.0, 0.0], keep=[np.ones(8)] * 2)
    noisy = pipe.run([data, data], frames, size=[(84, 140)] * 2, stddev=[0.05, 0.4], keep=[np.ones(8)] * 2)
    assert (noisy[0] - clean[0]).std().item() == pytest.approx(0.05, rel=0.01)
    assert (noisy[1] - clean[1]).std().item() == pytest.approx(0.4, rel=0.01)


@pytest.mark.parametrize("fraction,T", [(0.25, 16), (0.5, 8), (0.3, 10), (1.0, 4)])
def test_frame_masking_fraction_and_choice(vp9, fraction, T):
    clean = dali.load_video_dali(vp9, num_frames=T).video
    clip = dali.load_video_dali(vp9, num_frames=T, mask_fraction=fraction, generator=torch.Generator().manual_seed(3))
    k = math.floor(fraction * T + 0.5)
    zero = (clip.video == 0).flatten(1).all(1)
    assert int(zero.sum()) == k == clip.masked.numel()
    assert torch.equal(torch.nonzero(zero).flatten(), clip.masked)
    assert torch.equal(clip.video[~zero], clean[~zero])
    _, want = mask_frames(clean, fraction, torch.Generator().manual_seed(3))  # same frames as the torch op
    assert torch.equal(clip.masked, want)


def test_h264_falls_back_to_pyav_with_one_log_line(h264, caplog):
    dali._warned.discard(h264)
    with caplog.at_level(logging.WARNING, logger="dvr1.data.dali"):
        got = load_frames(h264, num_frames=6, backend="dali")
        full = load_clip(h264, "dali", Sampling(num_frames=6), device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "dvr1.data.dali"]
    assert lines == [f"{h264}: codec h264 is not readable by DALI's CPU video decoder; decoding this file with PyAV"]
    ref = load_frames(h264, num_frames=6)
    assert got.indices == ref.indices and np.array_equal(got.frames, ref.frames)
    assert full.backend == "pyav" and torch.equal(full.video, normalize_frames(ref.frames))
    # the backend itself does not decode with PyAV: it says why it cannot, and video.py falls back
    for fn in (dali.load_frames_dali, dali.load_video_dali):
        with pytest.raises(dali.CodecUnsupported) as ei:
            fn(h264, num_frames=6, device="cpu")
        assert str(ei.value) == f"{h264}: codec h264 is not readable by DALI's CPU video decoder"
        assert isinstance(ei.value, VideoError)


def test_fallback_noise_and_masking_match_the_torch_ops(h264):
    """DALI's PyAV fallback: noise from torch's default generator (only when sigma0 * level > 0), masked frames
    from the draw's generator after the pipeline seed (dali.draw_seed), as before the split into backends."""
    from dvr1.data.noise import FrameNoise, add_frame_noise

    g = torch.Generator().manual_seed(5)
    torch.manual_seed(11)
    got = load_clip(h264, "dali", Sampling(num_frames=6), FrameNoise(0.1, 2.0, 0.5, g), device="cpu")
    ref_g = torch.Generator().manual_seed(5)
    seed = dali.draw_seed(ref_g)
    assert 0 <= seed < dali.NOISE_SEEDS
    torch.manual_seed(11)
    clean = normalize_frames(load_frames(h264, num_frames=6).frames)
    want, masked = mask_frames(add_frame_noise(clean, 0.1, 2.0), 0.5, ref_g)
    assert got.backend == "pyav" and torch.equal(got.video, want) and torch.equal(got.masked, masked)
    assert masked.numel() == 3 and torch.equal(g.get_state(), ref_g.get_state())


def test_corrupt_files_raise_video_error(vp9, tmp_path):
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match=f"^{garbage}: cannot open: "):
        load_frames(garbage, backend="dali")
    # demuxes fine, but the first (key) frame's payload is random: DALI's decoder fails
    raw = bytearray(open(vp9, "rb").read())
    with av.open(vp9) as c:
        first = bytes(next(p for p in c.demux(video=0) if p.size))
    at = raw.find(first[:32])
    raw[at:at + len(first)] = np.random.default_rng(0).integers(0, 256, len(first), dtype=np.uint8).tobytes()
    bad = tmp_path / "bad_keyframe.webm"
    bad.write_bytes(bytes(raw))
    msg = f"{bad}: DALI decode failed: Assert on \"ret >= 0\" failed: Failed to send packet to decoder: Invalid data"
    with pytest.raises(VideoError) as ei:
        dali.load_video_dali(bad, num_frames=4)
    assert str(ei.value).startswith(msg)
    with pytest.raises(VideoError, match=f"^{bad}: DALI decode failed: "):
        load_frames(bad, num_frames=4, backend="dali")
    with pytest.raises(VideoError, match=f"^{tmp_path / 'missing.webm'}: file not found$"):
        load_frames(tmp_path / "missing.webm", backend="dali")
    assert dali.load_video_dali(vp9, num_frames=4).video.shape == (4, 3, 84, 140)  # pipeline rebuilt after errors


def test_bad_arguments(vp9):
    with pytest.raises(ValueError, match=r"^load_video_dali: sigma0 must be finite and >= 0, got -0.1$"):
        dali.load_video_dali(vp9, sigma0=-0.1, level=1.0)
    with pytest.raises(ValueError, match=r"^load_video_dali: mask_fraction must be in \[0, 1\], got 1.5$"):
        dali.load_video_dali(vp9, mask_fraction=1.5)
    with pytest.raises(ValueError, match="^DaliVideoPipeline: mode must be 'decode' or 'full', got 'x'$"):
        dali.DaliVideoPipeline("x")


@pytest.fixture(scope="module")
def vfr_webm(tmp_path_factory):
    """VP9 with variable frame times: 8 frames 20 ms apart, then 12 frames 500 ms apart; frame k is grey 10 + 12 k."""
    from fractions import Fraction

    path = str(tmp_path_factory.mktemp("dali") / "vfr.webm")
    pts = [20 * k for k in range(8)] + [640 + 500 * k for k in range(12)]
    with av.open(path, "w") as c:
        s = c.add_stream("libvpx-vp9", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for k, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 + 12 * k, np.uint8), format="rgb24")
            f.pts, f.time_base = p, Fraction(1, 1000)
            for q in s.encode(f):
                c.mux(q)
        for q in s.encode():
            c.mux(q)
    return path


@pytest.mark.parametrize("kw", [dict(num_frames=6), dict(fps=1.0)])
def test_variable_frame_rate_same_frames_by_time(vfr_webm, kw):
    """Both backends choose frames by presentation time (DALI reads by index: the probe turns times into indices)."""
    ref = load_frames(vfr_webm, backend="pyav", **kw)
    got = load_frames(vfr_webm, backend="dali", **kw)
    assert got.indices == ref.indices and got.timestamps == ref.timestamps and got.duration == ref.duration
    if kw == dict(num_frames=6):  # targets 0, 1.228, ..., 6.14 s: not 6 frames spread by index ([0, 4, 8, 11, ...])
        assert ref.indices == [0, 9, 12, 14, 17, 19] and ref.duration == pytest.approx(6.18)
    for clip in (ref, got):  # the pixels are the chosen frames in both decoders
        k = np.round((clip.frames.reshape(len(clip.indices), -1).mean(1) - 10) / 12).astype(int).tolist()
        assert k == clip.indices
    full = dali.load_video_dali(vfr_webm, max_pixels=64 * 48, **kw)
    assert full.indices == ref.indices and full.timestamps == ref.timestamps


def test_truncated_webm_warns_and_strict_raises(tmp_path, caplog):
    """A VP9 WebM cut at half its bytes: the header's 10 s against the ~5 s it holds (tests/unit/test_video_time.py
    has the PyAV side)."""
    from dvr1.data import video_io

    full = str(tmp_path / "ten.webm")
    write_webm(full, _frames(80, 48, 64), fps=8.0)  # 10 s
    data = open(full, "rb").read()
    half = tmp_path / "half.webm"
    half.write_bytes(data[: len(data) // 2])
    info = dali.probe(half)
    msg = (f"{half}: truncated file: the header says 10.00 s, the file holds {info.num_frames} frames / "
           f"{info.num_frames / 8:.2f} s")
    assert 20 < info.num_frames < 60
    video_io._warned_truncated.discard(str(half))
    with caplog.at_level(logging.WARNING, logger="dvr1.data.video_io"):
        clip = load_frames(half, num_frames=4, backend="dali")
    assert [r.getMessage() for r in caplog.records] == [f"{msg}; using the frames it holds"]
    assert clip.indices == load_frames(half, num_frames=4).indices
    for fn in (lambda: load_frames(half, num_frames=4, backend="dali", strict=True),
               lambda: load_clip(half, "dali", Sampling(num_frames=4), device="cpu", strict=True)):
        with pytest.raises(VideoError) as ei:
            fn()
        assert str(ei.value) == msg
    assert load_clip(full, "dali", Sampling(num_frames=4), device="cpu", strict=True).video.shape[0] == 4
