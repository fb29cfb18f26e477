"""LongVideoBench (`lvb_val.json`) -> multiple-choice records, one per question.

Source: longvideobench/LongVideoBench, ``README.md`` (layout: the HF dataset ``longvideobench/LongVideoBench`` with
``lvb_val.json``, ``videos/`` and ``subtitles/``) and ``longvideobench/longvideobench_dataset.py`` (the official
loader: options are ``candidates`` lettered A, B, ...; the answer is ``chr(ord("A") + correct_choice)``, i.e.
``correct_choice`` is a 0-based index; video ``{root}/videos/{video_path}``; subtitles
``{root}/subtitles/{subtitle_path}``).

One entry of the JSON array::

    {"video_id": "86CxyhFV9MI", "question": "...", "question_wo_referring_query": "...",
     "candidates": ["...", "...", "...", "..."], "correct_choice": 1, "position": [854, 948, 1373],
     "topic_category": "NP-News-Programs", "question_category": "TOS", "level": "L2-Relation",
     "id": "86CxyhFV9MI_0", "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json",
     "duration_group": 600, "starting_timestamp_for_subtitles": 0, "duration": 190.16, "view_count": 259852}

Mapping: ``id`` -> id; ``candidates`` -> options (any count 2-26); ``correct_choice`` -> answer letter;
``question_category`` -> task; ``duration`` -> duration (seconds); ``video_id`` -> source; meta: ``benchmark``,
``duration_group`` (as a string, e.g. ``"600"``), ``question_category``, ``topic_category``, ``level``,
``position``, ``video_id``, ``starting_timestamp_for_subtitles`` and ``subtitles`` (the subtitle file's absolute path,
only when that file exists).

``annotations``: ``lvb_val.json`` or the directory holding it. ``videos``: the directory the ``video_path`` values
are relative to (default ``{annotations dir}/videos``). ``split``: ``val`` (default); the released test file
``lvb_test_wo_gt.json`` has no answers and is refused.
"""

from __future__ import annotations

import os

from dvr1.data.formats._common import Collector, is_text, load_json
from dvr1.data.schema import DataError, LETTERS

NAME = "longvideobench"
KIND = "qa"
DESCRIPTION = "LongVideoBench lvb_val.json (candidates, correct_choice index, duration_group; subtitles optional)"

FILES = {"val": "lvb_val.json", "test": "lvb_test_wo_gt.json"}


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read LongVideoBench annotations (module docstring).

    Raises:
        DataError: unknown split, the test split (no ground truth), a missing or unreadable file, or a file that is
            not a JSON array.
    """
    split = split or "val"
    if split not in FILES:
        raise DataError(f"longvideobench: unknown split {split!r}; known: val")
    if split == "test":
        raise DataError("longvideobench: the test split (lvb_test_wo_gt.json) has no ground truth; use --split val")
    path = os.path.join(annotations, FILES[split]) if os.path.isdir(annotations) else annotations
    root = os.path.dirname(os.path.abspath(path))
    video_dir = os.path.abspath(videos) if videos else os.path.join(root, "videos")
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
    out = Collector()
    out.sources.append(path)
    for i, d in enumerate(data):
        line = i + 1
        if not isinstance(d, dict):
            out.skip(path, line, None, "record", f"expected a JSON object, got {type(d).__name__}")
            continue
        rid = d.get("id")
        if not is_text(rid):
            out.skip(path, line, None, "id", f"expected a non-empty string, got {rid!r}")
            continue
        cands = d.get("candidates")
        if not isinstance(cands, list):
            out.skip(path, line, rid, "candidates", f"expected a list, got {cands!r}")
            continue
        choice = d.get("correct_choice")
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < min(len(cands), 26):
            out.skip(path, line, rid, "correct_choice", f"expected an index into the {len(cands)} candidates, got "
                                                        f"{choice!r}")
            continue
        if not is_text(d.get("video_path")):
            out.skip(path, line, rid, "video_path", f"expected a non-empty string, got {d.get('video_path')!r}")
            continue
        group = d.get("duration_group")
        if isinstance(group, bool) or not isinstance(group, (int, str)) or not str(group).strip():
            out.skip(path, line, rid, "duration_group", f"expected a number of seconds, got {group!r}")
            continue
        meta = {"benchmark": NAME, "duration_group": str(group).strip()}
        for key in ("question_category", "topic_category", "level", "position", "video_id",
                    "starting_timestamp_for_subtitles"):
            if d.get(key) is not None:
                meta[key] = d[key]
        sub = d.get("subtitle_path")
        if is_text(sub) and os.path.isfile(os.path.join(root, "subtitles", sub)):
            meta["subtitles"] = os.path.join(root, "subtitles", sub)
        obj = {"id": rid, "video": os.path.join(video_dir, d["video_path"]), "question": d.get("question"),
               "options": cands, "answer": LETTERS[choice], "task": d.get("question_category") or NAME,
               "problem_type": "multiple_choice", "duration": d.get("duration"),
               "source": d.get("video_id") or d["video_path"], "split": split, "meta": meta}
        out.add_qa(obj, path, line)
    return out.imported(NAME)
