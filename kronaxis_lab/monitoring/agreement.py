"""Agreement with a reference answer: the shadow's default grader when no gold exists, only a reference model's
answer (kronaxis_lab/monitoring/shadow.py, reference mode).

Per row (response r, reference answer g, both free text):
- both hold a number (`grading.numeric.extract_answer`: the last "#### N", "\\boxed{N}", "the answer is N", else the
  last number): score = 1 if the two final numbers agree (`math.isclose`, rel_tol), else 0;
- otherwise the SQuAD token F1 (Rajpurkar et al. 2016, `squad/evaluate-v1.1.py`): lower-case, drop punctuation
  and the articles a/an/the, split on whitespace; F1 = 2PR / (P + R) over the multiset of shared tokens
  (1 when both are empty).
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading.base import Grader
from kronaxis_lab.grading.numeric import extract_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_tokens(text: str) -> list[str]:
    return _ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split()


def token_f1(response: str, reference: str) -> float:
    r, g = normalise_tokens(response), normalise_tokens(reference)
    if not r or not g:
        return float(r == g)
    common = sum((collections.Counter(r) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    p, rec = common / len(r), common / len(g)
    return 2 * p * rec / (p + rec)


class AnswerAgreementGrader(Grader):
    """Score = agreement of each response with its reference answer (module docstring); golds = the references."""

    def __init__(self, rel_tol: float = 1e-6) -> None:
        self.rel_tol = float(rel_tol)

    def grade(self, responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None) -> np.ndarray:
        if len(golds) != len(responses):
            raise ValueError(f"golds has {len(golds)} rows but responses has {len(responses)}")
        out = np.zeros(len(responses))
        for i, (r, g) in enumerate(zip(responses, golds)):
            r, g = "" if r is None else str(r), "" if g is None else str(g)
            a, b = extract_answer(r), extract_answer(g)
            out[i] = float(math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=1e-9)) if a is not None and b is not None \
                else token_f1(r, g)
        return out
