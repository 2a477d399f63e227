"""The production router bundle: load, validate and run what `kronaxis-export` writes.

    bundle = load_bundle("outputs/export/<run>/bundle")      # validates router.json, files and sha256
    P = bundle.predict_proba(["What is 2+2?"])               # (n, m) success probabilities, fleet order
    choice = bundle.decide(P, texts=["What is 2+2?"])        # (n,) model index under the bundle's policy
    bundle.model_names[choice[0]]

Layout of `<bundle>/`:
    router.json        everything needed to route (see `load_bundle` for what is checked): fleet, policy and
                       its operating parameter, cost model, governance, the `classifier` runtime tree
                       (kronaxis_lab/export/schema.py) and the sha256 of every other file of the bundle
    <classifier files> what its runtime reads (kronaxis_lab/export/runtimes.py): e.g. model.onnx +
                       model.int8.onnx + tokenizer/ for the tier predictor, vectorizer.json + weights.npz for
                       TF-IDF, encoder/ + index.npz for kNN; data only (ONNX, JSON, .npz), never pickle
    cost_tokenizer/    the prompt-token counter of the cost model, when the classifier has no tokenizer that
                       counts the same
    metrics.json       training metrics + the replay of this bundle on the held-out split (kronaxis-replay
                       bundle=<dir> recomputes it: the same routers, the same decision code)
    README.md          the model card

Probabilities are computed as the classifier's `predict_proba` (each runtime is checked against the trained
classifier at export); decisions by the bundle's policy at its operating parameter, priced by the one cost
model (`kronaxis_lab.routing.costs`). Loading a bundle executes no code from it: runtime kinds and config
`_target_`s must name classes inside kronaxis_lab, checked before anything is built.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kronaxis_lab.data.fleet import Fleet, FleetError
from kronaxis_lab.export.cascade import load_cascade
from kronaxis_lab.export.metadata import BundleMetadata
from kronaxis_lab.export.runtimes import BundleTokenizer, RuntimeOptions, check_texts, load_runtime, reorder
from kronaxis_lab.export.schema import (
    FORMAT_VERSION,
    KIND,
    ROUTER_FILE,
    RUNTIME_PACKAGE,
    VARIANT_FILES,
    BundleError,
    RouterMeta,
    decode_param,
    encode_param,
    walk_nodes,
)
from kronaxis_lab.routing.costs import CostModel, CostModelError
from kronaxis_lab.routing.policies import Policy
from kronaxis_lab.serving.governance import GovernancePolicy
from kronaxis_lab.serving.stickiness import StickinessGuard

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "KIND", "ROUTER_FILE", "VARIANT_FILES", "Bundle", "BundleError", "BundleTokenizer",
           "bundle_id", "check_node_targets", "decode_param", "encode_param", "file_hashes", "instantiate_node",
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


# -- the bundle ------------------------------------------------------------------------------------------
class Bundle:
    """A loaded router bundle (build it with `load_bundle`).

    Attributes:
        dir: the bundle directory; meta: the router.json dict; fleet: `kronaxis_lab.data.fleet.Fleet`;
        model_names: fleet order = columns of `predict_proba` = indices returned by `decide`;
        premium: the always-premium reference model; governance: the `GovernancePolicy` of router.json
        (None if it has none); classifier: the `BundleRuntime` of router.json `classifier`; default_variant:
        "int8" or "fp32" (int8 only if it passed the parity check at export); policy: the instantiated routing
        policy; param: its operating parameter; cost_model: `CostModel`; cost_counter: its prompt-token
        counter; bundle_id: content id (files + router.json settings).
    """

    def __init__(self, directory: str | Path, meta: Mapping[str, Any], *, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 batch_size: int = 64):
        self.dir = Path(directory)
        self.meta = dict(meta)
        where = str(self.dir / ROUTER_FILE)
        try:
            self.fleet = Fleet.from_config(self.meta["fleet"], source=f"{where}: fleet")
        except FleetError as e:
            raise BundleError(str(e)) from e
        self.model_names: list[str] = list(self.fleet.names)
        self.label_order: list[str] = [str(x) for x in self.meta["label_order"]]
        self.premium: str = str(self.meta["premium"])
        self.default_variant: str = str(self.meta["default_variant"])
        self.bundle_id: str = str(self.meta.get("bundle_id") or bundle_id(self.meta.get("sha256") or {}, self.meta))
        options = RuntimeOptions(intra_op_threads, inter_op_threads, tuple(providers) if providers else None,
                                 max(1, int(batch_size)))
        self.classifier = load_runtime(self.dir, self.meta["classifier"], options, f"{where}: classifier")
        if self.classifier.label_order != self.label_order:
            raise BundleError(f"{where}: classifier.label_order {self.classifier.label_order} differs from "
                              f"label_order {self.label_order}")
        try:
            self.cost_model = CostModel.from_dict(self.meta["cost_model"])
        except CostModelError as e:
            raise BundleError(str(e)) from e
        if self.cost_model.n_models != len(self.model_names):
            raise BundleError(f"{where}: cost_model covers {self.cost_model.n_models} models, "
                              f"the fleet has {len(self.model_names)}")
        pol = self.meta["policy"]
        self.policy_name: str = str(pol.get("name", "policy"))
        self.policy = instantiate_policy(pol.get("config"), f"{where}: policy.config")
        self.param: float = decode_param(pol.get("param"))
        self._policy_lock = threading.Lock()
        # policies that only need the fleet (λ, τ, latency SLO) are bound once here; per-task ones (which read
        # the queries' `task` column in bind) are bound on every decide call
        try:
            self.policy.bind(self.fleet, None)
            self._bind_per_call = False
        except (TypeError, KeyError, AttributeError, IndexError):
            self._bind_per_call = True
        md = self.meta.get("metadata")
        self.metadata = BundleMetadata.from_node(md, len(self.model_names), f"{where}: metadata") if md else None
        cas = self.meta.get("cascade")
        self.cascade = load_cascade(self.dir, cas, self.model_names, f"{where}: cascade") if cas else None
        gov = self.meta.get("governance")
        self.governance = None if not gov else instantiate_node(gov, f"{where}: governance", GovernancePolicy)
        if self.meta.get("stickiness"):  # built by the server (its salt resolves there): checked here, at load
            check_node_targets(self.meta["stickiness"], f"{where}: stickiness", StickinessGuard)
        # prompt tokens for the cost model: the bundled counter when router.json names one (files.cost_tokenizer),
        # else the classifier's own tokenizer (whose encode pass then gives the counts for free in `route`)
        ct = (self.meta.get("files") or {}).get("cost_tokenizer")
        self.cost_counter = BundleTokenizer(self.dir / ct, 2) if ct else self.classifier.tokenizer
        if self.cost_counter is None:
            raise BundleError(f"{where}: files.cost_tokenizer is missing and the classifier has no tokenizer: "
                              "nothing counts the prompt tokens of the cost model")

    # -- inference -----------------------------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        return self.classifier.variants

    def _variant(self, variant: str | None) -> str:
        v = variant or self.default_variant
        if v not in self.variants:
            raise BundleError(f"{self.dir}: unknown ONNX variant '{v}' (this bundle has {self.variants})")
        return v

    @property
    def counts_from_classifier(self) -> bool:
        """Whether the counts of `predict_with_counts` are the cost model's prompt tokens (its counter is the
        classifier's own tokenizer), so `decide(..., input_tokens=counts)` needs no second tokenizer pass."""
        return self.cost_counter is self.classifier.tokenizer

    def predict_with_counts(self, texts: Sequence[str] | str,
                            variant: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(P̂ in `model_names` order, the classifier tokenizer's prompt-token counts or None) in one pass."""
        P, counts = self.classifier.predict_with_counts(check_texts(texts), self._variant(variant))
        return reorder(P, self.label_order, self.model_names, str(self.dir)), counts

    def predict_proba(self, texts: Sequence[str] | str, variant: str | None = None) -> np.ndarray:
        """(n, m) success probabilities in `model_names` order (the classifier's numbers: float32 from an ONNX
        head, float64 otherwise)."""
        return self.predict_with_counts(texts, variant)[0]

    def predict_logits(self, texts: Sequence[str] | str, variant: str | None = None) -> np.ndarray:
        """(n, m) raw graph outputs in `label_order` (router.json), not post-processed (transformer bundles)."""
        if not hasattr(self.classifier, "predict_logits"):
            raise BundleError(f"{self.dir}: a {type(self.classifier).__name__} has no logits")
        return self.classifier.predict_logits(check_texts(texts), self._variant(variant))

    def count_tokens(self, texts: Sequence[str] | str) -> np.ndarray:
        """Prompt tokens per text as the cost model counts them."""
        return self.cost_counter.count(check_texts(texts))

    def expected_cost(self, texts: Sequence[str] | None = None, input_tokens: Sequence[float] | None = None,
                      n: int | None = None) -> np.ndarray:
        """(n, m) expected USD per query and model (`kronaxis_lab.routing.costs`, the model replay used);
        without texts or token counts every query is assumed to have the train mean length."""
        if texts is not None:
            texts = check_texts(texts)
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
        if self.cascade is not None and not self.cascade.pre_route and param is None:
            return np.full(n, self.model_names.index(self.cascade.first), dtype=np.int64)  # a pure cascade
        value = self.param if param is None else float(param)
        if not self._bind_per_call:
            return np.asarray(self.policy.choose(P, cost, [value])[0], dtype=np.int64)
        task_col = ["unknown"] * n if tasks is None else ["unknown" if t is None else str(t) for t in tasks]
        with self._policy_lock:  # bind() stores per-call state (the tasks) on the policy object
            self.policy.bind(self.fleet, pd.DataFrame({"task": task_col}))
            return np.asarray(self.policy.choose(P, cost, [value])[0], dtype=np.int64)

    def route(self, texts: Sequence[str] | str, tasks: Sequence[str | None] | None = None,
              variant: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(choices (n,), P (n, m)): predict and decide in one call (for a classifier with a tokenizer, one
        tokenizer pass gives both the model inputs and the token counts of the cost model)."""
        texts = check_texts(texts)
        P, counts = self.predict_with_counts(texts, variant)
        if counts is None or not self.counts_from_classifier:
            counts = self.count_tokens(texts)
        return self.decide(P, texts, tasks=tasks, input_tokens=counts), P

    def warmup(self, variant: str | None = None) -> None:
        """Create the session and run one query (first-call latency off the request path)."""
        self.predict_proba(["warm up"], variant)

    # -- guards ----------------------------------------------------------------------------------------
    def stickiness_guard(self):
        """`StickinessGuard` from router.json `stickiness` (its salt interpolation resolves here, at run time)."""
        node = self.meta.get("stickiness")
        return None if not node else instantiate_node(node, f"{self.dir / ROUTER_FILE}: stickiness", StickinessGuard)

    def tiers(self, choices: np.ndarray) -> np.ndarray:
        return self.fleet.tiers[np.asarray(choices, dtype=int)]

    def __repr__(self) -> str:
        return (f"Bundle({str(self.dir)!r}, models={self.model_names}, policy={self.policy_name}@{self.param:g}, "
                f"default_variant={self.default_variant!r}, id={self.bundle_id})")


def check_node_targets(node: Any, where: str, base: type | None = None) -> None:
    """Every `_target_` inside a router.json config node must name a class of kronaxis_lab (the node's own
    one a subclass of `base`), checked before Hydra builds anything: a bundle can choose among the package's
    classes of the right kind, never run another callable."""
    if base is not None:
        target = node.get("_target_") if isinstance(node, Mapping) else None
        cls = _target_class(target, where)
        if not issubclass(cls, base):
            raise BundleError(f"{where} cannot be instantiated: _target_ {target!r} is not a {base.__name__}")
    stack = [(node, where)]
    while stack:
        x, at = stack.pop()
        if isinstance(x, Mapping):
            target = x.get("_target_")
            if target is not None:
                _target_class(target, at)
            stack.extend((v, f"{at}.{k}") for k, v in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(x))


def _target_class(target: Any, where: str) -> type:
    module, _, name = str(target).rpartition(".")
    ok = isinstance(target, str) and target.startswith(RUNTIME_PACKAGE) and module
    try:
        cls = getattr(importlib.import_module(module), name) if ok else None
    except (ImportError, AttributeError) as e:
        raise BundleError(f"{where} cannot be instantiated: _target_ {target!r}: {e}") from e
    if not isinstance(cls, type):
        raise BundleError(f"{where} cannot be instantiated: _target_ {target!r} is not a class of "
                          f"{RUNTIME_PACKAGE.rstrip('.')} "
                          "(a bundle may only name the package's classes)")
    return cls


def instantiate_node(node: Any, where: str, base: type | None = None):
    """Hydra-instantiate a router.json config node (its `_target_`s checked first: `check_node_targets`);
    errors name `where`. A bundle carries configs, never pickled code."""
    check_node_targets(node, where, base)
    try:
        return instantiate(OmegaConf.create(dict(node)), _convert_="all")
    except Exception as e:
        raise BundleError(f"{where} cannot be instantiated: {e}") from e


def instantiate_policy(node: Any, where: str):
    """Instantiate a policy config node (must have `_target_` and yield a `Policy`)."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise BundleError(f"{where} must be a config object with a _target_, got {node!r}")
    obj = instantiate_node(node, where, Policy)
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

    hashes = meta["sha256"]
    declared = [(f"files.{k}", "", rel) for k, rel in (meta.get("files") or {}).items()]
    declared += [(f"{at}.files.{k}", base, rel) for at, base, node in walk_nodes(meta["classifier"])
                 for k, rel in (node.get("files") or {}).items()]
    for key, base, rel in declared:  # every declared file exists, and it (or every file of a folder) is hashed
        if not rel:
            continue
        rel = base + rel
        p = directory / rel
        if not p.exists():
            name = key.rpartition(".files.")[2] if ".files." in key else key.removeprefix("files.")
            raise BundleError(f"{p} (files.{name}) is missing from the bundle (router.json {key})")
        if p.is_file() and rel not in hashes:
            raise BundleError(f"{path}: {key} ({rel}) has no sha256 entry")
        if p.is_dir() and not any(h.startswith(rel.rstrip("/") + "/") for h in hashes):
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
    exactly the fleet's models; the premium model is in the fleet; every file named in `files` (bundle
    level and in every node of the `classifier` tree) exists and is hashed; every file listed in `sha256`
    exists and (unless `verify_hashes=False`) matches its hash; the classifier's runtime kinds and every config
    `_target_` name kronaxis_lab classes; the runtime, fleet, cost model and policy config build; the
    tokenizers load. ONNX sessions are created on first use (`Bundle.warmup` forces it), with
    `intra_op_threads` threads.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    validate_meta(directory, meta, verify_hashes=verify_hashes)
    bundle = Bundle(directory, meta, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                    providers=providers, batch_size=batch_size)
    log.info("loaded %r", bundle)
    return bundle
