"""The JSONL record of a verifiable video-QA sample (the open record schema), and its reader/writer.

One line of a ``{train,val,test}.jsonl`` file is one :class:`VideoQARecord`; ``dvr1/data/record.schema.json`` is
the same schema as a JSON Schema users can validate against. The reward of each ``problem_type`` is in
docs/ALGORITHMS.md §6 and §10; :mod:`dvr1.data.prompts` writes the prompt and the SFT target.

Reading never stops at one bad line: a line that is not UTF-8, not JSON, a record with a missing or bad field, a
duplicate id or a missing video is reported (``"{path}:{line}: skipped: {field}: {msg}"``) into a
:class:`SkipReport` and skipped; ``strict=True`` raises the first instead.

Errors name the place: ``RecordError("{path}:{line}: {field}: {msg}")``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

TASKS = ("arrow_of_time", "temporal_order", "grounding", "counting", "motion_direction")
"""The synthetic set's task names (:mod:`dvr1.data.build`). Any other non-empty name is a valid task too."""

PROBLEM_TYPES = ("multiple_choice", "numerical", "ocr", "free_form", "regression", "grounding", "grounded_qa")
"""How a record is answered and scored (docs/ALGORITHMS.md §6, §10)."""

CHOICE_TYPES = ("multiple_choice", "grounded_qa")  # answered with an option letter
SEGMENT_TYPES = ("grounding", "grounded_qa")  # carry ground-truth segments
NUMBER_TYPES = ("numerical", "regression")

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
MIN_OPTIONS, MAX_OPTIONS = 2, 26

SKIP_REASONS = ("invalid_utf8", "invalid_json", "invalid_record", "duplicate_id", "missing_video", "corrupt_video",
                "prompt_too_long")
"""The reasons a record is skipped, as counted in ``n_skipped`` of every eval/train JSON."""

_SEGMENT_RE = re.compile(r"^\[(\d+(?:\.\d)?), (\d+(?:\.\d)?)\]$")
_ANSWER_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?(?:[.):](?:\s.*)?)?$", re.DOTALL)
_OPTION_PREFIX_RE = re.compile(r"^\(?([A-Z])\s*[.):]\s*")
_FIELDS = ("id", "video", "question", "options", "answer", "task", "segment", "fps", "duration", "source", "split",
           "meta", "problem_type", "segments", "reasoning")

_log = logging.getLogger("dvr1.data")


class DataError(ValueError):
    """A user's data cannot be used (bad record, missing file, data root dvr1 must not write to). One line."""


class RecordError(DataError):
    """A malformed record. Message: ``"{path}:{line}: {field}: {msg}"``."""


class NoUsableRecords(DataError, RuntimeError):
    """Every record of a file (or of a training rank) was skipped."""


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


def legacy_problem_type(task: str, options) -> str | None:
    """The ``problem_type`` of a record that gives none: ``grounding`` for task ``grounding``, ``multiple_choice``
    when it has options (the synthetic set's other tasks), else None (the record must say)."""
    if task == "grounding":
        return "grounding"
    return "multiple_choice" if options is not None else None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def normalize_options(options: list[str]) -> list[str]:
    """Option texts without their letters: ``["A. forward", "B) back"]`` -> ``["forward", "back"]``, but only when
    EVERY option starts with its own letter (``A.``/``A)``/``A:``/``(A)``); otherwise unchanged (stripped)."""
    opts = [o.strip() for o in options]
    matches = [_OPTION_PREFIX_RE.match(o) for o in opts]
    if all(m is not None and m.group(1) == LETTERS[k] for k, m in enumerate(matches)):
        stripped = [o[m.end():].strip() for o, m in zip(opts, matches)]
        if all(stripped):
            return stripped
    return opts


@dataclass
class VideoQARecord:
    """One verifiable video-QA sample (README "Record schema"; ``dvr1/data/record.schema.json``).

    Attributes:
        id: unique within its file, e.g. ``"train-counting-00012"``.
        video: path of the clip; relative paths are relative to the JSONL file's directory
            (:func:`read_records` makes them absolute).
        question: the question text, without options and without the ALGORITHMS §6 template.
        options: 2-26 option texts WITHOUT the ``"A. "`` prefix (multiple choice, grounded QA); ``None`` otherwise.
        answer: an option letter (multiple choice, grounded QA); a number as text (numerical, regression); the text
            (OCR, free-form); ``"[s, e]"`` in seconds with one decimal (grounding).
        task: free name; per-task metrics group by it (default: the problem type).
        segment: the one ground-truth segment ``[start, end]`` (seconds) when there is exactly one, else ``None``
            (the synthetic set's field; :attr:`segments` holds all of them).
        fps: frame rate of the clip (frames per second), ``None`` when not given.
        duration: clip length in seconds, ``None`` when not given.
        source: id of the source clip (the unit of a train/val/test split; default: ``video`` as written).
        split: split name, ``None`` when not given.
        meta: construction metadata (e.g. ``{"reversed": true}``), used to write SFT reasoning.
        problem_type: one of :data:`PROBLEM_TYPES`.
        segments: ground-truth segments ``[[start, end], ...]`` in seconds (grounding, grounded QA), else ``None``.
        reasoning: a chain of thought for the SFT target (:func:`dvr1.data.prompts.sft_target`), or ``None``.
        where: ``"{path}:{line}"`` the record was read from (not serialised).
    """

    id: str
    video: str
    question: str
    options: list[str] | None
    answer: str
    task: str
    segment: list[float] | None
    fps: float | None
    duration: float | None
    source: str
    split: str | None
    meta: dict = field(default_factory=dict)
    problem_type: str = ""
    segments: list[list[float]] | None = None
    reasoning: str | None = None
    where: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not self.problem_type:
            self.problem_type = legacy_problem_type(self.task, self.options)
            if self.problem_type is None:
                raise ValueError(f"VideoQARecord {self.id!r}: problem_type is required (task {self.task!r} has no "
                                 "options)")
        if self.segments is None and self.segment is not None:
            self.segments = [list(self.segment)]
        if self.segment is None and self.segments is not None and len(self.segments) == 1:
            self.segment = list(self.segments[0])

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict. The synthetic set's fields come first, in their order, always; then
        ``problem_type`` (only when it differs from :func:`legacy_problem_type`), ``segments`` (only when there is
        more than one: one is written as ``segment``) and ``reasoning`` (only when set). So a synthetic record is
        written exactly as before the open schema."""
        d = {"id": self.id, "video": self.video, "question": self.question, "options": self.options,
             "answer": self.answer, "task": self.task, "segment": self.segment,
             "fps": self.fps, "duration": self.duration, "source": self.source, "split": self.split,
             "meta": self.meta}
        if self.problem_type != legacy_problem_type(self.task, self.options):
            d["problem_type"] = self.problem_type
        if self.segments is not None and len(self.segments) > 1:
            d["segments"] = self.segments
        if self.reasoning is not None:
            d["reasoning"] = self.reasoning
        return d

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "VideoQARecord":
        """Validate and build a record from a decoded JSON object (the README's record schema).

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
        for key in obj:
            if key not in _FIELDS:
                raise err(key, "unknown field")
        for name in ("id", "video", "question"):
            if name not in obj:
                raise err(name, "missing")
        for name in ("id", "video", "question", "task", "source", "split", "reasoning", "problem_type"):
            v = obj.get(name)
            if (name in ("id", "video", "question") or v is not None) and (not isinstance(v, str) or not v.strip()):
                raise err(name, f"expected a non-empty string, got {v!r}")
        for name in ("fps", "duration"):
            v = obj.get(name)
            if v is not None and (not _is_number(v) or v <= 0):
                raise err(name, f"expected a positive number, got {v!r}")
        meta = obj.get("meta")
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise err("meta", f"expected an object, got {type(meta).__name__}")

        options = obj.get("options")
        ptype = obj.get("problem_type")
        task = obj.get("task") or ptype
        if task is None:
            if options is not None:
                task = "multiple_choice"
            else:
                raise err("task", "missing (give a task name or a problem_type)")
        if ptype is None:
            ptype = legacy_problem_type(task, options)
            if ptype is None:
                raise err("problem_type", f"missing (a record without options needs one of {', '.join(PROBLEM_TYPES)})")
        elif ptype not in PROBLEM_TYPES:
            raise err("problem_type", f"expected one of {', '.join(PROBLEM_TYPES)}, got {ptype!r}")
        duration = None if obj.get("duration") is None else float(obj["duration"])

        if ptype in CHOICE_TYPES:
            if (not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS
                    or not all(isinstance(o, str) and o.strip() for o in options)):
                raise err("options", f"expected {MIN_OPTIONS}-{MAX_OPTIONS} non-empty strings, got {options!r}")
            options = normalize_options(options)
            if len(set(options)) != len(options):
                raise err("options", f"duplicate options {options!r}")
        elif options is not None:
            raise err("options", f"must be null for {ptype}")

        answer = obj.get("answer")
        if answer is None and ptype != "grounding":
            raise err("answer", "missing")
        if ptype in CHOICE_TYPES:
            m = _ANSWER_LETTER_RE.match(answer.strip()) if isinstance(answer, str) else None
            letters = LETTERS[: len(options)]
            if m is None or m.group(1).upper() not in letters:
                raise err("answer", f"expected one of {', '.join(letters)}, got {answer!r}")
            answer = m.group(1).upper()
        elif ptype in NUMBER_TYPES:
            value = answer if _is_number(answer) else None
            if isinstance(answer, str):
                try:
                    value = float(answer.strip().replace(",", ""))
                except ValueError:
                    value = None
            if value is None or not math.isfinite(value):
                raise err("answer", f"expected a number, got {answer!r}")
            if ptype == "regression" and value == 0:
                raise err("answer", "a regression target must be non-zero (its reward divides by |answer|)")
            answer = answer.strip() if isinstance(answer, str) else repr(answer)
        elif ptype in ("ocr", "free_form"):
            if not isinstance(answer, str) or not answer.strip():
                raise err("answer", f"expected a non-empty string, got {answer!r}")
            answer = answer.strip()
        elif answer is not None:  # grounding
            if not isinstance(answer, str):
                raise err("answer", f"expected '[s, e]' with seconds to 1 decimal, got {answer!r}")
            try:
                s, e = parse_segment(answer)
            except ValueError as exc:
                raise err("answer", str(exc)) from None
            if not s < e:
                raise err("answer", f"start must be < end, got {answer!r}")
            if duration is not None and e > duration + 0.05:
                raise err("answer", f"end {e} exceeds duration {duration}")

        segments = _segments(obj, ptype, duration, err)
        if ptype == "grounding":
            if answer is None:
                answer = format_segment(min(s for s, _ in segments), max(e for _, e in segments))
            elif len(segments) == 1 and format_segment(*segments[0]) != answer:
                name = "segment" if "segment" in obj else "segments"
                raise err(name, f"{obj[name]!r} disagrees with answer {answer!r}")

        return cls(id=obj["id"], video=obj["video"], question=obj["question"], options=options, answer=answer,
                   task=task, segment=segments[0] if segments and len(segments) == 1 else None,
                   fps=None if obj.get("fps") is None else float(obj["fps"]), duration=duration,
                   source=obj.get("source") or obj["video"], split=obj.get("split"), meta=meta, problem_type=ptype,
                   segments=segments, reasoning=obj.get("reasoning"), where=where)


def _segments(obj: dict, ptype: str, duration: float | None, err) -> list[list[float]] | None:
    """The record's ground-truth segments from ``segments`` (a list of pairs) or ``segment`` (one pair)."""
    one, many = obj.get("segment"), obj.get("segments")
    if ptype not in SEGMENT_TYPES:
        for name, v in (("segment", one), ("segments", many)):
            if v is not None:
                raise err(name, f"must be null for {ptype}")
        return None
    if one is not None and many is not None:
        raise err("segments", "give either segment (one pair) or segments (a list of pairs), not both")
    if many is None:
        if not isinstance(one, list) or len(one) != 2 or not all(_is_number(x) for x in one):
            name = "segment" if "segment" in obj or ptype == "grounding" else "segments"
            raise err(name, f"expected [start, end] seconds for {ptype}, got {one!r}")
        pairs, name = [one], "segment"
    else:
        if not isinstance(many, list) or not many:
            raise err("segments", f"expected a non-empty list of [start, end] seconds, got {many!r}")
        pairs, name = many, "segments"
    out = []
    for k, p in enumerate(pairs):
        at = "" if name == "segment" else f"[{k}] "
        if not isinstance(p, list) or len(p) != 2 or not all(_is_number(x) for x in p):
            raise err(name, f"{at}expected [start, end] seconds, got {p!r}")
        s, e = float(p[0]), float(p[1])
        if not 0 <= s < e:
            raise err(name, f"{at}needs 0 <= start < end, got {p!r}")
        if duration is not None and e > duration + 0.05:
            raise err(name, f"{at}end {e} exceeds duration {duration}")
        out.append([s, e])
    return out


@dataclass
class Skip:
    """One skipped record: where it was, its id (when known), the reason (:data:`SKIP_REASONS`), the message, the
    stage that skipped it and when: ``phase="read"`` (a line that never became a record) or ``"use"`` (a valid
    record whose video or prompt failed when the stage used it)."""

    file: str
    line: Optional[int]
    id: Optional[str]
    reason: str
    message: str
    stage: str = ""
    phase: str = "read"

    def to_json(self) -> dict:
        return {"stage": self.stage, "file": self.file, "line": self.line, "id": self.id, "reason": self.reason,
                "message": self.message}


class SkipReport:
    """The records a run skipped, with their reasons; optionally appended to a JSONL file (``<run_dir>/skipped.jsonl``).

    Each entry is written once per (stage, file, line, id, reason) even across reruns of the same command (existing
    entries of ``path`` are read first).
    """

    def __init__(self, path: str | None = None, stage: str = ""):
        self.path, self.stage = path, stage
        self.entries: list[Skip] = []
        self._seen: set = set()
        if path and os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        d = json.loads(line)
                        self._seen.add((d["stage"], d["file"], d["line"], d["id"], d["reason"]))
                    except (ValueError, KeyError, TypeError):
                        continue

    def add(self, skip: Skip) -> None:
        skip.stage = skip.stage or self.stage
        self.entries.append(skip)
        key = (skip.stage, skip.file, skip.line, skip.id, skip.reason)
        if self.path and key not in self._seen:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(skip.to_json(), ensure_ascii=False) + "\n")
        self._seen.add(key)

    def counts(self) -> dict[str, int]:
        """``{reason: count}`` of this report's entries, reasons in :data:`SKIP_REASONS` order."""
        c = Counter(s.reason for s in self.entries)
        return {r: c[r] for r in SKIP_REASONS if c[r]}

    def summary(self, n_records: int) -> dict:
        """``{"n_read", "n_used", "n_skipped": {reason: count}}`` for a stage that read ``n_records`` valid records:
        ``n_read`` counts every non-blank line, ``n_used`` the records not skipped when used."""
        n_read_skips = sum(s.phase == "read" for s in self.entries)
        return {"n_read": n_records + n_read_skips, "n_used": n_records - (len(self.entries) - n_read_skips),
                "n_skipped": self.counts()}

    def describe(self) -> str:
        """``"2 invalid_json, 1 duplicate_id"`` (or ``"none"``) and where the list is."""
        text = ", ".join(f"{n} {r}" for r, n in self.counts().items()) or "none"
        return text + (f" (listed in {self.path})" if self.path else "")


def frame_fps(rec) -> float | None:
    """A frame-folder record's frame rate: ``meta["frame_fps"]`` (frames per second, > 0; e.g. MVBench's Episodic
    Reasoning, whose ``video`` is a directory of TVQA frames at 3 fps), or None for a record whose video is a file."""
    meta = getattr(rec, "meta", None)
    v = meta.get("frame_fps") if isinstance(meta, dict) else None
    return float(v) if _is_number(v) and v > 0 else None


def video_exists(rec) -> bool:
    """The record's video is there: a file, or a directory for a frame-folder record (:func:`frame_fps`)."""
    return os.path.isfile(rec.video) or (frame_fps(rec) is not None and os.path.isdir(rec.video))


def split_where(where: str | None) -> tuple[str, Optional[int]]:
    """``"{path}:{line}"`` -> ``(path, line)``; ``(where or "", None)`` when it has no line number."""
    if where:
        path, _, line = where.rpartition(":")
        if path and line.isdigit():
            return path, int(line)
    return where or "", None


def read_records(
    path: str | os.PathLike,
    strict: bool = False,
    log: logging.Logger = _log,
    check_video: bool = True,
    report: SkipReport | None = None,
    first_at: dict[str, str] | None = None,
) -> list[VideoQARecord]:
    """Read a JSONL file of :class:`VideoQARecord`; ``video`` becomes an absolute path.

    A bad line (not UTF-8, bad JSON, missing/invalid/unknown field, an id already used in the file, missing video
    file when ``check_video``) is logged as a warning ``"{path}:{lineno}: skipped: {field}: {msg}"`` (plus
    ``" (id 'x')"`` when the id is known), added to ``report`` and skipped. Blank lines are ignored.

    Args:
        path: the JSONL file.
        strict: raise instead of skipping.
        log: logger for skipped lines.
        check_video: treat a record whose video file does not exist as malformed (field ``video``).
        report: collects the skipped lines (:class:`SkipReport`), or None.
        first_at: ids of the dataset's files read before this one (id -> ``"{path}:{line}"``, see :func:`line_ids`):
            a record repeating one of them is a duplicate.

    Returns:
        The valid records, in file order.

    Raises:
        RecordError: ``"{path}:{lineno}: {field}: {msg}"`` (strict only); ``"{path}: file not found"`` always.
    """
    return read_jsonl(path, VideoQARecord.from_json, RecordError, strict=strict, log=log, check_video=check_video,
                      report=report, first_at=first_at)


def line_ids(path) -> dict[str, str]:
    """id -> ``"{path}:{line}"`` of every line of a JSONL file that is a JSON object with a string ``id`` (the
    first occurrence; unreadable lines are ignored: their own reader reports them). ``{}`` if the file is missing."""
    out: dict[str, str] = {}
    if not os.path.isfile(path):
        return out
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                out.setdefault(obj["id"], f"{path}:{lineno}")
    return out


def _reason(msg: str) -> str:
    if msg.startswith("video: file not found"):
        return "missing_video"
    if msg.startswith("id: duplicate"):
        return "duplicate_id"
    return {"utf8": "invalid_utf8", "json": "invalid_json"}.get(msg.split(":", 1)[0], "invalid_record")


def read_jsonl(path, from_json, error_cls=RecordError, strict: bool = False, log: logging.Logger = _log,
               check_video: bool = True, report: SkipReport | None = None,
               first_at: dict[str, str] | None = None) -> list:
    """The JSONL reading loop shared by every record type (video QA, dense captions).

    `from_json(obj, where)` builds one record (raising `error_cls("{where}: {field}: {msg}")`); records with a
    `video` attribute get it resolved against the JSONL's directory and, with `check_video`, checked to exist. A line
    that is not UTF-8 (field ``utf8``), not JSON (``json``) or repeats an earlier line's id (``id: duplicate id 'x'
    (first at {path}:{line})``) is an error too. A bad line is logged as ``"{path}:{lineno}: skipped: {field}:
    {msg}"`` (with ``" (id 'x')"`` when known), added to `report` and skipped, or raised when `strict`.
    `first_at` (id -> ``"{path}:{line}"``) holds the ids of the dataset's files read before this one, so an id
    repeated across the files of one dataset is a duplicate too; the file's own ids are added to it.
    Raises `error_cls("{path}: file not found")` always.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error_cls(f"{path}: file not found")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    first_at = {} if first_at is None else first_at
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            rid = None
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise error_cls(f"{where}: utf8: invalid UTF-8 at byte {exc.start} of the line") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error_cls(f"{where}: json: {exc}") from None
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    rid = obj["id"]
                rec = from_json(obj, where)
                if rec.id in first_at:
                    raise error_cls(f"{where}: id: duplicate id {rec.id!r} (first at {first_at[rec.id]})")
                rec.video = os.path.normpath(os.path.join(base, rec.video))
                if check_video and not video_exists(rec):
                    raise error_cls(f"{where}: video: file not found: {rec.video}")
            except error_cls as exc:
                if strict:
                    raise
                msg = str(exc)[len(where) + 2:]
                log.warning("%s: skipped: %s%s", where, msg, f" (id {rid!r})" if rid else "")
                if report is not None:
                    report.add(Skip(path, lineno, rid, _reason(msg), msg))
                continue
            first_at[rec.id] = where
            out.append(rec)
    return out


def write_records(path: str | os.PathLike, records: list[VideoQARecord]) -> None:
    """Write records as JSONL (one compact JSON object per line, :meth:`VideoQARecord.to_json`).

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
