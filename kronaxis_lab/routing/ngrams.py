"""Word 1–2-grams as sklearn's word analyzer makes them, computed once per text for every decision-time reader.

A TF-IDF routing decision reads the same prompt's word n-grams twice: the TF-IDF classifier (`TfidfFeatures`,
strip_accents="unicode") and the output-token model (`OutputTokenModel`, no accent stripping). On ASCII text
the two analyzers agree (stripping accents changes nothing there), so `word_ngrams` memoises the n-grams of
the last texts seen and both readers share them. The n-grams are sklearn's, item for item: lowercase, then
the token pattern, then the tokens followed by the space-joined pairs (`_VectorizerMixin._word_ngrams`).
`supports` says which vectorizer settings this covers; anything else keeps sklearn's own analyzer.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # sklearn's
_TOKENS = re.compile(DEFAULT_TOKEN_PATTERN)
_MEMO_SIZE = 1024  # texts: more than a few batches in flight between classifying and pricing them
_MEMO_MAX_CHARS = 8192  # longer texts are analysed each time (the server's classifier input is ≤ 4000 chars)
_memo: dict[str, list[str]] = {}
_lock = threading.Lock()


def _analyse(doc: str) -> list[str]:
    tokens = _TOKENS.findall(doc.lower())
    return tokens + [a + " " + b for a, b in zip(tokens, tokens[1:])]


def word_ngrams(doc: str) -> list[str]:
    """The 1–2-grams of `doc` (lowercased, no accent stripping), memoised. Callers must not modify the list."""
    grams = _memo.get(doc)
    if grams is None:
        grams = _analyse(doc)
        if len(doc) > _MEMO_MAX_CHARS:
            return grams
        with _lock:
            if len(_memo) >= _MEMO_SIZE:
                _memo.pop(next(iter(_memo)))  # the oldest entry
            _memo[doc] = grams
    return grams


def supports(vectorizer: Any) -> bool:
    """A fitted or unfitted sklearn text vectorizer whose analyzer `analyzer_for` reproduces."""
    v = vectorizer
    return (v.analyzer == "word" and v.lowercase is True and v.preprocessor is None and v.tokenizer is None
            and v.stop_words is None and v.token_pattern == DEFAULT_TOKEN_PATTERN
            and tuple(v.ngram_range) == (1, 2) and v.strip_accents in (None, "unicode", "ascii")
            and v.input == "content")


def analyzer_for(vectorizer: Any) -> Callable[[str], list[str]]:
    """`vectorizer.build_analyzer()`, sharing `word_ngrams` where it agrees with it (settings `supports` does not
    cover: sklearn's own analyzer)."""
    if not supports(vectorizer):
        return vectorizer.build_analyzer()
    if vectorizer.strip_accents is None:
        return word_ngrams
    own = vectorizer.build_analyzer()  # non-ASCII text: accents are stripped, so the n-grams differ

    def analyse(doc: str) -> list[str]:
        return word_ngrams(doc) if doc.isascii() else own(doc)

    return analyse
