"""Readers of public benchmark and training-set annotations (`dvr1 data import`), one module per format.

Every format module exposes ``NAME`` (the ``--format`` value), ``KIND`` (``"qa"``: :class:`dvr1.data.schema.VideoQARecord`
records; ``"dense"``: VidChain's dense-captioning records), ``DESCRIPTION`` (one line for the README table and
``--help``) and::

    read(annotations: str, videos: str | None, split: str | None) -> Imported

``annotations`` is the file or the directory in the dataset's official layout, ``videos`` the directory holding the
videos (None: the paths the annotations give, resolved against the annotation file's directory), ``split`` the split
to read where the format ships several. A reader follows the dataset's published format exactly and reads the
released files unchanged; a malformed row is reported (:class:`dvr1.data.schema.Skip` with file, line and field in
the message) and skipped, never fatal, unless it makes the whole file unreadable (then
:class:`dvr1.data.schema.DataError` naming the file). A missing video is not a reader's business: the records name
the path and the reader of the imported directory checks it.

:data:`QA_FORMATS` maps ``--format`` names to the modules of this package (imported lazily); the dense formats live
with VidChain (``dvr1.vidchain.formats.DENSE_FORMATS``) and the command (:mod:`dvr1.importing`) joins both.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable

from dvr1.data.schema import DataError, RecordError, Skip, VideoQARecord

__all__ = ["Imported", "QA_FORMATS", "load_format", "MALFORMED", "skip", "to_record", "load_json", "progress",
           "check_split"]

MALFORMED = ("invalid_utf8", "invalid_json", "invalid_record", "duplicate_id")
"""The :attr:`Skip.reason` values of a malformed row (``dvr1 data import --strict`` fails on the first); every
other reason (``"image_sample"``, ``"no_location"``, ...) is a row the dataset ships that dvr1 does not import."""

QA_FORMATS = {
    "video-r1": "video_r1",
    "seed-bench-r1": "seed_bench_r1",
    "nextgqa": "nextgqa",
    "longvideobench": "longvideobench",
    "mvbench": "mvbench",
    "video-mme": "video_mme",
    "tgif-qa": "tgif_qa",
}
"""``--format`` name -> module name under ``dvr1.data.formats``."""


@dataclass
class Imported:
    """What one reader returns.

    Attributes:
        records: the records, in the annotation files' order (``VideoQARecord`` or ``DenseCaptionRecord``), ids
            unique; ``video`` as an absolute path or a path relative to ``videos``.
        dropped: one :class:`Skip` per row not imported (``file``, ``line`` (1-based row/line, or the JSON array
            index + 1 for JSON files), ``id`` when known, ``reason`` (a short snake_case word, e.g.
            ``"invalid_record"``, ``"image_sample"``, ``"unsupported_problem_type"``), ``message``
            ``"{field}: {msg}"``).
        sources: the annotation files read (paths), for the manifest's checksums.
        notes: counters of what was changed while importing (e.g. ``{"segments_clipped": 3}``), in the manifest.
        benchmark: the benchmark whose metric set ``dvr1 eval --benchmark`` applies (e.g. ``"nextgqa"``), or None
            for a training set.
    """

    records: list
    dropped: list[Skip] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    benchmark: str | None = None


def load_format(name: str) -> ModuleType:
    """The module of QA format ``name``. Raises ValueError naming the known formats."""
    if name not in QA_FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(QA_FORMATS)}")
    return importlib.import_module(f"dvr1.data.formats.{QA_FORMATS[name]}")


# ---- helpers shared by the format modules ---------------------------------------------------------------------

def skip(file: str, line: int | None, rid: str | None, reason: str, name: str, msg: str) -> Skip:
    """A :class:`Skip` of one annotation row; ``message`` is ``"{name}: {msg}"`` (``name``: the field)."""
    return Skip(file=file, line=line, id=rid, reason=reason, message=f"{name}: {msg}", stage="import")


def to_record(obj: dict, file: str, line: int | None, dropped: list[Skip]) -> VideoQARecord | None:
    """Validate ``obj`` (the record schema's JSON fields) as :meth:`VideoQARecord.from_json` does; a row it rejects
    is appended to ``dropped`` (reason ``"invalid_record"``, the schema's ``"{field}: {msg}"`` message) and None is
    returned. The record's ``where`` is ``"{file}:{line}"``."""
    where = f"{file}:{line}"
    try:
        return VideoQARecord.from_json(obj, where)
    except RecordError as exc:
        rid = obj.get("id") if isinstance(obj.get("id"), str) else None
        dropped.append(Skip(file=file, line=line, id=rid, reason="invalid_record",
                            message=str(exc)[len(where) + 2:], stage="import"))
        return None


def load_json(path: str) -> Any:
    """The decoded JSON file. Raises DataError ``"{path}: file not found"`` / ``"{path}: not valid JSON: ..."``
    (a file that does not parse is unreadable as a whole)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None


def progress(items: Iterable, desc: str, total: int | None = None, min_items: int = 10000) -> Iterable:
    """``items`` wrapped in a tqdm bar on stderr when there are at least ``min_items`` of them and stderr is a
    terminal (large annotation files); else ``items`` itself."""
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if n is None or n < min_items or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=n, unit="row")


def check_split(split: str | None, splits: tuple[str, ...], default: str, fmt: str) -> str:
    """``split`` (or ``default`` when None) if it is one of ``splits``; else DataError naming them."""
    split = default if split is None else split
    if split not in splits:
        raise DataError(f"--split {split!r}: format {fmt} has splits {', '.join(splits)}")
    return split
