"""NExT-GQA (visually grounded video QA), as released in doc-doc/NExT-GQA ``datasets/nextgqa/``.

Sources followed (github.com/doc-doc/NExT-GQA):
- ``datasets/nextgqa/README.md`` and the released ``val.csv`` / ``test.csv`` / ``gsub_val.json`` / ``gsub_test.json``;
- ``code/FrozenGQA/datasets/mc_dataset.py`` (the official loader): the csv's ``answer`` is the answer TEXT and the
  label is ``[a0..a4].index(answer)``; the sample key is ``f"{video_id}_{qid}"``;
- ``code/TempGQA/eval_ground.py`` (the official grounding evaluation): it iterates ``gsub[vid]["location"][qid]``
  (a list of ``[start, end]`` seconds) and takes the max IoU/IoP over those segments, keyed ``f"{vid}_{qid}"``;
- ``code/SeViLA/tools``-style ``extract_video.py``: the video of ``video_id`` is
  ``os.path.join(video_dir, f"{map_vid_vidorID[video_id]}.mp4")``.

``--annotations`` is the ``datasets/nextgqa/`` directory holding ``{split}.csv`` (``video_id, frame_count, width,
height, question, answer, qid, type, a0..a4``), ``gsub_{split}.json`` (``{video_id: {"duration", "fps", "location":
{qid: [[s, e], ...]}}}``, ids as strings) and ``map_vid_vidorID.json`` (``{video_id: "dir/vidorid"}``); ``--videos``
the directory holding the NExT-QA videos (``NExTVideo/``; default: the annotations directory).

Mapping: one record per csv row with a location: id ``"{video_id}_{qid}"``, ``problem_type`` ``grounded_qa``, the
five options ``a0..a4`` (answer: the letter of the first option equal to ``answer``), every ``[s, e]`` of
``location[qid]`` in ``segments``, ``task`` = ``type`` (``CW``, ``CH``, ``TN``, ``TC``, ``TP``), ``duration``/``fps``
from ``gsub`` (seconds; frames per second), ``meta`` ``{"benchmark": "nextgqa", "video_id", "qid", "frame_count",
"width", "height"}``. A segment ending past ``duration`` is clipped to it (``notes["segments_clipped"]``); one that
is empty after clipping is removed (``notes["segments_removed_empty"]``; the official metric takes a max over
segments, which an empty one never wins). Rows without a location (``"no_location"``) or without a video mapping
(``"no_video_mapping"``) are reported and skipped.
"""

from __future__ import annotations

import csv
import os

from dvr1.data.formats import Imported, check_split, load_json, progress, skip, to_record
from dvr1.data.schema import LETTERS, DataError

NAME = "nextgqa"
KIND = "qa"
DESCRIPTION = ("NExT-GQA grounded QA: `datasets/nextgqa/` ({split}.csv + gsub_{split}.json + map_vid_vidorID.json), "
               "5 options, all time spans; splits val, test")
SPLITS = ("val", "test")
DEFAULT_SPLIT = "test"
BENCHMARK = "nextgqa"
COLUMNS = ("video_id", "frame_count", "width", "height", "question", "answer", "qid", "type",
           "a0", "a1", "a2", "a3", "a4")
MAP_FILE = "map_vid_vidorID.json"


def read(annotations: str, videos: str | None, split: str | None) -> Imported:
    """Read split ``split`` (default ``test``) of the NExT-GQA directory ``annotations``.

    Raises:
        DataError: the directory or one of its three files is missing or unreadable, the csv lacks a column.
    """
    split = check_split(split, SPLITS, DEFAULT_SPLIT, NAME)
    if not os.path.isdir(annotations):
        raise DataError(f"{annotations}: not a directory (give NExT-GQA's datasets/nextgqa/ directory)")
    csv_path = os.path.join(annotations, f"{split}.csv")
    gsub_path = os.path.join(annotations, f"gsub_{split}.json")
    map_path = os.path.join(annotations, MAP_FILE)
    for p in (csv_path, gsub_path, map_path):
        if not os.path.isfile(p):
            raise DataError(f"{p}: file not found")
    gsub = load_json(gsub_path)
    vmap = load_json(map_path)
    if not isinstance(gsub, dict):
        raise DataError(f"{gsub_path}: expected an object {{video_id: {{duration, fps, location}}}}")
    if not isinstance(vmap, dict):
        raise DataError(f"{map_path}: expected an object {{video_id: path}}")
    root = os.path.abspath(videos if videos is not None else annotations)
    out = Imported(records=[], sources=[csv_path, gsub_path, map_path], benchmark=BENCHMARK,
                   notes={"segments_clipped": 0, "segments_removed_empty": 0})

    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{csv_path}: empty file (expected the header {','.join(COLUMNS)})") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{csv_path}:1: unreadable header: {exc}") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{csv_path}:1: missing column(s) {', '.join(missing)}")
        col = {c: header.index(c) for c in COLUMNS}
        end = reader.line_num
        rows = []
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise DataError(f"{csv_path}:{start}: not UTF-8 ({exc.reason})") from None
            except csv.Error as exc:
                end = reader.line_num
                out.dropped.append(skip(csv_path, start, None, "invalid_record", "row", str(exc)))
                continue
            end = reader.line_num
            if row:
                rows.append((start, row))
    for line, row in progress(rows, f"nextgqa {split}"):
        rec = _row(row, col, len(header), line, csv_path, gsub, gsub_path, vmap, root, split, out)
        if rec is not None:
            out.records.append(rec)
    return out


def _row(row, col, n_cols, line, csv_path, gsub, gsub_path, vmap, root, split, out: Imported):
    if len(row) != n_cols:
        out.dropped.append(skip(csv_path, line, None, "invalid_record", "row",
                                f"expected {n_cols} fields, got {len(row)}"))
        return None
    f = {c: row[i].strip() for c, i in col.items()}
    vid, qid = f["video_id"], f["qid"]
    rid = f"{vid}_{qid}" if vid and qid else None
    if rid is None:
        out.dropped.append(skip(csv_path, line, None, "invalid_record", "video_id" if not vid else "qid", "empty"))
        return None
    ints = {}
    for name in ("frame_count", "width", "height"):
        try:
            ints[name] = int(f[name])
        except ValueError:
            out.dropped.append(skip(csv_path, line, rid, "invalid_record", name,
                                    f"expected an integer, got {f[name]!r}"))
            return None
    ann = gsub.get(vid)
    locs = ann.get("location") if isinstance(ann, dict) else None
    if not isinstance(locs, dict) or qid not in locs:
        out.dropped.append(skip(csv_path, line, rid, "no_location", "location",
                                f"{gsub_path} has no time span for video {vid} question {qid}"))
        return None
    if vid not in vmap or not isinstance(vmap[vid], str) or not vmap[vid].strip():
        out.dropped.append(skip(csv_path, line, rid, "no_video_mapping", "video_id",
                                f"{vid} is not in {MAP_FILE}"))
        return None
    options = [f[f"a{k}"] for k in range(5)]
    if f["answer"] not in options:
        out.dropped.append(skip(csv_path, line, rid, "invalid_record", "answer",
                                f"{f['answer']!r} is none of a0..a4"))
        return None
    duration, fps = ann.get("duration"), ann.get("fps")
    segments = _clip(locs[qid], duration, out.notes)
    obj = {
        "id": rid, "video": os.path.join(root, vmap[vid].strip() + ".mp4"), "question": f["question"],
        "options": options, "answer": LETTERS[options.index(f["answer"])], "task": f["type"] or None,
        "problem_type": "grounded_qa", "segments": segments, "fps": fps, "duration": duration,
        "source": vid, "split": split,
        "meta": {"benchmark": BENCHMARK, "video_id": vid, "qid": qid, **ints},
    }
    return to_record(obj, csv_path, line, out.dropped)


def _clip(locs, duration, notes: dict):
    """``locs`` with every end past ``duration`` clipped to it and empty segments removed (counted in ``notes``);
    anything malformed is returned unchanged, for the schema to name."""
    if not isinstance(locs, list) or not all(isinstance(p, list) and len(p) == 2 for p in locs):
        return locs
    if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration <= 0:
        return locs
    out, clipped, removed = [], 0, 0
    for s, e in locs:
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (s, e)):
            return locs
        end = min(e, float(duration))
        if s >= end:
            removed += 1
            continue
        clipped += end < e
        out.append([s, end if end < e else e])
    if not out:  # nothing left: the row is reported with its original spans
        return locs
    notes["segments_clipped"] += clipped
    notes["segments_removed_empty"] += removed
    return out
