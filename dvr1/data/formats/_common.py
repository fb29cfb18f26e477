"""The one set of helpers every format reader (QA here, dense captioning in ``dvr1.vidchain.formats``) uses: the
:class:`Collector` of records and dropped rows, reading JSON / JSONL annotation files, checking ``--split``, the
progress bar, finding a video file by stem.

A reader collects into a :class:`Collector`; every row becomes either a record (validated exactly as the imported
JSONL will be read back: :meth:`dvr1.data.schema.VideoQARecord.from_json`, or the dense record's ``from_json``) or a
:class:`dvr1.data.schema.Skip` with ``file``, ``line``, ``stage="import"`` and a ``"{field}: {msg}"`` message. The
Collector is the one owner of the rule "ids are unique in an import": an id already kept is a ``duplicate_id`` Skip
(``"id: duplicate id 'x' (first at {file}:{line})"``, worded as :func:`dvr1.data.schema.read_records` words it);
:mod:`dvr1.importing` only checks that a reader kept it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Iterator

from dvr1.data.formats import Imported
from dvr1.data.schema import DataError, RecordError, Skip, VideoQARecord

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")
"""Extensions tried, in order, when a dataset names a video by its id only."""


class Collector:
    """Records and dropped rows of one reader, in annotation order; ids unique (a repeated id is dropped).

    Attributes:
        records, dropped, sources, notes: what :meth:`imported` returns as :class:`dvr1.data.formats.Imported`.
    """

    def __init__(self, notes: dict[str, int] | None = None):
        self.records: list = []
        self.dropped: list[Skip] = []
        self.sources: list[str] = []
        self.notes: dict[str, int] = dict(notes or {})
        self._ids: dict[str, str] = {}

    def skip(self, file: str, line: int | None, rid: str | None, field: str, msg: str,
             reason: str = "invalid_record") -> None:
        """Drop one row: ``Skip(file, line, rid, reason, "{field}: {msg}", stage="import")``."""
        self.dropped.append(Skip(file=file, line=line, id=rid, reason=reason, message=f"{field}: {msg}",
                                 stage="import"))

    def note(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``notes[key]`` (the manifest's ``notes``: what importing changed)."""
        self.notes[key] = self.notes.get(key, 0) + n

    def add(self, rec, file: str, line: int | None) -> bool:
        """Keep ``rec`` unless its id was used before (then a ``duplicate_id`` Skip). Returns whether it was kept."""
        if rec.id in self._ids:
            self.skip(file, line, rec.id, "id", f"duplicate id {rec.id!r} (first at {self._ids[rec.id]})",
                      reason="duplicate_id")
            return False
        self._ids[rec.id] = f"{file}:{line}"
        self.records.append(rec)
        return True

    def add_qa(self, obj: dict, file: str, line: int | None) -> bool:
        """Validate ``obj`` (a :class:`VideoQARecord` JSON object) and keep it, or drop it with the validator's
        ``"{field}: {msg}"`` (reason ``"invalid_record"``). Returns whether it was kept."""
        return self.add_checked(VideoQARecord.from_json, RecordError, obj, file, line)

    def add_checked(self, from_json, error_cls, obj: dict, file: str, line: int | None) -> bool:
        """Build a record with ``from_json(obj, "{file}:{line}")`` (a record type's validator, raising
        ``error_cls("{file}:{line}: {field}: {msg}")``) and keep it, or drop the row with that message."""
        where = f"{file}:{line}"
        try:
            rec = from_json(obj, where)
        except error_cls as exc:
            msg = str(exc)
            msg = msg[len(where) + 2:] if msg.startswith(where + ": ") else msg
            field, _, text = msg.partition(": ")
            self.skip(file, line, obj.get("id") if isinstance(obj.get("id"), str) else None, field, text)
            return False
        return self.add(rec, file, line)

    def jsonl(self, path: str) -> Iterator[tuple[int, Any]]:
        """``(line, decoded object)`` of every non-blank line of the JSONL file ``path``; a line that is not UTF-8
        (``"invalid_utf8"``) or not JSON (``"invalid_json"``) is dropped. Raises DataError when the file is
        missing."""
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
        with open(path, "rb") as fh:
            for line, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.skip(path, line, None, "utf8", f"invalid UTF-8 at byte {exc.start} of the line",
                              reason="invalid_utf8")
                    continue
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    self.skip(path, line, None, "json", str(exc), reason="invalid_json")
                    continue
                yield line, obj

    def imported(self, benchmark: str | None) -> Imported:
        """What the reader returns: this Collector's records, dropped rows, sources and notes."""
        return Imported(records=self.records, dropped=self.dropped, sources=self.sources, notes=self.notes,
                        benchmark=benchmark)


def load_json(path: str) -> Any:
    """The decoded JSON file. Raises DataError ``"{path}: file not found"`` / ``"{path}: not UTF-8 (...)"`` /
    ``"{path}: not valid JSON: ..."`` (a file that does not parse is unreadable as a whole)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None


def check_split(split: str | None, splits: tuple[str, ...], default: str, fmt: str) -> str:
    """``split`` (or ``default`` when None) if it is one of ``splits``; else DataError
    ``"unknown split 'x': format F has splits a, b"`` (``"... has one split, a"``)."""
    split = default if split is None else split
    if split not in splits:
        known = f"one split, {splits[0]}" if len(splits) == 1 else f"splits {', '.join(splits)}"
        raise DataError(f"unknown split {split!r}: format {fmt} has {known}")
    return split


def progress(items: Iterable, desc: str, total: int | None = None, min_items: int = 10000) -> Iterable:
    """``items`` wrapped in a tqdm bar on stderr when there are at least ``min_items`` of them and stderr is a
    terminal (large annotation files); else ``items`` itself."""
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if n is None or n < min_items or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=n, unit="row")


def find_video(dirs, stem: str, exts=VIDEO_EXTS) -> str:
    """The first existing ``{dir}/{stem}{ext}`` over ``dirs`` x ``exts``; if none exists, ``{dirs[0]}/{stem}{exts[0]}``
    (the records name the path; the reader of the imported directory reports it missing)."""
    dirs = [dirs] if isinstance(dirs, str) else list(dirs)
    for d in dirs:
        for ext in exts:
            p = os.path.join(d, stem + ext)
            if os.path.isfile(p):
                return os.path.abspath(p)
    return os.path.abspath(os.path.join(dirs[0], stem + exts[0]))


def is_text(v) -> bool:
    """``v`` is a string with a non-blank character."""
    return isinstance(v, str) and bool(v.strip())


def is_number(v) -> bool:
    """``v`` is a finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
