"""Evaluation: greedy decoding on a split; accuracy per task name, mean temporal IoU (grounding, grounded QA), format
rate, and the record counts (read, used, skipped by reason)."""

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


def evaluate(engine, builder, tokenizer, records, max_new_tokens: int = 64, strict: bool = False,
             out_path: str | None = None, batch: int = 8, progress: bool = False, n_read: int | None = None) -> dict:
    """Greedy-decode every record and score it by its problem type (ALGORITHMS §6, §10.1).

    Returns (and writes to `out_path` as JSON): {"n", "skipped", "n_read", "n_used", "n_skipped": {reason: count},
    "accuracy", "mean_iou", "format", "per_task": {task: {"n", "accuracy", "format", "mean_iou"}}, "samples": first 20
    (id, task, answer, response)}. Accuracy of grounding = IoU >= 0.5; "mean_iou" is over the grounding and grounded
    QA records. Records whose video cannot be read or whose prompt cannot fit are reported (into `builder.skips`, a
    `SkipReport`, when set) and counted: "n" = "n_used" records scored, "skipped" = all skipped records. `n_read`:
    the lines read for `records` (default: `len(records)` plus the report's read-time skips).
    """
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(eos,))
    per = defaultdict(lambda: {"n": 0, "accuracy": 0.0, "format": 0.0, "iou": 0.0})
    seg = {"n": 0, "iou": 0.0}  # records with ground-truth segments
    samples, skipped = [], 0
    bar = tqdm(total=len(records), desc="eval", disable=not progress)
    for s in range(0, len(records), batch):
        prepared = [p for p in (prepare_or_skip(builder, r, strict=strict) for r in records[s:s + batch]) if p]
        skipped += min(batch, len(records) - s) - len(prepared)
        outs = engine.generate([p.request for p in prepared], sp)
        bar.update(min(batch, len(records) - s))
        for p, o in zip(prepared, outs):
            r = p.record
            text = decode_response(tokenizer, o.token_ids[0], (eos,))
            sc = score_response(text, r.problem_type, r.answer, r.segments)
            d = per[r.task]
            d["n"] += 1
            d["accuracy"] += sc["accuracy"]
            d["format"] += sc["format"]
            d["iou"] += sc["iou"]
            if r.segments is not None:
                seg["n"] += 1
                seg["iou"] += sc["iou"]
            if len(samples) < 20:
                samples.append({"id": r.id, "task": r.task, "answer": r.answer, "response": text})
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
        "samples": samples,
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
