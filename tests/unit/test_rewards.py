"""Rule-based rewards (ALGORITHMS §6)."""

import math
import time

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


@pytest.mark.parametrize(
    "glue",
    ["[(5, 2)]", "[(0, 1), (5, 2)]", "[(0, " + "9" * 400 + ")]", "[(" + "1" * 400 + ", " + "2" * 400 + ")]",
     "[(-1, 2)]", "[(nan, 2)]", "[(1, inf)]", "[(1, 2),]", "[(1, 2) (3, 4)]", "[(1, 2)"],
)
def test_format_grounded_malformed_spans_issue19(glue):
    # issue 19 item 4: reversed, non-finite (overflowing) and negative spans make the grounded format 0
    text = f"<think>t</think><answer>B</answer><glue>{glue}</glue>"
    assert format_reward(text, grounded=True) == 0.0
    assert parse_glue(text) is None
    s = score_response(text, "grounded_qa", "B", [1.0, 2.0])
    assert s == {"format": 0.0, "accuracy": 1.0, "iou": 0.0, "total": 1.0}


def test_format_grounded_whitespace():
    text = "<think>t</think>\n<answer>B</answer>\n<glue>\n[ (1 , 2) ,\n (3,4) ]\n</glue>\n"
    assert format_reward(text, grounded=True) == 1.0
    assert parse_glue(text) == [(1.0, 2.0), (3.0, 4.0)]


def test_accuracy_hedged_choice_issue19():
    # issue 19 item 3: a hedge naming several options scores 0 for key B; one option plus its text scores 1
    for hedge in ["Answer: B or C", "B, C, D", "Option B or option C", "(B) (C)", "B. C.", "B or C"]:
        assert accuracy_reward(f"<think>t</think><answer>{hedge}</answer>", "B") == 0.0, hedge
    for one in ["B (a red cup)", "B - a red cup", "Option B", "B. a red cup"]:
        assert accuracy_reward(f"<think>t</think><answer>{one}</answer>", "B") == 1.0, one


def _best_time(fn, text, repeat=5):
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()  # CPU time: other processes on a loaded machine do not count
        fn(text)
        best = min(best, time.process_time() - t0)
    return best


PATHOLOGICAL = {
    # the issue's quadratic format regex: every "</think>" is a candidate end of the think block
    "format": (lambda n: "<think>" + "a</think> <answer>" * (n // 18), format_reward),
    "format_grounded": (
        lambda n: "<think>t</think><answer>B</answer><glue>[" + "(1, 2), " * (n // 8), lambda t: format_reward(t, True)
    ),
    # whitespace runs: "^\\s*[\\[(]?\\s*" tried every split of a long run
    "segment": (lambda n: " " * n + "x", parse_segment),
    "grounding": (lambda n: "<answer>[1" + " " * n + ",</answer>", lambda t: score_response(t, "grounding", "", [1, 2])),
    "choice": (lambda n: "<answer>B" + " or, (" * (n // 6) + "</answer>", parse_choice),
    "number": (lambda n: "<answer>" + "1,000" * (n // 5) + "</answer>", lambda t: score_response(t, "numeric", "1")),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_parsers_linear_time_issue19(name):
    # issue 19 item 7: 7.6 s on a 208 KB response before. Linear time: 4x the input costs < 8x the time (quadratic
    # would be 16x), and a 200 KB input stays far under 0.5 s even on a loaded machine.
    make, fn = PATHOLOGICAL[name]
    small, large = make(50_000), make(200_000)
    t_small, t_large = _best_time(fn, small), _best_time(fn, large)
    assert t_large < 0.5, f"{name}: {t_large:.3f} s on {len(large)} characters"
    assert t_large < 8 * max(t_small, 1e-3), f"{name}: {t_small:.4f} s -> {t_large:.4f} s for 4x the input"


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
        # issue 19 item 3: the letter followed by its option text in brackets or after a dash
        ("B (a red cup)", "B"),
        ("B - a red cup", "B"),
        ("B – a red cup", "B"),
        ("B. A red cup", "B"),  # "A" is the article of the option text, not a second option
        ("B. The U.S. flag", "B"),
        ("Option B (B)", "B"),  # the same option twice is one option
        ("B, B", "B"),
        # ...and an answer naming more than one option is a hedge: None (ALGORITHMS §10)
        ("Answer: B or C", None),
        ("B, C, D", None),
        ("Option B or option C", None),
        ("(B) (C)", None),
        ("B. C.", None),
        ("B or C", None),
        ("B and C", None),
        ("B,C", None),
        ("B/C", None),
        ("B. a red cup or C. a blue cup", None),
        ("The answer is B, not C", "B"),  # "not C" is not in list position
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
        # issue 19 item 4
        ("[2, 5] seconds", (2.0, 5.0)),
        ("[2,5]s", (2.0, 5.0)),
        ("2.0 to 5.0", (2.0, 5.0)),
        ("2 s to 5 s", (2.0, 5.0)),
        ("[ 2 ,\n\t 5 ]", (2.0, 5.0)),
        ("[2,5", None),  # unclosed
        ("2,5]", None),
        ("[2, 5)", None),  # mismatched
        ("[" + "9" * 400 + ", " + "9" * 401 + "]", None),
        ("[1.5, 3] seconds later", None),
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


@pytest.mark.parametrize(
    "text,value",
    [("1,024", 1024.0), ("-1,234,567.5", -1234567.5), ("12,345.", 12345.0), (".5", 0.5), ("+3.", 3.0),
     ("1,0,2,4", None), ("10,24", None), ("1,02", None), (",100", None), ("1,,000", None), ("1..", None),
     ("9" * 308, float("9" * 308)), ("9" * 309, None), ("", None), (None, None)],
)
def test_parse_number_thousands_groups(text, value):
    # issue 19 item 5: commas only as thousands separators in groups of three ("1,0,2,4" is not 1024)
    assert parse_number(text) == value


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
    assert accuracy_reward(r("3"), "3", "numeric") == 1.0
    assert accuracy_reward(r("3.0"), "3.00", "numeric") == 1.0
    assert accuracy_reward(r("3.004"), "3.0", "numeric") == 1.0
    assert accuracy_reward(r("3.01"), "3.0", "numeric") == 0.0
    assert accuracy_reward(r("three"), "3", "numeric") == 0.0
    with pytest.raises(ValueError, match=r"accuracy_reward: answer 'x' is not a finite number"):
        accuracy_reward(r("3"), "x", "numeric")
    assert accuracy_reward(r("1,0,2,4"), "1,024", "numeric") == 0.0
    assert accuracy_reward(r("1,024"), "1,024", "numeric") == 1.0
    # issue 19 item 5: exact decimal rounding to 2 places, ties up (binary floats round 2.675 down to 2.67)
    assert accuracy_reward(r("2.675"), "2.68", "numeric") == 1.0
    assert accuracy_reward(r("2.665"), "2.67", "numeric") == 1.0
    assert accuracy_reward(r("1.005"), "1.01", "numeric") == 1.0
    assert accuracy_reward(r("2.6749999"), "2.68", "numeric") == 0.0
    assert accuracy_reward(r("-2.675"), "-2.68", "numeric") == 1.0  # ties away from zero
    assert accuracy_reward(r("3.005"), "3.0", "numeric") == 0.0  # 3.01 != 3.00
    assert accuracy_reward(r("9" * 300 + ".0"), "9" * 300 + ".001", "numeric") == 1.0  # exact at any magnitude
    assert accuracy_reward(r("9" * 400), "3", "numeric") == 0.0
    assert accuracy_reward(r("A Red, cup!"), "a red cup", "text") == 1.0
    assert accuracy_reward(r("a blue cup"), "a red cup", "text") == 0.0


def test_numeric_decimal_mark_condition_is_video_r1s():
    """tulerfeng/Video-R1 src/r1-v/src/open_r1/grpo.py: `gt_has_decimal = ("." in gt_ans) or ("," in gt_ans)`, same
    for the output; unequal -> 0 before any number is compared."""
    r = lambda a: f"<think>x</think><answer>{a}</answer>"  # noqa: E731
    assert accuracy_reward(r("3.0"), "3", "numeric") == 0.0
    assert accuracy_reward(r("3"), "3.0", "numeric") == 0.0
    assert accuracy_reward(r("1,000"), "1000", "numeric") == 0.0  # a comma counts as a decimal mark there
    assert accuracy_reward(r("1000"), "1000", "numeric") == 1.0
    assert accuracy_reward(r("3."), "3", "numeric") == 0.0
    assert accuracy_reward(r("0.5"), ".5", "numeric") == 1.0


def test_ocr_reward_is_one_minus_jiwer_wer():
    import jiwer

    r = lambda a: f"<think>x</think><answer>{a}</answer>"  # noqa: E731
    # reference 4 words, one substitution, one deletion: WER = 2/4
    assert accuracy_reward(r("STOP here now"), "STOP HERE right now", "wer") == pytest.approx(0.5)
    assert jiwer.wer("STOP HERE right now", "STOP here now") == pytest.approx(0.5)
    assert accuracy_reward(r("no entry"), "no entry", "wer") == 1.0
    # 1 ref word, 3 inserted + 1 substituted: WER = 4 -> clipped to reward 0
    assert accuracy_reward(r("a b c d"), "x", "wer") == 0.0
    assert accuracy_reward(r("stop"), "STOP", "wer") == 0.0  # case counts, as in Video-R1's wer()
    assert accuracy_reward(r(" "), "STOP", "wer") == 0.0 and accuracy_reward("STOP", "STOP", "wer") == 0.0
    with pytest.raises(ValueError, match="OCR needs the reference text"):
        accuracy_reward(r("a"), " ", "wer")
    assert score_response(r("STOP here now"), "ocr", "STOP HERE right now")["accuracy"] == pytest.approx(0.5)


def test_free_form_reward_is_mean_rouge_1_2_l():
    from rouge_score import rouge_scorer

    r = lambda a: f"<think>x</think><answer>{a}</answer>"  # noqa: E731
    # by hand: ref "a red cup falls" (4 tokens), pred "the red cup fell" -> stemmed "the red cup fell"
    # ROUGE-1: overlap {red, cup} = 2 -> P = R = 1/2, F = 1/2; ROUGE-2: {"red cup"} -> P = R = 1/3, F = 1/3;
    # ROUGE-L: LCS "red cup" = 2 -> F = 1/2. Mean = (1/2 + 1/3 + 1/2) / 3 = 4/9.
    assert accuracy_reward(r("the red cup fell"), "a red cup falls", "rouge") == pytest.approx(4 / 9)
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score("a red cup falls",
                                                                                          "the red cup fell")
    assert sum(v.fmeasure for v in lib.values()) / 3 == pytest.approx(4 / 9)
    assert accuracy_reward(r("a red cup falls"), "a red cup falls", "rouge") == 1.0
    assert accuracy_reward(r("!!"), "a red cup", "rouge") == 0.0
    assert score_response(r("the red cup fell"), "free_form", "a red cup falls")["accuracy"] == pytest.approx(4 / 9)


def test_mean_relative_accuracy():
    from dvr1.rl.rewards import mean_relative_accuracy as mra

    # rel = |pred - gt| / |gt|; counted thresholds are those with rel < 1 - theta, theta in 0.50..0.95
    assert mra("10", "10") == 1.0  # rel 0 < 0.05
    assert mra("10.4", "10") == 1.0  # rel 0.04 < 0.05: all ten thresholds
    assert mra("11", "10") == pytest.approx(0.8)  # rel 0.1: 1-theta in {0.5,...,0.15} (8 values) > 0.1; 0.1, 0.05 not
    assert mra("10.5", "10") == pytest.approx(0.9)  # rel exactly 0.05: not < 0.05 -> 9 of 10
    assert mra("13", "10") == pytest.approx(0.4)  # rel 0.3: 0.5, 0.45, 0.4, 0.35 -> 4
    assert mra("15", "10") == 0.0 and mra("5", "10") == 0.0  # rel 0.5 is not < 0.5
    assert mra("-9", "-10") == pytest.approx(0.8)
    assert mra("x", "10") == 0.0
    with pytest.raises(ValueError, match="non-zero finite number"):
        mra("1", "0")


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
    s = score_response("<think>t</think><answer>7</answer>", "numeric", "7", None)
    assert s == {"format": 1.0, "accuracy": 1.0, "iou": 0.0, "total": 2.0}
    assert score_response("<think>t</think><answer>7</answer>", "numeric", "7.0", None)["accuracy"] == 0.0


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
