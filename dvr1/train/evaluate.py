"""Evaluation: greedy decoding on a split; accuracy per task name, mean temporal IoU (grounding, grounded QA), format
rate, and the record counts (read, used, skipped by reason) (:func:`evaluate`); and a benchmark's own metric set
(docs/ALGORITHMS.md §10.2) with per-record predictions kept in a JSONL, so a killed run resumes
(:func:`evaluate_benchmark`)."""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

from tqdm import tqdm

from dvr1.models.tokenizer import decode_response
from dvr1.parallel import grid
from dvr1.rl.rewards import score_response
from dvr1.rollout.base import SamplingParams
from dvr1.train.inputs import prepare_or_skip

log = logging.getLogger(__name__)


def _greedy(tokenizer, max_new_tokens: int):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return eos, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(eos,))


def _predict(engine, builder, tokenizer, records, max_new_tokens: int, strict: bool, batch: int):
    """Greedy responses in batches of ``batch`` consecutive records: yields ``(chunk, [(record, text | None)])`` per
    batch, ``None`` for a record `prepare_or_skip` skipped (reported into ``builder.skips``)."""
    eos, sp = _greedy(tokenizer, max_new_tokens)
    for s in range(0, len(records), batch):
        chunk = records[s:s + batch]
        prepared = {id(r): p for r, p in ((r, prepare_or_skip(builder, r, strict=strict)) for r in chunk) if p}
        outs = engine.generate([prepared[id(r)].request for r in chunk if id(r) in prepared], sp)
        texts = iter(decode_response(tokenizer, o.token_ids[0], (eos,)) for o in outs)
        yield chunk, [(r, next(texts) if id(r) in prepared else None) for r in chunk]


def evaluate(engine, builder, tokenizer, records, max_new_tokens: int = 64, strict: bool = False,
             out_path: str | None = None, batch: int = 8, progress: bool = False, n_read: int | None = None) -> dict:
    """Greedy-decode every record and score it by its problem type (ALGORITHMS §6, §10.1).

    Returns (and writes to `out_path` as JSON): {"n", "skipped", "n_read", "n_used", "n_skipped": {reason: count},
    "accuracy", "mean_iou", "format", "per_task": {task: {"n", "accuracy", "format", "mean_iou"}}, "samples": first 20
    (id, task, answer, response), "outputs": every scored record's {id, task, answer, response, accuracy} (what a
    content analysis or a before/after comparison of two evals reads)}. Accuracy of grounding = IoU >= 0.5;
    "mean_iou" is over the grounding and grounded QA records. Records whose video cannot be read or whose prompt
    cannot fit are reported (into `builder.skips`, a `SkipReport`, when set) and counted: "n" = "n_used" records
    scored, "skipped" = all skipped records. `n_read`: the lines read for `records` (default: `len(records)` plus the
    report's read-time skips).
    """
    per = defaultdict(lambda: {"n": 0, "accuracy": 0.0, "format": 0.0, "iou": 0.0})
    seg = {"n": 0, "iou": 0.0}  # records with ground-truth segments
    outputs, skipped = [], 0
    bar = tqdm(total=len(records), desc="eval", disable=not progress)
    for chunk, results in _predict(engine, builder, tokenizer, records, max_new_tokens, strict, batch):
        bar.update(len(chunk))
        for r, text in results:
            if text is None:
                skipped += 1
                continue
            sc = score_response(text, r.problem_type, r.answer, r.segments)
            d = per[r.task]
            d["n"] += 1
            d["accuracy"] += sc["accuracy"]
            d["format"] += sc["format"]
            d["iou"] += sc["iou"]
            if r.segments is not None:
                seg["n"] += 1
                seg["iou"] += sc["iou"]
            outputs.append({"id": r.id, "task": r.task, "answer": r.answer, "response": text,
                            "accuracy": sc["accuracy"]})
    bar.close()
    n = sum(d["n"] for d in per.values())
    per_task = {t: {"n": d["n"], "accuracy": d["accuracy"] / d["n"], "format": d["format"] / d["n"],
                    "mean_iou": d["iou"] / d["n"]} for t, d in sorted(per.items())}
    report = getattr(builder, "skips", None)
    if report is not None:
        counts = report.summary(len(records))
        if n_read is not None:
            counts["n_read"] = n_read
    else:
        counts = {"n_read": len(records) if n_read is None else n_read, "n_used": n,
                  "n_skipped": {"corrupt_video": skipped} if skipped else {}}
    counts["n_used"] = n
    result = {
        "n": n,
        "skipped": sum(counts["n_skipped"].values()),
        **counts,
        "accuracy": sum(d["accuracy"] for d in per.values()) / max(n, 1),
        "format": sum(d["format"] for d in per.values()) / max(n, 1),
        "mean_iou": seg["iou"] / seg["n"] if seg["n"] else 0.0,
        "per_task": per_task,
        "samples": [{k: o[k] for k in ("id", "task", "answer", "response")} for o in outputs[:20]],
        "outputs": outputs,
    }
    if out_path and grid.is_writer():
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: rows = task types (+ overall, mean IoU), columns = the given evals (e.g. after SFT / RL)."""
    names = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    lines = ["| task | n | " + " | ".join(f"acc. after {k}" for k in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for t in tasks:
        n = next(r["per_task"][t]["n"] for r in results.values() if t in r["per_task"])
        lines.append(f"| {t} | {n} | " + " | ".join(
            f"{results[k]['per_task'].get(t, {}).get('accuracy', float('nan')):.3f}" for k in names) + " |")
    lines.append("| **all** | " + str(next(iter(results.values()))["n"]) + " | " +
                 " | ".join(f"**{results[k]['accuracy']:.3f}**" for k in names) + " |")
    lines.append("| mean IoU (grounding) | | " + " | ".join(f"{results[k]['mean_iou']:.3f}" for k in names) + " |")
    lines.append("| format rate | | " + " | ".join(f"{results[k]['format']:.3f}" for k in names) + " |")
    return "\n".join(lines)


def _read_predictions(path: str, header: dict) -> dict[str, dict]:
    """Rows of a predictions JSONL written for the same `header` (id -> row); {} when absent or written for another
    header (model, data, split, settings). A truncated last line (a killed writer) is dropped."""
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for k, line in enumerate(f):
            try:
                obj = json.loads(line)
            except ValueError:
                break  # the line a kill cut short, and anything after it
            if k == 0:
                if obj.get("header") != header:
                    log.info("%s: written for %s, not %s: starting again", path, obj.get("header"), header)
                    return {}
                continue
            rows[obj["id"]] = obj
    return rows


def evaluate_benchmark(engine, builder, tokenizer, records, predictions_path: str, header: dict,
                       max_new_tokens: int = 64, strict: bool = False, batch: int = 8, progress: bool = False,
                       desc: str = "eval", weights=None) -> list[dict]:
    """Greedy-decode and score every record (`dvr1.train.benchmarks.prediction_row`), resumably.

    Each batch's rows are appended to `predictions_path` (JSONL; first line ``{"header": header}``) as the batch
    finishes, flushed and fsynced. Run again after a kill with the same `header` (it should name the model, data,
    split and decoding settings), it keeps the rows of the batches that were complete (batches are the same
    consecutive slices of `records`, so every record is decoded in the batch an uninterrupted run decodes it in and
    gets the same greedy response) and continues with the first incomplete one. A record that cannot be used is a
    row ``{"id", "skipped": reason, "message"}`` (and is reported into ``builder.skips`` on every run). A
    `dvr1.train.faults` point ``eval`` is reached after each appended batch (the kill test's hook).

    Returns: the rows, in `records` order.
    """
    from dvr1.data.schema import Skip, split_where
    from dvr1.train import faults
    from dvr1.train.benchmarks import prediction_row

    done = _read_predictions(predictions_path, header)
    starts = range(0, len(records), batch)
    keep = 0
    for s in starts:
        if not all(r.id in done for r in records[s:s + batch]):
            break
        keep = min(s + batch, len(records))
    rows = [done[r.id] for r in records[:keep]]
    report = getattr(builder, "skips", None)
    if report is not None:
        for r, row in zip(records[:keep], rows):
            if row.get("skipped"):
                file, line = split_where(r.where)
                report.add(Skip(file, line, r.id, row["skipped"], row.get("message", ""), phase="use"))
    writer = grid.is_writer()
    if writer:
        os.makedirs(os.path.dirname(os.path.abspath(predictions_path)), exist_ok=True)
        tmp = predictions_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"header": header}) + "\n")
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(tmp, predictions_path)
    if keep:
        log.info("%s: resuming after %d of %d records (%s)", desc, keep, len(records), predictions_path)
    bar = tqdm(total=len(records), initial=keep, desc=desc, disable=not progress)
    for chunk, results in _predict(engine, builder, tokenizer, records[keep:], max_new_tokens, strict, batch):
        new = []
        for r, text in results:
            if text is not None:
                new.append(prediction_row(r, text, weights))
                continue
            last = report.entries[-1] if report is not None and report.entries else None
            reason, msg = (last.reason, last.message) if last is not None and last.id == r.id else ("corrupt_video", "")
            new.append({"id": r.id, "task": r.task, "skipped": reason, "message": msg})
        if writer:
            with open(predictions_path, "a") as f:
                f.write("".join(json.dumps(row) + "\n" for row in new))
                f.flush()
                os.fsync(f.fileno())
        rows += new
        bar.update(len(chunk))
        faults.point("eval")
    bar.close()
    return rows
