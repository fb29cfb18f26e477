"""The metric sets of the real benchmarks (docs/ALGORITHMS.md §10.2), computed from per-record prediction rows, the
paper's rows for comparison (§8), and the tables `dvr1 eval --benchmark` prints.

A *row* is what `dvr1.train.evaluate.evaluate_benchmark` writes per record to its predictions JSONL
(:func:`prediction_row`): ``{"id", "task", "problem_type", "answer", "response", "format", "accuracy", "iou",
"score", "span", "segments", "level", "duration_group"}``, or ``{"id", "skipped": reason, "message"}`` for a record
that could not be used (its video unreadable, its prompt too long). ``score`` is the graded value the metrics
average: the accuracy reward of the record's problem type (docs/ALGORITHMS.md §10.1), but MRA for ``regression``.
Every metric is in percent over the records used (skipped ones are counted, not scored).

Metric sets (names are the import formats' / manifests' ``benchmark`` values):

==================  ==========================================================================================
``seed-bench-r1``   accuracy per level (``meta["level"]``: L1, L2, L3) and overall
``longvideobench``  accuracy overall and per duration group (``meta["duration_group"]``, e.g. 15, 60, 600, 3600)
``nextgqa``         Acc@QA, Acc@GQA, mIoP, IoP@0.3, IoP@0.5, mIoU, IoU@0.3, IoU@0.5 (:func:`nextgqa_metrics`)
``mvbench``         accuracy per task and the mean over tasks
``video-mme``       accuracy per duration (``meta["duration_group"]``: short, medium, long) and overall
``tgif-qa``         accuracy per task (Action, Transition, FrameQA, Count) and overall
anything else       accuracy per task and overall (regression records score MRA, as Video-R1's eval_bench.py)
==================  ==========================================================================================

Sources: NExT-GQA's official evaluation, doc-doc/NExT-GQA ``code/TempGQA/eval_ground.py`` (``get_tIoU``,
``eval_ground``); Video-R1's ``src/eval_bench.py`` (MRA for regression); the paper's numbers, docs/ALGORITHMS.md §8.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from dvr1.rl.rewards import mean_relative_accuracy, parse_answer, parse_glue, score_response

__all__ = ["BENCHMARKS", "PAPER_ROWS", "benchmark_metrics", "find_benchmarks", "format_benchmark_table",
           "grounding_overlap", "nextgqa_metrics", "prediction_row", "read_manifest"]

BENCHMARKS = ("seed-bench-r1", "longvideobench", "nextgqa", "mvbench", "video-mme", "tgif-qa")
"""The benchmarks with their own metric set; any other name gets the generic one (accuracy per task)."""

PAPER_ROWS = {
    "seed-bench-r1": [
        ("paper 3B: base", {"L1": 31.3, "L2": 32.7, "L3": 27.0}),
        ("paper 3B: GRPO", {"L1": 39.6, "L2": 41.0, "L3": 35.4}),
        ("paper 3B: GRPO + DA-Aug", {"L1": 41.7, "L2": 42.5, "L3": 36.6}),
        ("paper 3B: Reg-GRPO", {"L1": 44.2, "L2": 44.2, "L3": 39.5}),
        ("paper 3B: Reg-GRPO + DA-Aug", {"L1": 48.1, "L2": 51.1, "L3": 44.0}),
    ],
}
"""DeepVideo-R1 (v5, Qwen2.5-VL-3B) on SEED-Bench-R1, accuracy in % (docs/ALGORITHMS.md §8), printed beside ours."""

MANIFEST = "manifest.json"
_NEXTGQA_COLUMNS = ("Acc@QA", "Acc@GQA", "mIoP", "IoP@0.3", "IoP@0.5", "mIoU", "IoU@0.3", "IoU@0.5")
_VIDEO_MME_DURATIONS = ("short", "medium", "long")


# ---- rows ---------------------------------------------------------------------------------------------------------

def prediction_row(record, response: str, weights=None) -> dict:
    """The row of one scored record (module docstring). ``span`` is the predicted span ``[s, e]`` of a grounded QA
    response (the FIRST ``<glue>`` segment: the official NExT-GQA evaluation scores one span per question), or of a
    grounding response (its ``<answer>`` segment); None when absent or malformed."""
    sc = score_response(response, record.problem_type, record.answer, record.segments, weights)
    span = None
    if record.problem_type == "grounded_qa":
        glue = parse_glue(response)
        span = list(glue[0]) if glue else None
    elif record.problem_type == "grounding":
        from dvr1.rl.rewards import parse_segment

        seg = parse_segment(parse_answer(response))
        span = list(seg) if seg is not None else None
    score = sc["accuracy"]
    if record.problem_type == "regression":
        pred = parse_answer(response)
        score = mean_relative_accuracy(pred, record.answer) if pred is not None else 0.0
    meta = record.meta or {}
    return {"id": record.id, "task": record.task, "problem_type": record.problem_type, "answer": record.answer,
            "response": response, "format": sc["format"], "accuracy": sc["accuracy"], "iou": sc["iou"],
            "score": float(score), "span": span, "segments": record.segments,
            "level": None if meta.get("level") is None else str(meta["level"]),
            "duration_group": None if meta.get("duration_group") is None else str(meta["duration_group"])}


def _used(rows) -> list[dict]:
    return [r for r in rows if not r.get("skipped")]


def _pct(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else float("nan")


def _by(rows, key) -> dict[str, float]:
    groups = defaultdict(list)
    for r in rows:
        groups[str(r.get(key))].append(r["score"])
    return {k: _pct(v) for k, v in groups.items()}


def _duration_sort(name: str):
    try:
        return 0, float(name), ""
    except ValueError:
        return (1, float(_VIDEO_MME_DURATIONS.index(name)), "") if name in _VIDEO_MME_DURATIONS else (2, 0.0, name)


# ---- NExT-GQA -----------------------------------------------------------------------------------------------------

def grounding_overlap(span, gt_segments) -> tuple[float, float]:
    """(max IoU, max IoP) of one predicted ``span`` ``[s, e]`` over a question's ground-truth segments, by NExT-GQA's
    official rule (doc-doc/NExT-GQA ``code/TempGQA/eval_ground.py`` ``get_tIoU`` and the max in ``eval_ground``).

    Per ground-truth segment ``loc``: ``inter = min(ends) − max(starts)``; ``IoU = inter / (max(ends) −
    min(starts))``, ``IoP = inter / (span_e − span_s)`` (over the PREDICTED span). A zero-length span scores IoU 0 and
    IoP 1 if it lies inside ``loc`` (inclusive), else 0. The maxima start at 0, so a disjoint segment (negative
    ``inter``) never counts. ``span`` None (no or a malformed prediction) gives (0, 0).
    """
    if span is None or not gt_segments:
        return 0.0, 0.0
    s, e = float(span[0]), float(span[-1])
    best_iou = best_iop = 0.0
    for loc in gt_segments:
        ls, le = float(loc[0]), float(loc[-1])
        if s == e:
            iou, iop = 0.0, 1.0 if ls <= s <= le else 0.0
        else:
            inter = min(le, e) - max(ls, s)
            union = max(le, e) - min(ls, s)
            iou = inter / union if union > 0 else 0.0
            iop = inter / (e - s)
        best_iou, best_iop = max(best_iou, iou), max(best_iop, iop)
    return best_iou, best_iop


def nextgqa_metrics(rows) -> dict:
    """NExT-GQA's metric set (docs/ALGORITHMS.md §10.2), in percent over the used rows: Acc@QA (answer correct),
    Acc@GQA (answer correct and max IoP ≥ 0.5), mIoP, IoP@0.3, IoP@0.5, mIoU, IoU@0.3, IoU@0.5 (thresholds
    inclusive, as the official ``>=``), each question's IoU/IoP the max over its ground-truth segments
    (:func:`grounding_overlap`). Unlike the official script, which skips a question with no prediction, a response
    without a readable span scores 0 (a model must not gain by not answering)."""
    rows = _used(rows)
    ov = [grounding_overlap(r["span"], r["segments"]) for r in rows]
    correct = [r["accuracy"] >= 1.0 for r in rows]
    return {
        "Acc@QA": _pct(correct),
        "Acc@GQA": _pct(c and iop >= 0.5 for c, (_, iop) in zip(correct, ov)),
        "mIoP": _pct(iop for _, iop in ov),
        "IoP@0.3": _pct(iop >= 0.3 for _, iop in ov),
        "IoP@0.5": _pct(iop >= 0.5 for _, iop in ov),
        "mIoU": _pct(iou for iou, _ in ov),
        "IoU@0.3": _pct(iou >= 0.3 for iou, _ in ov),
        "IoU@0.5": _pct(iou >= 0.5 for iou, _ in ov),
    }


# ---- the metric sets ----------------------------------------------------------------------------------------------

def benchmark_metrics(benchmark: str, rows) -> dict:
    """The metric set of ``benchmark`` (module docstring) over the prediction ``rows``.

    Returns: ``{"metrics": {name: percent}, "columns": [names of the table row, in order], "headline": [the columns
    of the one-table-for-all view], "n": records used, "per_task": {task: {"n", "accuracy" (percent)}}}``.
    """
    used = _used(rows)
    overall = _pct(r["score"] for r in used)
    per_task = {t: {"n": sum(r["task"] == t for r in used), "accuracy": v}
                for t, v in sorted(_by(used, "task").items())}
    if benchmark == "seed-bench-r1":
        levels = _by(used, "level")
        names = sorted(levels, key=lambda x: (x not in ("L1", "L2", "L3"), x))
        metrics = {**{k: levels[k] for k in names}, "overall": overall}
        columns = [*names, "overall"]
        headline = [k for k in names if k in ("L1", "L2", "L3")] or ["overall"]
    elif benchmark in ("longvideobench", "video-mme"):
        groups = _by(used, "duration_group")
        names = sorted(groups, key=_duration_sort)
        metrics = {"overall": overall, **{k: groups[k] for k in names}}
        columns = ["overall", *names]
        headline = ["overall"]
    elif benchmark == "nextgqa":
        metrics = nextgqa_metrics(used)
        columns = list(_NEXTGQA_COLUMNS)
        headline = ["Acc@QA", "Acc@GQA", "mIoP", "mIoU"]
    elif benchmark == "mvbench":
        means = [d["accuracy"] for d in per_task.values()]
        metrics = {"mean": sum(means) / len(means) if means else float("nan"),
                   **{t: d["accuracy"] for t, d in per_task.items()}}
        columns = ["mean", *per_task]
        headline = ["mean"]
    else:  # tgif-qa and the generic set: accuracy per task and overall
        metrics = {**{t: d["accuracy"] for t, d in per_task.items()}, "overall": overall}
        columns = [*per_task, "overall"]
        headline = ["overall"]
    return {"metrics": metrics, "columns": columns, "headline": headline, "n": len(used), "per_task": per_task}


# ---- tables -------------------------------------------------------------------------------------------------------

def _cell(v) -> str:
    return "–" if v is None or v != v else f"{v:.1f}"


def format_benchmark_table(results: list[dict], paper: bool = True) -> str:
    """One markdown table: a row per evaluated model (``results``: the eval JSONs of
    `dvr1.train.evaluate.evaluate_benchmark`, each with ``benchmark``, ``name``, ``metrics``, ``columns``,
    ``headline``), the paper's rows first (:data:`PAPER_ROWS`, with ``paper``). With one benchmark the columns are
    its full row (``columns``); with several, each benchmark's ``headline`` columns, labelled ``benchmark/column``.
    Missing values print as ``–``."""
    benches = list(dict.fromkeys(r["benchmark"] for r in results))
    single = len(benches) == 1
    cols: list[tuple[str, str]] = []
    for b in benches:
        first = next(r for r in results if r["benchmark"] == b)
        for c in (first["columns"] if single else first["headline"]):
            if (b, c) not in cols:
                cols.append((b, c))
    head = [c if single else f"{b}/{c}" for b, c in cols]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    if paper:
        for b in benches:
            for label, values in PAPER_ROWS.get(b, []):
                lines.append(f"| {label} | " + " | ".join(_cell(values.get(c)) if bb == b else "–"
                                                          for bb, c in cols) + " |")
    for name in dict.fromkeys(r["name"] for r in results):
        by_bench = {r["benchmark"]: r for r in results if r["name"] == name}
        lines.append(f"| {name} | " + " | ".join(_cell(by_bench[b]["metrics"].get(c)) if b in by_bench else "–"
                                                  for b, c in cols) + " |")
    return "\n".join(lines)


# ---- imported directories -----------------------------------------------------------------------------------------

def read_manifest(directory: str) -> dict | None:
    """The import manifest of ``directory`` (``dvr1 data import``'s ``manifest.json``: it has ``format`` and
    ``split``), or None when there is none or it is another kind (dvr1's synthetic set's manifest). Raises
    ValueError naming the file when it is not JSON."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON manifest ({e})") from None
    return m if isinstance(m, dict) and "format" in m and "split" in m else None


def find_benchmarks(data_dir: str) -> list[tuple[str, str, dict]]:
    """``[(benchmark, directory, manifest), ...]`` of the imported sets at ``data_dir``: ``data_dir`` itself when it
    holds an import manifest, else each immediate subdirectory that does (sorted by name). A manifest without a
    ``benchmark`` (a training set) is named by its ``format``."""
    found = []
    own = read_manifest(data_dir)
    dirs = [data_dir] if own is not None else [os.path.join(data_dir, d) for d in sorted(os.listdir(data_dir))
                                               if os.path.isdir(os.path.join(data_dir, d))]
    for d in dirs:
        m = own if d == data_dir else read_manifest(d)
        if m is not None:
            found.append((m.get("benchmark") or m["format"], d, m))
    return found
