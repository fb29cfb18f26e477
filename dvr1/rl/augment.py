"""DA-Aug sample transforms (ALGORITHMS §4, DVR1 §3.3): reasoning-trace hints (difficulty decrease) and frame noise /
frame masking (difficulty increase; defined in :mod:`dvr1.data.noise`, which the DALI pipeline shares, and
re-exported here). Pure functions of strings and tensors.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal

from dvr1.data.noise import add_frame_noise, mask_frames
from dvr1.rl.rewards import RESPONSE_TAG, parse_choice

__all__ = ["add_frame_noise", "hint_sentence_count", "make_hint", "mask_frames", "normalise", "select_trace",
           "split_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ANSWER_TAG = re.compile(r"<\s*/?\s*answer", re.IGNORECASE)
# Numbers with optional thousands commas ("1,024") and fraction; compared by exact decimal value.
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_OPTION_PREFIX = re.compile(r"^\s*(?:\(\s*[A-Z]\s*\)|\[\s*[A-Z]\s*\]|[A-Z]\s*[.):])\s*")
_NON_WORD = re.compile(r"[\W_]+")
_TAG_TAIL = 16  # > len("< / answer"): the longest answer-tag start once whitespace is collapsed


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


def normalise(text: str) -> str:
    """Leak-matching form of ``text``: NFKC, case-folded, every run of non-alphanumeric characters (punctuation,
    ``_``, whitespace) replaced by one space, wrapped in single spaces (``" a red cup "``), so a whole-word phrase
    test is ``normalise(phrase) in normalise(sentence)``. ``"A Red-Cup."`` → ``" a red cup "``; ``""`` → ``" "``."""
    return f" {' '.join(_NON_WORD.sub(' ', unicodedata.normalize('NFKC', text).casefold()).split())} "


def _numbers(text: str) -> set[Decimal]:
    return {Decimal(n.replace(",", "")) for n in _NUMBER.findall(text)}


class _Leaks:
    """Leak test of ALGORITHMS §4 for one answer (rules in ``make_hint``): ``leaks(sentence) -> bool``, and
    ``across(tokens)`` for a phrase spanning the junction of two kept sentences."""

    def __init__(self, answer: str, options: list[str] | None):
        self.numbers: set[Decimal] = set()
        letter = parse_choice(answer)
        if letter is not None:
            texts = [letter, _OPTION_PREFIX.sub("", answer.strip(), count=1)]
            idx = ord(letter) - ord("A")
            if options and idx < len(options) and isinstance(options[idx], str):
                texts.append(_OPTION_PREFIX.sub("", options[idx], count=1))
        else:
            # Numeric, free-text or grounding answers: the answer itself and every number in it.
            texts = [answer]
            self.numbers = _numbers(answer)
        self.phrases = [t for t in dict.fromkeys(map(normalise, texts)) if t.strip()]  # " a red cup "
        self.width = max((len(t.split()) for t in self.phrases), default=0)  # longest phrase, in tokens

    def __call__(self, sentence: str) -> bool:
        if _ANSWER_TAG.search(sentence):
            return True
        norm = normalise(sentence)
        if any(phrase in norm for phrase in self.phrases):
            return True
        return bool(self.numbers) and not self.numbers.isdisjoint(_numbers(sentence))

    def across(self, tokens: list[str]) -> bool:
        joined = f" {' '.join(tokens)} "
        return any(phrase in joined for phrase in self.phrases)


def hint_sentence_count(n: int, level: int, max_level: int) -> int:
    """Sentences a level-``level`` hint may hold out of ``n`` (ALGORITHMS §4: the first ``level / (L+1)`` fraction):
    ``floor(n · level / (L + 1))`` in integer arithmetic — never more than the fraction, so ``level = L`` still
    withholds at least the last ``1/(L+1)`` and a short trace can give 0 sentences at low levels."""
    return n * level // (max_level + 1)


def make_hint(trace: str, level: int, max_level: int, answer: str, options: list[str] | None = None) -> str:
    """Partial-trace hint for a difficulty decrease (ALGORITHMS §4).

    Steps: take the ``<think>`` part of ``trace`` (the whole trace when it has none); split it into its n sentences
    (``split_sentences``; a piece that is only tags does not count); take the PREFIX of the first
    ``hint_sentence_count(n, level, max_level) = floor(n · level / (max_level + 1))`` of them; drop from that
    prefix every sentence that LEAKS the answer (below) — dropped sentences are not replaced by later ones, so
    the hint never reaches past the §4 fraction of the trace; join with spaces.

    No-leak rule — a sentence is dropped when it contains:
      * an ``<answer>`` / ``</answer>`` tag (any case, also unclosed ``"<answer"``);
      * for a choice answer (``answer`` parses as option letter X): X as a standalone token in ANY case
        (``"B"``, ``"(b)"``, ``"option B"``, ``"I pick b."``, ``"b) red"``), or the answer option's text
        (``options[X]`` without an ``"X."`` prefix, and the text after the letter in ``answer``);
      * otherwise (numeric, free text, grounding segment): the answer string, or any number equal in value to a
        number of the answer (``"3"`` matches ``3.0``, ``"1024"`` matches ``"1,024"``).
    Phrases are matched as whole words after ``normalise`` (case, punctuation and whitespace ignored: option text
    ``"a red cup."`` matches ``"I see a Red  cup!"``). For answer A this drops every sentence with the article
    ``"a"`` — over-dropping is the safe side of the no-leak rule. Remaining ``<think>``/``<glue>`` tags are
    removed and whitespace runs collapsed to one space.

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
    leaks = _Leaks(answer, options)
    sentences = []  # (raw, cleaned)
    for raw in split_sentences(_think_part(trace)):
        cleaned = " ".join(RESPONSE_TAG.sub(" ", raw).split())
        if cleaned:
            sentences.append((raw, cleaned))
    prefix = sentences[: hint_sentence_count(len(sentences), level, max_level)]
    kept: list[str] = []
    tail_tokens: list[str] = []  # the hint's last (width - 1) normalised tokens
    tail_text = ""  # the hint's last characters, enough for a split "< / answer"
    for raw, cleaned in prefix:
        if leaks(raw) or leaks(cleaned):
            continue
        tokens = normalise(cleaned).split()
        # A phrase or tag may also form across the junction with the kept text ("red." + "Cup is here.").
        if (tail_tokens and leaks.across(tail_tokens + tokens)) or _ANSWER_TAG.search(f"{tail_text} {cleaned}"):
            continue
        kept.append(cleaned)
        tail_tokens = (tail_tokens + tokens)[-(leaks.width - 1) :] if leaks.width > 1 else []
        tail_text = f"{tail_text} {cleaned}"[-_TAG_TAIL:]
    return " ".join(kept)

