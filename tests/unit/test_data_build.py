"""The video-QA builder: determinism, splits by source, and that every answer is true of the pixels."""

import collections
import json
import os
import re

import av
import numpy as np
import pytest

from dvr1.data import build as B
from dvr1.data.prompts import RESPONSE_PATTERN, sft_response
from dvr1.data.schema import LETTERS, TASKS, read_records
from dvr1.data.video import load_frames

N = dict(n_train=10, n_val=5, n_test=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("b")
    return B.build_dataset(a, seed=3, progress=False, **N), B.build_dataset(b, seed=3, progress=False, **N)


def _all_frames(path):
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_deterministic(built):
    m1, m2 = built
    for split in B.SPLITS:
        p1, p2 = m1["splits"][split]["path"], m2["splits"][split]["path"]
        assert open(p1, "rb").read() == open(p2, "rb").read()
    with open(os.path.join(m1["out_dir"], "manifest.json"), "rb") as f1, open(
        os.path.join(m2["out_dir"], "manifest.json"), "rb"
    ) as f2:
        assert f1.read() == f2.read()
    names = sorted(os.listdir(os.path.join(m1["out_dir"], "videos")))
    assert names == sorted(os.listdir(os.path.join(m2["out_dir"], "videos"))) and len(names) == 20
    for name in names:
        v1, v2 = (os.path.join(m["out_dir"], "videos", name) for m in built)
        assert np.array_equal(_all_frames(v1), _all_frames(v2))
        assert open(v1, "rb").read() == open(v2, "rb").read()


def test_records_and_splits(built):
    m = built[0]
    assert m["codec"] == "libvpx-vp9" and m["num_videos"] == 20
    real = {s: set(m["splits"][s]["real_sources"]) for s in B.SPLITS}
    assert all(real.values())
    assert not (real["train"] & real["val"] or real["train"] & real["test"] or real["val"] & real["test"])
    # windows never overlap: per video, the window intervals of all splits are disjoint
    windows = sorted(
        (n.split("@")[0], *map(float, n.split("@")[1].split("-"))) for s in B.SPLITS for n in real[s]
    )
    for (v1, a1, b1), (v2, a2, b2) in zip(windows, windows[1:]):
        assert v1 != v2 or b1 <= a2
    seen = set()
    for split in B.SPLITS:
        recs = read_records(m["splits"][split]["path"], strict=True)
        assert len(recs) == N[f"n_{split}"]
        assert collections.Counter(r.task for r in recs) == collections.Counter(
            m["splits"][split]["tasks"]
        ) and set(m["splits"][split]["tasks"]) == set(TASKS)
        for r in recs:
            assert r.split == split and r.id not in seen
            seen.add(r.id)
            parts = r.source.split("+")
            if r.task in B.REAL_TASKS:
                assert set(parts) <= real[split]
            else:
                assert r.source == f"render:{r.id}"
            with av.open(r.video) as c:
                s = c.streams.video[0]
                assert s.codec_context.name == "vp9" and (s.width, s.height) == (112, 112)
                assert float(s.average_rate) == 8.0
                n = sum(1 for p in c.demux(s) if p.size)
            assert n == round(r.duration * r.fps)
            assert re.match(RESPONSE_PATTERN, sft_response(r), re.DOTALL)
    clip = load_frames(recs[0].video, num_frames=4)
    assert clip.frames.shape == (4, 112, 112, 3)


def test_other_seed_differs(built, tmp_path):
    m = B.build_dataset(tmp_path, seed=4, n_train=5, n_val=0, n_test=0, progress=False)
    assert open(m["splits"]["train"]["path"]).read() != open(built[0]["splits"]["train"]["path"]).read()


# ---- each task's answer is true of its frames (raw frames, before encoding) ---------------------------------


def _ctx(size=64, nframes=16):
    """One synthetic real source: frame k is uniform grey 5 + 10 k, so frame identity survives crop/resize."""
    frames = np.stack([np.full((90, 100, 3), 5 + 10 * k, np.uint8) for k in range(nframes)])
    return {"fps": 8.0, "size": size, "sources": [B._Source("synth@0.0-2.0", "synth", 0, frames)]}


def _frame_ids(frames):
    return [int(round((f.astype(float).mean() - 5) / 10)) for f in frames]


def _mask(frame, color):
    return np.all(frame == np.asarray(B.COLORS[color], np.uint8), axis=-1)


def _components(mask):
    """Number of 4-connected components of a boolean image."""
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return n


def _run(task, i, ctx, seed=0):
    key = (0, TASKS.index(task))
    return B._TASK_FNS[task](B.record_rng(seed, *key, i), seed, key, i, ctx)


def test_letters_balanced():
    ctx = _ctx()
    for task in TASKS:
        letters = [_run(task, i, ctx)[1]["answer"] for i in range(8)]
        if task == "grounding":
            continue
        assert collections.Counter(letters) == {x: 2 for x in LETTERS[:4]}, (task, letters)  # 4-way


def test_arrow_of_time_truth():
    ctx = _ctx()
    kinds = []
    for i in range(6):
        frames, f = _run("arrow_of_time", i, ctx)
        ids = _frame_ids(frames)
        rev = f["meta"]["reversed"]
        assert ids == (list(range(15, -1, -1)) if rev else list(range(16)))
        assert f["options"][LETTERS.index(f["answer"])] == B.ARROW_OPTIONS["reversed" if rev else "forward"]
        assert sorted(f["options"]) == sorted(B.ARROW_OPTIONS.values())
        kinds.append(rev)
    assert kinds.count(True) == 3


def test_temporal_order_truth():
    ctx = _ctx()
    for i in range(6):
        frames, f = _run("temporal_order", i, ctx)
        ids = _frame_ids(frames)
        assert len(ids) == 3 * 5 + 2 and ids[5] == ids[11] == 0 and frames[5].max() == frames[11].max() == 0
        clips = [ids[0:5], ids[6:11], ids[12:17]]
        for c in clips:
            assert c == list(range(c[0], c[0] + 5))  # each clip plays forward, contiguous
        chronological = [k + 1 for k in np.argsort([c[0] for c in clips])]
        answer = f["options"][LETTERS.index(f["answer"])]
        assert answer == ", ".join(map(str, chronological)) and f["meta"]["original_order"] == chronological
        assert len(set(f["options"])) == 4


def test_grounding_truth():
    ctx = _ctx(size=64)
    for i in range(8):
        frames, f = _run("grounding", i, ctx)
        s, e = f["segment"]
        assert f["answer"] == f"[{s:.1f}, {e:.1f}]" and f["options"] is None
        assert 0 <= s < e <= len(frames) / 8 and (s * 8).is_integer() and (e * 8).is_integer()
        visible = [bool(_mask(fr, f["meta"]["color"]).sum()) for fr in frames]
        assert visible == [s * 8 <= k < e * 8 for k in range(len(frames))]
        d = f["meta"]["distractor"]
        if d:
            dv = [k for k, fr in enumerate(frames) if _mask(fr, d["color"]).sum()]
            assert dv == list(range(int(d["segment"][0] * 8), int(d["segment"][1] * 8)))
            assert d["segment"][1] <= s or d["segment"][0] >= e


def test_counting_truth():
    ctx = _ctx(size=112)
    counts = []
    for i in range(10):
        frames, f = _run("counting", i, ctx)
        meta, color = f["meta"], f["meta"]["color"]
        n = meta["count"]
        squares = sum(d["shape"] == "square" and d["color"] == color for d in meta["distractors"])
        for k in (0, len(frames) - 1):
            assert _components(_mask(frames[k], color)) == n + squares
        assert f["options"][LETTERS.index(f["answer"])] == str(n)
        counts.append(n)
    assert sorted(counts) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_motion_direction_truth():
    ctx = _ctx(size=112)
    dirs = []
    for i in range(8):
        frames, f = _run("motion_direction", i, ctx)
        color = f["meta"]["color"]
        (y0, x0), (y1, x1) = (np.argwhere(_mask(frames[k], color)).mean(0) for k in (0, -1))
        dx, dy = x1 - x0, y1 - y0
        want = f["meta"]["direction"]
        along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[want]
        assert along > 0.25 * 112 and abs(across) < 1.0
        assert f["options"][LETTERS.index(f["answer"])] == want
        dirs.append(want)
    assert collections.Counter(dirs) == {d: 2 for d in B.DIRECTIONS}


def test_cli(tmp_path, capsys):
    m = B.main(["--out", str(tmp_path), "--seed", "1", "--n-train", "2", "--n-val", "0", "--n-test", "0",
                "--tasks", "counting,motion_direction", "--no-progress"])
    assert m["splits"]["train"]["tasks"] == {"counting": 1, "motion_direction": 1}
    assert m["splits"]["train"]["real_sources"] == []
    assert "train: 2 records" in capsys.readouterr().out
    assert json.load(open(tmp_path / "manifest.json"))["tasks"] == ["counting", "motion_direction"]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'ocr'; valid: arrow_of_time, temporal_order"):
        B.build_dataset(tmp_path, tasks=("ocr",), progress=False)
    with pytest.raises(ValueError, match="size must be even and >= 32, got 33"):
        B.build_dataset(tmp_path, size=33, progress=False)
