"""Video-R1's training / evaluation JSON (Video-R1-260k.json, Video-R1-COT-165k.json, src/r1-v/Evaluation/eval_*.json).

Sources followed (github.com/tulerfeng/Video-R1): the README's data section and the Video-R1-data dataset card; the
training code ``src/r1-v/src/open_r1/grpo.py`` / ``sft_video.py`` (``make_conversation_image_and_video``: the
options of a ``"multiple choice"`` item are already lettered strings ``"A. text"`` appended to ``problem``; the media
path is ``os.getcwd() + "/Video-R1-data" + example["path"][1:]``, i.e. ``path`` (``"./src/dir/clip.mp4"``) joined to
the directory holding the JSON; the SFT target is ``process + "\\n" + solution``); the evaluation script
``src/r1-v/eval_bench.py`` (``TYPE_TEMPLATE`` keys ``"multiple choice"``, ``"numerical"``, ``"OCR"``,
``"free-form"``, ``"regression"``; the ground truth is ``re.search(r"<answer>\\s*(.*?)\\s*</answer>", solution)``).

The file is one JSON array of objects ``{"problem_id", "problem", "data_type" ("video"/"image"), "problem_type",
"options" (lettered strings, ``[]`` when not multiple choice), "process" ("<think>...</think>"), "solution"
("<answer>...</answer>"), "path", "data_source"}``.

Mapping: id ``str(problem_id)``; ``problem`` -> ``question``; ``problem_type`` ``"multiple choice"`` ->
``multiple_choice`` (options without their ``"A. "``, answer the letter), ``"numerical"`` -> ``numerical``,
``"OCR"`` -> ``ocr``, ``"free-form"`` -> ``free_form``, ``"regression"`` -> ``regression``; the answer is the text
inside ``<answer>`` tags; ``process`` without its ``<think>`` tags -> ``reasoning``; ``task`` = ``data_source``
(the problem type when it is absent); ``video`` = ``--videos`` (default: the JSON's directory) + ``path[1:]`` for
``"./..."`` paths (Video-R1's join), else ``path`` joined to it; ``source`` = ``path`` as written;
``meta`` ``{"problem_id", "data_source"}``.
``data_type: image`` rows are reported (``"image_sample"``) and skipped (dvr1 records are videos), as are unknown
problem types (``"unsupported_problem_type"``).
"""

from __future__ import annotations

import os
import re

from dvr1.data.formats import Imported, check_split, load_json, progress, skip, to_record
from dvr1.data.schema import DataError

NAME = "video-r1"
KIND = "qa"
DESCRIPTION = ("Video-R1 JSON (Video-R1-260k / COT-165k / Evaluation eval_*.json): multiple choice, numerical, OCR, "
               "free-form, regression; `process` -> reasoning; image rows skipped")
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "train"
BENCHMARK = None

PROBLEM_TYPES = {"multiple choice": "multiple_choice", "numerical": "numerical", "OCR": "ocr",
                 "free-form": "free_form", "regression": "regression"}
"""Video-R1's ``problem_type`` -> dvr1's."""

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_THINK_RE = re.compile(r"^\s*<think>\s*(.*?)\s*</think>\s*$", re.DOTALL)


def video_path(root: str, path: str) -> str:
    """Video-R1's join of an item's ``path`` to the data directory: ``root + path[1:]`` for ``"./..."``."""
    if path.startswith("./"):
        return os.path.normpath(root + path[1:])
    return os.path.normpath(os.path.join(root, path))


def strip_think(process: str) -> str:
    """``"<think>text</think>"`` -> ``"text"`` (unchanged when not wrapped in the tags), stripped."""
    m = _THINK_RE.match(process)
    return (m.group(1) if m else process).strip()


def read(annotations: str, videos: str | None, split: str | None) -> Imported:
    """Read the Video-R1 JSON file ``annotations`` as split ``split`` (a name only: the file is the split).

    Raises:
        DataError: the file is missing, not JSON, or not a JSON array.
    """
    split = check_split(split, SPLITS, DEFAULT_SPLIT, NAME)
    if os.path.isdir(annotations):
        raise DataError(f"{annotations}: is a directory (give the Video-R1 JSON file, e.g. Video-R1-260k.json)")
    data = load_json(annotations)
    if not isinstance(data, list):
        raise DataError(f"{annotations}: expected a JSON array of items, got {type(data).__name__}")
    root = os.path.abspath(videos if videos is not None else os.path.dirname(os.path.abspath(annotations)))
    out = Imported(records=[], sources=[annotations], benchmark=BENCHMARK)
    for k, item in enumerate(progress(data, "video-r1")):
        rec = _item(item, k + 1, annotations, root, split, out)
        if rec is not None:
            out.records.append(rec)
    return out


def _item(item, line: int, file: str, root: str, split: str, out: Imported):
    if not isinstance(item, dict):
        out.dropped.append(skip(file, line, None, "invalid_record", "item",
                                f"expected a JSON object, got {type(item).__name__}"))
        return None
    pid = item.get("problem_id")
    rid = str(pid) if isinstance(pid, (int, str)) and not isinstance(pid, bool) and str(pid).strip() else None
    if rid is None:
        out.dropped.append(skip(file, line, None, "invalid_record", "problem_id", f"expected an id, got {pid!r}"))
        return None
    dtype = item.get("data_type")
    if dtype == "image":
        out.dropped.append(skip(file, line, rid, "image_sample", "data_type", "image samples are not imported"))
        return None
    if dtype != "video":
        out.dropped.append(skip(file, line, rid, "invalid_record", "data_type",
                                f"expected 'video' or 'image', got {dtype!r}"))
        return None
    ptype = PROBLEM_TYPES.get(item.get("problem_type"))
    if ptype is None:
        out.dropped.append(skip(file, line, rid, "unsupported_problem_type", "problem_type",
                                f"expected one of {', '.join(PROBLEM_TYPES)}, got {item.get('problem_type')!r}"))
        return None
    solution = item.get("solution")
    m = _ANSWER_RE.search(solution) if isinstance(solution, str) else None
    if m is None:
        out.dropped.append(skip(file, line, rid, "invalid_record", "solution",
                                f"expected '<answer>...</answer>', got {solution!r}"))
        return None
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        out.dropped.append(skip(file, line, rid, "invalid_record", "path", f"expected a path, got {path!r}"))
        return None
    options = item.get("options")
    if ptype != "multiple_choice" and options == []:
        options = None
    process = item.get("process")
    reasoning = strip_think(process) if isinstance(process, str) else None
    source = item.get("data_source")
    task = source if isinstance(source, str) and source.strip() else ptype
    obj = {"id": rid, "video": video_path(root, path.strip()), "question": item.get("problem"), "options": options,
           "answer": m.group(1), "task": task, "problem_type": ptype, "split": split,
           "reasoning": reasoning or None, "source": path.strip(), "meta": {"problem_id": pid, "data_source": source}}
    return to_record(obj, file, line, out.dropped)
