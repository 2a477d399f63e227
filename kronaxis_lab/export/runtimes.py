"""Bundle runtimes: every classifier the harness trains, rebuilt from plain bundle files behind one interface.

    runtime = load_runtime(bundle_dir, meta["classifier"], RuntimeOptions(batch_size=16))
    P = runtime.predict_proba(["What is 2+2?"], "fp32")       # (n, m), columns in runtime.label_order

A runtime node of router.json (`kronaxis_lab.export.schema`) names its class in `kind` by import path; the
class must live in kronaxis_lab and subclass `BundleRuntime`, so a bundle can name no other callable. Its
files are data only: ONNX graphs, tokenizer JSON, `.npz` arrays read with `allow_pickle=False`, JSON. Loading
a bundle executes no code from it.

| classifier (classifiers/)               | runtime                   | files                                        |
|-----------------------------------------|---------------------------|----------------------------------------------|
| TierPredictor, StudentTierPredictor     | OnnxTransformerRuntime    | model.onnx (+ int8), tokenizer/              |
| TfidfLogRegRouter                       | TfidfLinearRuntime        | vectorizer.json, weights.npz                 |
| KNNRouter (index in the bundle)         | KnnRuntime                | encoder/ (ONNX MiniLM), index.npz            |
| MLPRouter                               | MlpRuntime                | encoder/, weights.npz                        |
| MFRouter                                | MfRuntime                 | encoder/, weights.npz                        |
| RuleRouter                              | RulesRuntime              | rules.json                                   |
| FallbackClassifier                      | FallbackRuntime           | primary/, fallback/ (member runtimes)        |
| EnsembleRouter                          | StackedEnsembleRuntime    | <member>/ …, combiner.npz                    |
| ClusterPriorRouter                      | ClusterPriorRuntime       | encoder/ or vectorizer.json, clusters.npz    |
| TaskPriorRouter (classifiers/task_prior.py) | TaskPriorRuntime (same module) | vectorizer.json, task_prior.npz      |

¹ defined beside its classifier, in kronaxis_lab/classifiers/task_prior.py.

A classifier joins with one public method, `export_runtime(directory, **graph_options) -> dict`: write its
learned state into `directory` (see `kronaxis_lab.export.formats` for the shared pieces) and return its
node, `{"kind": <runtime class path>, "label_order": model_names_, "files": {...}, "nodes": {...}, ...}`;
composite classifiers call their members' `export_runtime(directory / <name>)` and list them in `nodes`.
A classifier whose maths no runtime here reproduces adds a `BundleRuntime` subclass (one `predict_proba`).
`graph_options` (opset, max_length, sample_texts) reach the methods that write an ONNX graph.

Variants: "fp32" is each runtime's reference path; "int8" uses the quantised copy of every graph that has one
(composites pass the variant to members, which fall back to fp32 where they have no graph). Runtimes whose
output can jump under a tiny input change (kNN: the k-th neighbour swaps at a near-tie) say so in
`discontinuous`; the exporter then judges their parity by the share of rows that match (exporter.py).
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from scipy import sparse
from scipy.special import expit, logit
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l1, inplace_csr_row_normalize_l2
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from kronaxis_lab.classifiers.cluster_prior import soft_assign
from kronaxis_lab.classifiers.heads import HEADS, logits_to_proba, sigmoid
from kronaxis_lab.classifiers.knn_intent import ExactIndex, neighbour_average
from kronaxis_lab.classifiers.rules import RuleRouter
from kronaxis_lab.export.formats import POOLING, head_tail_keep, load_arrays, load_tfidf_vectorizer
from kronaxis_lab.export.schema import RUNTIME_PACKAGE, VARIANT_FILES, BundleError, tree_variants
from kronaxis_lab.export.wordpiece import AsciiWordPieceCounter
from kronaxis_lab.routing import ngrams

log = logging.getLogger(__name__)

__all__ = ["BundleRuntime", "BundleTokenizer", "ClusterPriorRuntime", "EmbeddingRuntime", "FallbackRuntime",
           "KnnRuntime", "MfRuntime", "MlpRuntime", "OnnxGraph", "OnnxTransformerRuntime", "RulesRuntime",
           "RuntimeOptions", "SentenceEncoder", "StackedEnsembleRuntime", "TfidfFeatures", "TfidfLinearRuntime",
           "check_texts", "kind_of", "load_runtime", "reorder", "runtime_class"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How runtimes run (load_bundle arguments): onnxruntime threads / providers, texts per ONNX call."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    providers: tuple[str, ...] | None = None
    batch_size: int = 64
    show_progress: bool = False  # a tqdm bar over large ONNX batches (the exporter turns it on)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, expected a string")
    return texts


def reorder(P: np.ndarray, source: Sequence[str], target: Sequence[str], where: str = "runtime") -> np.ndarray:
    """Columns of P from `source` order to `target` order (same model names)."""
    source, target = list(source), list(target)
    if source == target:
        return P
    missing = sorted(set(target) - set(source))
    if missing:
        raise BundleError(f"{where}: predicts {source}, which lacks {missing}")
    return P[:, [source.index(n) for n in target]]


def kind_of(cls: type) -> str:
    """The `kind` string that names a runtime class in router.json."""
    return f"{cls.__module__}.{cls.__qualname__}"


# -- tokenizer and ONNX graphs ----------------------------------------------------------------------
@dataclass
class _Encoding:
    """A head+tail-cut encoding: the fields of `tokenizers.Encoding` that `BundleTokenizer.pad` reads."""

    ids: list[int]
    attention_mask: list[int]
    type_ids: list[int]


class BundleTokenizer:
    """Batch tokenizer reproducing the HF tokenizer call `tok(texts, truncation=True, max_length=L, padding=True)`
    (pad to the longest text of the batch).

    Uses the Rust `tokenizers` library on tokenizer.json directly (no transformers import; about half the time
    of the transformers call, benchmarks/routing_latency.md); falls back to `transformers.AutoTokenizer` for
    tokenizers without a tokenizer.json. `head_tail` (the node's tokenizer.head_tail, a number of head tokens):
    head+tail truncation instead (`formats.head_tail_keep`, as the tier predictor trained).
    """

    def __init__(self, directory: str | Path, max_length: int, truncation_side: str = "right",
                 pad_token: str | None = None, pad_id: int = 0, pad_type_id: int = 0,
                 input_names: Sequence[str] = ("input_ids", "attention_mask"), head_tail: int | None = None):
        self.directory, self.max_length = Path(directory), int(max_length)
        self.truncation_side, self.input_names = truncation_side, list(input_names)
        self.head_tail = None if head_tail is None else int(head_tail)
        self.pad_token, self.pad_id, self.pad_type_id = pad_token, int(pad_id), int(pad_type_id)
        tj = self.directory / "tokenizer.json"
        self._hf = None
        self._ascii_counter: AsciiWordPieceCounter | None = None
        if tj.is_file():
            try:
                self._tok = Tokenizer.from_file(str(tj))
            except Exception as e:
                raise BundleError(f"{tj}: cannot load the tokenizer: {e}") from e
            self._tok.enable_truncation(self.max_length, direction=self.truncation_side)
            self._tok.enable_padding(direction="right", pad_id=self.pad_id, pad_type_id=self.pad_type_id,
                                     pad_token=self.pad_token or "[PAD]")
            self._tok_ragged = Tokenizer.from_file(str(tj))  # truncation without padding: `tokenize`
            self._tok_ragged.enable_truncation(self.max_length, direction=self.truncation_side)
            if self.head_tail is not None:  # cut after encoding the whole text (`_cut`)
                self._tok_ragged.no_truncation()
            self._tok_ragged.no_padding()
            self._counter = Tokenizer.from_file(str(tj))
            self._counter.no_truncation()
            self._counter.no_padding()
            self._ascii_counter = AsciiWordPieceCounter(self._counter) \
                if AsciiWordPieceCounter.accepts(self._counter) else None
        else:
            from transformers import AutoTokenizer  # heavy; only for tokenizers without a tokenizer.json

            try:
                self._hf = AutoTokenizer.from_pretrained(self.directory)
            except (OSError, ValueError) as e:
                raise BundleError(f"{self.directory}: cannot load the tokenizer: {e}") from e
            self._hf.truncation_side = self.truncation_side

    @classmethod
    def from_node(cls, directory: Path, node: Mapping[str, Any]) -> "BundleTokenizer":
        """The tokenizer of a graph node: files.tokenizer, max_length, tokenizer settings, onnx.inputs."""
        tk = node.get("tokenizer") or {}
        head_tail = tk.get("head_tail")
        if head_tail is not None and (isinstance(head_tail, bool) or not isinstance(head_tail, int) or head_tail < 0):
            raise BundleError(f"{directory}: tokenizer.head_tail must be a head-token count ≥ 0, got {head_tail!r}")
        return cls(directory / node["files"]["tokenizer"], int(node["max_length"]), tk.get("truncation_side", "right"),
                   tk.get("pad_token"), int(tk.get("pad_id", 0)), int(tk.get("pad_type_id", 0)),
                   [str(x) for x in node["onnx"]["inputs"]], head_tail)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """int64 arrays (n, longest) for each ONNX input name."""
        return self.encode_with_counts(texts)[0]

    def encode_with_counts(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`encode`, plus each text's full token count (as `count`) read off the same pass: the truncated
        part is kept by the tokenizer as overflowing encodings; special tokens are not counted."""
        encs, _, counts = self.tokenize(texts)
        return self.pad(encs), counts

    def tokenize(self, texts: Sequence[str]) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """One unpadded (truncated) pass over `texts`: (per-text encodings for `pad`, tokens each text feeds the
        graph (special tokens included, ≤ max_length), full token count per text as `count` gives it)."""
        texts = list(texts)
        if self._hf is not None:
            if self.head_tail is None:
                enc = self._hf(texts, truncation=True, max_length=self.max_length, padding=False)
                encs = [{k: enc[k][i] for k in self.input_names} for i in range(len(texts))]
            else:
                enc = self._hf(texts, truncation=False, padding=False, return_special_tokens_mask=True, verbose=False)
                encs = []
                for i in range(len(texts)):
                    keep = head_tail_keep(enc["special_tokens_mask"][i], self.max_length, self.head_tail)
                    encs.append({k: enc[k][i] if keep is None else [enc[k][i][j] for j in keep]
                                 for k in self.input_names})
            lengths = np.array([len(e["input_ids"]) for e in encs], dtype=np.int64)
            return encs, lengths, self.count(texts)
        encs = self._tok_ragged.encode_batch(texts)
        if self.head_tail is not None:  # whole texts were encoded: count them, then cut
            counts = np.array([len(e.ids) - sum(e.special_tokens_mask) for e in encs], dtype=np.int64)
            encs = [self._cut(e) for e in encs]
            return encs, np.array([len(e.ids) for e in encs], dtype=np.int64), counts
        lengths = np.array([len(e.ids) for e in encs], dtype=np.int64)
        counts = np.array([len(e.ids) - sum(e.special_tokens_mask) for e in encs], dtype=np.int64)
        for i, e in enumerate(encs):
            for o in e.overflowing:
                counts[i] += sum(a and not sp for a, sp in zip(o.attention_mask, o.special_tokens_mask))
        return encs, lengths, counts

    def _cut(self, e: Any) -> Any:
        keep = head_tail_keep(e.special_tokens_mask, self.max_length, self.head_tail)
        if keep is None:
            return e
        return _Encoding([e.ids[j] for j in keep], [e.attention_mask[j] for j in keep], [e.type_ids[j] for j in keep])

    def pad(self, encs: Sequence[Any]) -> dict[str, np.ndarray]:
        """int64 arrays (n, longest of `encs`) for each ONNX input name, padded on the right as the HF call
        `padding=True` pads (pad_id, attention 0, pad_type_id)."""
        if self._hf is not None:
            enc = self._hf.pad({k: [e[k] for e in encs] for k in self.input_names}, padding=True, return_tensors="np")
            return {k: np.asarray(enc[k], dtype=np.int64) for k in self.input_names}
        width = max((len(e.ids) for e in encs), default=0)
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.full((len(encs), width), self.pad_type_id, dtype=np.int64) \
            if "token_type_ids" in self.input_names else None
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = e.attention_mask
            if types is not None:
                types[i, :n] = e.type_ids
        out = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            out["attention_mask"] = mask
        if types is not None:
            out["token_type_ids"] = types
        return out

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text: no special tokens, no truncation (the cost model's n_i)."""
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self._hf is not None:
            ids = self._hf(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        elif self._ascii_counter is not None:  # the same counts, without the Rust pipeline's alignments
            return self._ascii_counter.count(texts)
        else:
            # no offsets, no id lists: a quarter less CPU than encode_batch + .ids, the same counts
            ids = self._counter.encode_batch_fast(texts, add_special_tokens=False)
        return np.array([len(x) for x in ids], dtype=np.int64)


class OnnxGraph:
    """One graph node's onnxruntime sessions (one per variant, created on first use) and its tokenizer;
    `run` feeds length-sorted runs of at most `options.batch_size` texts with bounded padding."""

    def __init__(self, directory: Path, node: Mapping[str, Any], options: RuntimeOptions, where: str,
                 width: int | None = None):
        self.directory, self.node, self.options, self.where = Path(directory), node, options, where
        self.input_names = [str(x) for x in node["onnx"]["inputs"]]
        self.tokenizer = BundleTokenizer.from_node(self.directory, node)
        self.width = width
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def variants(self) -> list[str]:
        files = self.node["files"]
        return [v for v, key in VARIANT_FILES.items() if files.get(key)]

    def session(self, variant: str):
        """The onnxruntime session of `variant` ("fp32" / "int8"), created on first use."""
        if variant not in self.variants:
            raise BundleError(f"{self.where}: unknown ONNX variant '{variant}' (this graph has {self.variants})")
        sess = self._sessions.get(variant)
        if sess is not None:
            return sess
        with self._lock:
            if variant not in self._sessions:
                self._sessions[variant] = self._create(variant)
            return self._sessions[variant]

    def _create(self, variant: str):
        import onnxruntime as ort

        path = self.directory / self.node["files"][VARIANT_FILES[variant]]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.intra_op_threads:
            so.intra_op_num_threads = int(self.options.intra_op_threads)
        if self.options.inter_op_threads:
            so.inter_op_num_threads = int(self.options.inter_op_threads)
        providers = list(self.options.providers) if self.options.providers else ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            raise BundleError(f"{path}: onnxruntime cannot load the {variant} graph: {e}") from e
        names = [i.name for i in sess.get_inputs()]
        if sorted(names) != sorted(self.input_names):
            raise BundleError(f"{path}: graph inputs {names} differ from router.json onnx.inputs {self.input_names}")
        shape = sess.get_outputs()[0].shape
        if self.width is not None and shape and isinstance(shape[-1], int) and shape[-1] != self.width:
            raise BundleError(f"{path}: the graph has {shape[-1]} outputs but router.json expects {self.width}")
        log.info("onnxruntime session %s (%s) ready", path.name, ", ".join(sess.get_providers()))
        return sess

    #: a run of length-sorted texts grows while its padded size (count × longest) stays within this factor
    #: of the tokens it really holds (bounded padding waste), and up to `options.batch_size` texts
    PAD_SLACK: ClassVar[float] = 1.25
    #: texts tokenized (and sorted) per pass: bounds the encodings held at once on very large inputs
    CHUNK: ClassVar[int] = 4096

    @classmethod
    def plan_runs(cls, lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
        """Indices of `lengths` grouped into ONNX runs: sorted by length, a new run starts when the next text
        would push count × max length above `PAD_SLACK` × the run's true tokens, or past `batch_size` texts."""
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        runs, start, total = [], 0, 0
        for pos, i in enumerate(order):
            size, longest = pos - start + 1, int(lengths[i])  # ascending: the new text is the run's longest
            if size > 1 and (size > batch_size or size * longest > cls.PAD_SLACK * (total + longest)):
                runs.append(order[start:pos])
                start, total = pos, 0
            total += longest
        if len(order):
            runs.append(order[start:])
        return runs

    def run(self, texts: list[str], variant: str, reduce, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, width) float32 in input order, full token count per text): one tokenizer pass per
        `CHUNK` texts, then length-sorted ONNX runs of at most `options.batch_size` texts with bounded padding
        (`plan_runs`); `reduce(output, feed)` turns one run's graph output into its (b, width) rows."""
        out = np.zeros((len(texts), width), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        if not texts:
            return out, counts
        sess = self.session(variant)
        output_name = sess.get_outputs()[0].name
        bs = max(1, int(self.options.batch_size))
        bar = None
        if self.options.show_progress and len(texts) >= 10 * bs:
            bar = tqdm(total=len(texts), desc=f"onnx {variant}")
        for c in range(0, len(texts), self.CHUNK):
            encs, lengths, counts[c:c + self.CHUNK] = self.tokenizer.tokenize(texts[c:c + self.CHUNK])
            for idx in self.plan_runs(lengths, bs):
                feed = self.tokenizer.pad([encs[i] for i in idx])
                out[c + idx] = reduce(sess.run([output_name], feed)[0], feed)
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out, counts


# -- the interface ----------------------------------------------------------------------------------
class BundleRuntime(ABC):
    """A classifier's inference from bundle files. Subclasses implement `predict_proba` (columns in
    `label_order`); composites load children with `child`."""

    #: P̂ can jump under a tiny change of the input representation (see the module docstring)
    discontinuous: ClassVar[bool] = False

    def __init__(self, directory: str | Path, node: Mapping[str, Any], options: RuntimeOptions | None = None,
                 where: str = "classifier"):
        self.directory, self.node, self.where = Path(directory), dict(node), where
        self.options = options or RuntimeOptions()
        try:
            self.label_order: list[str] = [str(x) for x in node["label_order"]]
        except KeyError:
            raise BundleError(f"{where}: field 'label_order' is missing") from None
        self.files: dict[str, str] = {k: v for k, v in (node.get("files") or {}).items() if v}
        #: the runtime's own tokenizer (a candidate prompt-token counter for the cost model), if it has one
        self.tokenizer: BundleTokenizer | None = None

    # -- what subclasses implement ---------------------------------------------------------------------
    @abstractmethod
    def predict_proba(self, texts: list[str], variant: str) -> np.ndarray:
        """(n, m) success probabilities, columns in `label_order`."""

    @property
    def variants(self) -> list[str]:
        return tree_variants(self.node)

    def predict_with_counts(self, texts: list[str], variant: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(P̂, prompt-token counts of `self.tokenizer` read off the same pass, or None)."""
        return self.predict_proba(texts, variant), None

    # -- helpers -------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        if key not in self.files:
            raise BundleError(f"{self.where}: files.{key} is missing")
        return self.directory / self.files[key]

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        try:
            return load_arrays(self.path(key))
        except (OSError, ValueError) as e:  # a pickled (object) array is a ValueError with allow_pickle=False
            raise BundleError(f"{self.path(key)}: cannot read the arrays: {e}") from e

    def tfidf_vectorizer(self, key: str = "vectorizer") -> "TfidfFeatures":
        """The fitted sklearn TfidfVectorizer rebuilt from the JSON file `files[key]` (no pickle), behind
        `TfidfFeatures` (its `transform`, without the per-call validation)."""
        try:
            return TfidfFeatures(load_tfidf_vectorizer(self.path(key)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{self.path(key)}: cannot rebuild the vectorizer: {e}") from e

    def child_node(self, name: str) -> dict[str, Any]:
        nodes = self.node.get("nodes") or {}
        if name not in nodes:
            raise BundleError(f"{self.where}: child node '{name}' is missing")
        return dict(nodes[name])

    def child(self, name: str) -> "BundleRuntime":
        return load_runtime(self.directory / name, self.child_node(name), self.options, f"{self.where}.nodes.{name}")

    def pick(self, variant: str) -> str:
        """`variant` where this runtime has it, else its reference fp32 path (composites' members)."""
        return variant if variant in self.variants else "fp32"

    def empty(self) -> np.ndarray:
        return np.zeros((0, len(self.label_order)))


def runtime_class(kind: Any, where: str) -> type[BundleRuntime]:
    """The runtime class named by `kind` (module.Class inside kronaxis_lab, a BundleRuntime subclass)."""
    if not isinstance(kind, str) or not kind.startswith(RUNTIME_PACKAGE):
        raise BundleError(f"{where}: kind {kind!r} must name a runtime class in {RUNTIME_PACKAGE.rstrip('.')}")
    module, _, name = kind.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise BundleError(f"{where}: runtime {kind!r} cannot be imported: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, BundleRuntime)) or cls is BundleRuntime:
        raise BundleError(f"{where}: {kind!r} is not a BundleRuntime subclass")
    return cls


def load_runtime(directory: str | Path, node: Mapping[str, Any], options: RuntimeOptions | None = None,
                 where: str = "classifier") -> BundleRuntime:
    """The runtime of one router.json node (its files relative to `directory`)."""
    if not isinstance(node, Mapping):
        raise BundleError(f"{where} must be an object, got {type(node).__name__}")
    return runtime_class(node.get("kind"), where)(directory, node, options, where)


# -- transformer tier predictor -----------------------------------------------------------------------
class OnnxTransformerRuntime(BundleRuntime):
    """The fine-tuned tier predictor: tokenizer → ONNX graph (logits, label order) → `heads.logits_to_proba`
    (σ, plus the running max along `tier_order` for the ordinal head) in numpy, exactly as the classifier's
    `predict_proba`. Node: head, tier_order (names), max_length, tokenizer, onnx, files onnx_fp32/int8 +
    tokenizer."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.head = str(node.get("head"))
        if self.head not in HEADS:
            raise BundleError(f"{where}: head '{self.head}' is not one of {HEADS}")
        order = [str(x) for x in node.get("tier_order") or self.label_order]
        if sorted(order) != sorted(self.label_order):
            raise BundleError(f"{where}: tier_order {order} must list each model of label_order once")
        self.tier_order_idx = [self.label_order.index(n) for n in order]
        self.graph = OnnxGraph(self.directory, node, self.options, where, width=len(self.label_order))
        self.tokenizer = self.graph.tokenizer

    @property
    def variants(self) -> list[str]:
        return self.graph.variants

    def run(self, texts: Sequence[str], variant: str) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n, m) in `label_order`, full token count per text) in one tokenizer pass."""
        return self.graph.run(check_texts(texts), variant, lambda out, feed: out, len(self.label_order))

    def predict_logits(self, texts: Sequence[str], variant: str) -> np.ndarray:
        return self.run(texts, variant)[0]

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        return logits_to_proba(logits, self.head, self.tier_order_idx)

    def predict_with_counts(self, texts, variant):
        logits, counts = self.run(texts, variant)
        return self.proba_from_logits(logits), counts

    def predict_proba(self, texts, variant):
        return self.proba_from_logits(self.predict_logits(texts, variant))


# -- sentence embeddings + heads ----------------------------------------------------------------------
class SentenceEncoder:
    """A sentence-transformers encoder from an `encoder` node (formats.export_sentence_encoder): tokenizer →
    ONNX `last_hidden_state` → pooling (mean over the attention mask, [CLS], or max) → L2 norm, in numpy."""

    def __init__(self, directory: Path, node: Mapping[str, Any], options: RuntimeOptions, where: str):
        self.node, self.where = node, where
        self.pooling, self.normalize = str(node.get("pooling")), bool(node.get("normalize", True))
        if self.pooling not in POOLING:
            raise BundleError(f"{where}: pooling {self.pooling!r} is not one of {POOLING}")
        self.lowercase, self.dim = bool(node.get("lowercase", False)), int(node["dim"])
        self.graph = OnnxGraph(directory, node, options, where, width=self.dim)
        self.tokenizer = self.graph.tokenizer

    @property
    def variants(self) -> list[str]:
        return self.graph.variants

    def pool(self, h: np.ndarray, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """sentence-transformers' Pooling (+ Normalize) on one batch of token embeddings (b, seq, dim)."""
        mask = feed["attention_mask"].astype(np.float32)[:, :, None]
        if self.pooling == "mean":
            v = (h * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        elif self.pooling == "cls":
            v = h[:, 0]
        else:
            v = np.where(mask > 0, h, np.float32(-1e9)).max(axis=1)
        if self.normalize:
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v

    def encode(self, texts: list[str], variant: str) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, dim) float32, full token count per text)."""
        texts = [t.lower() for t in texts] if self.lowercase else texts
        return self.graph.run(texts, variant, self.pool, self.dim)


class EmbeddingRuntime(BundleRuntime):
    """Base of the routers on sentence embeddings: the `encoder` child node, then `head(X)` in numpy."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.encoder = SentenceEncoder(self.directory / "encoder", self.child_node("encoder"), self.options,
                                       f"{where}.nodes.encoder")
        self.tokenizer = self.encoder.tokenizer

    @abstractmethod
    def head(self, X: np.ndarray) -> np.ndarray:
        """(n, m) P̂ from (n, dim) embeddings."""

    @property
    def variants(self) -> list[str]:
        return self.encoder.variants

    def predict_with_counts(self, texts, variant):
        if not texts:
            return self.empty(), np.zeros(0, dtype=np.int64)
        X, counts = self.encoder.encode(texts, variant)
        return self.head(X), counts

    def predict_proba(self, texts, variant):
        return self.predict_with_counts(texts, variant)[0]


class KnnRuntime(EmbeddingRuntime):
    """`KNNRouter`: exact cosine top-k over the bundled index (`index.npz`: vectors, targets with NaN =
    unobserved, prior), then `knn_intent.neighbour_average` (the classifier's own formula)."""

    discontinuous = True

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        z = self.arrays("index")
        self.index = ExactIndex().fit(z["vectors"])
        self.targets, self.prior = z["targets"], z["prior"]
        self.k, self.weighting = int(node["k"]), str(node["weighting"])
        self.temperature, self.eps = float(node["temperature"]), float(node["eps"])

    def head(self, X):
        sims, idx = self.index.search(X, self.k)
        return neighbour_average(sims, idx, self.targets, self.prior, self.weighting, self.temperature, self.eps)


ACTIVATIONS = {"identity": lambda x: x, "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "logistic": expit}


class MlpRuntime(EmbeddingRuntime):
    """`MLPRouter`: sklearn MLPRegressor forward passes from their weights (`weights.npz`: n{i}_W{l}, n{i}_b{l}
    per network i and layer l), hidden `activation`, identity output, clipped to [0, 1]. One network per
    model (`per_model`), or one multi-output network."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        z = self.arrays("weights")
        self.activation = str(node["activation"])
        if self.activation not in ACTIVATIONS:
            raise BundleError(f"{where}: activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.nets = [[(z[f"n{i}_W{j}"], z[f"n{i}_b{j}"]) for j in range(int(n))]
                     for i, n in enumerate(node["n_layers"])]
        self.per_model = bool(node["per_model"])

    def forward(self, X: np.ndarray, layers) -> np.ndarray:
        a = X
        for j, (W, b) in enumerate(layers):
            a = a @ W + b
            if j < len(layers) - 1:
                a = ACTIVATIONS[self.activation](a)
        return a

    def head(self, X):
        if self.per_model:
            out = np.stack([self.forward(X, net).reshape(len(X)) for net in self.nets], axis=1)
        else:
            out = self.forward(X, self.nets[0]).reshape(len(X), -1)
        return np.clip(out, 0.0, 1.0)


class MfRuntime(EmbeddingRuntime):
    """`MFRouter`: σ( W e(q) · (P_j / ‖P_j‖ ⊙ w) + b_j ) from `weights.npz` (P, w, bias, and proj = W unless
    use_proj is off), float32 like the PyTorch module."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        z = self.arrays("weights")
        p = z["P"]
        self.V = (p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)) * z["w"]
        self.proj, self.bias = z.get("proj"), z["bias"]

    def head(self, X):
        q = X @ self.proj.T if self.proj is not None else X
        return sigmoid(q @ self.V.T + self.bias)


# -- text features without a graph ----------------------------------------------------------------------
class TfidfFeatures:
    """`vectorizer.transform(texts)` of a fitted sklearn `TfidfVectorizer`, bit for bit, at a fraction of its
    per-call cost (on one short text sklearn's parameter and array validation costs more than the features):
    the same analyzer and vocabulary counts (CountVectorizer._count_vocab), then as TfidfTransformer.transform:
    log(tf) + 1 if sublinear, × idf, row norm. Configurations outside that path (binary counts, another
    norm, a non-float dtype) call sklearn's own `transform`."""

    def __init__(self, vectorizer: Any) -> None:
        self.vectorizer = vectorizer
        v = vectorizer
        # sklearn's n-grams, shared with the output-token model where the settings agree (routing/ngrams.py)
        self.analyzer = ngrams.analyzer_for(v)
        self.vocabulary: Mapping[str, int] = v.vocabulary_
        self.n_features = len(self.vocabulary)
        idf = getattr(v, "idf_", None)  # as TfidfTransformer: × idf only when it has one
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float64)
        self.dtype = np.dtype(v.dtype)
        self.normalize = {"l2": inplace_csr_row_normalize_l2, "l1": inplace_csr_row_normalize_l1,
                          None: None}.get(v.norm, False)
        self.sublinear = bool(v.sublinear_tf)
        self.fast = not v.binary and self.normalize is not False and self.dtype in (np.float64, np.float32)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        if not self.fast:
            return self.vectorizer.transform(texts)
        vocab_get, analyze = self.vocabulary.get, self.analyzer
        indices: list[int] = []
        values: list[int] = []
        indptr = [0]
        for doc in texts:
            counter = Counter(map(vocab_get, analyze(doc)))  # C-level counting; None = out of vocabulary
            counter.pop(None, None)
            indices.extend(counter)
            values.extend(counter.values())
            indptr.append(len(indices))
        itype = np.int32 if indptr[-1] <= np.iinfo(np.int32).max else np.int64
        X = sparse.csr_matrix((np.asarray(values, dtype=np.intc), np.asarray(indices, dtype=itype),
                               np.asarray(indptr, dtype=itype)), shape=(len(indptr) - 1, self.n_features),
                              dtype=self.dtype)
        X.sort_indices()
        if self.sublinear:
            np.log(X.data, X.data)
            X.data += 1.0
        if self.idf is not None:
            X.data *= self.idf[X.indices]
        if self.normalize is not None:
            self.normalize(X)
        return X


class TfidfLinearRuntime(BundleRuntime):
    """`TfidfLogRegRouter`: the sklearn TfidfVectorizer rebuilt from vectorizer.json, then per model
    P̂_j = σ(x·w_j + b_j) (`weights.npz`: coef (m, d), intercept (m,), constant (m,) = the success rate of a
    model whose targets had one class, NaN where a regression was fitted). Bit for bit the classifier's."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.vectorizer = self.tfidf_vectorizer()
        z = self.arrays("weights")
        self.coef, self.intercept, self.constant = z["coef"], z["intercept"], z["constant"]
        self.coef_t = np.ascontiguousarray(self.coef.T)  # (d, m)
        self.fitted = ~np.isfinite(self.constant)  # models with a regression (else their constant rate)

    def predict_proba(self, texts, variant):
        if not texts:
            return self.empty()
        X = self.vectorizer.transform(texts)
        # one sparse product for every model: each column sums x_k·w_jk in the same order as sklearn's
        # per-model decision_function, so the numbers are the same
        z = np.asarray(X @ self.coef_t) + self.intercept
        return np.where(self.fitted, expit(z), self.constant)


class RulesRuntime(BundleRuntime):
    """`RuleRouter` rebuilt from rules.json (the parsed rules spec, model tiers and fitted prior): rules are
    data (features, keywords, regular expressions), interpreted by the rule engine."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        doc = node.get("rules")
        if not isinstance(doc, Mapping):
            raise BundleError(f"{where}: field 'rules' must hold the rules spec")
        try:
            self.router = RuleRouter(rules=doc["spec"], model_names=self.label_order,
                                     model_tiers=doc.get("model_tiers"), fit_prior=False)
        except (ValueError, KeyError) as e:
            raise BundleError(f"{where}: rules: {e}") from e
        prior = doc.get("prior")
        self.router.prior_ = None if prior is None else np.asarray(prior, dtype=np.float64)

    def predict_proba(self, texts, variant):
        return self.router.predict_proba(texts) if texts else self.empty()


# -- composites ------------------------------------------------------------------------------------------
class FallbackRuntime(BundleRuntime):
    """`FallbackClassifier`: the `primary` child; the whole batch from the `fallback` child when the primary
    fails or returns the wrong shape, and row by row where it returns non-finite values. A primary that cannot
    be loaded leaves the fallback (logged), as the classifier does."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.fallback = self.child("fallback")
        self.n_fallback_rows = 0
        try:
            self.primary: BundleRuntime | None = self.child("primary")
        except BundleError as e:
            log.warning("%s: the primary runtime cannot be loaded (%s); serving from the fallback", where, e)
            self.primary = None
        parts = [r for r in (self.primary, self.fallback) if r is not None]
        self.tokenizer = next((r.tokenizer for r in parts if r.tokenizer is not None), None)
        self.discontinuous = any(r.discontinuous for r in parts)

    def _fallback(self, texts, variant):
        P = self.fallback.predict_proba(texts, self.fallback.pick(variant))
        return reorder(np.asarray(P, np.float64), self.fallback.label_order, self.label_order, self.where)

    def predict_proba(self, texts, variant):
        try:
            if self.primary is None:
                raise RuntimeError("no primary runtime")
            P = np.asarray(self.primary.predict_proba(texts, self.primary.pick(variant)), dtype=np.float64)
            P = reorder(P, self.primary.label_order, self.label_order, self.where)
            if P.shape != (len(texts), len(self.label_order)):
                raise ValueError(f"primary returned shape {P.shape}")
        except Exception as e:  # noqa: BLE001 - any primary failure is what a fallback is for
            log.warning("primary runtime unavailable (%s: %s); using the fallback for %d texts", type(e).__name__, e,
                        len(texts))
            self.n_fallback_rows += len(texts)
            return self._fallback(texts, variant)
        bad = ~np.isfinite(P).all(axis=1)
        if bad.any():
            self.n_fallback_rows += int(bad.sum())
            P[bad] = self._fallback([t for t, b in zip(texts, bad) if b], variant)
        return P


class StackedEnsembleRuntime(BundleRuntime):
    """`EnsembleRouter`: member runtimes (children, in `members` order), combined as the classifier does:
    `mean` of their P̂, or `logreg`: P̂_j = σ(z_j · coef_j + intercept_j), z_j = logit(clip(P̂^a, eps, 1 − eps))
    of column j (every column with `use_all_models`) of each member a (`combiner.npz`: coef, intercept)."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.combiner = str(node.get("combiner", "logreg"))
        if self.combiner not in ("mean", "logreg"):
            raise BundleError(f"{where}: combiner {self.combiner!r} is not one of mean, logreg")
        names = list(node.get("members") or [])
        if not names:
            raise BundleError(f"{where}: field 'members' lists no member")
        self.members = {n: self.child(n) for n in names}
        self.use_all_models, self.eps = bool(node.get("use_all_models", False)), float(node.get("eps", 1e-6))
        if self.combiner == "logreg":
            z = self.arrays("combiner")
            self.coef, self.intercept = z["coef"], z["intercept"]
        self.tokenizer = next((r.tokenizer for r in self.members.values() if r.tokenizer is not None), None)
        self.discontinuous = any(r.discontinuous for r in self.members.values())

    def member_predictions(self, texts: list[str], variant: str) -> dict[str, np.ndarray]:
        return {n: reorder(np.asarray(r.predict_proba(texts, r.pick(variant)), np.float64), r.label_order,
                           self.label_order, f"{self.where}.nodes.{n}") for n, r in self.members.items()}

    def predict_proba(self, texts, variant):
        if not texts:
            return self.empty()
        preds = self.member_predictions(texts, variant)
        if self.combiner == "mean":
            return np.mean(np.stack(list(preds.values())), axis=0)
        out = np.empty((len(texts), len(self.label_order)))
        for j in range(len(self.label_order)):
            cols = [P if self.use_all_models else P[:, [j]] for P in preds.values()]
            Z = np.hstack([logit(np.clip(c, self.eps, 1 - self.eps)) for c in cols])
            out[:, j] = expit(Z @ self.coef[j] + self.intercept[j])
        return out


class ClusterPriorRuntime(BundleRuntime):
    """`ClusterPriorRouter`: features x (the `encoder` child, or TF-IDF from vectorizer.json → SVD components),
    rows L2-normalised; squared distances to the centroids → `cluster_prior.soft_assign` at `temperature` →
    P̂ = clip(a(q) · rates, 0, 1) (`clusters.npz`: centroids, rates, and components for TF-IDF + SVD)."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.features = str(node.get("features", "embedding"))
        z = self.arrays("clusters")
        self.centroids, self.rates, self.components = z["centroids"], z["rates"], z.get("components")
        self.temperature = float(node.get("temperature", 0.0))
        self.discontinuous = self.temperature <= 0  # hard assignment: P̂ jumps at a cluster border
        self.encoder = self.vectorizer = None
        if self.features == "embedding":
            self.encoder = SentenceEncoder(self.directory / "encoder", self.child_node("encoder"), self.options,
                                           f"{where}.nodes.encoder")
            self.tokenizer = self.encoder.tokenizer
        elif self.features == "tfidf":
            self.vectorizer = self.tfidf_vectorizer()
        else:
            raise BundleError(f"{where}: features {self.features!r} is not one of embedding, tfidf")

    @property
    def variants(self) -> list[str]:
        return self.encoder.variants if self.encoder is not None else ["fp32"]

    def feature_rows(self, texts: list[str], variant: str) -> tuple[np.ndarray, np.ndarray | None]:
        counts = None
        if self.encoder is not None:
            X, counts = self.encoder.encode(texts, variant)
        else:
            T = self.vectorizer.transform(texts)
            X = T @ self.components.T if self.components is not None else T.toarray()
        X = np.asarray(X, dtype=np.float64)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12), counts

    def predict_with_counts(self, texts, variant):
        if not texts:
            return self.empty(), (np.zeros(0, dtype=np.int64) if self.encoder is not None else None)
        X, counts = self.feature_rows(texts, variant)
        C = self.centroids
        D2 = np.maximum((X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None, :], 0.0)
        return np.clip(soft_assign(D2, self.temperature) @ self.rates, 0.0, 1.0), counts

    def predict_proba(self, texts, variant):
        return self.predict_with_counts(texts, variant)[0]
