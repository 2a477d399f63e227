"""Numeric exact match (GSM8K-style): extract the model's final number and compare it with the gold.

Gold: GSM8K solution text ending in ``#### 1,234``, a ``\\boxed{..}`` solution, a bare number string, or an
int/float. The response's answer is taken, in order of how explicitly it is marked, from the last
``#### N``, the last ``\\boxed{N}``, the last "answer is / Answer: N", else the last number in the text.

Numbers are read tolerantly: thousands commas (``1,234``), ``$`` and ``%`` signs, a trailing full stop,
unicode minus, decimals (``3.50`` == ``3.5``), fractions ``a/b`` and LaTeX ``\\frac{a}{b}``.

Score = 1 if |pred − gold| ≤ max(rel_tol · max(|pred|, |gold|), abs_tol)  (``math.isclose``), else 0.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading._common import GradingInputError, as_text, check_lengths, is_missing
from kronaxis_lab.grading.base import Grader

# A single number: optional sign, then either thousands-grouped digits or plain digits, optional decimals
# (".5" too), optional "/denominator". The look-behind stops "2" being read out of "x2" or "1.2.3".
_NUMBER_RE = re.compile(
    r"(?<![\w.])([-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?)(?!\d)")
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=|would\s+be|will\s+be|should\s+be)\s*:?", re.IGNORECASE
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def _normalise(text: str) -> str:
    """Strip the decorations around numbers that are not part of their value."""
    text = text.replace("\u2212", "-").replace("\u2013", "-")  # unicode minus / en dash used as minus
    text = _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", "")  # LaTeX thousands separators
    text = text.replace("\\$", "$").replace("\\%", "%")
    text = re.sub(r"\$\s*(?=[-+]?[\d.])", "", text)  # "$1,234" / "$ 5"
    text = re.sub(r"(?<=\d)\s*%", "", text)
    text = re.sub(r"-\s*\$\s*(?=\d)", "-", text)  # "-$5"
    text = text.replace("**", "")  # markdown bold around the answer
    return text


def _to_float(token: str) -> float | None:
    token = token.replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None
    return float(value)


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER_RE.finditer(_normalise(text)):
        v = _to_float(m.group(1))
        if v is not None:
            out.append(v)
    return out


def parse_number(text: str) -> float | None:
    """The value of a string that *is* a number (after stripping $, %, commas, a trailing '.'), else None."""
    s = _normalise(text).strip().rstrip(".").strip()
    m = _NUMBER_RE.fullmatch(s)
    return _to_float(m.group(1)) if m else None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...} / \\fbox{...}, with nested braces balanced."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1])
    return out


def _from_fragment(fragment: str) -> float | None:
    value = parse_number(fragment)
    if value is None:
        nums = _numbers(fragment)
        value = nums[0] if nums else None
    return value


def extract_answer(text: str) -> float | None:
    """The response's final numeric answer (see module docstring for the order), or None."""
    value = marked_answer(text)
    if value is not None:
        return value
    nums = _numbers(text)
    return nums[-1] if nums else None


def marked_answer(text: str) -> float | None:
    """The final numeric answer only where the response marks one (``####``, ``\\boxed``, "the answer is"),
    else None: the answer-format check a cascade applies before it trusts a cheap model's reply."""
    hashes = _HASH_RE.findall(text)
    for frag in reversed(hashes):
        value = _from_fragment(frag)
        if value is not None:
            return value
    for frag in reversed(_boxed_contents(text)):
        value = _from_fragment(frag)
        if value is not None:
            return value
    for m in reversed(list(_ANSWER_RE.finditer(text))):
        # the number must come right after the phrase ("The answer is $1,234."), not sentences later
        nums = _numbers(text[m.end(): m.end() + 40].split("\n", 1)[0])
        if nums:
            return nums[0]
    return None


def parse_gold(gold: Any) -> float | None:
    """Gold value from '... #### N', '\\boxed{N}', a bare number string or a number; None if not numeric."""
    if isinstance(gold, bool) or is_missing(gold):
        return None
    if isinstance(gold, (int, float, np.integer, np.floating)):
        return float(gold)
    text = str(gold)
    if "####" in text:
        return _from_fragment(text.rsplit("####", 1)[1])
    boxed = _boxed_contents(text)
    if boxed:
        return _from_fragment(boxed[-1])
    return parse_number(text)


class NumericMatchGrader(Grader):
    """1.0 when the response's final number equals the gold number within tolerance, else 0.0.

    After `grade`, `last_stats_` = {n, no_answer (no number found in the response), correct}.
    """

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> None:
        if rel_tol < 0 or abs_tol < 0:
            raise ValueError(f"tolerances must be >= 0, got rel_tol={rel_tol}, abs_tol={abs_tol}")
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.last_stats_: dict[str, int] = {}

    def grade(self, responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None) -> np.ndarray:
        n = check_lengths(responses, golds, queries)
        gold_values = [parse_gold(g) for g in golds]
        bad = [i for i, v in enumerate(gold_values) if v is None]
        if bad:
            raise GradingInputError(
                f"NumericMatchGrader: gold is not a number in {len(bad)} row(s), e.g. row {bad[0]}: "
                f"{str(golds[bad[0]])[-80:]!r}"
            )
        scores = np.zeros(n, dtype=float)
        no_answer = 0
        for i, (resp, gold) in enumerate(zip(responses, gold_values)):
            pred = extract_answer(as_text(resp))
            if pred is None:
                no_answer += 1
                continue
            scores[i] = float(math.isclose(pred, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol))
        self.last_stats_ = {"n": n, "no_answer": no_answer, "correct": int(scores.sum())}
        return scores
