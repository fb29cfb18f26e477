"""YouCook2 (``youcookii_annotations_trainval.json``) -> dense-captioning records, one per video of a subset.

Source: the YouCook2 release (http://youcook2.eecs.umich.edu, README of ``YouCookII/annotations``): a JSON object
``{"database": {video_id: {"duration": seconds, "subset": "training" | "validation", "recipe_type": "113",
"video_url": "...", "annotations": [{"id": 0, "segment": [start, end], "sentence": "..."}, ...]}}}``; the raw
videos are laid out ``raw_videos/{subset}/{recipe_type}/{video_id}.{mp4,mkv,webm}``.

Mapping: id = source = the video id; events = the segments sorted by start (captions follow), an end past the
duration clipped to it (``notes["segments_clipped"]``); captions with runs of whitespace collapsed; split = the
subset; meta ``recipe_type``.

``annotations``: the file or the directory holding it. ``videos``: a directory holding ``{id}.mp4`` (or
``.mkv``/``.webm``) flat or in the official ``{subset}/{recipe_type}/`` layout (default: the annotation directory).
``split``: ``training`` or ``validation`` (default).
"""

from __future__ import annotations

import os

from dvr1.data.formats._common import Collector, find_video, is_text, load_json
from dvr1.data.schema import DataError
from dvr1.vidchain.data import DenseCaptionRecord, DenseRecordError
from dvr1.vidchain.formats._dense import caption_text, clip_events, is_pairs, sort_events

NAME = "youcook2"
KIND = "dense"
DESCRIPTION = "YouCook2 youcookii_annotations_trainval.json (--split training|validation)"

FILE = "youcookii_annotations_trainval.json"
SPLITS = ("training", "validation")
_EXTS = (".mp4", ".mkv", ".webm")


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read the videos of one YouCook2 subset (module docstring).

    Raises:
        DataError: an unknown split, a missing or unreadable file, a file without a ``database`` object.
    """
    split = split or "validation"
    if split not in SPLITS:
        raise DataError(f"youcook2: unknown split {split!r}; known: {', '.join(SPLITS)}")
    path = os.path.join(annotations, FILE) if os.path.isdir(annotations) else annotations
    video_dir = os.path.abspath(videos) if videos else os.path.dirname(os.path.abspath(path))
    data = load_json(path)
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise DataError(f"{path}: expected a JSON object with a 'database' object")
    out = Collector()
    out.sources.append(path)
    for i, (vid, ann) in enumerate(db.items()):
        line = i + 1
        if not isinstance(ann, dict):
            out.skip(path, line, vid, "record", f"expected a JSON object, got {type(ann).__name__}")
            continue
        if ann.get("subset") != split:
            continue
        items = ann.get("annotations")
        if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
            out.skip(path, line, vid, "annotations", f"expected a list of {{segment, sentence}}, got {items!r}")
            continue
        segs = [a.get("segment") for a in items]
        if not is_pairs(segs):
            out.skip(path, line, vid, "annotations", f"every segment must be [start, end] seconds, got {segs!r}")
            continue
        d = ann.get("duration")
        if isinstance(d, (int, float)) and not isinstance(d, bool) and d > 0:
            segs, n = clip_events(segs, float(d))
            if n:
                out.note("segments_clipped", n)
        events, caps = sort_events(segs, [caption_text(a.get("sentence", "")) for a in items])
        recipe = ann.get("recipe_type")
        dirs = [video_dir] + ([os.path.join(video_dir, split, str(recipe))] if is_text(str(recipe)) else [])
        obj = {"id": vid, "video": find_video(dirs, vid, _EXTS), "duration": d, "events": events, "captions": caps,
               "split": split, "source": vid, "meta": {"recipe_type": recipe} if recipe is not None else {}}
        out.add_checked(DenseCaptionRecord.from_json, DenseRecordError, obj, path, line)
    return out.imported(None)
