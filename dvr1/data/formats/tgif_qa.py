"""TGIF-QA (the released question files ``{Train,Test}_{frameqa,count,action,transition}_question``) -> records.

Source: YunseokJANG/tgif-qa, ``dataset/README.md`` (tab-separated, the first line is the header,
``gif_name question [multiple choices] answer [type] vid_id [extra]``; the FrameQA ``type`` 0/1/2/3 is
Object/Number/Color/Location) and the released files themselves (``dataset/Test_action_question.csv`` ...: named
``.csv`` in the repository, ``.tsv`` in the README; both are read). Headers:

- action, transition: ``gif_name question a1 a2 a3 a4 a5 answer vid_id key`` (``answer`` = the 0-based index of the
  right choice);
- count: ``gif_name question answer vid_id key`` (``answer`` = the count);
- frameqa: ``gif_name question answer type vid_id key description`` (``answer`` = one word).

Mapping: id = ``vid_id`` (``ACTION4``, ``TRANS23``, ``COUNT12``, ``FRAMEQA1159``: unique per question); task =
``Action``/``Transition``/``Count``/``FrameQA``; Action/Transition -> ``multiple_choice`` with options a1..a5 and
the answer's letter; Count -> ``numerical`` (the count as text); FrameQA -> ``free_form`` (the answer word, scored
by ROUGE as docs/ALGORITHMS.md §10 defines free-form answers); source = ``gif_name``; meta: ``benchmark``,
``gif_name``, ``key`` and, for FrameQA, ``type`` (0-3) and ``description`` (the caption the question was generated
from).

``annotations``: the directory holding the question files (every task file of the split found there is read, in
the order FrameQA, Count, Action, Transition) or one file (its task and split from its name). ``videos``: the
directory of the GIFs (default: the annotation directory); the video of a row is ``{videos}/{gif_name}.gif``, or
``{gif_name}.mp4`` / ``.webm`` when only such a converted file exists. ``split``: ``train`` or ``test`` (default
``test``).
"""

from __future__ import annotations

import csv
import os
import re

from dvr1.data.formats._common import Collector, find_video, is_text
from dvr1.data.schema import DataError, LETTERS

NAME = "tgif-qa"
KIND = "qa"
DESCRIPTION = "TGIF-QA question TSVs {Train,Test}_{frameqa,count,action,transition}_question (.tsv or .csv)"

TASKS = {  # file infix -> (task name, columns of the released header)
    "frameqa": ("FrameQA", ("gif_name", "question", "answer", "type", "vid_id", "key", "description")),
    "count": ("Count", ("gif_name", "question", "answer", "vid_id", "key")),
    "action": ("Action", ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key")),
    "transition": ("Transition", ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key")),
}
SPLITS = {"train": "Train", "test": "Test"}
_FILE_RE = re.compile(r"^(Train|Test)_(frameqa|count|action|transition)_question\.(tsv|csv)$")
_EXTS = (".gif", ".mp4", ".webm")


def _files(annotations: str, split: str | None) -> tuple[str, list[tuple[str, str]]]:
    if not os.path.isdir(annotations):
        m = _FILE_RE.match(os.path.basename(annotations))
        if m is None:
            raise DataError(f"{annotations}: not a TGIF-QA question file ({{Train,Test}}_{{frameqa,count,action,"
                            "transition}}_question.tsv)")
        file_split = m.group(1).lower()
        if split is not None and split != file_split:
            raise DataError(f"{annotations}: a {file_split} file, but --split {split}")
        return file_split, [(m.group(2), annotations)]
    split = split or "test"
    if split not in SPLITS:
        raise DataError(f"tgif-qa: unknown split {split!r}; known: {', '.join(SPLITS)}")
    found = []
    for infix in TASKS:
        for ext in ("tsv", "csv"):
            p = os.path.join(annotations, f"{SPLITS[split]}_{infix}_question.{ext}")
            if os.path.isfile(p):
                found.append((infix, p))
                break
    if not found:
        raise DataError(f"{annotations}: no {SPLITS[split]}_*_question.tsv file found")
    return split, found


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read TGIF-QA question files (module docstring).

    Raises:
        DataError: an unknown split, no question file, a file whose header is not the released one, a file that is
            not UTF-8.
    """
    split, files = _files(annotations, split)
    out = Collector()
    for infix, path in files:
        task, columns = TASKS[infix]
        video_dir = os.path.abspath(videos) if videos else os.path.dirname(os.path.abspath(path))
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc})") from None
        if not rows or tuple(c.strip() for c in rows[0]) != columns:
            got = rows[0] if rows else []
            raise DataError(f"{path}:1: header: expected {' '.join(columns)!r}, got {' '.join(got)!r}")
        out.sources.append(path)
        for i, cells in enumerate(rows[1:]):
            line = i + 2
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(columns):
                out.skip(path, line, None, "row", f"expected {len(columns)} tab-separated columns, got {len(cells)}")
                continue
            r = dict(zip(columns, (c.strip() for c in cells)))
            rid = r["vid_id"]
            if not rid:
                out.skip(path, line, None, "vid_id", "empty")
                continue
            if not is_text(r["gif_name"]):
                out.skip(path, line, rid, "gif_name", "empty")
                continue
            meta = {"benchmark": NAME, "gif_name": r["gif_name"], "key": r["key"]}
            obj = {"id": rid, "video": find_video(video_dir, r["gif_name"], _EXTS), "question": r["question"],
                   "task": task, "source": r["gif_name"], "split": split, "meta": meta}
            if infix in ("action", "transition"):
                a = r["answer"]
                if not a.isdigit() or int(a) > 4:
                    out.skip(path, line, rid, "answer", f"expected the index 0-4 of the right choice, got {a!r}")
                    continue
                obj.update(problem_type="multiple_choice", options=[r[f"a{k}"] for k in range(1, 6)],
                           answer=LETTERS[int(a)])
            elif infix == "count":
                obj.update(problem_type="numerical", answer=r["answer"])
            else:
                if r["type"] not in ("0", "1", "2", "3"):
                    out.skip(path, line, rid, "type", f"expected 0-3 (Object/Number/Color/Location), got "
                                                      f"{r['type']!r}")
                    continue
                meta.update(type=int(r["type"]), description=r["description"])
                obj.update(problem_type="free_form", answer=r["answer"])
            out.add_qa(obj, path, line)
    return out.imported(NAME)
