"""Charades-STA (``charades_sta_{train,test}.txt`` + Charades ``Charades_v1_{train,test}.csv``) -> grounding records.

Source: the Charades-STA release (Gao et al. 2017, TALL): one query a line, ``"{video_id} {start} {end}##{sentence}"``
(seconds), e.g. ``AO8RW 0.0 6.9##a person is putting a book on a shelf.``; durations come from Charades'
``Charades_v1_{split}.csv`` (header ``id,subject,scene,quality,relevance,verified,script,objects,descriptions,
actions,length``; ``length`` in seconds), as the 2D-TAN loader (microsoft/VideoX ``2D-TAN/lib/datasets/
charades.py``) reads them; videos ``Charades_v1_480/{id}.mp4``.

Mapping: one :class:`DenseCaptionRecord` per line with one event: id ``"{video_id}#{line}"``, the segment's end
clipped to the duration (``notes["segments_clipped"]``), the sentence with runs of whitespace collapsed as its
caption; source = the video id; split = the split read.

``annotations``: the directory holding both files (official layout) or the ``.txt`` file (the ``.csv`` is looked
for next to it). ``videos``: the directory of ``{id}.mp4`` (default ``{annotations}/Charades_v1_480`` when it
exists, else the annotation directory). ``split``: ``train`` or ``test`` (default; from the file name when a file is
given).
"""

from __future__ import annotations

import csv
import os
import re

from dvr1.data.formats._common import Collector, find_video
from dvr1.data.schema import DataError
from dvr1.vidchain.data import DenseCaptionRecord, DenseRecordError

NAME = "charades-sta"
KIND = "dense"
DESCRIPTION = "Charades-STA charades_sta_{train,test}.txt with Charades_v1_{train,test}.csv durations"

SPLITS = ("train", "test")
_FILE_RE = re.compile(r"^charades_sta_(train|test)\.txt$")
_EXTS = (".mp4", ".mkv", ".webm")


def durations(csv_path: str) -> dict[str, float]:
    """Video id -> ``length`` seconds from a Charades ``Charades_v1_*.csv`` (rows with no positive length are left
    out). Raises DataError when the file is missing or has no ``id``/``length`` columns."""
    try:
        with open(csv_path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames or "length" not in reader.fieldnames:
                raise DataError(f"{csv_path}:1: header: expected the columns id ... length, got {reader.fieldnames}")
            out = {}
            for row in reader:
                try:
                    length = float(row["length"])
                except (TypeError, ValueError):
                    continue
                if length > 0:
                    out[row["id"]] = length
            return out
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found (Charades-STA durations come from Charades' "
                        "Charades_v1_{train,test}.csv 'length' column)") from None


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read one Charades-STA split (module docstring).

    Raises:
        DataError: an unknown split, a missing query file or Charades CSV.
    """
    if os.path.isdir(annotations):
        split = split or "test"
        if split not in SPLITS:
            raise DataError(f"charades-sta: unknown split {split!r}; known: {', '.join(SPLITS)}")
        txt = os.path.join(annotations, f"charades_sta_{split}.txt")
    else:
        m = _FILE_RE.match(os.path.basename(annotations))
        if m is None:
            raise DataError(f"{annotations}: not a Charades-STA file (charades_sta_{{train,test}}.txt)")
        if split is not None and split != m.group(1):
            raise DataError(f"{annotations}: a {m.group(1)} file, but --split {split}")
        txt, split = annotations, m.group(1)
    base = os.path.dirname(txt)
    if not os.path.isfile(txt):
        raise DataError(f"{txt}: file not found")
    csv_path = os.path.join(base, f"Charades_v1_{split}.csv")
    dur = durations(csv_path)
    if videos:
        video_dir = os.path.abspath(videos)
    else:
        video_dir = os.path.join(base, "Charades_v1_480")
        video_dir = os.path.abspath(video_dir if os.path.isdir(video_dir) else base)
    out = Collector()
    out.sources += [txt, csv_path]
    with open(txt, encoding="utf-8", errors="strict") as fh:
        try:
            lines = fh.read().splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{txt}: not UTF-8 ({exc})") from None
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        head, sep, sentence = text.partition("##")
        parts = head.split()
        rid = f"{parts[0]}#{lineno}" if parts else None
        if not sep or len(parts) != 3 or not sentence.strip():
            out.skip(txt, lineno, rid, "line", f"expected 'vid start end##sentence', got {text.strip()!r}")
            continue
        vid = parts[0]
        try:
            s, e = float(parts[1]), float(parts[2])
        except ValueError:
            out.skip(txt, lineno, rid, "segment", f"not numbers: {parts[1]!r} {parts[2]!r}")
            continue
        if vid not in dur:
            out.skip(txt, lineno, rid, "duration", f"no duration for video {vid!r} in {os.path.basename(csv_path)}")
            continue
        d = dur[vid]
        if e > d:
            e = d
            out.note("segments_clipped")
        obj = {"id": rid, "video": find_video(video_dir, vid, _EXTS), "duration": d, "events": [[s, e]],
               "captions": [" ".join(sentence.split())], "split": split, "source": vid}
        out.add_checked(DenseCaptionRecord.from_json, DenseRecordError, obj, txt, lineno)
    return out.imported(None)
