"""A text sketch for drift tests: signed feature hashing of word unigrams and bigrams (Weinberger et al., "Feature
Hashing for Large Scale Multitask Learning", ICML 2009), sublinear counts, L2-normalised.

    x_k = Σ_{t : h(t) = k} s(t) · (1 + log c_t)      then  x / ‖x‖₂          (k = 0..dim-1)

with t the lower-cased word unigrams and bigrams of the text, c_t their counts, h(t) a keyed BLAKE2b hash into
`dim` buckets and s(t) = ±1 its sign bit (so collisions cancel in expectation). Two texts that share vocabulary
land close together; a shift of topic or task moves the distribution, which `drift.mmd_test` detects.

Why this and not a sentence encoder: the router logs one sketch per decision in its writer thread, on a CPU
that also serves; hashing costs microseconds, needs no model, and 64 numbers of a redacted text keep no words.
Both sides of a drift test (training reference, live log) must use the same `dim` and `seed`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

SKETCH_DIM = 64  # buckets; the log stores them as float16 (128 bytes a decision)
WORD = re.compile(r"\w+", re.UNICODE)


def _bucket(token: str, dim: int, key: bytes) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(),
                       "little")
    return (h >> 1) % dim, 1.0 if h & 1 else -1.0


def text_sketch(texts: Sequence[str], dim: int = SKETCH_DIM, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 sketches (module docstring); an empty text gives the zero vector."""
    key = seed.to_bytes(8, "little", signed=True)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        words = WORD.findall(str(text).lower())
        counts: dict[str, int] = {}
        for t in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            k, s = _bucket(t, dim, key)
            out[i, k] += s * (1.0 + np.log(c))
        norm = float(np.linalg.norm(out[i]))
        if norm > 0:
            out[i] /= norm
    return out
