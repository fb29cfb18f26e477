"""Video by time (issue 14, problems 8 and 9): frames chosen by presentation time (variable frame rates, GIF delays),
seeking instead of decoding every frame, and truncated files reported (warned, or raised under strict)."""

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from dvr1.data import pyav, video_io
from dvr1.data.video import Sampling, VideoError, load_clip, load_frames, sample_frame_indices
from dvr1.data.video_io import StreamInfo, check_truncated, is_constant_rate, probe_stream, select_frames


def _grey(k: int, h=32, w=48) -> np.ndarray:
    return np.full((h, w, 3), (10 + 8 * k) % 256, np.uint8)


def _grey_index(frames: np.ndarray, n: int) -> list[int]:
    """The k of frames written as _grey(k) (uniform grey 10 + 8 k, within codec error)."""
    return np.round((frames.reshape(len(frames), -1).mean(1) - 10) / 8).astype(int).tolist()


@pytest.fixture(scope="module")
def vfr_gif(tmp_path_factory):
    """28 frames: 14 shown 20 ms each (the first 0.28 s), then 14 shown 500 ms each; 7.28 s in all."""
    path = str(tmp_path_factory.mktemp("gif") / "vfr.gif")
    ims = [Image.fromarray(_grey(k)) for k in range(28)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=[20] * 14 + [500] * 14, loop=0)
    return path


def test_gif_delays_reproducer_index_rule_crowds_the_start(vfr_gif):
    """Problem 9 as filed: sampling by frame index at fps=2 put 7 of the 14 frames in the first 0.26 s."""
    info = probe_stream(vfr_gif)
    assert info.num_frames == 28 and info.times[13] == pytest.approx(0.26) and info.times[14] == pytest.approx(0.28)
    by_index = sample_frame_indices(info.num_frames, info.fps, fps=2.0)
    assert len(by_index) == 14 and sum(info.times[i] < 0.26 + 1e-9 for i in by_index) == 7


def test_gif_sampled_uniformly_in_time(vfr_gif):
    clip = load_frames(vfr_gif, fps=2.0)
    assert clip.duration == pytest.approx(7.28)  # 14 * 0.02 + 14 * 0.5: the last frame's delay counts
    assert clip.indices == [0, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]  # 7.28 s * 2 fps -> 14 frames
    assert _grey_index(clip.frames, 14) == clip.indices  # the pixels are those frames
    assert sum(t < 0.26 for t in clip.timestamps) == 1
    targets = np.linspace(0, 6.78, 14)  # uniform from the first frame's time to the last's
    err = np.abs(np.asarray(clip.timestamps) - targets)
    assert err.max() <= 0.25 + 1e-9  # nearest frame: within half of the longest (500 ms) delay
    # each chosen frame is the nearest one to its target
    times = np.asarray(probe_stream(vfr_gif).times)
    for i, tau in zip(clip.indices, targets):
        assert abs(times[i] - tau) == pytest.approx(np.abs(times - tau).min())
    clip = load_frames(vfr_gif, num_frames=8)
    assert clip.indices == [0, 15, 17, 19, 21, 23, 25, 27] and clip.timestamps[1] == pytest.approx(0.78)


def test_select_frames_is_the_index_rule_at_a_constant_rate():
    """Timestamps rounded to a millisecond time base (29.97, 23.976 fps, ...): exactly sample_frame_indices."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        total = int(rng.integers(1, 400))
        vfps = float(rng.choice([8.0, 24000 / 1001, 25.0, 30000 / 1001, 30.0, 60.0]))
        times = [round(i / vfps, 3) for i in range(total)]
        kw = dict(num_frames=int(rng.integers(1, 40))) if rng.integers(2) else dict(fps=float(rng.choice([0.5, 2.0])))
        got, duration = select_frames(times, vfps, max_frames=32, **kw)
        assert got == sample_frame_indices(total, vfps, max_frames=32, **kw) and duration == total / vfps


def test_select_frames_nearest_and_ties():
    times = [0.0, 0.1, 0.2, 1.0, 2.0, 3.0]  # last frame shown 1 s: duration 4 s
    assert select_frames(times, 1.5, num_frames=4, last_duration=1.0) == ([0, 3, 4, 5], 4.0)  # targets 0,1,2,3
    # targets 0, 0.6, 1.2, ..., 3.0: 0.6 is nearer 1.0 (0.4) than 0.2 (0.4 + eps) -> ties go to the earlier frame
    idx, d = select_frames([0.0, 0.2, 1.0, 3.0], 1.0, num_frames=2, last_duration=None)
    assert idx == [0, 3] and d == pytest.approx(3.0 + 1.0)  # unknown last delay: the mean interval (1 s)
    assert select_frames([0.0, 0.5, 1.5, 2.0], 2.0, num_frames=6, last_duration=0.5)[0] == [0, 1, 1, 2, 2, 3]
    # fps mode: the count from the duration (2.5 s * 2 fps = 5 -> 4)
    assert select_frames([0.0, 0.5, 1.5, 2.0], 2.0, fps=2.0, last_duration=0.5) == ([0, 1, 2, 3], 2.5)


def test_is_constant_rate():
    assert is_constant_rate([round(i / 29.97, 3) for i in range(300)])  # millisecond rounding
    assert is_constant_rate([0.0]) and is_constant_rate([0.0, 5.0]) and is_constant_rate([0.0, 0.0, 0.0])
    assert not is_constant_rate([0.0, 0.02, 0.04, 0.54, 1.04])
    step = 1 / 30  # a phone clip whose rate drops from 30 to 20 fps half-way drifts by > 1/4 frame
    assert not is_constant_rate([i * step for i in range(30)] + [1.0 + i * 0.05 for i in range(30)])


# --- seeking -------------------------------------------------------------------------------------------------------

def _write(path, codec, T, rate=25, **opts):
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=rate, options={k: str(v) for k, v in opts.items()})
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for k in range(T):
            frame = _grey(k % 30)
            frame[:, : 2 + k % 40] = 255 - frame[:, : 2 + k % 40]  # every frame differs from its neighbours
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module", params=["h264", "vp9", "mpeg4"])
def gop_clip(request, tmp_path_factory):
    """300 frames (12 s at 25 fps) with a keyframe every 25 frames: H.264 in MP4 (B-frames), VP9 in WebM, MPEG-4
    Part 2 in AVI."""
    d = tmp_path_factory.mktemp("gop")
    if request.param == "h264":
        return _write(str(d / "c.mp4"), "libx264", 300, g=25, bf=3, sc_threshold=0)
    if request.param == "vp9":
        return _write(str(d / "c.webm"), "libvpx-vp9", 300, g=25, deadline="realtime", cpu_used=8)
    return _write(str(d / "c.avi"), "mpeg4", 300, g=25, sc_threshold=1000000000)  # no scene-cut keyframes


@pytest.mark.parametrize("kw", [dict(num_frames=4), dict(num_frames=8), dict(fps=0.5), dict(num_frames=32)])
def test_seek_returns_the_frames_of_a_full_decode(gop_clip, kw):
    seq = pyav.load_frames_pyav(gop_clip, seek=False, **kw)
    sk = pyav.load_frames_pyav(gop_clip, seek=True, **kw)
    assert sk.indices == seq.indices and sk.timestamps == seq.timestamps
    assert (sk.duration, sk.video_fps) == (seq.duration, seq.video_fps) == (12.0, 25.0)
    assert np.array_equal(sk.frames, seq.frames)  # pixel for pixel


def test_auto_mode_seeks_when_few_frames_are_needed(gop_clip, monkeypatch):
    info = probe_stream(gop_clip)
    assert info.key_pts and len(info.key_pts) == 12  # one keyframe per 25 frames
    few = sample_frame_indices(300, 25.0, num_frames=4)  # [0, 100, 199, 299]
    assert pyav.seek_cost(info, few) < pyav.SEEK_FRACTION * 300
    many = sample_frame_indices(300, 25.0, num_frames=32)
    assert pyav.seek_cost(info, many) >= pyav.SEEK_FRACTION * 300
    ref = pyav.load_frames_pyav(gop_clip, num_frames=4, seek=False)

    def no_full_decode(*a):
        raise AssertionError("decoded every frame")

    monkeypatch.setattr(pyav, "_decode", no_full_decode)
    clip = load_frames(gop_clip, num_frames=4)
    assert clip.indices == [0, 100, 199, 299] and np.array_equal(clip.frames, ref.frames)
    with pytest.raises(AssertionError, match="decoded every frame"):
        load_frames(gop_clip, num_frames=32)  # 32 of 300 frames in 12 GOPs: sequential is cheaper


def test_seek_falls_back_to_a_full_decode_when_it_misses(gop_clip, monkeypatch):
    """A seek that does not land on the chosen frame (here: the probe's timestamps shifted by one tick) is not
    trusted: the frames come from a full decode."""
    real = video_io.probe_stream

    def shifted(path):
        info = real(path)
        info.pts = [p + 1 for p in info.pts]
        return info

    monkeypatch.setattr(pyav, "probe_stream", shifted)
    ref = pyav.load_frames_pyav(gop_clip, num_frames=4, seek=False)
    clip = pyav.load_frames_pyav(gop_clip, num_frames=4, seek=True)
    assert clip.indices == ref.indices and np.array_equal(clip.frames, ref.frames)


def test_no_seek_without_keyframes_or_timestamps(vfr_gif):
    info = probe_stream(vfr_gif)
    assert info.key_pts == [0]
    # one GOP: one seek, then decode on through all 28 frames -- dearer than a plain full decode
    assert pyav.seek_cost(info, [0, 27]) == 1 + pyav.SEEK_FRAMES + 27 > 28
    assert load_frames(vfr_gif, num_frames=2).indices == [0, 27]
    info.pts = None
    assert pyav.seek_cost(info, [0, 27]) is None


# --- truncated files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cut_files(tmp_path_factory):
    """10 s at 28 fps (280 frames), VP9 WebM (duration in the header, no frame count) and MPEG-4 AVI (frame count
    in the header), each also cut at half its bytes."""
    d = tmp_path_factory.mktemp("cut")
    out = {}
    for name, codec in (("c.webm", "libvpx-vp9"), ("c.avi", "mpeg4")):
        full = _write(str(d / name), codec, 280, rate=28, g=28,
                      **(dict(deadline="realtime", cpu_used=8) if codec == "libvpx-vp9" else {}))
        data = open(full, "rb").read()
        half = d / f"half_{name}"
        half.write_bytes(data[: len(data) // 2])
        out[name] = (full, str(half))
    return out


def _decoded_count(path):
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("name,header", [("c.webm", "10.00 s"), ("c.avi", "280 frames / 10.00 s")])
def test_truncated_file_warns_and_strict_skips(cut_files, name, header, caplog):
    full, half = cut_files[name]
    n = _decoded_count(half)
    assert 100 < n < 180  # the reproducer: the cut file opens and decodes about half its frames
    msg = f"{half}: truncated file: the header says {header}, the file holds {n} frames / {n / 28:.2f} s"
    video_io._warned_truncated.discard(half)
    with caplog.at_level(logging.WARNING, logger="dvr1.data.video_io"):
        clip = load_frames(half, num_frames=8)
        load_frames(half, num_frames=4)  # one warning per file
        load_frames(full, num_frames=8)  # the whole file: nothing to say
    assert [r.getMessage() for r in caplog.records] == [f"{msg}; using the frames it holds"]
    assert clip.indices == sample_frame_indices(n, 28.0, num_frames=8) and clip.duration == n / 28
    for call in (lambda: load_frames(half, num_frames=8, strict=True),
                 lambda: load_clip(half, "pyav", Sampling(num_frames=8), strict=True)):
        with pytest.raises(VideoError) as ei:
            call()
        assert str(ei.value) == msg
    assert load_clip(full, "pyav", Sampling(num_frames=8), strict=True).video.shape[0] == 8


def _info(header_seconds, header_frames=0):
    return StreamInfo(1, 25.0, "vp9", 8, 8, [0.0], [0], [0], None, header_frames, header_seconds, False)


@pytest.mark.parametrize("header,held,truncated", [
    (10.0, 8.99, True),  # < 90% and 1.01 s short
    (10.0, 9.01, False),  # 90.1% of the header
    (10.5, 9.4, True),
    (1.5, 0.4, True),  # 27% of the header and 1.1 s short
    (1.9, 0.95, False),  # 50%, but under 1 s short: a short clip's header rounding never triggers it
    (None, 1.0, False),  # no header duration
])
def test_truncation_threshold(header, held, truncated):
    if truncated:
        with pytest.raises(VideoError, match=r"^f: truncated file: the header says "):
            check_truncated("f", _info(header), 10, held, strict=True)
    else:
        check_truncated("f", _info(header), 10, held, strict=True)
