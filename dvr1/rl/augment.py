"""DA-Aug sample transforms (ALGORITHMS §4, DVR1 §3.3): reasoning-trace hints (difficulty decrease) and frame noise /
frame masking (difficulty increase; defined in :mod:`dvr1.data.noise`, which the DALI pipeline shares, and
re-exported here). Pure functions of strings and tensors.
"""

from __future__ import annotations

import math
import re

from dvr1.data.noise import add_frame_noise, mask_frames
from dvr1.rl.rewards import parse_choice

__all__ = ["add_frame_noise", "make_hint", "mask_frames", "select_trace", "split_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ANY_TAG = re.compile(r"</?\s*(?:think|answer|glue)\s*>", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<\s*/?\s*answer", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_OPTION_PREFIX = re.compile(r"^\s*(?:\(\s*[A-Z]\s*\)|\[\s*[A-Z]\s*\]|[A-Z]\s*[.):])\s*")


def select_trace(responses: list[str], accuracies: list[float], rewards: list[float]) -> str | None:
    """Successful reasoning trace of a group (ALGORITHMS §4): the highest-reward response among those with
    accuracy 1 (the first one on ties), else ``None``.

    Args: responses, accuracies, rewards: ``[group]`` lists of equal length.
    Raises: ValueError when the lengths differ.
    """
    if not (len(responses) == len(accuracies) == len(rewards)):
        raise ValueError(
            f"select_trace: responses ({len(responses)}), accuracies ({len(accuracies)}) and rewards "
            f"({len(rewards)}) must have the same length"
        )
    best, best_reward = None, -math.inf
    for text, acc, reward in zip(responses, accuracies, rewards):
        if acc >= 1.0 and reward > best_reward:
            best, best_reward = text, reward
    return best


def _think_part(trace: str) -> str:
    start = trace.find("<think>")
    if start >= 0:
        end = trace.find("</think>", start)
        if end < 0:
            end = trace.find("<answer>", start)
        return trace[start + len("<think>") : end if end >= 0 else len(trace)]
    return trace


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``/``!``/``?`` followed by whitespace, and at newlines (so ``"1.5 s"``
    stays whole); empty pieces dropped, each stripped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _word(text: str, flags: int = 0) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(text)}(?![A-Za-z0-9])", flags)


def _leak_checks(answer: str, options: list[str] | None):
    """Predicates ``sentence -> bool`` (True = leaks the answer)."""
    checks = [lambda s: _ANSWER_TAG.search(s) is not None]
    letter = parse_choice(answer)
    if letter is not None:
        exact = _word(letter)  # case-sensitive standalone letter: "B", "(B)", "option B", "B."
        named = re.compile(
            rf"(?:option|choice|answer)\s*(?:is\s*)?[:\-]?\s*[(\[]?\s*{letter}\s*[)\]]?(?![A-Za-z0-9])"
            rf"|[(\[]\s*{letter}\s*[)\]]",
            re.IGNORECASE,
        )  # "option b", "(b)"
        checks += [lambda s: exact.search(s) is not None, lambda s: named.search(s) is not None]
        idx = ord(letter) - ord("A")
        if options and idx < len(options):
            option_text = _OPTION_PREFIX.sub("", options[idx], count=1).strip()
        else:
            option_text = _OPTION_PREFIX.sub("", answer.strip(), count=1).strip()
            option_text = "" if option_text == letter else option_text
        if option_text:
            text_pat = _word(option_text, re.IGNORECASE)
            checks.append(lambda s: text_pat.search(s) is not None)
    else:
        # Numeric, free-text or grounding answers: the answer string itself and every number in it.
        text = answer.strip().strip("[]()").strip()
        if text:
            text_pat = _word(text, re.IGNORECASE)
            checks.append(lambda s: text_pat.search(s) is not None)
        numbers = {float(n) for n in _NUMBER.findall(answer)}
        if numbers:
            checks.append(lambda s: any(float(n) in numbers for n in _NUMBER.findall(s)))
    return checks


def make_hint(trace: str, level: int, max_level: int, answer: str, options: list[str] | None = None) -> str:
    """Partial-trace hint for a difficulty decrease (ALGORITHMS §4).

    Steps: take the ``<think>`` part of ``trace`` (the whole trace when it has none); split it into sentences
    (``split_sentences``); drop every sentence that LEAKS the answer (below); keep the first
    ``ceil(n · level / (max_level + 1))`` of the n remaining sentences (ceil, so at least one sentence when
    ``level >= 1`` and one survives; ``level = max_level`` still withholds the last ~1/(L+1)); join with spaces.

    No-leak rule — a sentence is dropped when it contains:
      * an ``<answer>`` / ``</answer>`` tag (any case);
      * for a choice answer (``answer`` parses as option letter X): X as a standalone token, case-sensitive
        (``"B"``, ``"(B)"``, ``"option B"``, ``"B."``), or ``"option x"``/``"(x)"`` in any case, or the answer
        option's text (``options[X]`` without its ``"X."`` prefix, or the text after the letter in ``answer``),
        case-insensitive, as whole words;
      * otherwise (numeric, free text, grounding segment): the answer string (brackets stripped), case-insensitive,
        as whole words, or any number equal in value to a number of the answer (``"3"`` matches ``3.0``).
    Remaining ``<think>``/``<glue>`` tags are removed and whitespace runs collapsed to one space.

    Args:
        trace: a successful response (``select_trace``); level: guidance level in [0, max_level] (0 → ``""``);
        max_level: L >= 1; answer: ground-truth key; options: the option strings (``"A. text"`` or ``"text"``).
    Returns: the hint text (may be ``""``); never contains an answer tag.
    Raises: ValueError when ``max_level < 1`` or ``level`` is outside [0, max_level].
    """
    if not isinstance(max_level, int) or max_level < 1:
        raise ValueError(f"make_hint: max_level must be an int >= 1, got {max_level!r}")
    if not isinstance(level, int) or not 0 <= level <= max_level:
        raise ValueError(f"make_hint: level must be an int in [0, {max_level}], got {level!r}")
    if not isinstance(trace, str) or not isinstance(answer, str):
        raise ValueError("make_hint: trace and answer must be strings")
    checks = _leak_checks(answer, options)
    sentences = [" ".join(_ANY_TAG.sub(" ", s).split()) for s in split_sentences(_think_part(trace))]
    clean = [s for s in sentences if s and not any(check(s) for check in checks)]
    keep = math.ceil(len(clean) * level / (max_level + 1))
    return " ".join(clean[:keep])
