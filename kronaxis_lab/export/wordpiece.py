"""Exact token counts of an uncased BERT WordPiece tokenizer (MiniLM's: the cost model's n_i) on ASCII text,
without the Rust pipeline's offset bookkeeping.

`tokenizers` counts a text as normalise (BertNormalizer) → pre-tokenise (BertPreTokenizer) → WordPiece per
piece, and tracks character alignments at every step: about 0.13 ms of CPU for a 400-character prompt, the
largest single cost of a TF-IDF routing decision. On ASCII text the first two steps are three string
operations, and WordPiece is a pure function of the piece, so:

- clean_text: NUL, and control characters other than tab / newline / CR, are deleted; those three become spaces;
- lowercase (strip_accents and the CJK rule change nothing in ASCII);
- pieces: each run of letters and digits, and each punctuation character on its own (all printable ASCII that is
  neither a letter, a digit nor a space is BERT punctuation);
- tokens per piece: `model.tokenize(piece)`, memoised per piece (bounded).

Anything else goes to the Rust tokenizer: non-ASCII text, and text that holds an added token's content in any
case (added tokens are matched before normalisation, so "[MASK]" counts as one token). `tests/test_wordpiece.py`
checks the counts against `encode_batch_fast` on generated text.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np

_CLEAN = {c: None for c in range(32) if c not in (9, 10, 13)} | {9: " ", 10: " ", 13: " ", 127: None}
_PIECES = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")


class AsciiWordPieceCounter:
    """Token counts (no special tokens, no truncation) for the tokenizers it accepts (`accepts`)."""

    def __init__(self, tokenizer: Any, max_cached: int = 1 << 18) -> None:
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer without truncation and padding
        self.model = tokenizer.model
        self.added = sorted({t.content.lower() for t in tokenizer.get_added_tokens_decoder().values()})
        self.max_cached = int(max_cached)
        self._cache: dict[str, int] = {}

    @staticmethod
    def accepts(tokenizer: Any) -> bool:
        """An uncased BERT WordPiece pipeline with nothing else in it (no added pre/post steps that change
        the pieces; the post-processor only adds special tokens, which counting leaves out)."""
        d = json.loads(tokenizer.to_str())
        norm, pre, model = d.get("normalizer") or {}, d.get("pre_tokenizer") or {}, d.get("model") or {}
        return (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
                and norm.get("clean_text") is True and pre.get("type") == "BertPreTokenizer"
                and model.get("type") == "WordPiece")

    def pieces(self, text: str) -> list[str]:
        """BertNormalizer + BertPreTokenizer of an ASCII text."""
        return _PIECES.findall(text.translate(_CLEAN).lower())

    def fast_path(self, text: str) -> bool:
        """Counted here (else by the Rust tokenizer)."""
        if not text.isascii():
            return False
        low = text.lower() if self.added else text
        return not any(a in low for a in self.added)

    def count_one(self, text: str) -> int:
        cache = self._cache
        pieces = self.pieces(text)
        try:
            return sum(map(cache.__getitem__, pieces))
        except KeyError:
            pass
        n = 0
        for p in pieces:
            c = cache.get(p)
            if c is None:
                c = len(self.model.tokenize(p))
                if len(cache) < self.max_cached:
                    cache[p] = c
            n += c
        return n

    def count(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.int64)
        slow = []
        for i, t in enumerate(texts):
            if self.fast_path(t):
                out[i] = self.count_one(t)
            else:
                slow.append(i)
        if slow:
            enc = self.tokenizer.encode_batch_fast([texts[i] for i in slow], add_special_tokens=False)
            out[slow] = [len(e) for e in enc]
        return out
