"""Prompt template (ALGORITHMS §6), hint/reveal placement, SFT responses."""

import re

import pytest

from dvr1.data.prompts import QA_TEMPLATE, RESPONSE_PATTERN, format_question, sft_reasoning, sft_response
from dvr1.data.schema import VideoQARecord

ALGORITHMS_6 = (
    "{question} Output the thinking process in <think> </think> and final answer in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> answer here </answer>."
)
TAIL = ALGORITHMS_6.replace("{question}", "")


def _rec(task, answer, meta, options=("a", "b", "c", "d"), segment=None, duration=2.0, question="Q?"):
    return VideoQARecord(
        id="x", video="v.webm", question=question, options=None if options is None else list(options),
        answer=answer, task=task, segment=segment, fps=8.0, duration=duration, source="s", split="train", meta=meta,
    )


RECORDS = [
    _rec("arrow_of_time", "C", {"reversed": True},
         options=("played forward", "frozen on a single frame", "played in reverse", "played forward, then backward")),
    _rec("arrow_of_time", "A", {"reversed": False},
         options=("played forward", "frozen on a single frame", "played in reverse", "played forward, then backward")),
    _rec("temporal_order", "B", {"order": ["bikes@2.000-2.625", "bikes@3.250-3.875", "bikes@2.625-3.250"],
                                 "original_order": [1, 3, 2]}, options=("3, 2, 1", "1, 3, 2", "2, 1, 3", "1, 2, 3")),
    _rec("grounding", "[1.5, 3.0]", {"color": "red", "shape": "disc", "segment": [1.5, 3.0],
                                     "distractor": {"color": "blue", "shape": "disc", "segment": [0.0, 1.0]}},
         options=None, segment=[1.5, 3.0], duration=4.0),
    _rec("grounding", "[0.0, 4.0]", {"color": "red", "shape": "disc", "segment": [0.0, 4.0], "distractor": None},
         options=None, segment=[0.0, 4.0], duration=4.0),
    _rec("counting", "D", {"count": 3, "color": "red", "shape": "disc",
                           "distractors": [{"color": "blue", "shape": "disc"}, {"color": "red", "shape": "square"}]},
         options=("1", "5", "2", "3")),
    _rec("counting", "A", {"count": 1, "color": "green", "shape": "disc", "distractors": []},
         options=("1", "0", "2", "4")),
    _rec("motion_direction", "B", {"direction": "left", "color": "red", "shape": "disc", "start": [90.0, 40.0],
                                   "end": [30.0, 40.0], "distractors": []}, options=("up", "left", "down", "right")),
]


def test_template_exact():
    assert QA_TEMPLATE == ALGORITHMS_6


def test_format_multiple_choice():
    r = _rec("counting", "B", {}, options=("1", "2", "3", "4"), question="How many red discs move in this video?")
    assert format_question(r) == "How many red discs move in this video?\nA. 1\nB. 2\nC. 3\nD. 4" + TAIL


def test_format_grounding():
    r = RECORDS[3]
    assert format_question(r) == (
        "Q?\nAnswer with the time span as [start, end] in seconds, with one decimal." + TAIL
    )


def test_hint_and_reveal_placement():
    r = _rec("counting", "B", {}, options=("1", "2", "3", "4"))
    body = "Q?\nA. 1\nB. 2\nC. 3\nD. 4"
    assert format_question(r, hint="I track every disc.") == body + "\nHint: I track every disc." + TAIL
    assert format_question(r, reveal_answer=True) == body + "\nThe correct answer is B." + TAIL
    assert format_question(r, hint=" h ", reveal_answer=True) == body + "\nHint: h\nThe correct answer is B." + TAIL
    assert format_question(r, hint="") == format_question(r)


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: f"{r.task}-{r.answer}")
def test_sft_response(rec):
    resp = sft_response(rec)
    assert re.match(RESPONSE_PATTERN, resp, re.DOTALL)
    assert re.match(r"^<think>.*?</think>\s*<answer>.*?</answer>$", resp, re.DOTALL)
    assert re.search(r"<answer>(.*?)</answer>", resp).group(1) == rec.answer
    reasoning = sft_reasoning(rec)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", reasoning) if s]
    assert 2 <= len(sentences) <= 4, sentences
    # the last sentence states the conclusion: the answer's value (the option text), never its letter
    value = rec.options["ABCD".index(rec.answer)] if rec.options else rec.answer
    assert sentences[-1].endswith(f"{value}.") and "option" not in reasoning
    assert sft_response(rec) == resp


def test_sft_reasoning_content():
    assert "in reverse" in sft_reasoning(RECORDS[0]) and "forward" in sft_reasoning(RECORDS[1])
    assert "original order is 1, 3, 2" in sft_reasoning(RECORDS[2])
    g = sft_reasoning(RECORDS[3])
    assert "shows up at 1.5 s" in g and "gone after 3.0 s" in g and "blue disc" in g
    assert "first frame" in sft_reasoning(RECORDS[4]) and "until the end" in sft_reasoning(RECORDS[4])
    assert "There are 3 red discs that change position." in sft_reasoning(RECORDS[5])
    assert "There is 1 green disc that changes position." in sft_reasoning(RECORDS[6])
    assert sft_reasoning(RECORDS[7]) == ("I follow the red disc from the first frame to the last. It starts near the "
                                         "right side and ends near the left side. So it moves left.")


def test_frame_cell():
    from dvr1.data.prompts import frame_cell

    assert [frame_cell(x, y, 112) for x, y in [(0, 0), (56, 10), (111.9, 0), (0, 56), (56, 56), (112, 56),
                                               (10, 80), (56, 112), (120, 130)]] == [
        "top left", "top centre", "top right", "left side", "centre", "right side", "bottom left", "bottom centre",
        "bottom right"]
    assert frame_cell(37.4, 74.6, 112) == "centre" and frame_cell(37.2, 74.7, 112) == "bottom left"


# ---- real records (issue 14, problems 5 and 6) ---------------------------------------------------------------------

def _open(**kw):
    d = dict(id="real-1", video="v.webm", question="Q?", options=None, answer="3", task="count", segment=None,
             fps=None, duration=None, source="v.webm", split=None, meta={}, problem_type="numerical")
    d.update(kw)
    return VideoQARecord(**d)


def test_sft_target_sources():
    from dvr1.data.prompts import sft_target

    # the record's own reasoning wins, even over construction metadata
    r = _open(reasoning=" There are three cups. ")
    assert sft_target(r) == ("<think>There are three cups.</think><answer>3</answer>", "reasoning")
    assert sft_target(RECORDS[5]) == (sft_response(RECORDS[5]), "meta")
    # a real record with a synthetic task name but no construction metadata: answer only (was KeyError: 'color')
    r = _rec("counting", "B", {})
    assert sft_target(r) == ("<think></think><answer>B</answer>", "answer_only")
    r = _open(problem_type="grounded_qa", task="causal", options=["a", "b"], answer="B",
              segments=[[1.0, 2.25], [3.0, 4.0]])
    text, source = sft_target(r)
    assert (text, source) == ("<think></think><answer>B</answer><glue>[(1.0, 2.2), (3.0, 4.0)]</glue>", "answer_only")
    from dvr1.rl.rewards import format_reward

    assert format_reward(text, grounded=True) == 1.0


def test_format_question_per_problem_type():
    assert format_question(_open()) == "Q?\nAnswer with a number." + TAIL
    assert format_question(_open(problem_type="ocr", answer="STOP")) == (
        "Q?\nAnswer with the text exactly as it appears in the video." + TAIL)
    assert format_question(_open(problem_type="free_form", answer="x")) == "Q?\nAnswer in a short sentence." + TAIL
    five = _open(problem_type="multiple_choice", options=list("vwxyz"), answer="E")
    assert format_question(five) == "Q?\nA. v\nB. w\nC. x\nD. y\nE. z" + TAIL
    gqa = _open(problem_type="grounded_qa", options=["yes", "no"], answer="A", segments=[[0.0, 1.0]])
    assert format_question(gqa) == ("Q?\nA. yes\nB. no\nAfter </answer>, give the time spans that support the answer "
                                    "as <glue>[(start, end), ...]</glue> in seconds." + TAIL)
