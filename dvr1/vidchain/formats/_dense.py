"""Helpers of the dense-captioning readers: event lists, their clipping and ordering, caption text."""

from __future__ import annotations

import math


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_pairs(v) -> bool:
    """``v`` is a non-empty list of ``[start, end]`` pairs of finite numbers."""
    return (isinstance(v, list) and bool(v)
            and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_num(x) for x in p) for p in v))


def clip_events(events, duration: float) -> tuple[list[list[float]], int]:
    """``[[s, min(e, duration)], ...]`` (floats) and how many ends were past ``duration``."""
    out, n = [], 0
    for s, e in events:
        s, e = float(s), float(e)
        if e > duration:
            e, n = duration, n + 1
        out.append([s, e])
    return out, n


def sort_events(events, captions):
    """Events sorted by (start, end), captions reordered with them."""
    order = sorted(range(len(events)), key=lambda i: (events[i][0], events[i][1]))
    return [list(events[i]) for i in order], [captions[i] for i in order]


def caption_text(c) -> str:
    """A caption with runs of whitespace collapsed to one space (non-strings as their ``str``)."""
    return " ".join(str(c).split())
