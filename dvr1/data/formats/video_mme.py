"""Video-MME (the released annotation table) -> multiple-choice records, one per question.

Source: the HF dataset ``lmms-lab/Video-MME`` (``README.md`` dataset_info: the ``videomme`` config, split ``test``,
``videomme/test-00000-of-00001.parquet`` with columns ``video_id, duration, domain, sub_category, url, videoID,
question_id, task_type, question, options (list of "A. ..." strings), answer (a letter)``; videos
``data/{videoID}.mp4``, subtitles ``subtitle/{videoID}.srt``) and BradyFU/Video-MME ``evaluation/
eval_your_results.py`` (results are grouped by duration ``short``/``medium``/``long`` and by ``task_type``).

One row::

    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "...", "options": ["A. Apples.", "B. Candles.", ...],
     "answer": "C"}

Mapping: ``question_id`` -> id; ``options`` -> options without their ``"A. "`` letters; ``answer`` -> answer;
``task_type`` -> task; ``videoID`` -> source; meta: ``benchmark``, ``duration_group`` (= ``duration``),
``domain``, ``sub_category``, ``video_id``, ``videoID``, ``url`` and ``subtitles`` (the ``.srt`` path, only when it
exists). The table's ``duration`` is a group name, not seconds: the record's ``duration`` is null.

``annotations``: the dataset root (``videomme/*.parquet``, or a JSON/JSONL export under ``videomme/`` or the root),
or one file: ``.parquet`` (needs ``pyarrow``, which dvr1 does not require), ``.json`` (an array of row objects,
e.g. pandas ``to_json(orient="records")``) or ``.jsonl`` (one row object a line). ``videos``: the directory holding
``{videoID}.mp4`` (``.MP4``/``.mkv`` are tried too; default ``{root}/data``). ``split``: ``test`` (the only one).
"""

from __future__ import annotations

import glob
import json
import os

from dvr1.data.formats._common import Collector, find_video, is_text, load_json
from dvr1.data.schema import DataError

NAME = "video-mme"
KIND = "qa"
DESCRIPTION = "Video-MME annotation table (parquet with pyarrow, or its JSON/JSONL export): videoID, duration, options"

_EXTS = (".mp4", ".MP4", ".mkv")


def _table_files(annotations: str) -> list[str]:
    if not os.path.isdir(annotations):
        return [annotations]
    for pattern in ("videomme/*.parquet", "*.parquet", "videomme/*.jsonl", "videomme/*.json", "*.jsonl", "*.json"):
        found = sorted(glob.glob(os.path.join(annotations, pattern)))
        if found:
            return found
    raise DataError(f"{annotations}: no Video-MME table (videomme/test-00000-of-00001.parquet or a .json/.jsonl "
                    "export) found")


def _rows(path: str) -> list[tuple[int, object]]:
    """(line, row) pairs of one table file; a JSONL line that is not JSON gives a :class:`json.JSONDecodeError`
    as its row."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or give the table's "
                            "JSON/JSONL export") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        return [(i + 1, r) for i, r in enumerate(rows)]
    if path.endswith(".jsonl"):
        rows = []
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc})") from None
        for i, text in enumerate(lines):
            if not text.strip():
                continue
            try:
                rows.append((i + 1, json.loads(text)))
            except json.JSONDecodeError as exc:
                rows.append((i + 1, exc))
        return rows
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return [(i + 1, r) for i, r in enumerate(data)]


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read the Video-MME table (module docstring).

    Raises:
        DataError: an unknown split, no table found, a parquet file without pyarrow installed, an unreadable file.
    """
    split = split or "test"
    if split != "test":
        raise DataError(f"video-mme: unknown split {split!r}; the table has one split, test")
    files = _table_files(annotations)
    base = os.path.abspath(annotations if os.path.isdir(annotations) else os.path.dirname(annotations))
    root = os.path.dirname(base) if os.path.basename(base) == "videomme" else base
    video_dir = os.path.abspath(videos) if videos else os.path.join(root, "data")
    out = Collector()
    for path in files:
        out.sources.append(path)
        for line, r in _rows(path):
            if isinstance(r, json.JSONDecodeError):
                out.skip(path, line, None, "json", str(r), reason="invalid_json")
                continue
            if not isinstance(r, dict):
                out.skip(path, line, None, "record", f"expected an object, got {type(r).__name__}")
                continue
            rid = r.get("question_id")
            if not is_text(rid):
                out.skip(path, line, None, "question_id", f"expected a non-empty string, got {rid!r}")
                continue
            vid = r.get("videoID")
            if not is_text(vid):
                out.skip(path, line, rid, "videoID", f"expected a non-empty string, got {vid!r}")
                continue
            group = r.get("duration")
            if not is_text(group):
                out.skip(path, line, rid, "duration", f"expected short/medium/long, got {group!r}")
                continue
            opts = r.get("options")
            opts = list(opts) if isinstance(opts, tuple) else opts
            meta = {"benchmark": NAME, "duration_group": group}
            for key in ("domain", "sub_category", "video_id", "videoID", "url"):
                if r.get(key) is not None:
                    meta[key] = r[key]
            srt = os.path.join(root, "subtitle", vid + ".srt")
            if os.path.isfile(srt):
                meta["subtitles"] = srt
            obj = {"id": rid, "video": find_video(video_dir, vid, _EXTS), "question": r.get("question"),
                   "options": opts, "answer": r.get("answer"), "task": r.get("task_type") or NAME,
                   "problem_type": "multiple_choice", "source": vid, "split": split, "meta": meta}
            out.add_qa(obj, path, line)
    return out.imported(NAME)
