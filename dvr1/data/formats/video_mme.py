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

``annotations``: the dataset root as released (``videomme/test-00000-of-00001.parquet``; read with ``pyarrow``, a
dvr1 requirement; the columns above, all strings, ``options`` a list of strings; later revisions' extra columns
``language``/``Subtitle`` are ignored), a JSON/JSONL export of that table under ``videomme/`` or the root, or one
file: ``.parquet``, ``.json`` (an array of row objects, e.g. pandas ``to_json(orient="records")``) or ``.jsonl``
(one row object a line). A row's line is its parquet / JSON array row + 1, or its JSONL line. ``videos``: the
directory holding ``{videoID}.mp4`` (``.MP4``/``.mkv`` are tried too; default ``{root}/data``). ``split``: ``test``
(the only one).
"""

from __future__ import annotations

import glob
import os
from typing import Iterable

from dvr1.data.formats._common import Collector, check_split, find_video, is_text, load_json
from dvr1.data.schema import DataError

NAME = "video-mme"
KIND = "qa"
DESCRIPTION = "Video-MME annotation table (videomme/*.parquet as released, or a JSON/JSONL export): videoID, duration"

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


def _rows(path: str, out: Collector) -> Iterable[tuple[int, object]]:
    """(line, row) pairs of one table file (line: the parquet / JSON array row + 1, or the JSONL line); a JSONL line
    that is not UTF-8 or JSON is dropped into ``out``."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (a dvr1 requirement: pip install pyarrow)") \
                from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        return [(i + 1, r) for i, r in enumerate(rows)]
    if path.endswith(".jsonl"):
        return out.jsonl(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return [(i + 1, r) for i, r in enumerate(data)]


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read the Video-MME table (module docstring).

    Raises:
        DataError: an unknown split, no table found, a parquet file without pyarrow installed, an unreadable file.
    """
    split = check_split(split, ("test",), "test", NAME)
    files = _table_files(annotations)
    base = os.path.abspath(annotations if os.path.isdir(annotations) else os.path.dirname(annotations))
    root = os.path.dirname(base) if os.path.basename(base) == "videomme" else base
    video_dir = os.path.abspath(videos) if videos else os.path.join(root, "data")
    out = Collector()
    for path in files:
        out.sources.append(path)
        for line, r in _rows(path, out):
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
