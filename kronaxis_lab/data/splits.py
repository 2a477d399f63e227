"""Deterministic, leak-free splits.

A query's split is a seeded hash of its *normalised question key*, so the same question gets the same
split in every source and every run: an MMLU question recorded by RouteLLM and by LLMRouter can never be
in train once and in test once. Sources that ship their own train/test files keep them, and any train
query whose key also occurs in test is removed from train (`drop_test_overlap`).

Few-shot prompts (RouterBench's) begin with the same demonstrations for every prompt of a task, so the
question is what follows them: `final_questions` strips the prefix that most prompts of a group share, and the
key is taken from the rest. `question_key` itself is unchanged for single-question prompts.
"""

from __future__ import annotations

import hashlib
import math
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


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the common prefix: binary search over slice comparisons (C speed; demonstrations run to kB)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_prefix(texts: list[str], min_share: float = 0.5, min_prompts: int = 3) -> str:
    """The longest prefix that at least max(2, ⌈min_share·n⌉) of the n distinct `texts` start with, cut back to
    its last blank line (else its last line break), so it never ends inside a line of the question; "" when
    fewer than `min_prompts` distinct texts or no such prefix.

    Among sorted strings the prefix common to k of them is the common prefix of some k consecutive ones
    (first and last of the window), so one pass over the n − k + 1 windows finds it. Distinct texts only: a
    prompt repeated k times must not count as k prompts sharing all of itself."""
    uniq = sorted(set(texts))
    n = len(uniq)
    if n < max(2, int(min_prompts)):
        return ""
    k = max(2, math.ceil(float(min_share) * n))
    i = max(range(n - k + 1), key=lambda i: _common_prefix_len(uniq[i], uniq[i + k - 1]))
    best = uniq[i][: _common_prefix_len(uniq[i], uniq[i + k - 1])]
    cut = best.rfind("\n\n")
    cut = cut + 2 if cut >= 0 else best.rfind("\n") + 1
    return best[:cut]


def final_questions(texts: pd.Series, groups: pd.Series, min_share: float = 0.5, min_prompts: int = 3
                    ) -> tuple[pd.Series, pd.Series]:
    """(question, stripped) per text: the text after the `shared_prefix` of its group (a few-shot prompt's
    demonstrations, an instruction every prompt of a task repeats), leading whitespace dropped; the text
    itself where it does not start with the prefix or nothing would be left."""
    texts = texts.astype(str)
    out = texts.copy()
    for _, idx in texts.groupby(groups.astype(str), sort=False).groups.items():
        group = texts.loc[idx]
        prefix = shared_prefix(group.tolist(), min_share, min_prompts)
        if not prefix:
            continue
        rest = group.str.slice(len(prefix)).str.lstrip()
        take = group.str.startswith(prefix) & rest.str.len().gt(0)
        out.loc[take[take].index] = rest[take]
    return out, out.ne(texts)


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
