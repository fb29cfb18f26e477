"""Rule-based rewards (ALGORITHMS §6)."""

import math

import pytest

from dvr1.config import RewardConfig
from dvr1.rl.rewards import (
    accuracy_reward,
    format_reward,
    parse_answer,
    parse_choice,
    parse_glue,
    parse_number,
    parse_segment,
    rouge_l_f1,
    score_response,
    temporal_iou,
)

GOOD = "<think>The cup moves left.</think><answer>B</answer>"


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "  \n<think>a</think>\n\n <answer> B </answer>\n ",
        "<think></think><answer>C. a dog</answer>",
        "<think>multi\nline\nthought</think> <answer>(A)</answer>",
        "<think>ünïcödé 视频 🙂</think><answer>D</answer>",
    ],
)
def test_format_ok(text):
    assert format_reward(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "B",
        None,
        42,
        "<think>a</think>",
        "<answer>B</answer>",
        "<think>a</think><answer>B",  # unclosed
        "<think>a<answer>B</answer>",  # unclosed think
        "<think>a</think><answer>B</answer><answer>C</answer>",  # two answers
        "<think>a</think><answer>B</answer> trailing text",
        "preamble <think>a</think><answer>B</answer>",
        "<think>a<think>b</think></think><answer>B</answer>",  # nested think
        "<think>a</think><answer><answer>B</answer></answer>",  # nested answer
        "<answer>B</answer><think>a</think>",  # wrong order
        "<think>a</think><answer>   </answer>",  # empty answer
        "<think>a</think> x <answer>B</answer>",  # text between
        "<THINK>a</THINK><ANSWER>B</ANSWER>",
        "<think>a</think><answer>B</answer><glue>[(1, 2)]</glue>",  # glue in the plain format
    ],
)
def test_format_bad(text):
    assert format_reward(text) == 0.0


def test_format_grounded():
    ok = "<think>t</think><answer>B</answer> <glue>[(1.5, 3.0), (4,5)]</glue>"
    assert format_reward(ok, grounded=True) == 1.0
    assert format_reward(GOOD, grounded=True) == 0.0  # glue missing
    for bad_glue in ["[]", "[(1.5)]", "(1.5, 3.0)", "[(-1, 2)]", "[(a, b)]", "[(1, 2)] x"]:
        assert format_reward(f"<think>t</think><answer>B</answer><glue>{bad_glue}</glue>", grounded=True) == 0.0
    assert parse_glue(ok) == [(1.5, 3.0), (4.0, 5.0)]
    assert parse_glue("<glue>[(3, 1)]</glue>") is None  # reversed
    assert parse_glue(GOOD) is None


def test_parse_answer():
    assert parse_answer(GOOD) == "B"
    assert parse_answer("<answer> first </answer> <answer> last </answer>") == "last"
    assert parse_answer("<answer><answer>B</answer>") == "B"
    assert parse_answer("<answer>B") is None
    assert parse_answer("B</answer>") is None
    assert parse_answer("") is None
    assert parse_answer(None) is None
    assert parse_answer("<answer></answer>") == ""


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("[C]", "C"),
        ("B. a red cup", "B"),
        ("(D) the dog", "D"),
        ("Option B", "B"),
        ("option C is right", "C"),
        ("The answer is (A)", "A"),
        ("Answer: E", "E"),
        ("B)", "B"),
        ("Z", "Z"),
        ("<think>x</think><answer>(C)</answer>", "C"),
        ("a cat", None),
        ("A cat", None),
        ("b", None),
        ("", None),
        (None, None),
        ("BC", None),
        ("Optional", None),
        ("12", None),
        ("<answer>B", None),
    ],
)
def test_parse_choice(text, letter):
    assert parse_choice(text) == letter


@pytest.mark.parametrize(
    "text,seg",
    [
        ("[1.5, 3]", (1.5, 3.0)),
        ("(1.5,3.0)", (1.5, 3.0)),
        ("1.5-3.0", (1.5, 3.0)),
        ("1.5 to 3.0", (1.5, 3.0)),
        ("1.5s - 3s", (1.5, 3.0)),
        ("0 to 0", (0.0, 0.0)),
        (" [ .5 , 2. ] ", (0.5, 2.0)),
        ("[3, 1.5]", None),  # reversed: rejected, not swapped
        ("[-1, 3]", None),
        ("-1-3", None),
        ("[nan, 3]", None),
        ("[1, inf]", None),
        ("[1, " + "9" * 400 + "]", None),  # overflows to inf
        ("[1, 2, 3]", None),
        ("between 1 and 2", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_segment(text, seg):
    assert parse_segment(text) == seg


def test_parse_number():
    assert parse_number(" 1,024. ") == 1024.0
    assert parse_number("-2.5") == -2.5
    assert parse_number("three") is None
    assert parse_number("1e999") is None
    assert parse_number("nan") is None


def test_accuracy_choice():
    assert accuracy_reward(GOOD, "B", "choice") == 1.0
    assert accuracy_reward(GOOD, "(B)", "choice") == 1.0
    assert accuracy_reward(GOOD, "C", "choice") == 0.0
    assert accuracy_reward("<answer>Option B</answer>", "B") == 1.0
    assert accuracy_reward("B", "B") == 0.0  # no answer tag
    assert accuracy_reward(None, "B") == 0.0
    with pytest.raises(ValueError, match=r"accuracy_reward: answer 'cat' is not an option letter A-Z"):
        accuracy_reward(GOOD, "cat", "choice")
    with pytest.raises(ValueError, match=r"accuracy_reward: kind must be"):
        accuracy_reward(GOOD, "B", "fuzzy")


def test_accuracy_numeric_and_text():
    r = lambda a: f"<think>x</think><answer>{a}</answer>"  # noqa: E731
    assert accuracy_reward(r("3.0"), "3", "numeric") == 1.0
    assert accuracy_reward(r("3.004"), "3", "numeric") == 1.0
    assert accuracy_reward(r("3.01"), "3", "numeric") == 0.0
    assert accuracy_reward(r("1,000"), "1000", "numeric") == 1.0
    assert accuracy_reward(r("three"), "3", "numeric") == 0.0
    with pytest.raises(ValueError, match=r"accuracy_reward: answer 'x' is not a finite number"):
        accuracy_reward(r("3"), "x", "numeric")
    assert accuracy_reward(r("A Red, cup!"), "a red cup", "text") == 1.0
    assert accuracy_reward(r("a blue cup"), "a red cup", "text") == 0.0
    # ROUGE-L: LCS("the red cup", "a red cup") = 2 → P = R = 2/3 → F1 = 2/3.
    assert accuracy_reward(r("the red cup"), "a red cup", "rouge") == pytest.approx(2 / 3)
    assert rouge_l_f1("a b c d", "a c") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert rouge_l_f1("", "a") == 0.0


def test_temporal_iou():
    assert temporal_iou([(0, 10)], [(5, 15)]) == pytest.approx(5 / 15)
    assert temporal_iou([(0, 1)], [(2, 3)]) == 0.0
    assert temporal_iou([(2, 4)], [(2, 4)]) == 1.0
    # Overlaps within each side are merged: P = [0, 6], Q = [4, 10] → 2 / 10.
    assert temporal_iou([(0, 4), (3, 6)], [(4, 8), (7, 10)]) == pytest.approx(2 / 10)
    # Duplicated intervals do not count twice.
    assert temporal_iou([(0, 2), (0, 2)], [(0, 2)]) == 1.0
    # Disjoint unions: P = [0,1] ∪ [2,3], Q = [0.5, 2.5] → inter 1, union 3.
    assert temporal_iou([(0, 1), (2, 3)], [(0.5, 2.5)]) == pytest.approx(1 / 3)
    assert temporal_iou([], []) == 0.0
    assert temporal_iou([(1, 1)], [(1, 1)]) == 0.0
    with pytest.raises(ValueError, match=r"temporal_iou: gt\[0\] must satisfy 0 <= start <= end"):
        temporal_iou([(0, 1)], [(3, 1)])
    with pytest.raises(ValueError, match=r"temporal_iou: pred\[1\] must be a \(start, end\) pair"):
        temporal_iou([(0, 1), (1,)], [(0, 1)])


def test_score_choice():
    s = score_response(GOOD, "mcq", "B", None, RewardConfig())
    assert s == {"format": 1.0, "accuracy": 1.0, "iou": 0.0, "total": 2.0}
    s = score_response("<answer>B</answer>", "mcq", "B", None, RewardConfig(format=0.5, accuracy=2.0))
    assert s == {"format": 0.0, "accuracy": 1.0, "iou": 0.0, "total": 2.0}
    s = score_response(GOOD, "mcq", "A", None, RewardConfig(format=0.5))
    assert s["total"] == 0.5


def test_score_grounding():
    text = "<think>t</think><answer>[2, 6]</answer>"
    s = score_response(text, "grounding", "", [4.0, 8.0], RewardConfig(iou=2.0))
    assert s["iou"] == pytest.approx(2 / 6)
    assert s["accuracy"] == 0.0
    assert s["total"] == pytest.approx(1.0 + 2.0 * 2 / 6)
    s = score_response("<think>t</think><answer>4 to 7</answer>", "grounding", "", [4.0, 8.0])
    assert s["iou"] == pytest.approx(0.75) and s["accuracy"] == 1.0
    assert s["total"] == pytest.approx(1.75)  # accuracy reported, NOT added
    s = score_response("<think>t</think><answer>[8, 4]</answer>", "grounding", "", [4.0, 8.0])
    assert s == {"format": 1.0, "accuracy": 0.0, "iou": 0.0, "total": 1.0}
    with pytest.raises(ValueError, match=r"score_response: task 'grounding' needs segment=\[start, end\]"):
        score_response(text, "grounding", "", None)
    with pytest.raises(ValueError, match=r"temporal_iou: segment\[0\] must satisfy"):
        score_response(text, "grounding", "", [5.0, 1.0])


def test_score_grounded_qa_and_numeric():
    text = "<think>t</think><answer>B</answer><glue>[(0, 2), (1, 4)]</glue>"
    s = score_response(text, "grounded_qa", "B", [2.0, 6.0])
    assert s["format"] == 1.0 and s["accuracy"] == 1.0
    assert s["iou"] == pytest.approx(2 / 6)
    assert s["total"] == pytest.approx(2 + 2 / 6)
    s = score_response("<think>t</think><answer>7</answer>", "numeric", "7.0", None)
    assert s == {"format": 1.0, "accuracy": 1.0, "iou": 0.0, "total": 2.0}


MALFORMED = [
    "", None, 0, "   ", "<think>", "</think>", "<answer>", "</answer>", "<answer></answer>",
    "<think><answer>B</answer>", "<answer>B</answer></answer>", "<answer><answer></answer></answer>",
    "<answer>[1e999, 2]</answer>", "<answer>[nan, nan]</answer>", "<answer>\x00\x01</answer>",
    "<glue>[(1,2)]</glue>", "<glue>[(1,2)</glue>", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <answer>Б</answer>", "<think>" * 1000 + "</answer>" * 1000,
    "None", "null", "<answer>None</answer>",
]


@pytest.mark.parametrize("text", MALFORMED)
@pytest.mark.parametrize("task", ["mcq", "grounding", "grounded_qa", "numeric", "text"])
def test_malformed_never_raises(text, task):
    answer = "3" if task == "numeric" else "B"
    s = score_response(text, task, answer, [1.0, 2.0])
    assert set(s) == {"format", "accuracy", "iou", "total"}
    assert all(math.isfinite(v) for v in s.values())
    assert s["format"] == 0.0
    # Components are scored independently: a response with a bad format still earns its accuracy / IoU.
    assert s["total"] == pytest.approx((s["accuracy"] if task != "grounding" else 0.0) + s["iou"])
    expected_acc = 1.0 if (task in ("mcq", "grounded_qa", "text") and text == "<think><answer>B</answer>") else 0.0
    assert s["accuracy"] == expected_acc
