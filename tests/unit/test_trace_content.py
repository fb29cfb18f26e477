"""tools/trace_content.py: the stated value is the option the reasoning's last sentence ends with; counts of stated,
stated right, letter follows, accuracy -- worked by hand on the synthetic traces' own wording."""

import sys
from pathlib import Path

import pytest

from dvr1.data.prompts import sft_response
from dvr1.data.schema import VideoQARecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import trace_content  # noqa: E402

ARROW = ["played forward", "played forward, then backward", "played in reverse", "frozen on a single frame"]


def _rec(i, task, options, answer, meta):
    return VideoQARecord.from_json({"id": f"r{i}", "video": "v.webm", "question": "q?", "options": options,
                                    "answer": answer, "task": task, "meta": meta}, "test")


@pytest.mark.parametrize("text,options,want", [
    ("<think>I look. So it moves left.</think><answer>B</answer>", ["up", "left", "down", "right"], 1),
    ("<think>So the clip is played forward.</think><answer>A</answer>", ARROW, 0),  # not "..., then backward"
    ("<think>So the clip is played forward, then backward.</think><answer>B</answer>", ARROW, 1),
    ("<think>There are 2 discs. So the answer is 12.</think><answer>A</answer>", ["2", "1", "4", "3"], None),
    ("<think>So the original order is 1, 3, 2.</think><answer>C</answer>", ["2, 1, 3", "3, 1, 2", "1, 3, 2"], 2),
    ("<answer>A</answer>", ["up", "left"], None),
])
def test_stated_option(text, options, want):
    assert trace_content.stated_option(text, options) == want


def test_counts_on_gold_traces_and_on_a_wrong_letter():
    motion = _rec(0, "motion_direction", ["up", "left", "down", "right"], "B",
                  {"direction": "left", "color": "red", "shape": "disc", "size": 112, "start": [90, 50],
                   "end": [20, 50]})
    count = _rec(1, "counting", ["1", "4", "3", "0"], "C",
                 {"count": 3, "color": "blue", "shape": "disc", "distractors": []})
    ground = VideoQARecord.from_json({"id": "g", "video": "v.webm", "question": "When?", "answer": "[0.5, 1.0]",
                                      "task": "grounding", "segment": [0.5, 1.0], "duration": 2.0,
                                      "meta": {"color": "red", "shape": "disc"}}, "test")
    records = {r.id: r for r in (motion, count, ground)}
    gold = [{"id": r.id, "response": sft_response(r), "accuracy": 1.0} for r in (motion, count, ground)]
    out = trace_content.content(gold, records)
    assert set(out) == {"motion_direction", "counting", "all"}  # grounding has no options
    assert out["all"] == {"n": 2, "stated": 2, "stated_right": 2, "letter_follows": 2, "accuracy": 2}
    # right reasoning, wrong letter: perceived, not looked up
    wrong = [dict(gold[0], response=gold[0]["response"].replace("<answer>B<", "<answer>D<"), accuracy=0.0)]
    assert trace_content.content(wrong, records)["motion_direction"] == {
        "n": 1, "stated": 1, "stated_right": 1, "letter_follows": 0, "accuracy": 0}
    # wrong reasoning whose letter follows it
    follows = [dict(gold[1], response="<think>So the answer is 4.</think><answer>B</answer>", accuracy=0.0)]
    assert trace_content.content(follows, records)["counting"] == {
        "n": 1, "stated": 1, "stated_right": 0, "letter_follows": 1, "accuracy": 0}
    table = trace_content.format_table(out).splitlines()
    assert table[2] == "| counting | 1 | 1 | 1 | 1 | 1 |" and table[-1] == "| all | 2 | 2 | 2 | 2 | 2 |"
