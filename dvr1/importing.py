"""`dvr1 data import`: a public dataset's released annotations -> dvr1 records + a manifest.

    dvr1 data import --format FORMAT --annotations PATH [--videos DIR] --out DIR [--split NAME] [--strict]
                     [--overwrite]

The format's reader (:mod:`dvr1.data.formats`, QA; ``dvr1.vidchain.formats``, dense captioning) reads the files as
released; this command writes ``<out>/<split>.jsonl`` (:func:`dvr1.data.schema.write_records`, or
:func:`dvr1.vidchain.data.write_dense_records`) and ``<out>/manifest.json``::

    {"format", "benchmark", "split", "created" (ISO 8601, UTC), "annotations", "videos",
     "sources": [{"path", "sha256", "bytes"}], "counts": {"read", "written", "dropped", "dropped_by_reason"},
     "notes": {...}, "dropped": [Skip.to_json(), ...]}

``read`` counts the rows the reader saw (written + dropped). Ids are unique in the output: the reader drops a
repeated id (``"duplicate_id"``, :class:`dvr1.data.formats._common.Collector`). The directory is then a user's
dataset (``dvr1.data.build.data_root_state`` -> ``"user"``): training and eval read it, nothing writes into it. The
command itself never overwrites what it did not write: it refuses (exit 2, one line) an ``--out`` that is a file, a
non-empty directory without an import manifest, or one holding another split's import; an existing
``<split>.jsonl`` is replaced only with ``--overwrite``.
Without ``--split`` the split is the format's ``DEFAULT_SPLIT``, or, for a reader without one, the split it reads by
default (as its docstring says; from the file's name where a single file of a named split is given).
``--strict`` fails on the first malformed row (:data:`dvr1.data.formats.MALFORMED`) instead of reporting it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
from datetime import datetime, timezone

from dvr1.data.formats import MALFORMED, QA_FORMATS, Imported, load_format
from dvr1.data.schema import DataError

MANIFEST = "manifest.json"
MANIFEST_KEYS = ("format", "benchmark", "split", "created", "annotations", "videos", "sources", "counts", "notes",
                 "dropped")


def dense_formats() -> dict[str, str]:
    """``--format`` -> module name under ``dvr1.vidchain.formats`` (VidChain's dense-captioning readers)."""
    from dvr1.vidchain.formats import DENSE_FORMATS

    return dict(DENSE_FORMATS)


def all_formats() -> list[str]:
    return [*QA_FORMATS, *dense_formats()]


def get_format(name: str):
    """The reader module of ``name`` (QA or dense). Raises DataError naming the known formats; ImportError when the
    registry names a module that is not installed."""
    if name in QA_FORMATS:
        return load_format(name)
    dense = dense_formats()
    if name in dense:
        return importlib.import_module(f"dvr1.vidchain.formats.{dense[name]}")
    raise DataError(f"--format {name!r}: unknown; known: {', '.join(all_formats())}")


def format_table() -> list[tuple[str, str, str]]:
    """``(name, kind, description)`` of every registered format (for ``--help`` and the README); a registered
    module that cannot be imported is listed as ``"(not available: ...)"``."""
    rows = []
    for name in all_formats():
        try:
            mod = get_format(name)
            rows.append((name, mod.KIND, mod.DESCRIPTION))
        except ImportError as exc:
            rows.append((name, "?", f"(not available: {exc})"))
    return rows


def is_import_manifest(path: str) -> dict | None:
    """The manifest at ``path`` if it is one this command wrote (all of :data:`MANIFEST_KEYS`), else None."""
    try:
        with open(path, encoding="utf-8") as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and all(k in m for k in MANIFEST_KEYS) else None


def check_out(out: str, split: str, overwrite: bool) -> None:
    """Raise DataError unless writing ``<out>/<split>.jsonl`` and ``<out>/manifest.json`` replaces only this
    command's own output (see the module docstring)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise DataError(f"--out {out}: is not a directory")
    names = os.listdir(out)
    if not names:
        return
    manifest = is_import_manifest(os.path.join(out, MANIFEST))
    if manifest is None:
        raise DataError(f"--out {out}: not empty and holds no manifest.json written by 'dvr1 data import'; dvr1 "
                        "never writes into a directory it did not create: choose a new or empty one")
    if manifest.get("split") != split:
        raise DataError(f"--out {out}: holds the import of split {manifest.get('split')!r}; import split {split!r} "
                        "into its own directory")
    if f"{split}.jsonl" in names and not overwrite:
        raise DataError(f"--out {out}: {split}.jsonl exists (imported {manifest.get('created')}); pass --overwrite "
                        "to replace it")


def sha256(path: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def check_unique_ids(imported: Imported, fmt: str) -> None:
    """Raise RuntimeError when ``imported`` repeats an id. The rule "a repeated id is dropped (``duplicate_id``)" has
    one owner, the readers' :class:`dvr1.data.formats._common.Collector`; a repeat here is a reader bypassing it (a
    bug), not a data error."""
    seen: set[str] = set()
    for rec in imported.records:
        if rec.id in seen:
            raise RuntimeError(f"format {fmt}: the reader returned id {rec.id!r} twice (readers collect through "
                               "dvr1.data.formats._common.Collector, which drops repeated ids)")
        seen.add(rec.id)


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".import-", dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def records_split(imported: Imported, fmt: str) -> str:
    """The one split of ``imported.records`` (the split a reader chose when called with ``split=None``). Raises
    RuntimeError when the records name several (a reader bug)."""
    splits = sorted({str(r.split) for r in imported.records})
    if len(splits) != 1:
        raise RuntimeError(f"format {fmt}: the reader returned records of splits {splits}; expected one")
    return splits[0]


def run_import(fmt: str, annotations: str, videos: str | None, out: str, split: str | None = None,
               strict: bool = False, overwrite: bool = False) -> dict:
    """Import ``annotations`` with format ``fmt`` into ``out``; returns the manifest written.

    Raises:
        DataError: unknown format, unreadable annotations, ``out`` not writable by this command (see
            :func:`check_out`), a malformed row under ``strict`` (``"{file}:{line}: {field}: {msg}"``).
    """
    mod = get_format(fmt)
    split = split if split is not None else getattr(mod, "DEFAULT_SPLIT", None)
    if not os.path.exists(annotations):
        raise DataError(f"--annotations {annotations}: not found")
    if videos is not None and not os.path.isdir(videos):
        raise DataError(f"--videos {videos}: not a directory")
    annotations, out = os.path.abspath(annotations), os.path.abspath(out)
    videos = None if videos is None else os.path.abspath(videos)
    if split is not None:
        check_out(out, split, overwrite)
    imported = mod.read(annotations, videos, split)
    check_unique_ids(imported, fmt)
    dropped = sorted(imported.dropped, key=lambda s: (imported.sources.index(s.file) if s.file in imported.sources
                                                      else len(imported.sources), s.line or 0))
    if strict:
        bad = next((s for s in dropped if s.reason in MALFORMED), None)
        if bad is not None:
            raise DataError(f"{bad.file}:{bad.line}: {bad.message}" + (f" (id {bad.id!r})" if bad.id else ""))
    if not imported.records:
        raise DataError(f"{annotations}: no record could be imported ({len(dropped)} rows dropped"
                        + (f", first: {dropped[0].file}:{dropped[0].line}: {dropped[0].message})" if dropped else ")"))
    if split is None:  # a reader without DEFAULT_SPLIT chose its split (its default, or the one a file's name says)
        split = records_split(imported, fmt)
        check_out(out, split, overwrite)
    for rec in imported.records:
        rec.video = os.path.abspath(rec.video if videos is None or os.path.isabs(rec.video)
                                    else os.path.join(videos, rec.video))
    by_reason: dict[str, int] = {}
    for s in dropped:
        by_reason[s.reason] = by_reason.get(s.reason, 0) + 1
    sources = []
    for p in imported.sources:
        digest, n = sha256(p)
        sources.append({"path": os.path.abspath(p), "sha256": digest, "bytes": n})
    manifest = {
        "format": fmt, "benchmark": imported.benchmark, "split": split,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "annotations": annotations, "videos": videos,
        "sources": sources,
        "counts": {"read": len(imported.records) + len(dropped), "written": len(imported.records),
                   "dropped": len(dropped), "dropped_by_reason": by_reason},
        "notes": dict(imported.notes), "dropped": [s.to_json() for s in dropped],
    }
    os.makedirs(out, exist_ok=True)
    if mod.KIND == "dense":
        from dvr1.vidchain.data import write_dense_records as write
    else:
        from dvr1.data.schema import write_records as write
    _atomic_write(os.path.join(out, f"{split}.jsonl"), lambda p: write(p, imported.records))

    def write_manifest(p):
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, ensure_ascii=False)
            fh.write("\n")

    _atomic_write(os.path.join(out, MANIFEST), write_manifest)
    return manifest


def _parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {n:<16} {k:<6} {d}" for n, k, d in format_table())
    p = argparse.ArgumentParser(
        prog="dvr1 data import", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a public dataset's released annotations into dvr1 records (<out>/<split>.jsonl) and "
                    "a manifest (<out>/manifest.json: source checksums, counts, dropped rows and why).",
        epilog=f"formats:\n{table}")
    p.add_argument("--format", required=True, metavar="FORMAT", help="one of: " + ", ".join(all_formats()))
    p.add_argument("--annotations", required=True, metavar="PATH",
                   help="the annotation file, or the directory in the dataset's official layout")
    p.add_argument("--videos", default=None, metavar="DIR",
                   help="directory holding the videos (default: as the format says, usually next to the annotations)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new, empty, or an earlier import)")
    p.add_argument("--split", default=None, metavar="NAME", help="the split to read (default: the format's)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row instead of reporting it")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import of the same split in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """``dvr1 data import ...``: prints a one-line summary; exit 0, or 2 with one line on stderr for a user error."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        m = run_import(args.format, args.annotations, args.videos, args.out, args.split, args.strict,
                       args.overwrite)
    except (DataError, FileNotFoundError) as exc:
        print(f"dvr1 data import: {exc}", file=sys.stderr, flush=True)
        return 2
    c = m["counts"]
    reasons = ", ".join(f"{n} {r}" for r, n in c["dropped_by_reason"].items()) or "none"
    print(f"{os.path.join(os.path.abspath(args.out), m['split'] + '.jsonl')}: {c['written']} records written of "
          f"{c['read']} read (dropped: {reasons}); manifest {os.path.join(os.path.abspath(args.out), MANIFEST)}")
    return 0
