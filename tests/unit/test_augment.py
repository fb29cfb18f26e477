"""DA-Aug transforms: trace selection, no-leak hints, frame noise and masking (ALGORITHMS §4)."""

import re

import pytest
import torch

from dvr1.rl.augment import add_frame_noise, make_hint, mask_frames, select_trace, split_sentences


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
    "<think>First, I look at the whole clip. The person holds something. So it must be B. Option b fits. "
    "The object is A Red Cup. It is not (b) though. <answer>B</answer> is the tag. "
    "Between the frames, motion is visible. A blue ball is absent. Bright lights appear.</think>"
    "<answer>B</answer>"
)
OPTIONS = ["A. a blue ball", "B. a red cup", "C. a dog"]
CLEAN = [
    "First, I look at the whole clip.",
    "The person holds something.",
    "Between the frames, motion is visible.",
    "A blue ball is absent.",
    "Bright lights appear.",
]


@pytest.mark.parametrize("level,n", [(0, 0), (1, 2), (2, 3), (3, 4)])  # ceil(5 · level / 4)
def test_hint_choice_levels_and_no_leak(level, n):
    hint = make_hint(CHOICE_TRACE, level, 3, "B", OPTIONS)
    assert hint == " ".join(CLEAN[:n])
    assert "<answer" not in hint.lower()
    assert re.search(r"(?<![A-Za-z0-9])B(?![A-Za-z0-9])", hint) is None
    assert "red cup" not in hint.lower()


def test_hint_option_text_from_answer_and_bracket_forms():
    trace = "<think>I see a red cup. Clearly [B] here. Look closer. The answer: ( b ). Calm scene.</think>"
    assert make_hint(trace, 3, 3, "B. a red cup", None) == "Look closer. Calm scene."
    # level bound: at least one sentence at level 1 when one survives
    assert make_hint(trace, 1, 3, "B. a red cup", None) == "Look closer."


def test_hint_grounding_numbers():
    trace = (
        "<think>The event starts around 12.5 seconds. It ends at 30.0 s. The lights turn on at 5 s. "
        "A person walks in. The clip spans 12.5 to 30.</think><answer>[12.5, 30]</answer>"
    )
    hint = make_hint(trace, 3, 3, "[12.5, 30]", None)
    assert hint == "The lights turn on at 5 s. A person walks in."
    assert "12.5" not in hint and "30" not in hint


def test_hint_free_text_and_numeric():
    trace = "<think>Count them. There are 3 dogs. Maybe 4 cats. The dog is Brown. Done.</think>"
    assert make_hint(trace, 3, 3, "3", None) == "Count them. Maybe 4 cats. The dog is Brown."
    assert make_hint(trace, 3, 3, "brown", None) == "Count them. There are 3 dogs. Maybe 4 cats."


def test_hint_unclosed_or_missing_think_and_all_leaking():
    assert make_hint("<think>Step one. Step two <answer>B</answer>", 3, 3, "B", None) == "Step one. Step two"
    assert make_hint("Plain text trace. Another line", 3, 3, "C", None) == "Plain text trace. Another line"
    assert make_hint("<think>It is B. B!</think>", 3, 3, "B", None) == ""
    assert make_hint("", 2, 3, "B", OPTIONS) == ""
    # stray tags inside the think part are stripped, never returned
    hint = make_hint("<think>Look <glue> here. Fine.</think>", 3, 3, "A", None)
    assert "<" not in hint and hint == "Look here. Fine."


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
