"""The production router bundle: load, validate and run what `kronaxis-export` writes.

    bundle = load_bundle("outputs/export/<run>/bundle")      # validates router.json, files and sha256
    P = bundle.predict_proba(["What is 2+2?"])               # (n, m) success probabilities, fleet order
    choice = bundle.decide(P, texts=["What is 2+2?"])        # (n,) model index under the bundle's policy
    bundle.model_names[choice[0]]

Layout of `<bundle>/`:
    router.json        everything needed to route (see `load_bundle` for what is checked); `sha256` lists
                       every other file of the bundle
    model.onnx         the classifier graph: input_ids, attention_mask(, token_type_ids) → logits (label order)
    model.int8.onnx    the same with dynamically quantised int8 weights
    tokenizer/         the HF tokenizer files
    metrics.json       training + replay metrics of the exported router
    README.md          the model card

Probabilities are computed exactly as the classifier's `predict_proba`: ONNX gives logits, then
`logits_to_proba` (σ, plus the running max along the tier order for the ordinal head) in numpy. Only numpy
(with tokenizers, hydra and pydantic) is imported at module level; onnxruntime when a session is first created.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from kronaxis_lab.classifiers.heads import HEADS, logits_to_proba
from kronaxis_lab.data.fleet import Fleet, FleetError
from kronaxis_lab.export.schema import (
    FORMAT_VERSION,
    KIND,
    ROUTER_FILE,
    VARIANT_FILES,
    BundleError,
    RouterMeta,
    decode_param,
    encode_param,
)
from kronaxis_lab.routing.costs import CostModel, CostModelError
from kronaxis_lab.routing.policies import Policy

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "KIND", "ROUTER_FILE", "VARIANT_FILES", "Bundle", "BundleError", "BundleTokenizer",
           "OnnxClassifier", "bundle_id", "decode_param", "encode_param", "file_hashes", "instantiate_node",
           "instantiate_policy", "load_bundle", "read_meta", "sha256_file", "validate_meta"]


# -- small helpers shared with the exporter --------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(directory: str | Path, exclude: Sequence[str] = (ROUTER_FILE,)) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file under `directory` except `exclude`."""
    directory = Path(directory)
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = sha256_file(p)
    return out


#: router.json fields left out of the bundle id (derived, or volatile)
ID_EXCLUDED = ("bundle_id", "sha256", "created")


def bundle_id(hashes: Mapping[str, str], meta: Mapping[str, Any] | None = None) -> str:
    """Content id of a bundle (16 hex digits): sha256 over its file hashes and its router.json settings
    (policy, parameter, governance, ...), so the same graph at another operating point is another bundle."""
    settings = {k: v for k, v in (meta or {}).items() if k not in ID_EXCLUDED}
    blob = json.dumps({"files": dict(sorted(hashes.items())), "meta": settings}, sort_keys=True,
                      separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# -- runtime pieces ------------------------------------------------------------------------------------
class BundleTokenizer:
    """Batch tokenizer reproducing the classifier's HF tokenizer call
    `tok(texts, truncation=True, max_length=L, padding=True)` (pad to the longest text of the batch).

    Uses the Rust `tokenizers` library on tokenizer.json directly (no transformers import; about half the time
    of the transformers call, benchmarks/routing_latency.md); falls back to `transformers.AutoTokenizer` for
    tokenizers without a tokenizer.json.
    """

    def __init__(self, directory: str | Path, max_length: int, truncation_side: str = "right",
                 pad_token: str | None = None, pad_id: int = 0, pad_type_id: int = 0,
                 input_names: Sequence[str] = ("input_ids", "attention_mask")):
        self.directory, self.max_length = Path(directory), int(max_length)
        self.truncation_side, self.input_names = truncation_side, list(input_names)
        self.pad_token, self.pad_id, self.pad_type_id = pad_token, int(pad_id), int(pad_type_id)
        tj = self.directory / "tokenizer.json"
        self._hf = None
        if tj.is_file():
            try:
                self._tok = Tokenizer.from_file(str(tj))
            except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception
                raise BundleError(f"{tj}: cannot load the tokenizer: {e}") from e
            self._tok.enable_truncation(self.max_length, direction=self.truncation_side)
            self._tok.enable_padding(direction="right", pad_id=self.pad_id, pad_type_id=self.pad_type_id,
                                     pad_token=self.pad_token or "[PAD]")
            self._counter = Tokenizer.from_file(str(tj))
            self._counter.no_truncation()
            self._counter.no_padding()
        else:
            from transformers import AutoTokenizer  # heavy; only for tokenizers without a tokenizer.json

            try:
                self._hf = AutoTokenizer.from_pretrained(self.directory)
            except (OSError, ValueError) as e:
                raise BundleError(f"{self.directory}: cannot load the tokenizer: {e}") from e
            self._hf.truncation_side = self.truncation_side

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """int64 arrays (n, longest) for each ONNX input name."""
        return self.encode_with_counts(texts)[0]

    def encode_with_counts(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`encode`, plus each text's full token count (as `count`) read off the same pass: the truncated
        part is kept by the tokenizer as overflowing encodings; special tokens are not counted."""
        texts = list(texts)
        if self._hf is not None:
            enc = self._hf(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
            return {k: np.asarray(enc[k], dtype=np.int64) for k in self.input_names}, self.count(texts)
        encs = self._tok.encode_batch(texts)
        out = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64)}
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        if "attention_mask" in self.input_names:
            out["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            out["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
        special = np.array([e.special_tokens_mask for e in encs], dtype=np.int64)
        counts = (mask * (1 - special)).sum(axis=1)
        for i, e in enumerate(encs):
            for o in e.overflowing:
                counts[i] += sum(a and not sp for a, sp in zip(o.attention_mask, o.special_tokens_mask))
        return out, counts

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text: no special tokens, no truncation (the cost model's n_i)."""
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self._hf is not None:
            ids = self._hf(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        else:
            ids = [e.ids for e in self._counter.encode_batch(texts, add_special_tokens=False)]
        return np.array([len(x) for x in ids], dtype=np.int64)


class OnnxClassifier:
    """Tokenizer + lazily created onnxruntime sessions (one per variant) → logits / probabilities.

    Columns of `predict_logits` follow `label_order`; `predict_proba` applies the head's post-processing
    and returns columns in `output_order` (the fleet order).
    """

    def __init__(self, directory: str | Path, meta: Mapping[str, Any], *, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 batch_size: int = 64, output_order: Sequence[str] | None = None):
        self.directory = Path(directory)
        self.meta = meta
        self.label_order = [str(x) for x in meta["label_order"]]
        self.head = str(meta["head"])
        if self.head not in HEADS:
            raise BundleError(f"router.json: head '{self.head}' is not one of {HEADS}")
        self.tier_order_idx = [self.label_order.index(n) for n in meta["tier_order"]]
        order = list(output_order) if output_order is not None else self.label_order
        self.columns = np.array([self.label_order.index(n) for n in order], dtype=int)
        tk = meta["tokenizer"]
        self.input_names = [str(x) for x in meta["onnx"]["inputs"]]
        self.tokenizer = BundleTokenizer(
            self.directory / meta["files"]["tokenizer"], int(meta["max_length"]), tk.get("truncation_side", "right"),
            tk.get("pad_token"), int(tk.get("pad_id", 0)), int(tk.get("pad_type_id", 0)), self.input_names)
        self.intra_op_threads, self.inter_op_threads = intra_op_threads, inter_op_threads
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.batch_size = max(1, int(batch_size))
        self.show_progress = False  # a tqdm bar for large batches (the exporter turns it on)
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def variants(self) -> list[str]:
        files = self.meta["files"]
        return [v for v, key in VARIANT_FILES.items() if files.get(key)]

    def session(self, variant: str):
        """The onnxruntime session of `variant` ("fp32" / "int8"), created on first use."""
        if variant not in self.variants:
            raise BundleError(f"{self.directory}: unknown ONNX variant '{variant}' (this bundle has {self.variants})")
        sess = self._sessions.get(variant)
        if sess is not None:
            return sess
        with self._lock:
            if variant not in self._sessions:
                self._sessions[variant] = self._create(variant)
            return self._sessions[variant]

    def _create(self, variant: str):
        import onnxruntime as ort

        path = self.directory / self.meta["files"][VARIANT_FILES[variant]]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            so.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads:
            so.inter_op_num_threads = int(self.inter_op_threads)
        try:
            sess = ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load the {variant} graph: {e}") from e
        names = [i.name for i in sess.get_inputs()]
        if sorted(names) != sorted(self.input_names):
            raise BundleError(f"{path}: graph inputs {names} differ from router.json onnx.inputs {self.input_names}")
        out = sess.get_outputs()[0]
        width = out.shape[-1] if out.shape else None
        if isinstance(width, int) and width != len(self.label_order):
            raise BundleError(f"{path}: the graph has {width} outputs but router.json label_order lists "
                              f"{len(self.label_order)} models")
        log.info("onnxruntime session %s (%s) ready", path.name, ", ".join(sess.get_providers()))
        return sess

    def predict_logits(self, texts: Sequence[str], variant: str) -> np.ndarray:
        """(n, m) raw logits in `label_order` (length-sorted batches of `batch_size`)."""
        return self.run(texts, variant)[0]

    def run(self, texts: Sequence[str], variant: str) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n, m) in `label_order`, full token count per text) in one tokenizer pass."""
        texts = _check_texts(texts)
        m = len(self.label_order)
        out = np.zeros((len(texts), m), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        if not texts:
            return out, counts
        sess = self.session(variant)
        output_name = sess.get_outputs()[0].name
        many = len(texts) > self.batch_size
        order = np.argsort([len(t) for t in texts], kind="stable") if many else np.arange(len(texts))
        starts = range(0, len(texts), self.batch_size)
        if self.show_progress and len(starts) >= 10:
            starts = tqdm(starts, desc=f"onnx {variant}")
        for s in starts:
            idx = order[s:s + self.batch_size]
            feed, counts[idx] = self.tokenizer.encode_with_counts([texts[i] for i in idx])
            out[idx] = sess.run([output_name], feed)[0]
        return out, counts

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """The classifier's post-processing (σ, ordinal running max), columns in `output_order`."""
        return logits_to_proba(logits, self.head, self.tier_order_idx)[:, self.columns]

    def predict_proba(self, texts: Sequence[str], variant: str) -> np.ndarray:
        return self.proba_from_logits(self.predict_logits(texts, variant))


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, expected a string")
    return texts


# -- the bundle ------------------------------------------------------------------------------------------
class Bundle:
    """A loaded router bundle (build it with `load_bundle`).

    Attributes:
        dir: the bundle directory; meta: the router.json dict; fleet: `kronaxis_lab.data.fleet.Fleet`;
        model_names: fleet order = columns of `predict_proba` = indices returned by `decide`;
        premium: the always-premium reference model; governance: the `GovernancePolicy` of router.json
        (None if it has none); default_variant: "int8" or "fp32" (int8 only if it
        passed the parity check at export); policy: the instantiated routing policy; param: its operating
        parameter; cost_model: `CostModel`; bundle_id: content id (files + router.json settings).
    """

    def __init__(self, directory: str | Path, meta: Mapping[str, Any], *, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 batch_size: int = 64):
        self.dir = Path(directory)
        self.meta = dict(meta)
        try:
            self.fleet = Fleet.from_config(self.meta["fleet"], source=f"{self.dir / ROUTER_FILE}: fleet")
        except FleetError as e:
            raise BundleError(str(e)) from e
        self.model_names: list[str] = list(self.fleet.names)
        self.label_order: list[str] = [str(x) for x in self.meta["label_order"]]
        self.premium: str = str(self.meta["premium"])
        self.default_variant: str = str(self.meta["default_variant"])
        self.bundle_id: str = str(self.meta.get("bundle_id") or bundle_id(self.meta.get("sha256") or {}, self.meta))
        self.classifier = OnnxClassifier(self.dir, self.meta, intra_op_threads=intra_op_threads,
                                         inter_op_threads=inter_op_threads, providers=providers,
                                         batch_size=batch_size, output_order=self.model_names)
        try:
            self.cost_model = CostModel.from_dict(self.meta["cost_model"])
        except CostModelError as e:
            raise BundleError(str(e)) from e
        if self.cost_model.n_models != len(self.model_names):
            raise BundleError(f"{self.dir / ROUTER_FILE}: cost_model covers {self.cost_model.n_models} models, "
                              f"the fleet has {len(self.model_names)}")
        pol = self.meta["policy"]
        self.policy_name: str = str(pol.get("name", "policy"))
        self.policy = instantiate_policy(pol.get("config"), f"{self.dir / ROUTER_FILE}: policy.config")
        self.param: float = decode_param(pol.get("param"))
        self._policy_lock = threading.Lock()
        # policies that only need the fleet (λ, τ, latency SLO) are bound once here; per-task ones (which read
        # the queries' `task` column in bind) are bound on every decide call
        try:
            self.policy.bind(self.fleet, None)
            self._bind_per_call = False
        except (TypeError, KeyError, AttributeError, IndexError):
            self._bind_per_call = True
        gov = self.meta.get("governance")
        self.governance = None if not gov else instantiate_node(gov, f"{self.dir / ROUTER_FILE}: governance")
        # prompt tokens for the cost model: the bundled counter of the cost model when it differs from the
        # classifier's tokenizer (router.json files.cost_tokenizer), else the classifier's own tokenizer pass
        ct = self.meta["files"].get("cost_tokenizer")
        self.cost_counter = BundleTokenizer(self.dir / ct, 2) if ct else self.classifier.tokenizer

    # -- inference -----------------------------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        return self.classifier.variants

    def predict_proba(self, texts: Sequence[str] | str, variant: str | None = None) -> np.ndarray:
        """(n, m) float32 success probabilities in `model_names` order (same numbers as the classifier)."""
        return self.classifier.predict_proba(texts, variant or self.default_variant)

    def predict_logits(self, texts: Sequence[str] | str, variant: str | None = None) -> np.ndarray:
        """(n, m) raw graph outputs in `label_order` (router.json), not post-processed."""
        return self.classifier.predict_logits(texts, variant or self.default_variant)

    def count_tokens(self, texts: Sequence[str] | str) -> np.ndarray:
        """Prompt tokens per text as the cost model counts them."""
        return self.cost_counter.count(_check_texts(texts))

    def expected_cost(self, texts: Sequence[str] | None = None, input_tokens: Sequence[float] | None = None,
                      n: int | None = None) -> np.ndarray:
        """(n, m) expected USD per query and model (`kronaxis_lab.routing.costs`, the model replay used);
        without texts or token counts every query is assumed to have the train mean length."""
        if texts is not None:
            texts = _check_texts(texts)
            if input_tokens is None:
                input_tokens = self.count_tokens(texts)
        return self.cost_model.expected(input_tokens, n=n, texts=texts)

    def decide(self, P: np.ndarray, texts: Sequence[str] | None = None, tasks: Sequence[str | None] | None = None,
               *, cost: np.ndarray | None = None, input_tokens: Sequence[float] | None = None,
               param: float | None = None) -> np.ndarray:
        """(n,) int model indices (into `model_names`) under the bundle's policy at its operating parameter.

        `texts` (or `input_tokens`) give each query its own expected cost (longer prompts cost more);
        `tasks` (request metadata, where a deployment supplies it) feed per-task policies only; `cost` (n, m)
        overrides the cost model;
        `param` overrides the operating parameter.
        """
        P = np.asarray(P, dtype=float)
        if P.ndim != 2 or P.shape[1] != len(self.model_names):
            raise ValueError(f"P has shape {P.shape}, expected (n, {len(self.model_names)}) in model_names order")
        n = P.shape[0]
        if texts is not None and len(texts) != n:
            raise ValueError(f"{len(texts)} texts for {n} rows of P")
        if cost is None:
            cost = self.expected_cost(texts, input_tokens, n=n)
        cost = np.asarray(cost, dtype=float)
        if cost.shape != P.shape:
            raise ValueError(f"cost has shape {cost.shape}, expected {P.shape}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        value = self.param if param is None else float(param)
        if not self._bind_per_call:
            return np.asarray(self.policy.choose(P, cost, [value])[0], dtype=np.int64)
        task_col = ["unknown"] * n if tasks is None else ["unknown" if t is None else str(t) for t in tasks]
        with self._policy_lock:  # bind() stores per-call state (the tasks) on the policy object
            self.policy.bind(self.fleet, pd.DataFrame({"task": task_col}))
            return np.asarray(self.policy.choose(P, cost, [value])[0], dtype=np.int64)

    def route(self, texts: Sequence[str] | str, tasks: Sequence[str | None] | None = None,
              variant: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(choices (n,), P (n, m)): predict and decide in one call (one tokenizer pass gives both the model
        inputs and the token counts of the cost model)."""
        logits, counts = self.classifier.run(texts, variant or self.default_variant)
        P = self.classifier.proba_from_logits(logits)
        if self.cost_counter is not self.classifier.tokenizer:
            counts = self.count_tokens(texts)
        return self.decide(P, _check_texts(texts), tasks=tasks, input_tokens=counts), P

    def warmup(self, variant: str | None = None) -> None:
        """Create the session and run one query (first-call latency off the request path)."""
        self.predict_proba(["warm up"], variant)

    # -- guards ----------------------------------------------------------------------------------------
    def stickiness_guard(self):
        """`StickinessGuard` from router.json `stickiness` (its salt interpolation resolves here, at run time)."""
        node = self.meta.get("stickiness")
        return None if not node else instantiate_node(node, f"{self.dir / ROUTER_FILE}: stickiness")

    def tiers(self, choices: np.ndarray) -> np.ndarray:
        return self.fleet.tiers[np.asarray(choices, dtype=int)]

    def __repr__(self) -> str:
        return (f"Bundle({str(self.dir)!r}, models={self.model_names}, policy={self.policy_name}@{self.param:g}, "
                f"default_variant={self.default_variant!r}, id={self.bundle_id})")


def instantiate_node(node: Any, where: str):
    """Hydra-instantiate a router.json config node; errors name `where`. Only `_target_`s named in the node
    are imported (a bundle carries configs, never pickled code)."""
    try:
        return instantiate(OmegaConf.create(dict(node)), _convert_="all")
    except Exception as e:  # noqa: BLE001 - hydra wraps import/type errors in its own exception type
        raise BundleError(f"{where} cannot be instantiated: {e}") from e


def instantiate_policy(node: Any, where: str):
    """Instantiate a policy config node (must have `_target_` and yield a `Policy`)."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise BundleError(f"{where} must be a config object with a _target_, got {node!r}")
    obj = instantiate_node(node, where)
    if not isinstance(obj, Policy):
        raise BundleError(f"{where}: {node['_target_']} is a {type(obj).__name__}, not a routing Policy")
    return obj


# -- loading and validation ---------------------------------------------------------------------------
def read_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    path = directory / ROUTER_FILE
    if not path.is_file():
        raise BundleError(f"{path} is missing: {directory} is not a router bundle (kronaxis-export writes one)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return meta


def validate_meta(directory: str | Path, meta: Mapping[str, Any], verify_hashes: bool = True) -> None:
    """Every check of a bundle except instantiation (see `load_bundle`): the schema (`RouterMeta`), then
    the files and their hashes."""
    directory = Path(directory)
    path = directory / ROUTER_FILE
    RouterMeta.check(dict(meta), str(path))

    files = meta["files"]
    for key, rel in files.items():
        if rel and not (directory / rel).exists():
            raise BundleError(f"{directory / rel} (files.{key}) is missing from the bundle")

    hashes = meta["sha256"]
    for key, rel in files.items():  # every declared file (or every file of a declared folder) is hashed
        if rel and (directory / rel).is_file() and rel not in hashes:
            raise BundleError(f"{path}: files.{key} ({rel}) has no sha256 entry")
        if rel and (directory / rel).is_dir() and not any(h.startswith(rel.rstrip("/") + "/") for h in hashes):
            raise BundleError(f"{path}: no sha256 entry covers the files of {rel}")
    for rel, digest in hashes.items():
        p = directory / rel
        if not p.is_file():
            raise BundleError(f"{p} (listed in router.json sha256) is missing from the bundle")
        if verify_hashes and sha256_file(p) != digest:
            raise BundleError(f"{p}: sha256 mismatch (router.json has {digest[:12]}…, the file has "
                              f"{sha256_file(p)[:12]}…): the bundle was modified after export")
    extra = set(file_hashes(directory)) - set(hashes)
    if extra:
        log.warning("%s: files not covered by router.json sha256 (ignored): %s", directory, sorted(extra))


def load_bundle(directory: str | Path, *, verify_hashes: bool = True, intra_op_threads: int | None = None,
                inter_op_threads: int | None = None, providers: Sequence[str] | None = None,
                batch_size: int = 64) -> Bundle:
    """Load and validate a bundle; every problem is a `BundleError` naming the file and field.

    Checked: router.json exists and parses; kind and format_version; required fields; label_order is
    exactly the fleet's models and tier_order a permutation of it; the premium model is in the fleet;
    every file in `files` exists; every file listed in `sha256` exists and (unless `verify_hashes=False`)
    matches its hash; the fleet, cost model and policy config instantiate; the tokenizer loads. ONNX
    sessions are created on first use (`Bundle.warmup` forces it), with `intra_op_threads` threads.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    validate_meta(directory, meta, verify_hashes=verify_hashes)
    bundle = Bundle(directory, meta, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                    providers=providers, batch_size=batch_size)
    log.info("loaded %r", bundle)
    return bundle
