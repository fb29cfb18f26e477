"""CoTasks (ALGORITHMS §7): timestamp conversion both ways, chain prompt/parse round trips, exact prompt text."""

import pytest

from dvr1.models.tokenizer import chat_prompt
from dvr1.vidchain.cotasks import (CoTasksError, chain_turns, events_percent, from_percent, multiturn_prompt,
                                   parse_captions, parse_count, parse_segments, to_percent)

EVENTS = [(0.0, 1.25), (1.5, 3.0), (3.5, 5.0)]
CAPS = ["a red disc moves left", "a blue square moves up", "a green disc moves down"]


def test_timestamps_both_ways():
    assert to_percent(1.25, 5.0) == 25 and to_percent(1.5, 5.0) == 30 and to_percent(5.0, 5.0) == 99
    assert to_percent(-0.2, 5.0) == 0 and to_percent(0.024, 5.0) == 0 and to_percent(0.026, 5.0) == 1
    assert from_percent(25, 5.0) == 1.25 and from_percent(99, 5.0) == pytest.approx(4.95)
    for d in (4.0, 7.3, 125.0):
        for p in range(100):
            assert to_percent(from_percent(p, d), d) == p
        for k in range(200):  # seconds -> percent -> seconds is within half a percent of the duration
            t = k * d / 199 * 0.985
            assert abs(from_percent(to_percent(t, d), d) - t) <= d / 200 + 1e-9
    with pytest.raises(CoTasksError, match=r"^duration must be > 0 seconds, got 0$"):
        to_percent(1.0, 0)
    with pytest.raises(CoTasksError, match=r"^percent timestamp must be in 0..99, got 100$"):
        from_percent(100, 5.0)


def test_chain_round_trip():
    pct = events_percent(EVENTS, 5.0)
    assert pct == [(0, 25), (30, 60), (70, 99)]
    turns = chain_turns("count_seg_cap", EVENTS, CAPS, 5.0)
    assert [t.kind for t in turns] == ["count", "segments", "captions"]
    assert turns[1].answer == "00-25, 30-60, 70-99"
    assert turns[2].answer == "1. a red disc moves left\n2. a blue square moves up\n3. a green disc moves down"
    assert parse_count(turns[0].answer) == 3
    assert parse_segments(turns[1].answer) == pct
    assert parse_captions(turns[2].answer) == CAPS
    t2 = chain_turns("cap_seg", EVENTS, CAPS, 5.0)
    assert [t.kind for t in t2] == ["captions", "segments"]
    assert parse_captions(t2[0].answer) == CAPS and parse_segments(t2[1].answer) == pct
    g = chain_turns("ground", [(1.0, 2.0)], ["a person opens a door"], 8.0)
    assert g[0].answer == "12-25" and '"a person opens a door"' in g[0].user


def test_parsers_reject_malformed():
    assert parse_count("three") is None and parse_count(" 2 ") == 2
    assert parse_segments("00-25, 30") is None and parse_segments("40-30") is None and parse_segments("") is None
    assert parse_segments("5-7") == [(5, 7)]
    assert parse_captions("1. a\n3. b") is None and parse_captions("a red disc") is None
    with pytest.raises(CoTasksError, match=r"^unknown chain 'x'; valid: count_seg_cap, cap_seg, ground$"):
        chain_turns("x", EVENTS, CAPS, 5.0)
    with pytest.raises(CoTasksError, match=r"^need one caption per event and >= 1 event, got 3 events, 2 captions$"):
        chain_turns("cap_seg", EVENTS, CAPS[:2], 5.0)
    with pytest.raises(CoTasksError, match=r"^chain 'ground' takes exactly 1 event, got 3$"):
        chain_turns("ground", EVENTS, CAPS, 5.0)


def test_multiturn_prompt_text():
    turns = chain_turns("count_seg_cap", EVENTS, CAPS, 5.0)
    assert multiturn_prompt(turns, 0, 4) == chat_prompt(turns[0].user, 4)
    p2 = multiturn_prompt(turns, 2, 4)
    expect = (chat_prompt(turns[0].user, 4) + "3<|im_end|>\n<|im_start|>user\n" + turns[1].user
              + "<|im_end|>\n<|im_start|>assistant\n00-25, 30-60, 70-99<|im_end|>\n<|im_start|>user\n"
              + turns[2].user + "<|im_end|>\n<|im_start|>assistant\n")
    assert p2 == expect
    assert p2.count("<|video_pad|>") == 4
    with pytest.raises(CoTasksError, match=r"^turn index 3 out of range for a chain of 3 turns$"):
        multiturn_prompt(turns, 3, 4)
