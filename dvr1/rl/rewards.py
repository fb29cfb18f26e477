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
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

__all__ = [
    "accuracy_reward",
    "format_reward",
    "has_decimal_mark",
    "parse_answer",
    "parse_choice",
    "parse_glue",
    "parse_number",
    "parse_segment",
    "mean_relative_accuracy",
    "rouge_mean_f",
    "score_response",
    "temporal_iou",
    "wer_reward",
]

# any <think>/<answer>/<glue> tag, opening or closing, with stray spaces (also used by the hint builder)
RESPONSE_TAG = re.compile(r"</?\s*(?:think|answer|glue)\s*>", re.IGNORECASE)
_FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_GLUE_TAGS = ("<glue>", "</glue>")
# Unsigned decimal number: negatives are rejected by construction, "nan"/"inf" never match.
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?: ?(?:seconds|second|secs|sec|s)\b)?"
# Matched against whitespace-collapsed text (every run of whitespace is one space), so each " ?" takes at most one
# character and the match is linear-time.
_SEGMENT = re.compile(
    rf"^([\[(])? ?({_NUM}){_UNIT} ?(?:,|-|–|—|to) ?({_NUM}){_UNIT} ?([\])])?{_UNIT}$", re.IGNORECASE
)
_BRACKETS = {"[": "]", "(": ")"}
# One "(s, e)" of a glue list and what follows it: "," (another pair) or the end. Matched pair by pair from a moving
# position (no repetition operator, so no backtracking across pairs).
_GLUE_PAIR = re.compile(rf" ?\( ?({_NUM}) ?, ?({_NUM}) ?\) ?(,|$)")
# Option letter: "B", "B.", "B)", "B:", "(B)", "[B]", "B. text", "(B) text", "B (text)", "B - text"; with a prefix
# ("Option B", "Answer: B", "The answer is (B)") the letter may also be followed by a space.
_CHOICE_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is\s*)?[:\-]?\s*", re.IGNORECASE
)
_CHOICE_BARE = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=$|[.):,;]| ?[(\[\-–—]| (?i:or|and)\b))")
_CHOICE_AFTER_PREFIX = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=$|[.):,;\s]))")
# A further option named after the first one: "(C)"/"[C]" or "option C" anywhere, or a letter in list position
# (right after the first, or after ",", ";", "/", "&", "or", "and") that ends there ("B, C, D", "B or C", "B. C.").
_OTHER_CHOICE = re.compile(
    r"[(\[] ?([A-Z]) ?[)\]]"
    r"|(?i:\b(?:option|choice)) ?([A-Z])(?![A-Za-z0-9])"
    r"|(?:^|[,;/&]|(?i:\b(?:or|and|vs)\b))[ .]?([A-Z])(?=$| ?[.):,;/&]|(?i: (?:or|and|vs)\b))"
)
_CHOICE_SEP = re.compile(r"^[ .):\-–—]*")
_DECIMAL = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)$")
# A number that overflows float64 (|x| > 1.8e308, i.e. more than 309 integer digits or close) is malformed; the digit
# bound rejects huge strings before converting them.
_MAX_INT_DIGITS = 309


def _is_str(text) -> bool:
    return isinstance(text, str)


def _blank(text: str) -> bool:
    return not text or text.isspace()


def format_reward(text: str, grounded: bool = False) -> float:
    """Format reward ∈ {0, 1} (ALGORITHMS §6).

    Args:
        text: the full decoded response (prompt excluded). Non-strings score 0.
        grounded: also require a trailing ``<glue>[(s, e), ...]</glue>`` block whose body is a non-empty list of
            pairs of unsigned decimal numbers (seconds), each finite with ``start <= end`` (``parse_glue``).
    Returns:
        1.0 iff the WHOLE response (surrounding whitespace allowed) is ``<think>…</think>\\s*<answer>…</answer>``
        (plus the glue block when ``grounded``), each tag occurs exactly once (no nested or repeated tags), and the
        answer is non-empty after stripping; else 0.0.

    Linear time: one scan for tag-like tokens (``</?\\s*(think|answer|glue)\\s*>``, any case); the response is
    well-formed iff those tokens are exactly the expected tags, in order and spelled exactly, with only whitespace
    between ``</think>`` and ``<answer>`` (and ``</answer>`` and ``<glue>``) and around the whole.
    """
    if not _is_str(text):
        return 0.0
    expected = _FORMAT_TAGS + (_GLUE_TAGS if grounded else ())
    tags = []
    for m in RESPONSE_TAG.finditer(text):
        if len(tags) == len(expected) or m.group(0) != expected[len(tags)]:
            return 0.0
        tags.append(m)
    if len(tags) != len(expected):
        return 0.0
    gaps = [(0, tags[0].start()), (tags[1].end(), tags[2].start()), (tags[-1].end(), len(text))]
    if grounded:
        gaps.append((tags[3].end(), tags[4].start()))
    if not all(_blank(text[i:j]) for i, j in gaps):
        return 0.0
    if _blank(text[tags[2].end() : tags[3].start()]):
        return 0.0
    if grounded and _parse_glue_body(text[tags[4].end() : tags[5].start()]) is None:
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
        text: the answer content (e.g. ``"B"``, ``"B."``, ``"(B)"``, ``"B. a red cup"``, ``"B (a red cup)"``,
            ``"B - a red cup"``, ``"Option B"``, ``"The answer is (B)"``). If it contains an ``<answer>`` block, the
            last block's content is used.
    Letters are upper case only: ``"a cat"`` is free text, not option A; a bare letter must be followed by the end,
    ``.``, ``)``, ``:``, ``,``, ``;``, a ``(``/``[``/dash, or ``or``/``and`` (so ``"A cat"`` is not option A either).
    An answer naming MORE than one option (ALGORITHMS §10: ``"B or C"``, ``"B, C, D"``, ``"Option B or option C"``,
    ``"(B) (C)"``, ``"B. C."``) is ``None``: a hedge is wrong. A further option counts when it is ``(X)``/``[X]`` or
    ``option X`` anywhere, or a letter standing alone in list position (after the first letter, ``,``, ``;``, ``/``,
    ``&``, ``or``, ``and``, ``vs``); naming the same letter twice is one option.
    """
    if not _is_str(text):
        return None
    if "<answer>" in text:
        text = parse_answer(text)
        if text is None:
            return None
    text = " ".join(text.split())
    prefix = _CHOICE_PREFIX.match(text)
    if prefix:
        rest = text[prefix.end() :]
        m = _CHOICE_AFTER_PREFIX.match(rest)
    else:
        rest = text
        m = _CHOICE_BARE.match(rest)
    if m is None:
        return None
    letter = next(g for g in m.groups() if g is not None)
    tail = rest[m.end() :]
    tail = tail[_CHOICE_SEP.match(tail).end() :]
    for other in _OTHER_CHOICE.finditer(tail):
        if next(g for g in other.groups() if g is not None) != letter:
            return None
    return letter


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _span(start: str, end: str) -> tuple[float, float] | None:
    """``(start, end)`` floats of two unsigned decimal strings, or ``None`` when non-finite (overflow) or reversed."""
    s, e = float(start), float(end)
    if not _finite(s, e) or s > e:
        return None
    return (s, e)


def parse_segment(text: str) -> tuple[float, float] | None:
    """One time segment ``(start, end)`` in seconds, or ``None``.

    Accepts ``"[1.5, 3]"``, ``"(1.5,3.0)"``, ``"1.5-3.0"``, ``"1.5 to 3.0"``, ``"1.5s - 3s"``, ``"[2, 5] seconds"``
    (optional unit ``s``/``sec``/``secs``/``second``/``seconds`` after each number or after the closing bracket;
    any whitespace). Brackets must be a matched ``[…]`` or ``(…)`` pair or absent (``"[2,5"`` → ``None``). Rejects
    negatives, NaN/inf (also numbers that overflow to inf, e.g. 400 digits), and REVERSED segments (``start > end``
    → ``None``: a reversed segment is a malformed prediction, not swapped silently). A zero-length segment
    (``start == end``) is accepted; its IoU with a positive-length segment is 0.
    """
    if not _is_str(text):
        return None
    m = _SEGMENT.match(" ".join(text.split()))
    if m is None:
        return None
    open_, close = m.group(1), m.group(4)
    if (open_ is None) != (close is None) or (open_ is not None and _BRACKETS[open_] != close):
        return None
    return _span(m.group(2), m.group(3))


def _parse_glue_body(body: str) -> list[tuple[float, float]] | None:
    """``[(s, e), ...]`` (non-empty, any whitespace) → segments, or ``None`` (malformed, negative, non-finite,
    reversed). Linear time."""
    body = " ".join(body.split())
    if not (body.startswith("[") and body.endswith("]")):
        return None
    inner, pos, out = body[1:-1], 0, []
    while True:
        m = _GLUE_PAIR.match(inner, pos)
        if m is None:
            return None
        span = _span(m.group(1), m.group(2))
        if span is None:
            return None
        out.append(span)
        if not m.group(3):
            return out
        pos = m.end()


def parse_glue(text: str) -> list[tuple[float, float]] | None:
    """Segments of the LAST ``<glue>[(s, e), ...]</glue>`` block (seconds), or ``None`` when absent or malformed
    (any pair negative, non-finite — including numbers that overflow float64 — or reversed makes the whole block
    ``None``)."""
    body = _last_block(text, "glue")
    return None if body is None else _parse_glue_body(body)


def _parse_decimal(text: str) -> Decimal | None:
    """The exact ``Decimal`` of a number string (see ``parse_number``), or ``None``."""
    if not _is_str(text):
        return None
    s = text.strip()
    if s.endswith(".") and len(s) > 1 and not s.endswith(".."):
        s = s[:-1]
    if not _DECIMAL.match(s):
        return None
    value = Decimal(s.replace(",", ""))
    if value.adjusted() >= _MAX_INT_DIGITS or not math.isfinite(float(value)):  # overflows float64
        return None
    return value


def parse_number(text: str) -> float | None:
    """A single decimal number, or ``None``.

    Accepted: an optional sign, digits with an optional fraction (``"2.675"``, ``".5"``, ``"3."``), thousands
    commas only in groups of three (``"1,024"``; ``"1,0,2,4"`` and ``"10,24"`` are ``None``), and one trailing
    period (``"1,024."``). No exponents; values that overflow float64 are ``None``.
    """
    value = _parse_decimal(text)
    return None if value is None else float(value)


def _round_half_up(value: Decimal, ndigits: int) -> Decimal:
    """``value`` rounded to ``ndigits`` decimals, ties away from zero, exactly (no binary rounding)."""
    with localcontext() as ctx:
        ctx.prec = _MAX_INT_DIGITS + abs(ndigits) + 2
        return value.quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP)


def _normalise_text(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def has_decimal_mark(text: str) -> bool:
    """Whether a number string holds ``"."`` or ``","`` (the decimal-point condition of Video-R1's ``numerical``
    reward: tulerfeng/Video-R1 ``src/r1-v/src/open_r1/grpo.py`` ``accuracy_reward``, which counts a comma too)."""
    return "." in text or "," in text


def wer_reward(pred: str, ref: str) -> float:
    """OCR reward ``clip(1 − WER(ref, pred), 0, 1)`` ∈ [0, 1] (docs/ALGORITHMS.md §10.1), WER by ``jiwer.wer``
    (words split at whitespace, case and punctuation kept, as Video-R1's ``wer``). An empty/blank ``pred`` scores 0.

    Raises:
        ValueError: a blank ``ref`` (the ground truth has no word; WER is undefined).
    """
    import jiwer

    if _blank(ref):
        raise ValueError(f"wer_reward: the reference text is empty ({ref!r})")
    if _blank(pred):
        return 0.0
    return min(max(1.0 - float(jiwer.wer(ref, pred)), 0.0), 1.0)


_ROUGE_SCORER = None


def rouge_mean_f(pred: str, ref: str) -> float:
    """Free-form reward: the mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures ∈ [0, 1] of ``pred`` against
    ``ref`` (docs/ALGORITHMS.md §10.1), by the ``rouge-score`` library with its stemmer on (as Video-R1's
    ``compute_rouge_score``); 0.0 when either side has no token."""
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    s = _ROUGE_SCORER.score(ref, pred)
    return min(max((s["rouge1"].fmeasure + s["rouge2"].fmeasure + s["rougeL"].fmeasure) / 3.0, 0.0), 1.0)


MRA_THRESHOLDS = tuple(Fraction(50 + 5 * k, 100) for k in range(10))
"""θ ∈ {0.50, 0.55, …, 0.95} of the mean relative accuracy (docs/ALGORITHMS.md §10.1), exact."""


def mean_relative_accuracy(pred: str, answer: str) -> float:
    """MRA ``(1/10) Σ_θ 1[|pred − gt| / |gt| < 1 − θ]`` ∈ {0, 0.1, …, 1} (docs/ALGORITHMS.md §10.1; Video-R1's
    ``src/eval_bench.py`` ``mean_relative_accuracy``), in exact arithmetic (numbers parsed as decimals, thresholds
    as fractions, so ``rel = 0.05`` is not below ``1 − 0.95``). ``pred`` is the graded answer text (parsed with
    ``parse_number``'s rules; unparseable → 0.0).

    Raises:
        ValueError: ``answer`` is not a non-zero finite number.
    """
    key = _parse_decimal(answer)
    if key is None or key == 0:
        raise ValueError(f"mean_relative_accuracy: answer {answer!r} is not a non-zero finite number")
    value = _parse_decimal(pred) if _is_str(pred) else None
    if value is None:
        return 0.0
    rel = Fraction(abs(value - key)) / Fraction(abs(key))
    return sum(1 for t in MRA_THRESHOLDS if rel < 1 - t) / len(MRA_THRESHOLDS)


ACCURACY_KINDS = ("choice", "numeric", "text", "wer", "rouge")


def accuracy_reward(text: str, answer: str, kind: str = "choice", ndigits: int = 2) -> float:
    """Accuracy reward (docs/ALGORITHMS.md §6, §10.1) of a full response against the ground-truth ``answer``.

    Args:
        text: full response; its last ``<answer>`` content is graded (missing → 0.0).
        answer: the ground-truth key: an option letter (``"B"``, ``"(B)"``, ``"B. text"``) for ``"choice"``, a
            number for ``"numeric"``, a string for ``"text"``/``"wer"``/``"rouge"``.
        kind: ``"choice"`` (letters equal; an answer naming several options is wrong); ``"numeric"`` (Video-R1's
            ``numerical`` rule: both or neither of the two number strings hold a decimal mark ``.``/``,``
            (:func:`has_decimal_mark`), and they are equal after rounding both to ``ndigits`` decimals; parsed as
            exact decimals and rounded half up, so ``"2.675"`` rounds to ``2.68`` — binary floats would give
            2.67); ``"text"`` (equal after lower-casing and removing punctuation/extra spaces); ``"wer"`` (OCR:
            ``clip(1 − WER, 0, 1)``, :func:`wer_reward`); ``"rouge"`` (free-form: mean ROUGE-1/2/L F,
            :func:`rouge_mean_f`).
    Returns: 1.0 / 0.0, or the partial credit ∈ [0, 1] of ``"wer"`` / ``"rouge"``.
    Raises:
        ValueError: unknown ``kind``, or an ``answer`` key that does not parse for its kind (an empty text for
            ``"wer"``).
    """
    if kind not in ACCURACY_KINDS:
        raise ValueError(f"accuracy_reward: kind must be one of {', '.join(map(repr, ACCURACY_KINDS))}, got {kind!r}")
    if not _is_str(answer):
        raise ValueError(f"accuracy_reward: answer must be a string, got {type(answer).__name__}")
    pred = parse_answer(text)
    if kind == "choice":
        key = parse_choice(answer)
        if key is None:
            raise ValueError(f"accuracy_reward: answer {answer!r} is not an option letter A-Z")
        return 1.0 if pred is not None and parse_choice(pred) == key else 0.0
    if kind == "numeric":
        key = _parse_decimal(answer)
        if key is None:
            raise ValueError(f"accuracy_reward: answer {answer!r} is not a finite number")
        value = _parse_decimal(pred) if pred is not None else None
        if value is None or has_decimal_mark(pred) != has_decimal_mark(answer.strip()):
            return 0.0
        return 1.0 if _round_half_up(value, ndigits) == _round_half_up(key, ndigits) else 0.0
    if kind == "wer":
        if _blank(answer):
            raise ValueError(f"accuracy_reward: answer {answer!r} is empty (OCR needs the reference text)")
        return 0.0 if pred is None else wer_reward(pred, answer)
    if pred is None:
        return 0.0
    if kind == "text":
        return 1.0 if _normalise_text(pred) == _normalise_text(answer) else 0.0
    return rouge_mean_f(pred, answer)


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


_PROBLEM_TYPE_TASKS = {"multiple_choice": "choice", "numerical": "numeric", "ocr": "wer", "free_form": "rouge"}


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
        ``"numeric"`` / ``"text"`` / ``"wer"`` / ``"rouge"``: accuracy of that kind (``accuracy_reward``), iou = 0.
        ``"regression"``: ``accuracy = 1 − clip(|pred − gt| / |gt|, 0, 1)`` (ALGORITHMS §10.1), iou = 0.
        The record problem types (``dvr1.data.schema.PROBLEM_TYPES``) map onto these: ``multiple_choice`` ->
            choice, ``numerical`` -> ``"numeric"`` (Video-R1's rule), ``ocr`` -> ``"wer"`` (``1 − WER``),
            ``free_form`` -> ``"rouge"`` (mean ROUGE-1/2/L F), ``regression``, ``grounding``, ``grounded_qa`` as
            above (docs/ALGORITHMS.md §10.1).
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
        acc = accuracy_reward(text, answer, task if task in ACCURACY_KINDS else "choice")
        iou = 0.0
        total = wf * fmt + wa * acc
    return {"format": float(fmt), "accuracy": float(acc), "iou": float(iou), "total": float(total)}


def overlong_penalty(length: int, l_max: int, l_cache: int) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476 Eq. 13; docs/ALGORITHMS.md §9), added to the total reward
    when ``reward.overlong`` is on:

        0                              if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max   (from 0 down to -1)
        -1                             if |y| > L_max

    Args:
        length: |y|, the response's length in tokens as the rollout engine returned them (the stop token counted
            when one was generated, as verl's response mask counts it).
        l_max: the length budget L_max in tokens (>= 1); l_cache: the punishment window L_cache, 1 <= l_cache <= l_max.
    Returns: the penalty, a float in [-1, 0].
    Raises: ValueError for a negative length or a window outside [1, l_max].
    """
    if length < 0:
        raise ValueError(f"overlong_penalty: length={length} must be >= 0")
    if not 1 <= l_cache <= l_max:
        raise ValueError(f"overlong_penalty: need 1 <= l_cache ({l_cache}) <= l_max ({l_max})")
    expected = l_max - l_cache
    if length <= expected:
        return 0.0
    if length <= l_max:
        return (expected - length) / l_cache
    return -1.0
