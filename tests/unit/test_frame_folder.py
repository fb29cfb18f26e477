"""Videos that are not one video file: a frame folder (MVBench's Episodic Reasoning: TVQA frames ``00001.jpg ...``
read at 3 fps by the official ``read_frame``, OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb) and GIFs (MVBench's
``data_type: gif`` tasks, TGIF-QA). The frames chosen are checked against the index rule worked by hand
(``round(linspace(0, N - 1, n))``, half to even), the pixels against the values written."""

import json

import av
import numpy as np
import pytest

from dvr1.data.schema import read_records
from dvr1.data.video import Sampling, VideoError, load_clip, load_frames

N, H, W = 10, 16, 24


def _frame_folder(d, n=N):
    from PIL import Image

    d.mkdir()
    for i in reversed(range(n)):  # created out of order: name order is the frame order
        Image.fromarray(np.full((H, W, 3), 20 * i, np.uint8)).save(d / f"{i + 1:05d}.png")
    (d / "notes.txt").write_text("not a frame")
    return d


def test_frame_folder_sampled_by_time(tmp_path):
    d = _frame_folder(tmp_path / "castle_s07e04_seg02_clip_14")
    clip = load_frames(d, num_frames=4, frame_fps=3.0)
    assert clip.indices == [0, 3, 6, 9]  # round(linspace(0, 9, 4)) = 0, 3, 6, 9
    assert clip.frames.shape == (4, H, W, 3) and clip.frames.dtype == np.uint8
    assert [int(f[0, 0, 0]) for f in clip.frames] == [0, 60, 120, 180]  # PNG: exact pixels of frames 0, 3, 6, 9
    assert clip.timestamps == pytest.approx([0.0, 1.0, 2.0, 3.0])  # index / 3 fps
    assert (clip.video_fps, clip.duration) == (3.0, pytest.approx(10 / 3))
    # by fps: 10 frames at 3 fps = 3.33 s; at 2 fps -> 6.67 -> 6 frames; round(linspace(0, 9, 6)) = 0 2 4 5 7 9
    assert load_frames(d, fps=2.0, frame_fps=3.0).indices == [0, 2, 4, 5, 7, 9]
    norm = load_clip(d, "pyav", Sampling(num_frames=4), frame_fps=3.0)
    assert norm.video.shape[:2] == (4, 3) and norm.indices == [0, 3, 6, 9] and norm.backend == "pyav"
    with pytest.raises(VideoError, match="needs its frame rate"):
        load_frames(d, num_frames=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="without image files"):
        load_frames(empty, num_frames=4, frame_fps=3.0)


def test_schema_accepts_a_frame_folder_record_only(tmp_path):
    _frame_folder(tmp_path / "frames")
    base = {"question": "q", "options": ["a", "b"], "answer": "A", "task": "Episodic Reasoning",
            "problem_type": "multiple_choice", "video": "frames"}
    rows = [dict(base, id="framed", meta={"data_type": "frame", "frame_fps": 3.0}),
            dict(base, id="plain", meta={})]  # a directory without a frame rate is no video
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = read_records(tmp_path / "test.jsonl")
    assert [r.id for r in recs] == ["framed"] and recs[0].video == str(tmp_path / "frames")


def test_gif_decodes_with_pyav(tmp_path):
    path = str(tmp_path / "tumblr_x.gif")
    out = av.open(path, "w")
    s = out.add_stream("gif", rate=10)
    s.width, s.height, s.pix_fmt = W, H, "rgb8"
    for i in range(6):
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((H, W, 3), 40 * i, np.uint8), format="rgb24")):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    clip = load_frames(path, num_frames=4)
    assert clip.indices == [0, 2, 3, 5]  # round(linspace(0, 5, 4)) = round(0, 1.67, 3.33, 5)
    assert clip.timestamps == pytest.approx([0.0, 0.2, 0.3, 0.5]) and clip.video_fps == 10.0
    # rgb8 is a 3-3-2 palette: grey levels come back within one palette step
    assert np.abs(clip.frames.reshape(4, -1).mean(1) - [0, 80, 120, 200]).max() <= 8
