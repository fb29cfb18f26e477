"""Prompt text for video QA: the ALGORITHMS §6 template, options, DA-Aug hints, SFT targets.

The user turn is ``QA_TEMPLATE.format(question=body)`` where ``body`` is the question, the lettered
options and/or the answer format of the record's problem type (:data:`ANSWER_FORMATS`), an optional ``Hint: ...``
line (DA-Aug difficulty decrease, ALGORITHMS §4) and, only to produce a successful trace for a hint,
``The correct answer is X.``

Imported records (``dvr1 data import``: the paper's training and benchmark sets) are asked as Video-R1 asks them
(``style="video_r1"``, :data:`VIDEO_R1_QUESTION_TEMPLATE` + :data:`VIDEO_R1_TYPE_TEMPLATE`, verbatim from
tulerfeng/Video-R1 ``src/r1-v/src/open_r1/grpo.py``); the synthetic set keeps the §6 template (``style="dvr1"``).
"""

from __future__ import annotations

import re

from dvr1.data.schema import LETTERS, VideoQARecord

QA_TEMPLATE = (
    "{question} Output the thinking process in <think> </think> and final answer in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> answer here </answer>."
)
"""ALGORITHMS §6 prompt template (SEED-Bench-R1 style), verbatim."""

GROUNDING_FORMAT = "Answer with the time span as [start, end] in seconds, with one decimal."
GLUE_FORMAT = ("After </answer>, give the time spans that support the answer as <glue>[(start, end), ...]</glue> "
               "in seconds.")

ANSWER_FORMATS = {
    "grounding": GROUNDING_FORMAT,
    "grounded_qa": GLUE_FORMAT,
    "numerical": "Answer with a number.",
    "regression": "Answer with a number.",
    "ocr": "Answer with the text exactly as it appears in the video.",
    "free_form": "Answer in a short sentence.",
}
"""The line after the question (and options) per problem type; multiple choice has none."""

VIDEO_R1_QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer between the "
    "<answer> </answer> tags."
)
"""Video-R1's ``QUESTION_TEMPLATE`` (tulerfeng/Video-R1 ``src/r1-v/src/open_r1/grpo.py``), verbatim, the missing
full stop after "expressions" included. (Its ``src/eval_bench.py`` says "between the <think> and </think> tags";
dvr1 uses the training wording for training and evaluation alike.)"""

VIDEO_R1_TYPE_TEMPLATE = {
    "multiple_choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> "
                       "</answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "ocr": " Please transcribe text from the image/video clearly and provide your text answer within the <answer> "
           "</answer> tags.",
    "free_form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    # not in Video-R1 (no temporal types there): the option letter, then dvr1's answer-format line
    "grounded_qa": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> "
                   "</answer> tags. " + GLUE_FORMAT,
    "grounding": " " + GROUNDING_FORMAT + " Provide it within the <answer> </answer> tags.",
}
"""Video-R1's ``TYPE_TEMPLATE`` per problem type (keys are its ``"multiple choice"``, ``"numerical"``, ``"OCR"``,
``"free-form"``, ``"regression"`` in dvr1's spelling), verbatim, plus dvr1's lines for the two temporal types."""

PROMPT_STYLES = ("dvr1", "video_r1")

SFT_SOURCES = ("reasoning", "meta", "answer_only")
"""Where an SFT target's reasoning comes from (:func:`sft_target`)."""

RESPONSE_PATTERN = r"^<think>.*?</think>\s*<answer>.*?</answer>$"
"""The format-reward pattern of ALGORITHMS §6 (use with ``re.DOTALL``)."""


def format_question(record: VideoQARecord, hint: str | None = None, reveal_answer: bool = False,
                    style: str = "dvr1") -> str:
    """The user prompt for ``record``.

    ``style="dvr1"`` (the synthetic set; lines joined by ``"\\n"``, then the template sentence after a space)::

        {question}
        A. {option 0}          (multiple choice, grounded QA)
        ...
        {answer format}        (ANSWER_FORMATS[problem_type]; none for multiple choice)
        Hint: {hint}           (if hint)
        The correct answer is {answer}.   (if reveal_answer)
        ... Output the thinking process in <think> </think> ...

    ``style="video_r1"`` (imported records; Video-R1's ``make_conversation_image_and_video``): with options,
    ``question + "Options:\\n" + "A. {option}\\n" ...`` (no separator before "Options:": Video-R1 concatenates them
    so); the hint and revealed-answer lines as above, each
    ending in ``"\\n"``; then ``VIDEO_R1_QUESTION_TEMPLATE.format(Question=...) + VIDEO_R1_TYPE_TEMPLATE[type]``.

    Args:
        record: the sample.
        hint: a partial reasoning trace (ALGORITHMS §4 difficulty decrease); ``None`` or empty for none.
        reveal_answer: add the ground truth; used only to sample a successful trace for hints (ALGORITHMS §4).
        style: one of :data:`PROMPT_STYLES`.

    Returns:
        The prompt text (no chat markup, no vision tokens).
    Raises:
        ValueError: an unknown ``style``.
    """
    if style == "video_r1":
        body = record.question
        if record.options is not None:
            body += "Options:\n" + "".join(f"{letter}. {opt}\n" for letter, opt in zip(LETTERS, record.options))
        if hint:
            body += f"Hint: {hint.strip()}\n"
        if reveal_answer:
            body += f"The correct answer is {record.answer}.\n"
        return VIDEO_R1_QUESTION_TEMPLATE.format(Question=body) + VIDEO_R1_TYPE_TEMPLATE[record.problem_type]
    if style != "dvr1":
        raise ValueError(f"format_question: style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    lines = [record.question.strip()]
    if record.options is not None:
        lines.extend(f"{letter}. {opt}" for letter, opt in zip(LETTERS, record.options))
    if record.problem_type in ANSWER_FORMATS:
        lines.append(ANSWER_FORMATS[record.problem_type])
    if hint:
        lines.append(f"Hint: {hint.strip()}")
    if reveal_answer:
        lines.append(f"The correct answer is {record.answer}.")
    return QA_TEMPLATE.format(question="\n".join(lines))


def _ordinal_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _reason_arrow(r: VideoQARecord) -> list[str]:
    rev = bool(r.meta["reversed"])
    s = ["I compare how things move from one frame to the next."]
    if rev:
        s.append("The motion runs against cause and effect: movements undo themselves and things travel backwards.")
    else:
        s.append("The motion follows cause and effect: movements unfold the way they would in real time.")
    s.append(f"So the clip is played {'in reverse' if rev else 'forward'}.")
    return s


def _reason_order(r: VideoQARecord) -> list[str]:
    orig = [int(x) for x in r.meta["original_order"]]
    n = len(orig)
    s = [f"The video shows {n} clips separated by black frames, all cut from the same scene."]
    links = [f"clip {a} leads into clip {b}" for a, b in zip(orig[:-1], orig[1:])]
    s.append(f"Following the motion across the cuts, {_ordinal_list(links)}.")
    s.append(f"So the original order is {', '.join(map(str, orig))}.")
    return s


def _reason_grounding(r: VideoQARecord) -> list[str]:
    m = r.meta
    start, end = r.segment
    what = f"{m['color']} {m['shape']}"
    s = []
    if start <= 0.0:
        s.append(f"The {what} is already visible in the first frame.")
    else:
        s.append(f"The {what} is absent at first and shows up at {start:.1f} s.")
    if end >= r.duration - 1e-6:
        s.append("It stays in view until the end of the video.")
    else:
        s.append(f"It is gone after {end:.1f} s.")
    d = m.get("distractor")
    if d:
        s.append(
            f"A {d['color']} {d['shape']} appears from {d['segment'][0]:.1f} s to {d['segment'][1]:.1f} s, "
            f"but it is not the {what}."
        )
    s.append(f"So the {what} appears during {r.answer}.")
    return s


def _reason_counting(r: VideoQARecord) -> list[str]:
    m = r.meta
    what = f"{m['color']} {m['shape']}"
    n = int(m["count"])
    s = [f"I track every {what} from frame to frame."]
    if n == 1:
        s.append(f"There is 1 {what} that changes position.")
    else:
        s.append(f"There are {n} {what}s that change position.")
    others = [f"{d['color']} {d['shape']}" for d in m.get("distractors", [])]
    if others:
        s.append(f"The other objects ({_ordinal_list(others)}) do not count.")
    s.append(f"So the answer is {n}.")
    return s


def frame_cell(x: float, y: float, size: float) -> str:
    """Where pixel (x, y) of a `size` x `size` frame lies on a 3 x 3 grid, in words: "top left", "top centre", ...,
    "left side", "centre", "right side", ..., "bottom right" (x to the right, y downwards)."""
    row = ("top", "middle", "bottom")[min(2, max(0, int(3 * y / size)))]
    col = ("left", "centre", "right")[min(2, max(0, int(3 * x / size)))]
    if row == "middle":
        return "centre" if col == "centre" else f"{col} side"
    return f"{row} {col}"


def _reason_direction(r: VideoQARecord) -> list[str]:
    m = r.meta
    what = f"{m['color']} {m['shape']}"
    (x0, y0), (x1, y1) = m["start"], m["end"]
    s = [f"I follow the {what} from the first frame to the last."]
    size = float(m.get("size", 112))  # sets built before "size" was recorded: the build's default side
    s.append(f"It starts near the {frame_cell(x0, y0, size)} and ends near the {frame_cell(x1, y1, size)}.")
    s.append(f"So it moves {m['direction']}.")
    return s


_REASONERS = {
    "arrow_of_time": _reason_arrow,
    "temporal_order": _reason_order,
    "grounding": _reason_grounding,
    "counting": _reason_counting,
    "motion_direction": _reason_direction,
}


def sft_reasoning(record: VideoQARecord) -> str:
    """2-4 short sentences a careful viewer would write, built from ``record.meta`` (the synthetic set's
    construction metadata); the last states the conclusion as the answer's value ("So it moves left.", "So the answer
    is 3."), not its letter: the letter comes only in ``<answer>``, where it is the prompt's own token (a trace that
    ended "..., which is option B." left the tiny LM's letter at chance; docs/SEEING_POLICY.md). Motion direction
    names the start and end cell of a 3 x 3 grid (:func:`frame_cell`). Deterministic.

    Raises:
        KeyError: ``record.task`` is not a synthetic task, or ``record.meta`` lacks a field its reasoning needs.
    """
    return " ".join(_REASONERS[record.task](record))


def _glue(record: VideoQARecord) -> str:
    return "<glue>[" + ", ".join(f"({s:.1f}, {e:.1f})" for s, e in record.segments) + "]</glue>"


def sft_target(record: VideoQARecord) -> tuple[str, str]:
    """The SFT target ``"<think>{reasoning}</think><answer>{answer}</answer>"`` (plus ``<glue>[(s, e), ...]</glue>``
    for grounded QA) and where its reasoning came from (:data:`SFT_SOURCES`): the record's ``reasoning`` field,
    else the construction metadata (:func:`sft_reasoning`, the synthetic set), else none (``"answer_only"``: an empty
    ``<think></think>``). ``answer`` is the record's answer (the option letter, ``"[s, e]"`` for grounding). Matches
    the format reward (ALGORITHMS §6)."""
    if record.reasoning is not None:
        think, source = record.reasoning.strip(), "reasoning"
    else:
        try:
            think, source = sft_reasoning(record), "meta"
        except (KeyError, TypeError, ValueError, IndexError):
            think, source = "", "answer_only"
    text = f"<think>{think}</think><answer>{record.answer}</answer>"
    if record.problem_type == "grounded_qa":
        text += _glue(record)
    return text, source


def answer_spans(record: VideoQARecord, text: str) -> list[tuple[int, int]]:
    """Character spans ``[(start, end)]`` of the answer in an SFT target `text` (:func:`sft_target`'s format): what
    ``<answer>…</answer>`` holds, and, for multiple choice, the answer's letter wherever the reasoning names it as
    ``option X`` (as in a record's own reasoning, "…, which is option B."; the synthetic traces end at the stated
    value instead). These are the tokens `sft.answer_weight` weights (`dvr1.train.sft`); empty when `text` has no
    ``<answer>`` tag."""
    spans = [m.span(1) for m in re.finditer(r"<answer>(.*?)</answer>", text, re.S)]
    if record.options is not None and record.answer in LETTERS:
        spans += [m.span(1) for m in re.finditer(rf"option ({re.escape(record.answer)})\b", text)]
    return sorted(spans)


def sft_response(record: VideoQARecord) -> str:
    """The SFT target text of :func:`sft_target`."""
    return sft_target(record)[0]


def lookup_drill_texts(record: VideoQARecord, style: str = "dvr1") -> list[tuple[str, str, str]]:
    """Text-only option-lookup samples in the SFT answer's own form, one per option ``k`` of a multiple-choice
    `record` whose SFT reasoning ends at the answer's value: ``(question, response_prefix, letter)`` with
    ``question`` = :func:`format_question` in `style`, ``response_prefix`` = the SFT target up to and including
    ``<answer>`` with the reasoning's last statement of the value replaced by option ``k``'s ("So it moves up." ->
    "So it moves left."), and ``letter`` = option ``k``'s letter. The value stated is arbitrary, so only the option
    list gives the letter (`dvr1.models.tiny.answer_drill`; docs/SEEING_POLICY.md). ``[]`` for a record without
    options, a non-letter answer, or a reasoning that does not state the answer's value."""
    if record.options is None or record.answer not in LETTERS:
        return []
    resp = sft_response(record)
    end = resp.find("</think>")
    value = record.options[LETTERS.index(record.answer)]
    at = resp.rfind(value, 0, end) if end >= 0 else -1
    if at < 0:
        return []
    question = format_question(record, style=style)
    return [(question, resp[:at] + opt + resp[at + len(value):end] + "</think><answer>", LETTERS[k])
            for k, opt in enumerate(record.options)]
