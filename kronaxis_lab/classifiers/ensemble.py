"""Stacked ensemble: a per-model logistic combiner over member classifiers, fitted on out-of-fold predictions.

    ens = EnsembleRouter(members={"tfidf": {...tfidf_logreg config...}, "cluster": {...}}, n_folds=5)
    ens.fit(queries, Y, names, val_queries, val_targets)          # K+1 fits of every member
    P = ens.predict_proba(queries)

Cross-fitting (stacking, Wolpert 1992): the train queries are split into `n_folds` folds, grouped by text (a
duplicated query never sits on both sides). For each fold every member is fitted on the other folds and
predicts the held-out one, giving out-of-fold predictions P̃^a (n, m) per member a — predictions on queries
the member has not seen, so a member that memorises its training data earns no trust. Then per model j

    z_ij = [logit P̃^a_ij for each member a]        (`use_all_models`: every model's column of every member)
    P̂_j(q) = σ(w_j · z_j(q) + b_j)                 L2 logistic regression on the OOF rows, soft labels as
                                                    weights (y, 1 − y) as in tfidf.py, NaN targets masked

with C_j chosen from `C_grid` by val log-loss (members refitted on all of train predict val; test is never
read), else `C`. Finally every member is refitted on all of train; those refits are what `predict_proba`
combines. `combiner: mean` averages the members' P̂ instead (no folds, no fit).

`combiner: blend` fits each member once, on all of train, and picks one weight per member by a *routing* loss:

    P̂_j(q) = σ(Σ_a w_a · logit P̂^a_j(q)),   w on the simplex (grid step `blend_step`)

with w maximising the val AIQ of the willingness-to-pay sweep (accuracy = the val targets of the chosen model,
cost = `model_costs`, the per-model train mean cost). Log-loss per column (`logreg`) rewards a better fit of each
model's success on its own; routing quality depends on how the models rank within a query, which a shared weight
on whole members keeps and the val AIQ measures. Without val data the weights are equal. It exports as a `logreg`
combiner (coef_j = w, intercept 0), so a bundle needs nothing new.

Members are config nodes (`_target_` + kwargs, instantiated afresh for every fold with hydra) or unfitted
classifiers (cloned through their `get_config`). The YAML pulls them from their own files in
configs/classifier/ (one source for each member's defaults). State: each fitted member in
`members/<name>/` (its own save_pretrained), the combiner in `ensemble.npz` + `ensemble.json`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from hydra.utils import instantiate
from scipy.special import expit, logit
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays
from kronaxis_lab.metrics import aiq
from kronaxis_lab.routing.policies import WillingnessToPay

from .base import Classifier, as_queries, check_fit_inputs, load_classifier, to_plain
from .calibration import EPS, log_loss
from .pretrained import TARGET as PRETRAINED_TARGET

log = logging.getLogger(__name__)

STATE_FILE = "ensemble.npz"
META_FILE = "ensemble.json"
MEMBERS_DIR = "members"
COMBINERS = ("logreg", "mean", "blend")
MAX_LAMBDAS = 2000  # λ values per routing-AIQ evaluation of a blend (its breakpoints beyond that: quantiles)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def fold_ids(queries: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each query: distinct texts dealt round-robin in a seeded shuffle, so equal texts share a fold."""
    uniq, inverse = np.unique(np.asarray(queries, dtype=object).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_text = np.empty(len(uniq), dtype=np.int64)
    fold_of_text[order] = np.arange(len(uniq)) % n_folds
    return fold_of_text[inverse]


def member_config(member: Any) -> dict[str, Any]:
    """A member as a plain config node: its own `_target_` + kwargs (a classifier object: its get_config)."""
    if isinstance(member, Classifier):
        return {"_target_": f"{type(member).__module__}.{type(member).__qualname__}", **member.get_config()}
    node = to_plain(member)
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"an ensemble member must be a classifier or a config node with _target_, got {member!r}")
    return node


def simplex_grid(n: int, step: float) -> np.ndarray:
    """(k, n) every weight vector on the simplex whose entries are multiples of `step` (n = 1: [[1.0]])."""
    units = int(round(1.0 / step))
    if n < 1 or units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"blend_step must divide 1 (e.g. 0.1, 0.25), got {step}")

    def parts(k: int, left: int):
        if k == 1:
            yield (left,)
            return
        for first in range(left, -1, -1):
            for rest in parts(k - 1, left - first):
                yield (first, *rest)

    return np.array(list(parts(n, units)), float) / units


def routing_aiq(P: np.ndarray, Y: np.ndarray, costs: Sequence[float] | np.ndarray,
                realized: np.ndarray | None = None) -> float:
    """AIQ of the willingness-to-pay sweep over P̂ (n, m): quality = mean observed target of the chosen model
    (NaN targets skipped), cost = mean $ of the chosen cells; range [0, the dearest model's mean $] (RouterBench's
    calc_AIQ). `costs`: what the policy decides on, (m,) per model or (n, m) per query (the cost model's expected
    $); `realized`: (n, m) what each choice is charged (the recorded $, as replay charges it; None: `costs`)."""
    # not metrics.choices_metrics_batch: it refuses a NaN target in a chosen cell, and the contract's NaN (an
    # unobserved outcome) is skipped here
    c = np.broadcast_to(np.asarray(costs, float), P.shape)
    paid = c if realized is None else np.asarray(realized, float)
    if paid.shape != P.shape:
        raise ValueError(f"routing_aiq: realized costs have shape {paid.shape}, predictions {P.shape}")
    pol = WillingnessToPay()
    breaks = pol.breakpoints(P, c)
    if breaks.size > MAX_LAMBDAS:  # bounded memory on a large val split: quantiles of the breakpoints
        breaks = np.quantile(breaks, np.linspace(0, 1, MAX_LAMBDAS))
    ch = pol.choose(P, c, np.unique(np.r_[pol.default_params(P, c), breaks]))  # (k, n)
    rows = np.arange(len(Y))
    quality = np.nanmean(Y[rows, ch], axis=1)
    ok = np.isfinite(quality)
    hi = float(paid.mean(axis=0).max())
    return aiq(paid[rows, ch].mean(axis=1)[ok], quality[ok], 0.0, hi) if ok.any() else float("nan")


def _logits(P: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(P, float), EPS, 1 - EPS))


def _fit_logreg(Z: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> tuple[np.ndarray, float]:
    """(w, b) of an L2 logistic regression on soft labels y (rows y > 0 as positives with weight y, rows
    y < 1 as negatives with weight 1 − y). One-class data: w = 0, b = logit of the observed rate."""
    from sklearn.linear_model import LogisticRegression

    rate = float(np.mean(y)) if len(y) else 0.5
    if len(y) == 0 or np.all(y == y[0]) and y[0] in (0.0, 1.0):
        return np.zeros(Z.shape[1]), float(logit(np.clip(rate, EPS, 1 - EPS)))
    X = np.vstack([Z, Z])
    labels = np.r_[np.ones(len(y), int), np.zeros(len(y), int)]
    w = np.r_[y, 1.0 - y]
    keep = w > 0
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(X[keep], labels[keep], sample_weight=w[keep])
    return clf.coef_[0].astype(float), float(clf.intercept_[0])


class EnsembleRouter(Classifier):
    def __init__(
        self,
        members: Mapping[str, Any] | None = None,
        n_folds: int = 5,
        combiner: str = "logreg",
        use_all_models: bool = False,
        C: float = 1.0,
        C_grid: Sequence[float] | None = None,
        max_iter: int = 1000,
        blend_step: float = 0.1,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        self.members = members
        self.n_folds = n_folds
        self.combiner = combiner
        self.use_all_models = use_all_models
        self.C = C
        self.C_grid = C_grid
        self.max_iter = max_iter
        self.blend_step = blend_step
        self.seed = seed
        self.show_progress = show_progress

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "members": {str(n): member_config(m) for n, m in (self.members or {}).items()}}

    # -- members ----------------------------------------------------------------------------------
    def _member_nodes(self) -> dict[str, dict[str, Any]]:
        nodes = {str(n): member_config(m) for n, m in (self.members or {}).items()}
        if not nodes:
            raise ValueError("EnsembleRouter needs at least one member")
        bad = [n for n in nodes if not _NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"ensemble member names must match {_NAME.pattern} (they name directories): {bad}")
        return nodes

    @staticmethod
    def _build(name: str, node: dict[str, Any]) -> Classifier:
        log.info("Instantiating ensemble member %s <%s>", name, node["_target_"])
        return instantiate(node)

    def _fit_members(self, nodes, queries, y, names, vq, vy, costs, tasks=None) -> dict[str, Classifier]:
        out = {}
        for n, node in nodes.items():
            member = self._build(n, node)
            extra = {"tasks": tasks} if member.task_labels_column() else {}  # only to members that take them
            out[n] = member.fit(queries, y, names, vq, vy, model_costs=costs, **extra)
        return out

    def task_labels_column(self) -> str | None:
        """The ensemble takes the `task` column and hands it to the members that learn from task labels."""
        return "task"

    def wants_val_costs(self) -> bool:
        """A blend scores its weights by the val routing AIQ, priced as replay prices it."""
        return self.combiner == "blend"

    # -- combiner ---------------------------------------------------------------------------------
    @property
    def every_model_column(self) -> bool:
        """Whether model j's combiner reads every model's column (`use_all_models`; a blend weighs whole members)."""
        return bool(self.use_all_models) and self.combiner == "logreg"

    def _features(self, preds: Mapping[str, np.ndarray], j: int) -> np.ndarray:
        """(n, F) combiner inputs of model j from the members' (n, m) predictions."""
        cols = [_logits(P) if self.every_model_column else _logits(P[:, [j]]) for P in preds.values()]
        return np.hstack(cols)

    def _combine(self, preds: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.combiner == "mean":
            return np.mean(np.stack(list(preds.values())), axis=0)
        n = len(next(iter(preds.values())))
        out = np.empty((n, len(self.model_names_)))
        for j in range(len(self.model_names_)):
            out[:, j] = expit(self._features(preds, j) @ self.coef_[j] + self.intercept_[j])
        return out

    def _fit_blend(self, val_preds: Mapping[str, np.ndarray] | None, vy: np.ndarray | None,
                   costs: Mapping[str, float] | Sequence[float] | None,
                   val_costs: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Member weights w (shared by every model) with the highest val routing AIQ; equal without val data.
        With `val_costs` (expected, recorded), each query is decided on its expected $ and charged its recorded $,
        as replay does; else on the constant per-model `costs`."""
        a, m = len(self.members_), len(self.model_names_)
        grid = simplex_grid(a, float(self.blend_step))
        w = np.full(a, 1.0 / a)
        if val_preds is not None and vy is not None and len(vy):
            if val_costs is not None:
                decide, paid = (np.asarray(c, float) for c in val_costs)
                if decide.shape != vy.shape or paid.shape != vy.shape:
                    raise ValueError(f"EnsembleRouter(blend): val_costs have shapes {decide.shape} and {paid.shape}, "
                                     f"the val targets {vy.shape}")
                basis = "per-query expected $ (cost model), recorded $ charged"
            else:
                if isinstance(costs, Mapping):
                    costs = [costs[n] for n in self.model_names_]
                decide = np.ones(m) if costs is None else np.asarray(costs, float)
                if decide.shape != (m,):
                    raise ValueError(f"EnsembleRouter(blend): model_costs has {decide.size} entries for {m} models")
                paid, basis = None, "constant $ per model"
            Z = np.stack([_logits(P) for P in val_preds.values()])  # (a, n, m)
            scores = np.array([routing_aiq(expit(np.tensordot(g, Z, 1)), vy, decide, paid) for g in
                               tqdm(grid, desc="blend weights", disable=not self.show_progress)])
            best = int(np.nanargmax(scores))
            w = grid[best]
            self.report_["blend"] = {"weights": dict(zip(self.members_, w.tolist())), "val_aiq": float(scores[best]),
                                     "costs": basis,
                                     "val_aiq_members": {n: routing_aiq(P, vy, decide, paid)
                                                         for n, P in val_preds.items()}}
        self.coef_, self.intercept_ = np.tile(w, (m, 1)), np.zeros(m)
        self.C_ = np.full(m, np.nan)

    def _fit_combiner(self, oof: Mapping[str, np.ndarray], y: np.ndarray,
                      val_preds: Mapping[str, np.ndarray] | None, vy: np.ndarray | None) -> None:
        grid = [float(c) for c in self.C_grid] if self.C_grid and val_preds is not None else [float(self.C)]
        m = len(self.model_names_)
        coefs, intercepts, self.C_ = [], np.zeros(m), np.zeros(m)
        for j in range(m):
            obs = np.isfinite(y[:, j])
            Z, yj = self._features(oof, j)[obs], y[obs, j]
            fits = [(_fit_logreg(Z, yj, c, self.max_iter), c) for c in grid]
            if len(fits) > 1:
                Zv = self._features(val_preds, j)
                losses = [log_loss(expit(Zv @ w + b), vy[:, j]) for (w, b), _ in fits]
                if all(v is not None for v in losses):
                    fits = [fits[int(np.argmin(losses))]]
            (w, b), c = fits[0]
            coefs.append(w)
            intercepts[j], self.C_[j] = b, c
        self.coef_, self.intercept_ = np.stack(coefs), intercepts

    # -- fit / predict ----------------------------------------------------------------------------
    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
        tasks: Sequence[Any] | None = None,
        val_costs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> "EnsembleRouter":
        if self.combiner not in COMBINERS:
            raise ValueError(f"combiner '{self.combiner}' is not one of {COMBINERS}")
        queries, y, model_names, vq, vy = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("EnsembleRouter.fit: no training queries")
        nodes = self._member_nodes()
        self.model_names_ = model_names
        self.report_: dict[str, Any] = {}
        pretrained = [n for n, node in nodes.items() if node["_target_"] == PRETRAINED_TARGET]
        if pretrained and self.combiner == "logreg":
            raise ValueError(f"EnsembleRouter: members {pretrained} are pretrained, and cross-fitting "
                             "(combiner=logreg) refits every member on folds: use combiner=blend or mean")
        if self.combiner == "logreg":
            n_folds = min(int(self.n_folds), len(set(queries)))
            if n_folds < 2:
                raise ValueError(f"EnsembleRouter: cross-fitting needs ≥ 2 folds (n_folds={self.n_folds}, "
                                 f"{len(set(queries))} distinct queries)")
            folds = fold_ids(queries, n_folds, self.seed)
            oof = {n: np.full(y.shape, np.nan) for n in nodes}
            for f in tqdm(range(n_folds), desc="ensemble folds", disable=not self.show_progress):
                held = folds == f
                tr = [q for q, h in zip(queries, held) if not h]
                ho = [q for q, h in zip(queries, held) if h]
                tr_tasks = None if tasks is None else [t for t, h in zip(tasks, held) if not h]
                for n, member in self._fit_members(nodes, tr, y[~held], model_names, vq, vy, model_costs,
                                                   tr_tasks).items():
                    oof[n][held] = np.asarray(member.predict_proba(ho), float)
            self.report_["oof_log_loss"] = {n: log_loss(P, y) for n, P in oof.items()}
        self.members_ = self._fit_members(nodes, queries, y, model_names, vq, vy, model_costs, tasks)
        val_preds = {n: np.asarray(m.predict_proba(vq), float) for n, m in self.members_.items()} if vq else None
        if self.combiner == "logreg":
            self._fit_combiner(oof, y, val_preds, vy)
        elif self.combiner == "blend":
            self._fit_blend(val_preds, vy, model_costs, val_costs)
        if val_preds is not None:
            self.report_["val_log_loss"] = {**{n: log_loss(P, vy) for n, P in val_preds.items()},
                                            "ensemble": log_loss(self._combine(val_preds), vy)}
        log.info("ensemble of %s: %s", list(nodes), self.report_)
        return self

    def member_predictions(self, queries: Sequence[str] | str) -> dict[str, np.ndarray]:
        """{member: (n, m) P̂} of the fitted members (the combiner's inputs)."""
        queries = as_queries(queries)
        return {n: np.asarray(m.predict_proba(queries), float) for n, m in self.members_.items()}

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        return self._combine(self.member_predictions(queries))

    # -- state ------------------------------------------------------------------------------------
    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """`EnsembleRouter.export_runtime` → `StackedEnsembleRuntime`: members in <name>/, the combiner's arrays."""
        directory = Path(directory)
        nodes = {n: m.export_runtime(directory / n, **graph_options) for n, m in self.members_.items()}
        node: dict[str, Any] = {"kind": "kronaxis_lab.export.runtimes.StackedEnsembleRuntime",
                                "label_order": list(self.model_names_), "members": list(nodes), "nodes": nodes,
                                "combiner": "mean" if self.combiner == "mean" else "logreg",  # blend = logreg form
                                "use_all_models": self.every_model_column,
                                "eps": EPS, "files": {}}
        if self.combiner != "mean":
            save_arrays(directory / "combiner.npz", coef=self.coef_, intercept=self.intercept_)
            node["files"]["combiner"] = "combiner.npz"
        return node

    def save_state(self, directory: Path) -> None:
        for n, m in self.members_.items():
            m.save_pretrained(directory / MEMBERS_DIR / n)
        if self.combiner != "mean":
            np.savez(directory / STATE_FILE, coef=self.coef_, intercept=self.intercept_, C=self.C_)
        meta = {"members": list(self.members_), "report": self.report_}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    def load_state(self, directory: Path) -> None:
        meta = json.loads((directory / META_FILE).read_text())
        self.report_ = meta.get("report", {})
        self.members_ = {n: load_classifier(directory / MEMBERS_DIR / n) for n in meta["members"]}
        if self.combiner != "mean":
            with np.load(directory / STATE_FILE, allow_pickle=False) as z:
                self.coef_, self.intercept_, self.C_ = z["coef"], z["intercept"], z["C"]
