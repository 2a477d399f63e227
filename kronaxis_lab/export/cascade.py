"""A cascade inside a router bundle: the bundle's decision picks the model called first; when that is the
cascade's `first` model, its reply is judged by the cascade's signal and the request escalates to `second`
when the signal does not trust it. The server (`serving/app.py`) and the bundle replay
(`export/replay.py`) both run `BundleCascade.plan` / `keep`, so replay = serve holds for cascades too.

router.json `cascade` node (the signal's fitted parts are files under `cascade/`, never pickle):

    {"signal": "format" | "agreement" | "verifier", "answer_format": "auto", "first": "<model>",
     "second": "<model>", "also_calls": ["<model>", ...], "threshold": τ, "pre_route": bool,
     "files": {...}, "use_agreement": bool, "fit": {...}}

`pre_route: false` — every default request goes to `first` first (`Bundle.decide` returns it; the policy
and its parameter still answer a request that names an operating point); `true` — the bundle's classifier
pre-routes, and only the requests it sends to `first` are cascaded: a hybrid whose (λ, τ) pair is chosen
jointly on val, the cheapest pair at the target share of premium accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kronaxis_lab import metrics as M
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.export.formats import load_arrays, load_tfidf_vectorizer, save_arrays, save_tfidf_vectorizer
from kronaxis_lab.export.schema import BundleError, ExportError, decode_param, encode_param
from kronaxis_lab.routing.calibration import calibration_grid
from kronaxis_lab.routing.cascades import (
    AgreementSignal,
    CascadeSignal,
    FormatSignal,
    VerifierSignal,
    cascade_plan,
    threshold_grid,
)
from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE, operating_point
from kronaxis_lab.routing.routers import ReplayContext

log = logging.getLogger(__name__)

SIGNALS: dict[str, type[CascadeSignal]] = {"format": FormatSignal, "agreement": AgreementSignal,
                                           "verifier": VerifierSignal}
CASCADE_DIR = "cascade"


@dataclass
class BundleCascade:
    """A fitted cascade as a bundle carries it (module docstring)."""

    signal: CascadeSignal
    first: str
    second: str
    threshold: float
    also_calls: list[str] = field(default_factory=list)
    pre_route: bool = False
    fit_info: dict[str, Any] = field(default_factory=dict)

    @property
    def calls(self) -> list[str]:
        """The models called before the judgement: `first`, then `also_calls`."""
        return [self.first, *self.also_calls]

    def keep(self, queries: Sequence[str], replies: Sequence[Any], others: Sequence[Sequence[Any]] = ()) -> np.ndarray:
        """(n,) bool: keep the first model's reply (trust ≥ threshold) rather than escalate."""
        return np.asarray(self.signal.trust(list(queries), list(replies), [list(o) for o in others])) >= self.threshold

    def plan(self, pre: np.ndarray, trust: np.ndarray, thresholds: np.ndarray, costs: np.ndarray,
             index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(choices (k, n), extra $ (k, n)) per threshold: rows the pre-route sends to `first` keep its answer
        where trust ≥ τ, else `second`'s; the extra $ are the recorded costs of calls whose answer was not
        returned — `also_calls` on every cascaded row, `first` where it escalated. Other rows are unchanged."""
        choices, extra, _ = cascade_plan(pre, trust, thresholds, costs, index[self.first], index[self.second],
                                         [index[a] for a in self.also_calls])
        return choices, extra

    def trust_on(self, mats: Matrices, index: Mapping[str, int]) -> np.ndarray:
        """Trust over a split's recorded replies (NaN-free: a split must record every reply the signal reads)."""
        if mats.responses is None:
            raise ValueError("the outcome table records no responses: a cascade cannot be replayed on it")
        cols = [index[m] for m in self.calls]
        if np.equal(mats.responses[:, cols], None).any():
            n = int(np.equal(mats.responses[:, cols], None).any(axis=1).sum())
            raise ValueError(f"{n} of {mats.n} queries have no recorded reply of {self.calls}: a cascade reads them")
        texts = mats.queries["text"].astype(str).tolist()
        return np.asarray(self.signal.trust(texts, mats.responses[:, cols[0]],
                                            [mats.responses[:, j] for j in cols[1:]]), float)


# -- files ---------------------------------------------------------------------------------------------
def save_cascade(cascade: BundleCascade, bundle_dir: Path) -> dict[str, Any]:
    """Write the signal's fitted parts under `<bundle>/cascade/`; return the router.json node."""
    sig = cascade.signal
    node: dict[str, Any] = {"signal": sig.name, "answer_format": sig.answer_format, "first": cascade.first,
                            "second": cascade.second, "also_calls": list(cascade.also_calls),
                            "threshold": encode_param(cascade.threshold), "pre_route": bool(cascade.pre_route),
                            "fit": dict(cascade.fit_info), "files": {}}
    if isinstance(sig, VerifierSignal):
        d = bundle_dir / CASCADE_DIR
        d.mkdir(parents=True, exist_ok=True)
        save_tfidf_vectorizer(sig.q_vec, d / "query_vectorizer.json")
        save_tfidf_vectorizer(sig.r_vec, d / "reply_vectorizer.json")
        save_arrays(d / "verifier.npz", coef=sig.coef, intercept=np.array([sig.intercept]))
        node["files"] = {"query_vectorizer": f"{CASCADE_DIR}/query_vectorizer.json",
                         "reply_vectorizer": f"{CASCADE_DIR}/reply_vectorizer.json",
                         "weights": f"{CASCADE_DIR}/verifier.npz"}
        node["use_agreement"] = bool(sig.use_agreement)
        node["arithmetic"] = bool(sig.arithmetic)
    return node


def load_cascade(bundle_dir: Path, node: Mapping[str, Any], model_names: Sequence[str], where: str) -> BundleCascade:
    """The `BundleCascade` of a router.json `cascade` node (BundleError naming the field when it is wrong)."""
    if not isinstance(node, Mapping):
        raise BundleError(f"{where}: must be an object")
    kind = node.get("signal")
    if kind not in SIGNALS:
        raise BundleError(f"{where}.signal: {kind!r} is not one of {sorted(SIGNALS)}")
    for key in ("first", "second"):
        if node.get(key) not in model_names:
            raise BundleError(f"{where}.{key}: {node.get(key)!r} is not a fleet model ({list(model_names)})")
    also = node.get("also_calls") or []
    if not isinstance(also, list) or any(a not in model_names for a in also):
        raise BundleError(f"{where}.also_calls: {also!r} must list fleet models ({list(model_names)})")
    threshold = decode_param(node.get("threshold"), f"{where}.threshold")
    fmt = node.get("answer_format", "auto")
    try:
        if kind == "verifier":
            sig: CascadeSignal = VerifierSignal(answer_format=fmt, use_agreement=bool(node.get("use_agreement")),
                                                arithmetic=bool(node.get("arithmetic")))
            files = node.get("files") or {}
            try:
                sig.q_vec = load_tfidf_vectorizer(bundle_dir / files["query_vectorizer"])
                sig.r_vec = load_tfidf_vectorizer(bundle_dir / files["reply_vectorizer"])
                w = load_arrays(bundle_dir / files["weights"])
                sig.coef, sig.intercept = np.asarray(w["coef"], float), float(np.asarray(w["intercept"]).ravel()[0])
            except (KeyError, OSError, ValueError) as e:
                raise BundleError(f"{where}.files: the verifier's files are missing or unreadable ({e})") from e
            width = (len(sig.q_vec.vocabulary_) + len(sig.r_vec.vocabulary_) + 2 + int(sig.use_agreement)
                     + 3 * int(sig.arithmetic))
            if sig.coef.shape != (width,):
                raise BundleError(f"{where}: verifier weights have shape {sig.coef.shape}, its features {width}")
        elif kind == "agreement":
            sig = AgreementSignal(answer_format=fmt)
        else:
            sig = FormatSignal(answer_format=fmt)
    except ValueError as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{where}: {e}") from e
    need = 1 if kind == "agreement" or node.get("use_agreement") else 0
    if len(also) != need:
        raise BundleError(f"{where}.also_calls: the {kind} signal reads {need} extra model(s), got {also}")
    return BundleCascade(sig, str(node["first"]), str(node["second"]), threshold, list(also),
                         bool(node.get("pre_route", False)), dict(node.get("fit") or {}))


# -- export: fit on train, choose on val ---------------------------------------------------------------
def build_signal(cfg: Mapping[str, Any]) -> CascadeSignal:
    """A signal from the export config's `cascade` node: {signal: <name>, answer_format, ...signal options}."""
    kind = cfg.get("signal")
    if kind not in SIGNALS:
        raise ExportError(f"cascade.signal: {kind!r} is not one of {sorted(SIGNALS)}")
    opts = {k: v for k, v in cfg.items() if k not in ("signal", "pre_route", "first", "second", "target")}
    try:
        return SIGNALS[kind](**opts)
    except TypeError as e:
        raise ExportError(f"cascade: options {sorted(opts)} do not fit the {kind} signal ({e})") from e


def fit_cascade(bundle, train: Matrices, val: Matrices, cfg: Mapping[str, Any]) -> tuple[BundleCascade, float]:
    """Fit the configured cascade for a staged `bundle` (its fleet, cost model, policy) on `train`'s recorded
    replies; choose τ — and with `pre_route`, the policy's λ jointly — on `val`: the cheapest point reaching
    `target` × always-premium accuracy. Returns (the cascade, the policy parameter the bundle must route with)."""
    names = list(bundle.model_names)
    index = {n: i for i, n in enumerate(names)}
    signal = build_signal(cfg)
    ctx = ReplayContext(test=val, fleet=bundle.fleet, train=train, val=val, cost_model=bundle.cost_model,
                        token_counter=bundle.cost_counter)
    first = str(cfg.get("first") or names[ctx.cheapest_idx])
    second = str(cfg.get("second") or bundle.premium)
    for key, model in (("first", first), ("second", second)):
        if model not in index:
            raise ExportError(f"cascade.{key}: {model!r} is not a fleet model ({names})")
    try:
        also = [names[j] for j in signal.extra_models(ctx)]
    except ValueError as e:
        raise ExportError(f"cascade: {e}") from e
    cascade = BundleCascade(signal, first, second, 0.5, also, bool(cfg.get("pre_route", False)))
    for split, mats in (("train", train), ("val", val)):
        cols = [index[m] for m in cascade.calls]
        if mats.responses is None or np.equal(mats.responses[:, cols], None).any():
            raise ExportError(f"cascade: the {split} split does not record every reply of {cascade.calls} it reads")
    signal.fit(ctx, index[first])
    trust = cascade.trust_on(val, index)
    texts = val.queries["text"].astype(str).tolist()
    cost = bundle.expected_cost(texts)
    if cascade.pre_route:
        P = bundle.predict_proba(texts)
        grid = calibration_grid(bundle.policy, P, cost, 201)
        pres = bundle.policy.choose(P, cost, grid)
    else:  # every request to `first` (Bundle.decide), whatever the policy would pick
        grid = np.array([bundle.param])
        pres = np.full((1, val.n), index[first], np.int32)
    taus = np.array([0.5]) if signal.fixed else threshold_grid(trust, 101)
    target = float(cfg.get("target", PREMIUM_ACCURACY_SHARE)) * float(val.scores[:, index[second]].mean())
    best: tuple[float, float, float, float] | None = None  # (cost, -accuracy, λ, τ) reaching the target
    most: tuple[float, float, float, float] | None = None  # (-accuracy, cost, λ, τ): the fallback
    for lam, pre in zip(grid, pres):
        choices, extra = cascade.plan(pre, trust, taus, val.costs, index)
        c, a = M.choices_metrics_batch(choices, val.scores, val.costs, val.correct, extra)
        i = operating_point(c, a, target)
        if a[i] + 1e-12 >= target:
            cand = (float(c[i]), -float(a[i]), float(lam), float(taus[i]))
            best = cand if best is None or cand[:2] < best[:2] else best
        j = int(np.lexsort((c, -a))[0])
        cand = (-float(a[j]), float(c[j]), float(lam), float(taus[j]))
        most = cand if most is None or cand[:2] < most[:2] else most
    if best is None:  # nothing reaches the target on val: the most accurate pair (a fixed rule keeps its τ)
        log.warning("cascade: no point reaches %.3f val accuracy; shipping the most accurate one (%.3f)", target,
                    -most[0])
        best = (most[1], most[0], most[2], most[3])
    cascade.threshold = best[3]
    cascade.fit_info = {**signal.info, "val_cost_usd": best[0], "val_accuracy": -best[1], "target_accuracy": target,
                        "param": best[2], "n_val": int(val.n), "n_train": int(train.n)}
    return cascade, best[2]
