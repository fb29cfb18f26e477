"""The JSONL record of a verifiable video-QA sample, and its reader/writer.

One line of a ``{train,val,test}.jsonl`` file is one :class:`VideoQARecord`. The reward functions of
ALGORITHMS §6 read ``answer`` (a letter for multiple choice, ``"[s, e]"`` in seconds for grounding) and
``segment``; :mod:`dvr1.data.prompts` reads ``question``/``options``/``meta``.

Errors name the place: ``RecordError("{path}:{line}: {field}: {msg}")``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

TASKS = ("arrow_of_time", "temporal_order", "grounding", "counting", "motion_direction")
"""Task names. All but ``grounding`` are 4-way multiple choice."""

LETTERS = ("A", "B", "C", "D")
NUM_OPTIONS = 4

_SEGMENT_RE = re.compile(r"^\[(\d+(?:\.\d)?), (\d+(?:\.\d)?)\]$")

_log = logging.getLogger("dvr1.data")


class RecordError(ValueError):
    """A malformed record. Message: ``"{path}:{line}: {field}: {msg}"``."""


def format_segment(start: float, end: float) -> str:
    """The grounding answer string for a segment in seconds: ``"[1.5, 3.0]"`` (one decimal each)."""
    return f"[{start:.1f}, {end:.1f}]"


def parse_segment(text: str) -> tuple[float, float]:
    """Parse ``"[s, e]"`` (seconds, as written by :func:`format_segment`) into ``(s, e)``.

    Raises:
        ValueError: if ``text`` is not of that exact form.
    """
    m = _SEGMENT_RE.match(text)
    if m is None:
        raise ValueError(f"expected '[s, e]' with seconds to 1 decimal, got {text!r}")
    return float(m.group(1)), float(m.group(2))


@dataclass
class VideoQARecord:
    """One verifiable video-QA sample.

    Attributes:
        id: unique id, e.g. ``"train-counting-00012"``.
        video: path of the clip; relative paths are relative to the JSONL file's directory
            (:func:`read_records` makes them absolute).
        question: the question text, without options and without the ALGORITHMS §6 template.
        options: 4 option texts WITHOUT the ``"A. "`` prefix for multiple choice; ``None`` for grounding.
        answer: ``"A"``..``"D"`` for multiple choice; ``"[s, e]"`` in seconds (1 decimal) for grounding.
        task: one of :data:`TASKS`.
        segment: ``[start, end]`` in seconds (grounding only, else ``None``); equals the parsed ``answer``.
        fps: frame rate of the clip (frames per second).
        duration: clip length in seconds.
        source: id of the source clip the frames come from (the unit of the train/val/test split).
        split: ``"train"``, ``"val"`` or ``"test"`` (any non-empty name is accepted).
        meta: construction metadata (e.g. ``{"reversed": true}``, ``{"count": 3, "color": "red"}``),
            used to write SFT reasoning (:func:`dvr1.data.prompts.sft_response`).
    """

    id: str
    video: str
    question: str
    options: list[str] | None
    answer: str
    task: str
    segment: list[float] | None
    fps: float
    duration: float
    source: str
    split: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict with the fields in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "VideoQARecord":
        """Validate and build a record from a decoded JSON object.

        Args:
            obj: the decoded JSON value of one line.
            where: ``"{path}:{line}"`` used as the error prefix.

        Raises:
            RecordError: ``"{where}: {field}: {msg}"`` for the first invalid, missing or unknown field.
        """

        def err(name: str, msg: str) -> RecordError:
            return RecordError(f"{where}: {name}: {msg}")

        if not isinstance(obj, dict):
            raise err("record", f"expected a JSON object, got {type(obj).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in obj:
            if key not in names:
                raise err(key, "unknown field")
        optional = {"options": None, "segment": None, "meta": {}}
        for name in names:
            if name not in obj and name not in optional:
                raise err(name, "missing")
        vals = {n: obj.get(n, optional.get(n)) for n in names}
        if vals["meta"] is None:
            vals["meta"] = {}

        for name in ("id", "video", "question", "answer", "task", "source", "split"):
            if not isinstance(vals[name], str) or not vals[name].strip():
                raise err(name, f"expected a non-empty string, got {vals[name]!r}")
        for name in ("fps", "duration"):
            v = vals[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise err(name, f"expected a positive number, got {v!r}")
            vals[name] = float(v)
        if not isinstance(vals["meta"], dict):
            raise err("meta", f"expected an object, got {type(vals['meta']).__name__}")
        task = vals["task"]
        if task not in TASKS:
            raise err("task", f"expected one of {', '.join(TASKS)}, got {task!r}")

        options, answer, segment = vals["options"], vals["answer"], vals["segment"]
        if task == "grounding":
            if options is not None:
                raise err("options", "must be null for grounding")
            try:
                s, e = parse_segment(answer)
            except ValueError as exc:
                raise err("answer", str(exc)) from None
            if not s < e:
                raise err("answer", f"start must be < end, got {answer!r}")
            if e > vals["duration"] + 0.05:
                raise err("answer", f"end {e} exceeds duration {vals['duration']}")
            if (
                not isinstance(segment, list)
                or len(segment) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in segment)
            ):
                raise err("segment", f"expected [start, end] seconds for grounding, got {segment!r}")
            if format_segment(*segment) != answer:
                raise err("segment", f"{segment!r} disagrees with answer {answer!r}")
            vals["segment"] = [float(x) for x in segment]
        else:
            if (
                not isinstance(options, list)
                or len(options) != NUM_OPTIONS
                or not all(isinstance(o, str) and o.strip() for o in options)
            ):
                raise err("options", f"expected {NUM_OPTIONS} non-empty strings, got {options!r}")
            if len(set(options)) != len(options):
                raise err("options", f"duplicate options {options!r}")
            if answer not in LETTERS:
                raise err("answer", f"expected one of {', '.join(LETTERS)}, got {answer!r}")
            if segment is not None:
                raise err("segment", f"must be null for {task}")
        return cls(**vals)


def read_records(
    path: str | os.PathLike,
    strict: bool = False,
    log: logging.Logger = _log,
    check_video: bool = True,
) -> list[VideoQARecord]:
    """Read a JSONL file of :class:`VideoQARecord`; ``video`` becomes an absolute path.

    A malformed line (bad JSON, missing/invalid/unknown field, missing video file when ``check_video``)
    is logged as a warning ``"{path}:{lineno}: skipped: {field}: {msg}"`` and skipped. Blank lines are ignored.

    Args:
        path: the JSONL file.
        strict: raise instead of skipping.
        log: logger for skipped lines.
        check_video: treat a record whose video file does not exist as malformed (field ``video``).

    Returns:
        The valid records, in file order.

    Raises:
        RecordError: ``"{path}:{lineno}: {field}: {msg}"`` (strict only); ``"{path}: file not found"`` always.
    """
    return read_jsonl(path, VideoQARecord.from_json, RecordError, strict=strict, log=log, check_video=check_video)


def read_jsonl(path, from_json, error_cls=RecordError, strict: bool = False, log: logging.Logger = _log,
               check_video: bool = True) -> list:
    """The JSONL reading loop shared by every record type (video QA, dense captions).

    `from_json(obj, where)` builds one record (raising `error_cls("{where}: {field}: {msg}")`); records with a
    `video` attribute get it resolved against the JSONL's directory and, with `check_video`, checked to exist. A bad
    line is logged as ``"{path}:{lineno}: skipped: {field}: {msg}"`` and skipped, or raised when `strict`.
    Raises `error_cls("{path}: file not found")` always.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error_cls(f"{path}: file not found")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error_cls(f"{where}: json: {exc}") from None
                rec = from_json(obj, where)
                rec.video = os.path.normpath(os.path.join(base, rec.video))
                if check_video and not os.path.isfile(rec.video):
                    raise error_cls(f"{where}: video: file not found: {rec.video}")
            except error_cls as exc:
                if strict:
                    raise
                reason = str(exc)[len(where) + 2 :]
                log.warning("%s: skipped: %s", where, reason)
                continue
            out.append(rec)
    return out


def write_records(path: str | os.PathLike, records: list[VideoQARecord]) -> None:
    """Write records as JSONL (one compact JSON object per line, fields in declaration order).

    Absolute ``video`` paths under the JSONL file's directory are written relative to it, so the
    directory can be moved. Output is byte-deterministic for equal records.
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            d = rec.to_json()
            video = d["video"]
            if os.path.isabs(video) and os.path.commonpath([base, os.path.abspath(video)]) == base:
                d["video"] = os.path.relpath(video, base)
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
