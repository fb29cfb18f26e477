"""What an SFT model's reasoning states, against what its answer letter says (issue 16 diagnostics).

For every multiple-choice record of an eval JSON (``dvr1 eval`` writes each record's response under ``"outputs"``),
the *stated value* is the option text the reasoning's last sentence ends with -- the synthetic traces of
`dvr1.data.prompts.sft_reasoning` end "So it moves left.", "So the answer is 3.", "So the clip is played in
reverse.", "So the original order is 1, 3, 2." -- the longest option that ends that sentence. Per task:

- ``stated``: records whose reasoning ends at one of the options;
- ``stated_right``: the stated value is the correct option (what the model perceived; also the accuracy it would
  have if its letter always followed its reasoning);
- ``letter_follows``: the answer letter is the letter of the stated value (the option-list lookup);
- ``accuracy``: the eval's own accuracy (the letter is right).

Usage: ``python tools/trace_content.py RUN/eval_sft.json DATA/test.jsonl [--json OUT]``. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dvr1.data.prompts import LETTERS  # noqa: E402
from dvr1.data.schema import read_records  # noqa: E402

ANSWER = re.compile(r"<answer>\s*([A-Z])\s*</answer>")


def stated_option(response: str, options: list[str]) -> int | None:
    """Index of the longest option that the last sentence of the reasoning (inside ``<think>``, else the whole
    response before ``<answer>``) ends with, before its full stop; None if none does."""
    think = response.split("<answer>")[0].replace("<think>", "").replace("</think>", "").strip()
    last = think.rstrip(". ").rsplit(". ", 1)[-1]
    hits = [i for i, o in enumerate(options) if last == o or last.endswith(" " + o)]
    return max(hits, key=lambda i: len(options[i])) if hits else None


def content(outputs: list[dict], records: dict) -> dict:
    """``{task: {"n", "stated", "stated_right", "letter_follows", "accuracy"}}`` (counts) plus ``"all"``, over the
    multiple-choice records of `outputs` (``{"id", "response", "accuracy"}`` dicts); `records` maps id -> record.

    Raises:
        KeyError: an output whose id is not in `records`.
    """
    out: dict = {}
    for o in outputs:
        r = records[o["id"]]
        if not r.options:
            continue
        for key in (r.task, "all"):
            s = out.setdefault(key, {"n": 0, "stated": 0, "stated_right": 0, "letter_follows": 0, "accuracy": 0})
            i = stated_option(o["response"], list(r.options))
            m = ANSWER.search(o["response"])
            s["n"] += 1
            s["stated"] += i is not None
            s["stated_right"] += i is not None and LETTERS[i] == r.answer
            s["letter_follows"] += i is not None and m is not None and m.group(1) == LETTERS[i]
            s["accuracy"] += float(o["accuracy"]) > 0
    return out


def format_table(result: dict) -> str:
    rows = ["| task | n | accuracy | reasoning states an option | stated value right | letter follows the stated value |",
            "|---|---|---|---|---|---|"]
    for task in sorted(k for k in result if k != "all") + ["all"]:
        s = result[task]
        rows.append(f"| {task} | {s['n']} | {s['accuracy']} | {s['stated']} | {s['stated_right']} | "
                    f"{s['letter_follows']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("eval_json", help="an eval JSON with per-record outputs (dvr1 eval)")
    p.add_argument("records", help="the JSONL of the split it evaluated")
    p.add_argument("--json", help="also write the counts here")
    a = p.parse_args(argv)
    with open(a.eval_json) as f:
        ev = json.load(f)
    if "outputs" not in ev:
        raise SystemExit(f"{a.eval_json}: no 'outputs' (per-record responses); re-run dvr1 eval to get them")
    records = {r.id: r for r in read_records(a.records, check_video=False)}
    result = content(ev["outputs"], records)
    print(format_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
