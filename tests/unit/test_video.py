"""Frame sampling rule, PyAV decoding, and the import layout of dvr1/data (no higher layer, no cycle)."""

import ast
import math
import pathlib

import numpy as np
import pytest
import torch

from dvr1.data.build import write_webm
from dvr1.data.video import VideoError, load_frames, sample_frame_indices


def _qwen_reference(total, video_fps, nframes=None, fps=None, min_frames=2, max_frames=32):
    """qwen_vl_utils.vision_process.smart_nframes + the torch.linspace index rule, written independently
    (FRAME_FACTOR = 2). Returns None where qwen_vl_utils would raise (fewer frames than requested)."""
    if nframes is not None:
        n = round(nframes / 2) * 2
        n = min(max(n, math.ceil(min_frames / 2) * 2), math.floor(max_frames / 2) * 2)
    else:
        lo = math.ceil(min_frames / 2) * 2
        hi = math.floor(min(max_frames, total) / 2) * 2
        n = total / video_fps * fps
        n = math.floor(min(max(n, lo), hi) / 2) * 2
    if not (2 <= n <= total):
        return None
    return torch.linspace(0, total - 1, n, dtype=torch.float64).round().long().tolist()


def test_sampling_examples():
    assert sample_frame_indices(16, 8.0, num_frames=8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert sample_frame_indices(16, 8.0, num_frames=5) == [0, 5, 10, 15]  # round(2.5) = 2 -> 4 frames
    assert len(sample_frame_indices(16, 8.0, num_frames=7)) == 8  # round(3.5) = 4 -> 8 frames
    assert sample_frame_indices(32, 8.0, fps=2.0) == [0, 4, 9, 13, 18, 22, 27, 31]
    assert sample_frame_indices(32, 8.0, fps=0.25) == [0, 31]  # 1 frame -> min 2
    assert sample_frame_indices(32, 8.0) == sample_frame_indices(32, 8.0, fps=2.0)  # default 2 fps
    assert len(sample_frame_indices(300, 30.0, fps=8.0)) == 32  # max_frames cap
    assert len(sample_frame_indices(300, 30.0, fps=8.0, max_frames=33)) == 32  # cap made even
    assert len(sample_frame_indices(17, 8.0, fps=8.0)) == 16  # floor to even
    assert sample_frame_indices(3, 8.0, num_frames=4) == [0, 1, 1, 2]  # repeats instead of failing
    assert sample_frame_indices(1, 8.0, fps=2.0) == [0, 0]


def test_sampling_min_frames_rounds_up():
    assert sample_frame_indices(40, 8.0, num_frames=2, min_frames=5) == [0, 8, 16, 23, 31, 39]


@pytest.mark.parametrize("seed", range(3))
def test_sampling_matches_qwen_rule(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(300):
        total = int(rng.integers(1, 400))
        vfps = float(rng.choice([8.0, 24.0, 25.0, 29.97, 30.0]))
        if rng.integers(2):
            kw = dict(nframes=int(rng.integers(1, 40)))
            ours = sample_frame_indices(total, vfps, num_frames=kw["nframes"], max_frames=32)
        else:
            kw = dict(fps=float(rng.choice([0.5, 1.0, 2.0, 4.0])))
            ours = sample_frame_indices(total, vfps, fps=kw["fps"], max_frames=32)
        ref = _qwen_reference(total, vfps, **kw)
        assert len(ours) % 2 == 0 and len(ours) >= 2
        assert ours == sorted(ours) and 0 <= ours[0] and ours[-1] <= total - 1
        if ref is not None:
            assert ours == ref, (total, vfps, kw)
            checked += 1
    assert checked > 200


def test_sampling_errors():
    with pytest.raises(ValueError, match="num_frames and fps are mutually exclusive"):
        sample_frame_indices(10, 8.0, num_frames=4, fps=2.0)
    with pytest.raises(ValueError, match="num_total must be >= 1, got 0"):
        sample_frame_indices(0, 8.0)
    with pytest.raises(ValueError, match="video_fps must be > 0, got 0"):
        sample_frame_indices(10, 0)


@pytest.fixture(scope="module")
def gray_video(tmp_path_factory):
    """20 frames at 8 fps, 64x48; frame k is uniform grey 10 + 12 k (identifiable after VP9)."""
    path = tmp_path_factory.mktemp("v") / "gray.webm"
    frames = np.stack([np.full((48, 64, 3), 10 + 12 * k, np.uint8) for k in range(20)])
    write_webm(str(path), frames, 8, crf=4)
    return str(path)


def test_load_frames(gray_video):
    clip = load_frames(gray_video, num_frames=6)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (6, 48, 64, 3)
    assert clip.indices == [0, 4, 8, 11, 15, 19]
    decoded_k = np.round((clip.frames.reshape(6, -1).mean(1) - 10) / 12).astype(int).tolist()
    assert decoded_k == clip.indices
    assert clip.timestamps == pytest.approx([k / 8 for k in clip.indices], abs=1e-3)
    assert clip.video_fps == 8.0 and clip.duration == pytest.approx(2.5)
    clip = load_frames(gray_video, fps=4.0)  # 2.5 s at 4 fps = 10 frames
    assert clip.indices == np.linspace(0, 19, 10).round().astype(int).tolist()


def test_load_frames_errors(tmp_path, gray_video):
    missing = str(tmp_path / "none.webm")
    with pytest.raises(VideoError) as ei:
        load_frames(missing)
    assert str(ei.value) == f"{missing}: file not found"
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(VideoError, match=rf"^{junk}: cannot open: "):
        load_frames(str(junk))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=rf"^{empty}: "):
        load_frames(str(empty))
    with pytest.raises(ValueError) as ei:
        load_frames(gray_video, backend="decord")
    assert str(ei.value) == "unknown video backend 'decord'; valid: pyav, dali"


DATA = pathlib.Path(__file__).resolve().parents[2] / "dvr1" / "data"


def _dvr1_imports(path: pathlib.Path) -> set[str]:
    """Every dvr1 module ``path`` imports, at any depth (lazy imports in functions too); ``from dvr1.data import
    dali`` counts as ``dvr1.data.dali``."""
    pkg = "dvr1.data"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            if base in ("dvr1", pkg):
                out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m == "dvr1" or m.startswith("dvr1.")}


def test_data_layer_imports_nothing_above_it_and_has_no_cycle():
    graph = {f"dvr1.data.{p.stem}": _dvr1_imports(p) for p in sorted(DATA.glob("*.py")) if p.stem != "__init__"}
    assert {"dvr1.data.video_io", "dvr1.data.pyav", "dvr1.data.dali", "dvr1.data.video"} <= graph.keys()
    for mod, deps in graph.items():  # the lowest layer: dvr1.rl, dvr1.train, ... are above it
        above = sorted(d for d in deps if not (d == "dvr1.data" or d.startswith("dvr1.data.")))
        assert not above, f"{mod} imports {above}"
    # one backend per file: neither imports the other (nor the front that picks between them)
    assert not graph["dvr1.data.pyav"] & {"dvr1.data.dali", "dvr1.data.video"}
    assert not graph["dvr1.data.dali"] & {"dvr1.data.pyav", "dvr1.data.video"}
    assert not graph["dvr1.data.video_io"] & {"dvr1.data.pyav", "dvr1.data.dali", "dvr1.data.video"}
    # no cycle anywhere inside dvr1/data (depth-first search over the import graph)
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            visit(d, trail + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
