"""Chain-of-Tasks (CoTasks, VidChain; ALGORITHMS §7): dense video captioning as a multi-turn conversation.

Chains (each turn is one user question and one assistant answer; the video is in the first user turn):

- ``"count_seg_cap"``: (1) how many events -> ``"3"``; (2) their time segments -> ``"00-25, 30-55, 60-99"``;
  (3) one caption per segment -> ``"1. a red disc moves left\\n2. ..."``.
- ``"cap_seg"``: (1) the captions, in order -> numbered lines; (2) the segment of each caption -> ``"00-25, ..."``.
- ``"ground"`` (temporal grounding, Charades-STA style; one event): (1) given the caption, its segment -> ``"30-55"``.

Timestamps are integers 00-99, percent of the video's duration (ALGORITHMS §7): :func:`to_percent`
``p = clip(round(100 t / d), 0, 99)`` and :func:`from_percent` ``t = p d / 100`` (seconds).

The prompt for turn k is the Qwen2.5-VL chat string of :func:`dvr1.models.tokenizer.chat_prompt` for the first user
turn, followed by the earlier turns (assistant answer, ``<|im_end|>``, next user turn) and the assistant header:
:func:`multiturn_prompt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dvr1.models.tokenizer import chat_prompt

CHAINS = ("count_seg_cap", "cap_seg", "ground")
STEP_KINDS = ("count", "segments", "captions")

Q_COUNT = "How many events happen in this video? Answer with a number."
Q_SEGMENTS = ("Give the start and end of each event as integers from 00 to 99, percent of the video's duration, "
              "in the form 00-25, 30-55.")
Q_CAPTIONS_GIVEN_SEGMENTS = "Describe the event in each of these segments, one numbered line per segment."
Q_CAPTIONS = "Describe the events of this video in the order they happen, one numbered line per event."
Q_SEGMENTS_GIVEN_CAPTIONS = ("Give the start and end of each described event as integers from 00 to 99, percent of "
                             "the video's duration, in the form 00-25, 30-55.")
Q_GROUND = ("When does this happen: \"{caption}\"? Give the start and end as integers from 00 to 99, percent of the "
            "video's duration, in the form 00-25.")

_SEG_RE = re.compile(r"^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$")
_LINE_RE = re.compile(r"^\s*(\d+)\.\s*(.*\S)\s*$")


class CoTasksError(ValueError):
    """An input the chains cannot represent (e.g. a non-positive duration, an unknown chain)."""


# ---- timestamps -----------------------------------------------------------------------------------------------

def to_percent(t: float, duration: float) -> int:
    """Seconds -> integer percent of ``duration``: ``clip(round(100 t / duration), 0, 99)`` (ALGORITHMS §7).

    Raises: CoTasksError if ``duration <= 0``.
    """
    if not duration > 0:
        raise CoTasksError(f"duration must be > 0 seconds, got {duration!r}")
    return int(min(99, max(0, round(100.0 * float(t) / float(duration)))))


def from_percent(p: int, duration: float) -> float:
    """Integer percent (0-99) -> seconds: ``p * duration / 100``. Raises CoTasksError for p outside 0..99."""
    if not 0 <= int(p) <= 99:
        raise CoTasksError(f"percent timestamp must be in 0..99, got {p!r}")
    return int(p) * float(duration) / 100.0


# ---- answer texts and parsers ---------------------------------------------------------------------------------

def format_count(n: int) -> str:
    return str(int(n))


def parse_count(text: str) -> int | None:
    """``"3"`` -> 3; None unless the answer is a single non-negative integer."""
    t = text.strip()
    return int(t) if t.isdigit() else None


def format_segments(segments_pct: list[tuple[int, int]]) -> str:
    """``[(0, 25), (30, 55)]`` -> ``"00-25, 30-55"`` (two digits each)."""
    return ", ".join(f"{s:02d}-{e:02d}" for s, e in segments_pct)


def parse_segments(text: str) -> list[tuple[int, int]] | None:
    """``"00-25, 30-55"`` -> ``[(0, 25), (30, 55)]``; None if any item is malformed or has start > end."""
    items = [x for x in text.strip().split(",")]
    out = []
    for item in items:
        m = _SEG_RE.match(item)
        if m is None:
            return None
        s, e = int(m.group(1)), int(m.group(2))
        if s > e:
            return None
        out.append((s, e))
    return out or None


def format_captions(captions: list[str]) -> str:
    """``["a", "b"]`` -> ``"1. a\\n2. b"``. Captions must be one line each (newlines become spaces)."""
    return "\n".join(f"{i + 1}. {' '.join(c.split())}" for i, c in enumerate(captions))


def parse_captions(text: str) -> list[str] | None:
    """Numbered lines ``"1. a\\n2. b"`` -> ``["a", "b"]``; None if a non-blank line is not ``"{k}. text"`` with
    k = 1, 2, ... in order."""
    out = []
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        m = _LINE_RE.match(line)
        if m is None or int(m.group(1)) != len(out) + 1:
            return None
        out.append(m.group(2))
    return out or None


# ---- chains ---------------------------------------------------------------------------------------------------

@dataclass
class Turn:
    """One chain step: ``kind`` in :data:`STEP_KINDS`, the user question and the ground-truth assistant answer."""

    kind: str
    user: str
    answer: str


def events_percent(events: list[tuple[float, float]], duration: float) -> list[tuple[int, int]]:
    """Event segments in seconds -> percent pairs (:func:`to_percent` on both ends)."""
    return [(to_percent(s, duration), to_percent(e, duration)) for s, e in events]


def chain_turns(chain: str, events: list[tuple[float, float]], captions: list[str], duration: float) -> list[Turn]:
    """The ground-truth turns of ``chain`` for a video (events in seconds, one caption per event, in time order).

    Raises: CoTasksError for an unknown chain, a caption/event count mismatch, or ``"ground"`` with != 1 event.
    """
    if chain not in CHAINS:
        raise CoTasksError(f"unknown chain {chain!r}; valid: {', '.join(CHAINS)}")
    if len(events) != len(captions) or not events:
        raise CoTasksError(f"need one caption per event and >= 1 event, got {len(events)} events, "
                           f"{len(captions)} captions")
    segs = format_segments(events_percent(events, duration))
    caps = format_captions(captions)
    if chain == "count_seg_cap":
        return [Turn("count", Q_COUNT, format_count(len(events))),
                Turn("segments", Q_SEGMENTS, segs),
                Turn("captions", Q_CAPTIONS_GIVEN_SEGMENTS, caps)]
    if chain == "cap_seg":
        return [Turn("captions", Q_CAPTIONS, caps), Turn("segments", Q_SEGMENTS_GIVEN_CAPTIONS, segs)]
    if len(events) != 1:
        raise CoTasksError(f"chain 'ground' takes exactly 1 event, got {len(events)}")
    return [Turn("segments", Q_GROUND.format(caption=" ".join(captions[0].split())), segs)]


def multiturn_prompt(turns: list[Turn], k: int, num_video_tokens: int) -> str:
    """The chat prompt for generating turn ``k`` (0-based), earlier turns fixed to their ``answer``.

    ``chat_prompt(turns[0].user, num_video_tokens)`` then, for j < k:
    ``{turns[j].answer}<|im_end|>\\n<|im_start|>user\\n{turns[j+1].user}<|im_end|>\\n<|im_start|>assistant\\n``
    (Qwen2.5-VL chat format, video in the first turn only).
    """
    if not 0 <= k < len(turns):
        raise CoTasksError(f"turn index {k} out of range for a chain of {len(turns)} turns")
    text = chat_prompt(turns[0].user, num_video_tokens)
    for j in range(k):
        text += (f"{turns[j].answer}<|im_end|>\n<|im_start|>user\n{turns[j + 1].user}<|im_end|>\n"
                 f"<|im_start|>assistant\n")
    return text


def chain_texts(chain: str, events, captions, duration) -> list[str]:
    """All user and assistant texts of a chain (tokenizer training corpus for the tiny checkpoint)."""
    turns = chain_turns(chain, events, captions, duration)
    return [t.user for t in turns] + [t.answer for t in turns]
