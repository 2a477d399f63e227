"""Multiple choice (MMLU / ARC / CommonsenseQA): extract the chosen letter and compare it with the gold.

Gold: a letter ("B", "(b)", "B."), a 0-based index, or — when the row's choice texts are known — the text
of the correct choice. Choice texts come from the `choices` argument of `grade` (a list of texts, or
LLMRouter's ``{"text": [...], "label": [...]}``), from a gold dict ``{"answer": .., "choices": ..}``, or are
parsed from the query's "A. ..." / "(B) ..." lines.

The response's letter is read in four passes, stopping at the first that finds anything:
  1. explicit assertions — "Answer: B", "the correct option is b", "\\boxed{C}", "(B) is correct";
  2. a leading letter, as base models answer ("B", " (C)", "D. Paris");
  3. marked mentions — "(B)", "[B]", "**B**", a line starting "B." / "B)";
  4. the response restates exactly one choice's text.
If a pass finds several different letters the response is *ambiguous*: score 0, counted in `last_stats_`.
Lower-case letters count only when followed by punctuation or the end, so "the answer is a bit hard"
asserts nothing.
"""

from __future__ import annotations

import re
import string
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading._common import GradingInputError, as_text, check_lengths, decode_structured, is_missing
from kronaxis_lab.grading.base import Grader

_QUERY_CHOICE_RE = re.compile(r"^\s*\(?([A-Z])[\).:]\s+(.+?)\s*$", re.MULTILINE)


def _norm_text(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _lower_ok(text: str, m: re.Match, group: int = 1) -> bool:
    """A lower-case letter counts only if punctuation or the end follows ("option b." yes, "a bit" no)."""
    if m.group(group).isupper():
        return True
    rest = text[m.end(group):]
    return re.match(r"\s*(?:[).,:;!?\]*\"'`]|$)", rest) is not None


class _Patterns:
    """Regexes for one label set (built once per distinct set of letters)."""

    def __init__(self, labels: Sequence[str]) -> None:
        cls = "[" + "".join(re.escape(c) + re.escape(c.lower()) for c in labels) + "]"
        upper = "[" + "".join(re.escape(c) for c in labels) + "]"
        open_ = r"[\(\[\*\"'`]*\s*"
        self.explicit = [
            # "Answer: B", "the answer is (C)", "final answer is option d.", "answer would be: **A**"
            re.compile(
                r"\banswer\s*(?:is|:|=|would\s+be|should\s+be|will\s+be)?\s*:?\s*(?:option|choice|letter)?\s*"
                + open_ + r"(" + cls + r")(?![\w])",
                re.IGNORECASE,
            ),
            # "the correct option is b", "best choice: (C)", "my choice is D"
            re.compile(
                r"\b(?:correct|right|best|final|my)\s+(?:option|choice|letter)\s*(?:is|:|=|would\s+be|should\s+be)?\s*:?\s*"
                + open_ + r"(" + cls + r")(?![\w])",
                re.IGNORECASE,
            ),
            re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{)?\s*\(?(" + cls + r")\)?\s*\}"),
            # "(B) is correct", "option C is the right answer"
            re.compile(
                r"(?<![\w(\[])[\(\[]?(" + upper + r")[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best)\b",
            ),
        ]
        self.leading = re.compile(r"^\s*" + open_ + r"(" + cls + r")\s*[\)\]\*\"'`]*(?=[ \t]*(?:[.:)\],;]|\n|$))")
        self.mentions = [
            re.compile(r"\((" + upper + r")\)"),
            re.compile(r"\[(" + upper + r")\]"),
            re.compile(r"\*\*(" + upper + r")\*\*"),
            re.compile(r"^\s*(" + upper + r")[.):]\s", re.MULTILINE),
        ]


def _as_label_and_texts(choices: Any, letters: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """(labels, choice texts) for one row's `choices` value (list of texts or {"text", "label"} dict)."""
    choices = decode_structured(choices)
    if choices is None or (isinstance(choices, float) and is_missing(choices)):
        return list(letters), None
    if isinstance(choices, dict):
        texts = [str(t) for t in choices.get("text", [])]
        labels = [str(x).strip().upper() for x in choices.get("label", choices.get("labels", []))]
        if not labels:
            labels = _default_labels(len(texts), letters)
        if len(labels) != len(texts):
            raise GradingInputError(f"choices dict has {len(labels)} labels but {len(texts)} texts")
        return labels, texts
    if isinstance(choices, (list, tuple)):
        texts = [str(t) for t in choices]
        return _default_labels(len(texts), letters), texts
    raise GradingInputError(f"choices must be a list of texts or a {{'text', 'label'}} dict, "
                            f"got {type(choices).__name__}")


def _default_labels(k: int, letters: Sequence[str]) -> list[str]:
    if k <= len(letters):
        return list(letters[:k])
    return list(letters) + [c for c in string.ascii_uppercase if c not in letters][: k - len(letters)]


def texts_from_query(query: str, labels: Sequence[str]) -> list[str] | None:
    """Choice texts aligned with `labels` ("" where a label's line is absent), if the query lists >= 2."""
    found = {m.group(1): m.group(2) for m in _QUERY_CHOICE_RE.finditer(query) if m.group(1) in labels}
    return [found.get(lab, "") for lab in labels] if len(found) >= 2 else None


def extract_choice(text: str, labels: Sequence[str], texts: Sequence[str] | None = None,
                   patterns: _Patterns | None = None) -> tuple[str | None, bool]:
    """(letter, ambiguous) for one response; letter is None when nothing (or several letters) is asserted."""
    pats = patterns or _Patterns(labels)
    first_line = text.strip().split("\n", 1)[0]
    for level, group in enumerate((pats.explicit, [pats.leading], pats.mentions)):
        found = {m.group(1).upper() for p in group for m in p.finditer(text) if _lower_ok(text, m)}
        if found and level == 1:
            # a leading letter conflicts only with letters marked on the same line ("(A) or (B)"); what a
            # base model writes on later lines is its continuation, not its answer
            found |= {m.group(1) for p in pats.mentions for m in p.finditer(first_line)}
        if len(found) == 1:
            return found.pop(), False
        if len(found) > 1:
            return None, True
    if texts:
        norm = _norm_text(text)
        normed = [_norm_text(t) for t in texts]
        exact = [i for i, t in enumerate(normed) if t and t == norm]
        if len(exact) == 1:
            return labels[exact[0]], False
        hits = [i for i, t in enumerate(normed) if t and re.search(r"(?<!\w)" + re.escape(t) + r"(?!\w)", norm)]
        # a choice that is part of a longer matched choice ("2" inside "12 apples") is not a separate hit
        hits = [i for i in hits if not any(j != i and normed[i] in normed[j] for j in hits)]
        if len(hits) == 1:
            return labels[hits[0]], False
        if len(hits) > 1:
            return None, True
    return None, False


def _gold_letter(gold: Any, labels: Sequence[str], texts: Sequence[str] | None, row: int) -> str:
    if isinstance(gold, (int, np.integer)) and not isinstance(gold, bool):
        if 0 <= int(gold) < len(labels):
            return labels[int(gold)]
        raise GradingInputError(f"row {row}: gold index {gold} out of range for {len(labels)} choices")
    g = str(gold).strip()
    m = re.fullmatch(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\.?", g)
    if m and m.group(1).upper() in labels:
        return m.group(1).upper()
    if texts:
        normed = [_norm_text(t) for t in texts]
        if _norm_text(g) in normed:
            return labels[normed.index(_norm_text(g))]
    raise GradingInputError(f"row {row}: gold {g[:60]!r} is not one of the letters {list(labels)}"
                            + (" nor a choice text" if texts else ""))


class MultipleChoiceGrader(Grader):
    """1.0 when the response asserts exactly the gold letter, else 0.0.

    After `grade`, `last_stats_` = {n, no_answer, ambiguous, correct}; `last_predictions_` holds the
    extracted letters (None where no answer / ambiguous).
    """

    def __init__(self, letters: Sequence[str] = ("A", "B", "C", "D"), parse_query_choices: bool = True) -> None:
        self.letters = [str(x).strip().upper() for x in letters]
        if not self.letters or any(len(x) != 1 or not x.isalpha() for x in self.letters):
            raise ValueError(f"letters must be single letters, got {list(letters)}")
        self.parse_query_choices = parse_query_choices
        self.last_stats_: dict[str, int] = {}
        self.last_predictions_: list[str | None] = []

    def grade(self, responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None,
              choices: Sequence[Any] | None = None) -> np.ndarray:
        n = check_lengths(responses, golds, queries, choices=choices)
        scores = np.zeros(n, dtype=float)
        preds: list[str | None] = []
        no_answer = ambiguous = 0
        cache: dict[tuple[str, ...], _Patterns] = {}
        for i in range(n):
            gold = decode_structured(golds[i])
            row_choices = choices[i] if choices is not None else None
            if isinstance(gold, dict):
                row_choices = gold.get("choices", row_choices)
                gold = gold.get("answer", gold.get("gold"))
            if is_missing(gold):
                raise GradingInputError(f"row {i}: gold is missing")
            labels, texts = _as_label_and_texts(row_choices, self.letters)
            if texts is None and self.parse_query_choices and queries is not None and isinstance(queries[i], str):
                texts = texts_from_query(queries[i], labels)
            gold_letter = _gold_letter(gold, labels, texts, i)
            pats = cache.setdefault(tuple(labels), _Patterns(labels))
            letter, amb = extract_choice(as_text(responses[i]), labels, texts, pats)
            preds.append(letter)
            if amb:
                ambiguous += 1
            elif letter is None:
                no_answer += 1
            scores[i] = float(letter == gold_letter)
        self.last_predictions_ = preds
        self.last_stats_ = {"n": n, "no_answer": no_answer, "ambiguous": ambiguous, "correct": int(scores.sum())}
        return scores
