"""Rule-based rewards for verifiable video QA and temporal grounding (ALGORITHMS §6, DVR1 App. B).

All functions are pure functions of strings. A malformed *response* never raises: it scores 0 (or parses to
``None``). A malformed *ground truth* (answer key, segment) is a data error and raises ``ValueError`` naming the field.

Response format (ALGORITHMS §6)::

    <think> reasoning </think> <answer> answer </answer>                                    (plain)
    <think> reasoning </think> <answer> answer </answer> <glue>[(s, e), ...]</glue>         (grounded QA)

The ``<glue>`` block of the grounded variant follows the answer (the NExT-GQA convention used by the project's
prompts; the order is fixed because the format reward checks the whole string).
"""

from __future__ import annotations

import math
import re

__all__ = [
    "accuracy_reward",
    "format_reward",
    "parse_answer",
    "parse_choice",
    "parse_glue",
    "parse_number",
    "parse_segment",
    "rouge_l_f1",
    "score_response",
    "temporal_iou",
]

_TAGS = re.compile(r"</?\s*(?:think|answer|glue)\s*>", re.IGNORECASE)
# Unsigned decimal number: negatives are rejected by construction, "nan"/"inf" never match.
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:\s*(?:s|sec|secs|second|seconds))?"
_SEGMENT = re.compile(
    rf"^\s*[\[(]?\s*({_NUM}){_UNIT}\s*(?:,|-|–|—|to)\s*({_NUM}){_UNIT}\s*[\])]?\s*$", re.IGNORECASE
)
_PAIR = rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"
_GLUE_BODY = re.compile(rf"^\s*\[\s*{_PAIR}(?:\s*,\s*{_PAIR})*\s*\]\s*$")
_PAIR_CAPTURE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_FORMAT_PLAIN = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_FORMAT_GROUNDED = re.compile(
    r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*<glue>(.*?)</glue>\s*$", re.DOTALL
)
# Option letter: "B", "B.", "B)", "B:", "(B)", "[B]", "B. text", "(B) text"; with a prefix ("Option B", "Answer: B",
# "The answer is (B)") the letter may also be followed by a space.
_CHOICE_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is\s*)?[:\-]?\s*", re.IGNORECASE
)
_CHOICE_BARE = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=$|[.):,]))")
_CHOICE_AFTER_PREFIX = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=$|[.):,\s]))")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


def _is_str(text) -> bool:
    return isinstance(text, str)


def format_reward(text: str, grounded: bool = False) -> float:
    """Format reward ∈ {0, 1} (ALGORITHMS §6).

    Args:
        text: the full decoded response (prompt excluded). Non-strings score 0.
        grounded: also require a trailing ``<glue>[(s, e), ...]</glue>`` block whose body is a non-empty list of
            pairs of unsigned decimal numbers (seconds).
    Returns:
        1.0 iff the WHOLE response (surrounding whitespace allowed) is ``<think>…</think>\\s*<answer>…</answer>``
        (plus the glue block when ``grounded``), each tag occurs exactly once (no nested or repeated tags), and the
        answer is non-empty after stripping; else 0.0.
    """
    if not _is_str(text):
        return 0.0
    m = (_FORMAT_GROUNDED if grounded else _FORMAT_PLAIN).match(text)
    if m is None:
        return 0.0
    if any(_TAGS.search(part) for part in m.groups()):  # nested or repeated tags
        return 0.0
    if not m.group(2).strip():
        return 0.0
    if grounded and not _GLUE_BODY.match(m.group(3)):
        return 0.0
    return 1.0


def _last_block(text, tag: str) -> str | None:
    if not _is_str(text):
        return None
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, close)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : close].strip()


def parse_answer(text: str) -> str | None:
    """Content of the LAST ``<answer>…</answer>`` block, stripped; ``None`` when there is none (or ``text`` is not a
    string). With nested tags (``<answer><answer>B</answer>``) the innermost block before the last close tag wins."""
    return _last_block(text, "answer")


def parse_choice(text: str) -> str | None:
    """Option letter ``"A"``–``"Z"`` of a multiple-choice answer, or ``None``.

    Args:
        text: the answer content (e.g. ``"B"``, ``"B."``, ``"(B)"``, ``"B. a red cup"``, ``"Option B"``,
            ``"The answer is (B)"``). If it contains an ``<answer>`` block, the last block's content is used.
    Letters are upper case only: ``"a cat"`` is free text, not option A; a bare letter must be followed by the end,
    ``.``, ``)``, ``:`` or ``,`` (so ``"A cat"`` is not option A either).
    """
    if not _is_str(text):
        return None
    if "<answer>" in text:
        text = parse_answer(text)
        if text is None:
            return None
    text = text.strip()
    prefix = _CHOICE_PREFIX.match(text)
    if prefix:
        m = _CHOICE_AFTER_PREFIX.match(text[prefix.end() :])
    else:
        m = _CHOICE_BARE.match(text)
    if m is None:
        return None
    return next(g for g in m.groups() if g is not None)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def parse_segment(text: str) -> tuple[float, float] | None:
    """One time segment ``(start, end)`` in seconds, or ``None``.

    Accepts ``"[1.5, 3]"``, ``"(1.5,3.0)"``, ``"1.5-3.0"``, ``"1.5 to 3.0"``, ``"1.5s - 3s"`` (optional unit
    ``s``/``sec``/``seconds``). Rejects negatives, NaN/inf (also numbers that overflow to inf), and REVERSED segments
    (``start > end`` → ``None``: a reversed segment is a malformed prediction, not swapped silently). A zero-length
    segment (``start == end``) is accepted; its IoU with a positive-length segment is 0.
    """
    if not _is_str(text):
        return None
    m = _SEGMENT.match(text)
    if m is None:
        return None
    start, end = float(m.group(1)), float(m.group(2))
    if not _finite(start, end) or start > end:
        return None
    return (start, end)


def parse_glue(text: str) -> list[tuple[float, float]] | None:
    """Segments of the LAST ``<glue>[(s, e), ...]</glue>`` block (seconds), or ``None`` when absent or malformed
    (any pair negative, non-finite or reversed makes the whole block ``None``)."""
    body = _last_block(text, "glue")
    if body is None or not _GLUE_BODY.match(body):
        return None
    out = []
    for s, e in _PAIR_CAPTURE.findall(body):
        start, end = float(s), float(e)
        if not _finite(start, end) or start > end:
            return None
        out.append((start, end))
    return out


def parse_number(text: str) -> float | None:
    """A single decimal number (thousands commas and one trailing period allowed, e.g. ``"1,024."``), or ``None``;
    non-finite values are ``None``."""
    if not _is_str(text):
        return None
    s = text.strip().replace(",", "")
    if s.endswith(".") and len(s) > 1:
        s = s[:-1]
    if not _NUMBER.match(s):
        return None
    value = float(s)
    return value if math.isfinite(value) else None


def _normalise_text(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def rouge_l_f1(pred: str, ref: str) -> float:
    """ROUGE-L F1 ∈ [0, 1] over lower-cased word tokens (punctuation removed) via the longest common subsequence;
    0.0 when either side is empty. The "optional ROUGE-based partial credit" of ALGORITHMS §6."""
    a, b = _normalise_text(pred), _normalise_text(ref)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def accuracy_reward(text: str, answer: str, kind: str = "choice", ndigits: int = 2) -> float:
    """Accuracy reward (ALGORITHMS §6) of a full response against the ground-truth ``answer``.

    Args:
        text: full response; its last ``<answer>`` content is graded (missing → 0.0).
        answer: the ground-truth key: an option letter (``"B"``, ``"(B)"``, ``"B. text"``) for ``"choice"``, a
            number for ``"numeric"``, a string for ``"text"``/``"rouge"``.
        kind: ``"choice"`` (letters equal), ``"numeric"`` (``round(pred, ndigits) == round(gt, ndigits)``, the
            Video-R1 rule), ``"text"`` (equal after lower-casing and removing punctuation/extra spaces), or
            ``"rouge"`` (ROUGE-L F1 partial credit ∈ [0, 1]).
    Returns: 1.0 / 0.0 (or the ROUGE-L F1 for ``"rouge"``).
    Raises:
        ValueError: unknown ``kind``, or an ``answer`` key that does not parse for its kind.
    """
    if kind not in ("choice", "numeric", "text", "rouge"):
        raise ValueError(f"accuracy_reward: kind must be 'choice', 'numeric', 'text' or 'rouge', got {kind!r}")
    if not _is_str(answer):
        raise ValueError(f"accuracy_reward: answer must be a string, got {type(answer).__name__}")
    pred = parse_answer(text)
    if kind == "choice":
        key = parse_choice(answer)
        if key is None:
            raise ValueError(f"accuracy_reward: answer {answer!r} is not an option letter A-Z")
        return 1.0 if pred is not None and parse_choice(pred) == key else 0.0
    if kind == "numeric":
        key = parse_number(answer)
        if key is None:
            raise ValueError(f"accuracy_reward: answer {answer!r} is not a finite number")
        value = parse_number(pred) if pred is not None else None
        return 1.0 if value is not None and round(value, ndigits) == round(key, ndigits) else 0.0
    if pred is None:
        return 0.0
    if kind == "text":
        return 1.0 if _normalise_text(pred) == _normalise_text(answer) else 0.0
    return rouge_l_f1(pred, answer)


def _merge(intervals) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _check_intervals(name: str, intervals) -> list[tuple[float, float]]:
    out = []
    for k, iv in enumerate(intervals):
        try:
            s, e = (float(v) for v in iv)
        except (TypeError, ValueError):
            raise ValueError(f"temporal_iou: {name}[{k}] must be a (start, end) pair of numbers, got {iv!r}") from None
        if not _finite(s, e) or s < 0 or s > e:
            raise ValueError(f"temporal_iou: {name}[{k}] must satisfy 0 <= start <= end (finite), got {iv!r}")
        out.append((s, e))
    return out


def temporal_iou(pred, gt) -> float:
    """Temporal IoU ``|P ∩ Q| / |P ∪ Q|`` ∈ [0, 1] (ALGORITHMS §6).

    Args:
        pred, gt: lists of ``(start, end)`` segments in seconds. Overlapping segments within each list are merged
            first, so each set's measure is its union's length.
    Returns: the IoU; 0.0 when the union has zero length (e.g. both empty).
    Raises:
        ValueError: a segment that is not a finite pair with ``0 <= start <= end`` (names the list and index).
    """
    p = _merge(_check_intervals("pred", pred))
    q = _merge(_check_intervals("gt", gt))
    inter = 0.0
    for ps, pe in p:
        for qs, qe in q:
            inter += max(0.0, min(pe, qe) - max(ps, qs))
    union = sum(e - s for s, e in p) + sum(e - s for s, e in q) - inter
    return inter / union if union > 0 else 0.0


_PROBLEM_TYPE_TASKS = {"multiple_choice": "choice", "numerical": "numeric", "ocr": "text", "free_form": "rouge"}


def score_response(
    text: str,
    task: str,
    answer: str,
    segment: list[float] | None = None,
    weights=None,
) -> dict[str, float]:
    """Score one response (ALGORITHMS §6). Never raises on a malformed response.

    Tasks:
        ``"grounding"`` (temporal grounding): the ``<answer>`` holds one segment (``parse_segment``);
            ``iou = temporal_iou([pred], [segment])``; ``accuracy = 1.0 if iou >= 0.5 else 0.0`` is REPORTED but NOT
            added to the total (the IoU already rewards it): ``total = w_f·format + w_i·iou``.
        ``"grounded_qa"`` (NExT-GQA style): grounded format (``<glue>`` required), choice accuracy, and
            ``iou = temporal_iou(glue segments, [segment])`` when ``segment`` is given (else 0):
            ``total = w_f·format + w_a·accuracy + w_i·iou``.
        ``"numeric"`` / ``"text"``: accuracy of that kind (``accuracy_reward``), iou = 0.
        ``"regression"``: ``accuracy = 1 − clip(|pred − gt| / |gt|, 0, 1)`` (ALGORITHMS §10.1), iou = 0.
        The record problem types (``dvr1.data.schema.PROBLEM_TYPES``) map onto these: ``multiple_choice`` ->
            choice, ``numerical`` -> ``"numeric"``, ``ocr`` -> ``"text"``, ``free_form`` -> ``"rouge"`` (ROUGE-L F1
            partial credit; §10.1's WER and ROUGE-1/2/L mean come with issue 15), ``regression``, ``grounding``,
            ``grounded_qa`` as above.
        any other task (multiple-choice QA): choice accuracy, iou = 0: ``total = w_f·format + w_a·accuracy``.
    Args:
        text: full response; answer: ground-truth key (ignored for grounding); segment: ground-truth
            ``[start, end]`` in seconds, or a list of such segments (required for ``"grounding"``).
        weights: ``w_f``, ``w_a``, ``w_i`` as the run config's ``reward`` section (``dvr1.config.RewardConfig``:
            attributes ``format``, ``accuracy``, ``iou``); None = all 1.
    Returns: ``{"format", "accuracy", "iou", "total"}`` floats. Format and accuracy are scored independently.
    Raises:
        ValueError: bad ground truth (missing/invalid ``segment`` for grounding, answer key that does not parse).
    """
    wf, wa, wi = (1.0, 1.0, 1.0) if weights is None else (weights.format, weights.accuracy, weights.iou)
    gt_segments = None
    task = _PROBLEM_TYPE_TASKS.get(task, task)
    if segment is not None:
        several = len(segment) > 0 and all(isinstance(x, (list, tuple)) for x in segment)
        if not several and len(segment) != 2:
            raise ValueError(f"score_response: segment must be [start, end] in seconds, got {segment!r}")
        gt_segments = _check_intervals("segment", [tuple(x) for x in segment] if several else [tuple(segment)])
    if task == "grounding":
        if gt_segments is None:
            raise ValueError("score_response: task 'grounding' needs segment=[start, end] (seconds), got None")
        fmt = format_reward(text)
        pred = parse_segment(parse_answer(text))
        iou = temporal_iou([pred], gt_segments) if pred is not None else 0.0
        acc = 1.0 if iou >= 0.5 else 0.0
        total = wf * fmt + wi * iou
    elif task == "grounded_qa":
        fmt = format_reward(text, grounded=True)
        acc = accuracy_reward(text, answer, "choice")
        pred_segments = parse_glue(text)
        iou = temporal_iou(pred_segments, gt_segments) if pred_segments and gt_segments else 0.0
        total = wf * fmt + wa * acc + wi * iou
    elif task == "regression":
        fmt = format_reward(text)
        key = parse_number(answer)
        if key is None or key == 0:
            raise ValueError(f"score_response: regression answer {answer!r} is not a non-zero finite number")
        pred = parse_answer(text)
        value = parse_number(pred) if pred is not None else None
        acc = 0.0 if value is None else 1.0 - min(max(abs(value - key) / abs(key), 0.0), 1.0)
        iou = 0.0
        total = wf * fmt + wa * acc
    else:
        fmt = format_reward(text)
        acc = accuracy_reward(text, answer, task if task in ("numeric", "text", "rouge") else "choice")
        iou = 0.0
        total = wf * fmt + wa * acc
    return {"format": float(fmt), "accuracy": float(acc), "iou": float(iou), "total": float(total)}
