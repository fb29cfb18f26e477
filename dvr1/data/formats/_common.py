"""Helpers the format readers share: building a validated record or a :class:`Skip`, reading JSON annotation files,
finding a video file by stem.

A reader collects into a :class:`Collector`; every row becomes either a record (validated exactly as the imported
JSONL will be read back: :meth:`dvr1.data.schema.VideoQARecord.from_json`) or a Skip with ``file``, ``line`` and a
``"{field}: {msg}"`` message, and an id already used is a ``duplicate_id`` Skip.
"""

from __future__ import annotations

import json
import os

from dvr1.data.schema import DataError, RecordError, Skip, VideoQARecord

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")
"""Extensions tried, in order, when a dataset names a video by its id only."""


class Collector:
    """Records and dropped rows of one reader, in annotation order; ids unique (a repeated id is dropped)."""

    def __init__(self):
        self.records: list = []
        self.dropped: list[Skip] = []
        self.sources: list[str] = []
        self.notes: dict[str, int] = {}
        self._ids: dict[str, str] = {}

    def skip(self, file: str, line: int | None, rid: str | None, field: str, msg: str,
             reason: str = "invalid_record") -> None:
        """Drop one row: ``Skip(file, line, rid, reason, "{field}: {msg}")``."""
        self.dropped.append(Skip(file=file, line=line, id=rid, reason=reason, message=f"{field}: {msg}"))

    def note(self, key: str, n: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + n

    def add(self, rec, file: str, line: int | None) -> bool:
        """Keep ``rec`` unless its id was used before (then a ``duplicate_id`` Skip). Returns whether it was kept."""
        if rec.id in self._ids:
            self.skip(file, line, rec.id, "id", f"duplicate of {self._ids[rec.id]}", reason="duplicate_id")
            return False
        self._ids[rec.id] = f"{file}:{line}"
        self.records.append(rec)
        return True

    def add_qa(self, obj: dict, file: str, line: int | None) -> bool:
        """Validate ``obj`` (a :class:`VideoQARecord` JSON object) and keep it, or drop it with the validator's
        ``"{field}: {msg}"``. Returns whether it was kept."""
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

    def imported(self, benchmark: str | None):
        from dvr1.data.formats import Imported

        return Imported(records=self.records, dropped=self.dropped, sources=self.sources, notes=self.notes,
                        benchmark=benchmark)


def load_json(path: str):
    """The decoded JSON of ``path``. Raises DataError ``"{path}: ..."`` when missing or not valid JSON/UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None


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
    return isinstance(v, str) and bool(v.strip())
