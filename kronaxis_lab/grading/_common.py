"""Small helpers shared by the graders (input checks, decoding golds stored as strings in Parquet)."""

from __future__ import annotations

import ast
import json
import math
from typing import Any, Sequence


class GradingInputError(ValueError):
    """Bad grader input (mismatched lengths, unusable gold); the message names the row and field."""


def check_lengths(responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None,
                  **others: Sequence[Any] | None) -> int:
    n = len(responses)
    named = {"golds": golds, "queries": queries, **others}
    for name, seq in named.items():
        if seq is not None and len(seq) != n:
            raise GradingInputError(f"{name} has {len(seq)} rows but responses has {n}")
    return n


def is_missing(x: Any) -> bool:
    """None / NaN (what pandas hands over for an empty cell)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def as_text(x: Any) -> str:
    """A response cell as text: a missing response (failed generation) grades as the empty string."""
    return "" if is_missing(x) else str(x)


def decode_structured(x: Any) -> Any:
    """Golds for lists/dicts often arrive as their JSON or Python-repr string (Parquet / CSV cells).

    Returns the decoded list/dict when `x` is such a string, else `x` unchanged.
    """
    if not isinstance(x, str):
        return x
    s = x.strip()
    if not s or s[0] not in "[{":
        return x
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, dict)):
            return value
    return x
