"""Writers (and readers) of the bundle pieces that several runtimes share: plain arrays, a tokenizer, a
sentence encoder (ONNX graph + pooling settings), a TF-IDF vectorizer.

Classifiers call these from their `export_runtime(directory)` method; `kronaxis_lab.export.runtimes` reads
the files back. Every format is data: `.npz` arrays (read with `allow_pickle=False`), JSON and ONNX graphs,
never pickle. torch, transformers and onnx are imported by the functions that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kronaxis_lab.export.onnx_export import MIN_OPSET, export_graph
from kronaxis_lab.export.schema import ExportError

__all__ = ["POOLING", "export_sentence_encoder", "head_tail_keep", "load_arrays", "load_tfidf_vectorizer",
           "save_arrays", "save_tfidf_vectorizer", "save_tokenizer"]

#: sentence-transformers pooling modes the numpy encoder reproduces
POOLING = ("mean", "cls", "max")
ST_TYPES = ("Transformer", "Pooling", "Normalize")
#: TfidfVectorizer arguments that only shape the vocabulary at fit time (the bundle carries the vocabulary)
FIT_ONLY = ("vocabulary", "min_df", "max_df", "max_features", "dtype")


def save_arrays(path: str | Path, **arrays: Any) -> str:
    """`np.savez` of plain numeric arrays (object arrays, which need pickle, are refused); returns the name."""
    path = Path(path)
    plain = {k: np.asarray(v) for k, v in arrays.items()}
    bad = [k for k, v in plain.items() if v.dtype == object]
    if bad:
        raise ExportError(f"{path.name}: arrays {bad} hold Python objects (they would need pickle)")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **plain)
    return path.name


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def head_tail_keep(special_mask: Sequence[int], max_length: int, head: int) -> list[int] | None:
    """Head+tail truncation of one encoded text (special tokens included): the positions kept, or None when it
    fits in `max_length`. Keeps the leading special tokens, the first `head` content tokens, the last
    `max_length - head - specials` content tokens and the trailing special tokens (Sun et al. 2019, "How to
    Fine-Tune BERT for Text Classification"): a few-shot prompt keeps its instruction and its final question,
    where right truncation keeps only the shared demonstrations. Training and the bundle runtime both cut here."""
    n = len(special_mask)
    if n <= max_length:
        return None
    lead = next((i for i, s in enumerate(special_mask) if not s), n)
    trail = next((i for i, s in enumerate(reversed(special_mask)) if not s), n)
    room = max_length - lead - trail
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text beside {lead + trail} special tokens")
    h = min(max(int(head), 0), room)
    return [*range(lead + h), *range(n - trail - (room - h), n)]


def save_tokenizer(tokenizer, directory: str | Path) -> dict[str, Any]:
    """Save a HF tokenizer's files into `directory`; return what `runtimes.BundleTokenizer` needs besides them."""
    tokenizer.save_pretrained(Path(directory))
    return {"truncation_side": getattr(tokenizer, "truncation_side", "right"), "pad_token": tokenizer.pad_token,
            "pad_id": int(tokenizer.pad_token_id or 0),
            "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0), "class": type(tokenizer).__name__}


def export_sentence_encoder(st, directory: str | Path, normalize: bool, opset: int = MIN_OPSET,
                            sample_texts: Sequence[str] | None = None) -> dict[str, Any]:
    """A sentence-transformers model (Transformer → Pooling → optional Normalize) as a bundle node in `directory`:
    the transformer's `last_hidden_state` graph (model.onnx), its tokenizer, and the pooling / normalisation
    done in numpy (`runtimes.SentenceEncoder`). `normalize`: L2-normalise even without a Normalize module."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    modules = list(st)
    types = [type(m).__name__ for m in modules]
    if types[:2] != list(ST_TYPES[:2]) or types[2:] not in ([], ["Normalize"]):
        raise ExportError(f"sentence encoder modules {types}: only Transformer → Pooling (→ Normalize) is exportable")
    transformer, pooling = modules[0], modules[1]
    mode = str(getattr(pooling, "pooling_mode", ""))
    if mode not in POOLING:
        raise ExportError(f"sentence encoder pooling {mode!r} is not one of {POOLING}")
    max_length = int(st.max_seq_length)
    tok_meta = save_tokenizer(transformer.tokenizer, directory / "tokenizer")
    info = export_graph(transformer.auto_model, transformer.tokenizer, directory / "model.onnx", "last_hidden_state",
                        opset, sample_texts, max_length)
    return {"files": {"onnx_fp32": "model.onnx", "tokenizer": "tokenizer"}, "onnx": info, "tokenizer": tok_meta,
            "max_length": max_length, "pooling": mode, "normalize": bool(normalize or "Normalize" in types),
            "lowercase": bool(getattr(transformer, "do_lower_case", False)),
            "dim": int(st.get_sentence_embedding_dimension())}


def save_tfidf_vectorizer(vectorizer, path: str | Path) -> dict[str, Any]:
    """A fitted sklearn `TfidfVectorizer` as JSON: its transform-time arguments, the vocabulary in column order
    and idf_ (as a list). Callable analyzers/tokenizers/preprocessors are refused (they are code)."""
    params = vectorizer.get_params()
    code = [k for k in ("analyzer", "tokenizer", "preprocessor") if callable(params.get(k))]
    if code:
        raise ExportError(f"the TF-IDF vectorizer has callable {code}: code cannot be exported to a bundle")
    if params.get("input") != "content":
        raise ExportError(f"the TF-IDF vectorizer reads input={params.get('input')!r}; a bundle reads text (content)")
    kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items() if k not in FIT_ONLY}
    vocab = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    doc = {"params": kw, "dtype": np.dtype(params["dtype"]).name, "vocabulary": vocab,
           "idf": [float(x) for x in vectorizer.idf_] if params.get("use_idf", True) else None}
    Path(path).write_text(json.dumps(doc, ensure_ascii=False))
    return {"n_features": len(vocab)}


def load_tfidf_vectorizer(path: str | Path):
    """The vectorizer of `save_tfidf_vectorizer`, rebuilt: same arguments, fixed vocabulary, same idf_ (its
    `transform` equals the trained one's bit for bit)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    doc = json.loads(Path(path).read_text())
    kw: Mapping[str, Any] = dict(doc["params"])
    if kw.get("ngram_range") is not None:
        kw = {**kw, "ngram_range": tuple(kw["ngram_range"])}
    vocab = {t: i for i, t in enumerate(doc["vocabulary"])}
    vec = TfidfVectorizer(vocabulary=vocab, dtype=np.dtype(doc["dtype"]).type, **kw)
    vec.fit([""])  # a fixed vocabulary learns nothing from this; it only marks the vectorizer fitted
    if doc.get("idf") is not None:
        vec.idf_ = np.asarray(doc["idf"], dtype=np.float64)
    return vec
