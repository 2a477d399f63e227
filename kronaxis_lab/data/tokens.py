"""Token counting with a real tokenizer, for sources that record text but not token counts."""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np

from kronaxis_lab.local_models import resolve_model


class TokenCounter:
    """Counts tokens with a Hugging Face tokenizer (batched, fast tokenizer).

    The default in configs is MiniLM's WordPiece tokenizer from the offline package: an approximation of
    the premium models' own BPE tokenizers (which need a download); point `name` at the fleet's real
    tokenizer where you have it.
    """

    def __init__(self, name: str, fallback: str | None = None, batch_size: int = 1024):
        self.name, self.fallback, self.batch_size = name, fallback, batch_size

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(self.name, self.fallback))

    def count(self, texts: Sequence[str | None]) -> np.ndarray:
        """Token counts per text (None/empty → 0); no truncation, no special tokens."""
        out = np.zeros(len(texts), dtype=np.int64)
        items = [(i, t) for i, t in enumerate(texts) if isinstance(t, str) and t]
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            enc = self.tokenizer([t for _, t in chunk], add_special_tokens=False, truncation=False,
                                 return_attention_mask=False, return_token_type_ids=False, verbose=False)
            for (i, _), ids in zip(chunk, enc["input_ids"]):
                out[i] = len(ids)
        return out
