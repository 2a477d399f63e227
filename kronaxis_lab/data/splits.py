"""Deterministic, leak-free splits.

A query's split is a seeded hash of its *normalised question key*, so the same question gets the same
split in every source and every run: an MMLU question recorded by RouteLLM and by LLMRouter can never be
in train once and in test once. Sources that ship their own train/test files keep them, and any train
query whose key also occurs in test is removed from train (`drop_test_overlap`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pandas as pd

# the start of an inline choice list ("\nA. ...", "\n(A) ...", "\nA) ..."), which formats differ on
_CHOICES = re.compile(r"\n\s*\(?A[\.\):]\s", re.MULTILINE)
_ANSWER_CUE = re.compile(r"\n\s*answer\s*:?\s*$", re.IGNORECASE)
_NON_ALNUM = re.compile(r"[^0-9a-z]+")

#: the split of the Python API when none is given; configs/splits/default.yaml is the same block for the CLIs
DEFAULT_SPLIT = {"fractions": {"train": 0.6, "val": 0.1, "test": 0.3}, "seed": 0}


def question_key(text: str) -> str:
    """Normalise a question for dedup: drop an inline choice list and a trailing "Answer:", fold unicode
    and case, keep only letters and digits."""
    t = unicodedata.normalize("NFKC", str(text))
    t = _ANSWER_CUE.sub("", t)
    m = _CHOICES.search(t)
    if m and m.start() > 0:
        t = t[: m.start()]
    return _NON_ALNUM.sub(" ", t.lower()).strip()


def question_keys(texts: pd.Series) -> pd.Series:
    return texts.astype(str).map(question_key)


def hash_splits(keys: pd.Series, fractions: dict[str, float], seed: int = 0) -> pd.Series:
    """Assign each key to a split with probability `fractions[split]`, by a seeded sha1 of the key."""
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be ≥ 0 and sum to 1, got {fractions}")
    salt = f"{seed}:".encode()
    u = keys.map(lambda k: int.from_bytes(hashlib.sha1(salt + k.encode()).digest()[:8], "big") / 2**64)
    names = list(fractions)
    edges = np.cumsum([fractions[n] for n in names])
    idx = np.minimum(np.searchsorted(edges, u.to_numpy(), side="right"), len(names) - 1)
    return pd.Series(np.array(names, dtype=object)[idx], index=keys.index, dtype="string")


def drop_test_overlap(queries: pd.DataFrame, keys: pd.Series) -> tuple[pd.DataFrame, int]:
    """Remove non-test queries whose key occurs in the test split; return (queries, n_removed)."""
    test_keys = set(keys[queries["split"] == "test"])
    leak = (queries["split"] != "test") & keys.isin(test_keys)
    return queries[~leak], int(leak.sum())
