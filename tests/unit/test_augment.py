"""DA-Aug transforms: trace selection, no-leak hints, frame noise and masking (ALGORITHMS §4)."""

import re

import pytest
import torch

from dvr1.rl.augment import (
    add_frame_noise,
    hint_sentence_count,
    make_hint,
    mask_frames,
    select_trace,
    split_sentences,
)


def test_select_trace():
    responses = ["r0", "r1", "r2", "r3"]
    assert select_trace(responses, [0, 1, 1, 0], [5.0, 1.5, 1.8, 9.0]) == "r2"  # r3 has the top reward but is wrong
    assert select_trace(responses, [0, 1, 1, 0], [5.0, 1.8, 1.8, 9.0]) == "r1"  # ties: the first
    assert select_trace(responses, [0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0]) is None
    assert select_trace([], [], []) is None
    with pytest.raises(ValueError, match=r"select_trace: responses \(2\), accuracies \(1\) and rewards \(2\)"):
        select_trace(["a", "b"], [1], [1.0, 2.0])


def test_split_sentences_keeps_decimals():
    assert split_sentences("It starts at 1.5 s. Then stops!\nNext? Yes") == ["It starts at 1.5 s.", "Then stops!",
                                                                            "Next?", "Yes"]


CHOICE_TRACE = (
    "<think>First, I look at the whole clip. So it must be B. The person holds something. I pick b. "
    "Between the frames, motion is visible. The object is A Red Cup. It is not (b) though. A blue ball is absent. "
    "<answer>B</answer> is the tag. Bright lights appear. Option b fits. The end is near.</think>"
    "<answer>B</answer>"
)
OPTIONS = ["A. a blue ball", "B. a red cup", "C. a dog"]
CLEAN = [  # the clean sentences of CHOICE_TRACE, with their 1-based positions among its 12
    "First, I look at the whole clip.",  # 1
    "The person holds something.",  # 3
    "Between the frames, motion is visible.",  # 5
    "A blue ball is absent.",  # 8
    "Bright lights appear.",  # 10
    "The end is near.",  # 12
]


# Prefix of floor(12 · level / 4) = 0 / 3 / 6 / 9 of the 12 sentences, leaking ones removed (not replaced): the last
# quarter (10-12) never shows, even though 10 and 12 are clean.
@pytest.mark.parametrize("level,n", [(0, 0), (1, 2), (2, 3), (3, 4)])
def test_hint_choice_levels_and_no_leak(level, n):
    hint = make_hint(CHOICE_TRACE, level, 3, "B", OPTIONS)
    assert hint == " ".join(CLEAN[:n])
    assert "<answer" not in hint.lower()
    assert re.search(r"(?<![A-Za-z0-9])[Bb](?![A-Za-z0-9])", hint) is None
    assert "red cup" not in hint.lower()


@pytest.mark.parametrize(
    "n,counts", [(0, [0, 0, 0, 0]), (1, [0, 0, 0, 0]), (3, [0, 0, 1, 2]), (4, [0, 1, 2, 3]), (10, [0, 2, 5, 7])]
)
def test_hint_sentence_count_is_the_fraction_floored(n, counts):
    assert [hint_sentence_count(n, level, 3) for level in range(4)] == counts
    assert [hint_sentence_count(n, level, 1) for level in range(2)] == [0, n // 2]


def test_hint_is_a_prefix_of_the_trace_issue19():
    # issue 19 item 1: the count is over the trace's sentences, and leaking ones are dropped from that prefix; the
    # old code counted over the clean list and returned sentence 3 of 4 at level 1.
    trace = "<think>The answer is B. I think B fits. Then the dog runs away. Then it sits down.</think>"
    options = ["cat", "zebra", "cow", "pig"]
    assert [make_hint(trace, level, 3, "B", options) for level in (1, 2, 3)] == ["", "", "Then the dog runs away."]
    # n = 3: 0 / 0 / 1 / 2 sentences at levels 0-3 (the old ceil gave 1 / 2 / 3: the whole trace at level 3).
    short = "<think>One step. Two steps. Three steps.</think>"
    assert [make_hint(short, level, 3, "C", None) for level in range(4)] == ["", "", "One step.", "One step. Two steps."]


def test_hint_option_text_normalised_issue19():
    # issue 19 item 2: option text with punctuation / odd spacing / case still matches.
    trace = "<think>Start here. I see a red cup on the table. Next step. Then more. And more. The end.</think>"
    assert make_hint(trace, 3, 3, "B", ["a blue cup", "a red cup.", "x", "y"]) == "Start here. Next step. Then more."
    assert make_hint(trace, 3, 3, "B", ["a", "  A  Red\tCUP!! ", "x", "y"]) == "Start here. Next step. Then more."
    assert make_hint(trace, 3, 3, "B. A red-cup", None) == "Start here. Next step. Then more."
    # standalone letters of the answer in any case leak: "I pick b.", "b) red", "(b)", "B's"
    trace = "<think>Look. I pick b. b) red it is. So (b). B's shape. Calm. Quiet. Done.</think>"
    assert make_hint(trace, 3, 3, "B", None) == "Look. Calm."
    # ...but not inside words or numbers ("bb", "b2", "abc")
    trace = "<think>The bb gun. Item b2 here. An abc song. Done.</think>"
    assert make_hint(trace, 3, 3, "B", None) == "The bb gun. Item b2 here. An abc song."
    # for answer A, the article "a" is the letter: such sentences are dropped (the safe side of no-leak)
    assert make_hint("<think>I see a cat. Dogs run. Birds fly. End.</think>", 3, 3, "A", None) == "Dogs run. Birds fly."


def test_hint_phrase_across_sentences_is_a_leak():
    # "red." + "Cup is here." joins into "red cup": the later sentence is dropped.
    trace = "<think>I see red. Cup is here. Trees sway. Wind blows. Rain falls. Sun sets. Day ends. Bye.</think>"
    expected = "I see red. Trees sway. Wind blows. Rain falls. Sun sets."  # prefix of 6, "Cup is here." dropped
    assert make_hint(trace, 3, 3, "B", ["x", "red cup", "y", "z"]) == expected
    # an answer tag split over sentences ("<", "/", "answer") is caught at the junction too
    hint = make_hint("<think>See <\n/\nanswer yes\nOk. Fine. Go. Run. Stop. End.</think>", 3, 3, "C", None)
    assert hint == "See < / Ok. Fine. Go." and "answer" not in hint


def test_hint_option_text_from_answer_and_bracket_forms():
    trace = (
        "<think>I see a red cup. Clearly [B] here. Look closer. The answer: ( b ). Calm scene. Still calm. "
        "Birds sing. The end.</think>"
    )
    # n = 8: prefixes of 2 / 4 / 6 sentences at levels 1 / 2 / 3
    assert make_hint(trace, 3, 3, "B. a red cup", None) == "Look closer. Calm scene. Still calm."
    assert make_hint(trace, 2, 3, "B. a red cup", None) == "Look closer."
    assert make_hint(trace, 1, 3, "B. a red cup", None) == ""


def test_hint_grounding_numbers():
    trace = (
        "<think>The event starts around 12.5 seconds. It ends at 30.0 s. The lights turn on at 5 s. "
        "A person walks in. The clip spans 12.5 to 30. It is over.</think><answer>[12.5, 30]</answer>"
    )
    hint = make_hint(trace, 3, 3, "[12.5, 30]", None)  # prefix of floor(6 · 3 / 4) = 4
    assert hint == "The lights turn on at 5 s. A person walks in."
    assert "12.5" not in hint and "30" not in hint
    # numbers are compared by value, with thousands commas: "1,024" and "1024.0" leak 1024; "1,0,2,4" does not
    trace = "<think>It has 1,024 frames. Or 1024.0 of them. Counted 1,0,2,4 twice. Fine. Good. Done. Ok. End.</think>"
    assert make_hint(trace, 3, 3, "1024", None) == "Counted 1,0,2,4 twice. Fine. Good. Done."


def test_hint_free_text_and_numeric():
    trace = "<think>Count them. There are 3 dogs. Maybe 4 cats. The dog is Brown. Done.</think>"
    assert make_hint(trace, 3, 3, "3", None) == "Count them. Maybe 4 cats."  # prefix of floor(5 · 3 / 4) = 3
    assert make_hint(trace, 3, 3, "brown", None) == "Count them. There are 3 dogs. Maybe 4 cats."
    assert make_hint("<think>The dog is Brown. Count them. Done. End.</think>", 3, 3, "brown", None) == (
        "Count them. Done."
    )


def test_hint_unclosed_or_missing_think_and_all_leaking():
    trace = "<think>Step one. Step two. Step three. Step four <answer>B</answer>"
    assert make_hint(trace, 3, 3, "B", None) == "Step one. Step two. Step three."
    assert make_hint("Plain text trace. Another line", 2, 3, "C", None) == "Plain text trace."
    assert make_hint("<think>It is B. B! Yes b. Sure B.</think>", 3, 3, "B", None) == ""
    assert make_hint("", 2, 3, "B", OPTIONS) == ""
    # stray tags inside the think part are stripped, never returned; a tag-only piece is not a sentence
    hint = make_hint("<think>Look <glue> here. Fine.\n<glue>\nGood. Bye.</think>", 3, 3, "C", None)
    assert "<" not in hint and hint == "Look here. Fine. Good."


def test_hint_errors():
    with pytest.raises(ValueError, match=r"make_hint: level must be an int in \[0, 3\], got 4"):
        make_hint("t", 4, 3, "B", None)
    with pytest.raises(ValueError, match=r"make_hint: max_level must be an int >= 1, got 0"):
        make_hint("t", 0, 0, "B", None)


def test_frame_noise_std_and_reproducibility():
    video = torch.zeros(16, 3, 32, 32)
    sigma0, level = 0.1, 2.5
    out = add_frame_noise(video, sigma0, level, torch.Generator().manual_seed(0))
    # 49,152 samples: the sample std's standard error is σ/sqrt(2N) ≈ 0.0008 = 0.3 % of 0.25; tolerance 2 %.
    assert out.std().item() == pytest.approx(sigma0 * level, rel=0.02)
    assert abs(out.mean().item()) < 0.01
    again = add_frame_noise(video, sigma0, level, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(video, torch.zeros_like(video))  # input untouched
    base = torch.randn(2, 3, 4, 4)
    assert torch.equal(add_frame_noise(base, 0.5, 0.0, torch.Generator().manual_seed(1)), base)
    with pytest.raises(ValueError, match=r"add_frame_noise: level must be finite and >= 0, got -1"):
        add_frame_noise(base, 0.1, -1)
    with pytest.raises(ValueError, match=r"add_frame_noise: video must be a floating tensor"):
        add_frame_noise(torch.zeros(2, 3, dtype=torch.uint8), 0.1, 1.0)


@pytest.mark.parametrize("T,fraction,k", [(10, 0.35, 4), (7, 0.5, 4), (8, 0.0, 0), (8, 1.0, 8), (5, 0.3, 2)])
def test_mask_frames_exact_fraction(T, fraction, k):
    video = torch.randn(T, 3, 4, 4) + 5.0  # no frame is zero by chance
    out, idx = mask_frames(video, fraction, torch.Generator().manual_seed(3))
    assert idx.dtype == torch.int64 and idx.numel() == k
    assert idx.tolist() == sorted(set(idx.tolist()))
    zero_frames = [t for t in range(T) if torch.count_nonzero(out[t]) == 0]
    assert zero_frames == idx.tolist()
    keep = [t for t in range(T) if t not in zero_frames]
    assert torch.equal(out[keep], video[keep])
    assert torch.count_nonzero(video) == video.numel()  # input untouched
    with pytest.raises(ValueError, match=r"mask_frames: fraction must be in \[0, 1\], got 1.5"):
        mask_frames(video, 1.5)
