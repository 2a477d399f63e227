"""Cascades: call a cheap model first, read its response, escalate to a stronger model on a signal from it.

A single-call router decides from the query alone; a cascade also sees the response of the call it made,
which is what a production gateway holds after making it (never the gold answer or the score). Signals:

- ``FormatSignal``: the response states a final answer in the expected form (a marked number —
  ``####``, ``\\boxed``, "the answer is" — or one option letter for a multiple-choice query); else escalate.
- ``AgreementSignal``: a second cheap model answers the same query (both are called and charged); escalate
  unless their final answers agree.
- ``VerifierSignal``: a learned verifier P̂(first model's answer is right | query, response), logistic
  regression over TF-IDF of the query and of the response plus the format (and, with ``agree_with``,
  agreement) flags, fitted on the train split's recorded responses, C chosen on val by log-loss. Its
  threshold is swept, so it has a cost–quality curve like the policy routers.

The model's own confidence (token log-probabilities) would be a fourth signal, but no outcome table here
records them.

Multi-call cost accounting: ``RouteResult.choices`` holds the model whose answer is returned and
``RouteResult.extra_cost`` the recorded $ of every other call made (the first model's when it escalated, the
agreement model's always), so the replay charges every call. A cascade is replayed only on a split where
every query has a recorded response of each model it reads; elsewhere it returns no result and says why.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from kronaxis_lab import metrics as M
from kronaxis_lab.classifiers.tfidf import tfidf_vectorizer
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.grading.arithmetic import arithmetic_check
from kronaxis_lab.grading.multiple_choice import extract_choice, texts_from_query
from kronaxis_lab.grading.numeric import marked_answer
from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE, operating_point
from kronaxis_lab.routing.routers import ReplayContext, Router, RouteResult

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
FORMATS = ("auto", "numeric", "choice")


def answer_key(response: Any, query: str, fmt: str = "auto") -> str | None:
    """The response's final answer as a comparable key (``num:18``, ``choice:B``), or None when it states
    none in the expected form. ``auto``: multiple choice when the query lists ≥ 2 lettered options, else
    numeric — read off the query text, as a gateway would."""
    if fmt not in FORMATS:
        raise ValueError(f"answer format must be one of {FORMATS}, got {fmt!r}")
    if response is None or (isinstance(response, float) and math.isnan(response)):
        return None
    text = str(response)
    options = texts_from_query(str(query), LETTERS) if fmt in ("auto", "choice") else None
    if fmt == "choice" or (fmt == "auto" and options is not None):
        letter, _ = extract_choice(text, LETTERS, options)
        return None if letter is None else f"choice:{letter}"
    value = marked_answer(text)
    if value is None or not math.isfinite(value):
        return None
    return f"num:{round(float(value), 6):g}"


def answer_keys(responses: Sequence[Any], queries: Sequence[str], fmt: str) -> list[str | None]:
    return [answer_key(r, q, fmt) for r, q in zip(responses, queries)]


class CascadeSignal(ABC):
    """Reads the cheap model's response (and any extra call it makes) and scores trust in its answer."""

    name = "signal"
    #: True: one fixed rule (accept iff score ≥ 0.5); False: the threshold is swept into a curve
    fixed = True
    #: what the signal learned, copied into the replay entry
    info: dict[str, Any] = {}

    def __init__(self, answer_format: str = "auto"):
        if answer_format not in FORMATS:
            raise ValueError(f"cascade signal: answer_format must be one of {FORMATS}, got {answer_format!r}")
        self.answer_format = answer_format

    def extra_models(self, ctx: ReplayContext) -> list[int]:
        """Fleet indices of models this signal calls besides the first (charged on every query)."""
        return []

    def fit(self, ctx: ReplayContext, first: int) -> None:  # noqa: B027 — a rule signal learns nothing
        """Learn from the train (and val) splits; nothing to learn by default."""

    @abstractmethod
    def trust(self, queries: Sequence[str], replies: Sequence[Any], others: Sequence[Sequence[Any]] = ()) -> np.ndarray:
        """(n,) trust in the first model's answers `replies` to `queries` (higher = keep); `others` holds one
        sequence of replies per extra model called (`extra_models` order). The replay and the server both call
        this: it reads only what a gateway holds after the calls."""

    def inputs(self, ctx: ReplayContext, mats: Matrices, first: int) -> tuple[list[str], Any, list[Any]]:
        """(query texts, the first model's recorded replies, each extra model's) of a split."""
        return (mats.queries["text"].astype(str).tolist(), mats.responses[:, first],
                [mats.responses[:, j] for j in self.extra_models(ctx)])

    def score(self, ctx: ReplayContext, mats: Matrices, first: int) -> np.ndarray:
        """`trust` over a split's recorded replies."""
        return self.trust(*self.inputs(ctx, mats, first))


class FormatSignal(CascadeSignal):
    name = "format"

    def trust(self, queries, replies, others=()):
        return np.array([k is not None for k in answer_keys(replies, queries, self.answer_format)], float)


class AgreementSignal(CascadeSignal):
    """Keep the first model's answer when a second cheap model (`with_model`, default: the next cheapest
    by price) gives the same final answer."""

    name = "agreement"

    def __init__(self, with_model: str | None = None, answer_format: str = "auto"):
        super().__init__(answer_format)
        self.with_model = with_model

    def extra_models(self, ctx):
        return [second_cheapest(ctx, self.with_model)]

    def trust(self, queries, replies, others=()):
        if len(others) != 1:
            raise ValueError(f"cascade agreement reads one second model's replies, got {len(others)}")
        a = answer_keys(replies, queries, self.answer_format)
        b = answer_keys(others[0], queries, self.answer_format)
        return np.array([x is not None and x == y for x, y in zip(a, b)], float)


class VerifierSignal(CascadeSignal):
    """Learned P̂(the first model is right | query, its response): logistic regression over TF-IDF of both
    texts and the format/agreement flags, fitted on train, C picked on val by log-loss."""

    name = "verifier"
    fixed = False

    def __init__(self, tfidf: dict | None = None, Cs: Sequence[float] = (0.1, 1.0, 10.0), agree_with: str | None = None,
                 use_agreement: bool = False, answer_format: str = "auto", max_iter: int = 2000,
                 arithmetic: bool = False):
        super().__init__(answer_format)
        #: also feed the arithmetic re-check of the reply's worked steps (grading/arithmetic.py): any wrong step,
        #: log-counts of right and wrong steps
        self.arithmetic = bool(arithmetic)
        self.tfidf = dict(tfidf or {"ngram_range": [1, 2], "min_df": 2, "max_features": 20000,
                                    "sublinear_tf": True})
        self.Cs = [float(c) for c in Cs]
        self.agree_with, self.use_agreement, self.max_iter = agree_with, bool(use_agreement), int(max_iter)
        self.info: dict[str, Any] = {}
        #: the fitted parts (`fit`, or set by a bundle loader): query / reply vectorizers, weights (d,), bias
        self.q_vec = self.r_vec = self.coef = None
        self.intercept = 0.0

    def extra_models(self, ctx):
        return [second_cheapest(ctx, self.agree_with)] if self.use_agreement else []

    def _flags(self, queries: Sequence[str], replies: Sequence[Any], others: Sequence[Sequence[Any]],
               resp: list[str]) -> np.ndarray:
        keys = answer_keys(replies, queries, self.answer_format)
        cols = [[k is not None for k in keys], [math.log1p(len(r)) / 10 for r in resp]]
        if self.arithmetic:
            checks = [arithmetic_check(r) for r in resp]
            cols += [[bad > 0 for _, bad in checks], [math.log1p(good) / 3 for good, _ in checks],
                     [math.log1p(bad) for _, bad in checks]]
        if self.use_agreement:
            if len(others) != 1:
                raise ValueError(f"cascade verifier with agreement reads one second model's replies, got {len(others)}")
            other = answer_keys(others[0], queries, self.answer_format)
            cols.append([a is not None and a == b for a, b in zip(keys, other)])
        return np.asarray(cols, float).T

    def features(self, queries: Sequence[str], replies: Sequence[Any],
                 others: Sequence[Sequence[Any]] = ()) -> sparse.csr_matrix:
        queries = [str(q) for q in queries]
        resp = [("" if r is None else str(r)) for r in replies]
        q, r = self.q_vec.transform(queries), self.r_vec.transform(resp)
        return sparse.hstack([q, r, sparse.csr_matrix(self._flags(queries, replies, others, resp))], format="csr")

    def fit(self, ctx, first):
        tr, va = ctx.train, ctx.val
        if tr is None or tr.n == 0 or tr.responses is None:
            raise ValueError("cascade verifier: the train split records no responses to learn from")
        self.q_vec, self.r_vec = tfidf_vectorizer(self.tfidf), tfidf_vectorizer(self.tfidf)
        self.q_vec.fit(tr.queries["text"].astype(str).tolist())
        self.r_vec.fit([("" if r is None else str(r)) for r in tr.responses[:, first]])
        X, y = self.features(*self.inputs(ctx, tr, first)), tr.correct[:, first].astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("cascade verifier: the first model is always (or never) right on train; nothing to learn")
        have_val = va is not None and va.n > 0 and va.responses is not None and len(np.unique(va.correct[:, first])) > 1
        Xv = self.features(*self.inputs(ctx, va, first)) if have_val else None
        best = None
        for C in self.Cs:
            lr = LogisticRegression(C=C, max_iter=self.max_iter).fit(X, y)
            loss = log_loss(va.correct[:, first].astype(int), lr.predict_proba(Xv)[:, 1]) if have_val else 0.0
            if best is None or loss < best[0]:
                best = (loss, C, lr)
            if not have_val:
                break
        self.val_log_loss, self.C, lr = best
        self.coef, self.intercept = np.asarray(lr.coef_[0], float), float(lr.intercept_[0])
        self.info = {"C": self.C, "val_log_loss": self.val_log_loss if have_val else None, "n_train": int(tr.n)}

    def trust(self, queries, replies, others=()):
        if self.coef is None:
            raise RuntimeError("cascade verifier: fit it (or load it from a bundle) before scoring")
        return expit(self.features(queries, replies, others) @ self.coef + self.intercept)


def threshold_grid(trust: np.ndarray, num: int) -> np.ndarray:
    """A threshold sweep: `num` quantiles of the trust scores, plus keep-all (−∞) and escalate-all (+∞)."""
    return np.unique(np.concatenate([[-np.inf], np.quantile(trust, np.linspace(0, 1, num)), [np.inf]]))


def cascade_plan(pre: np.ndarray, trust: np.ndarray, thresholds: np.ndarray, costs: np.ndarray, first: int,
                 second: int, extras: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(choices, extra $, kept), each (k, n), per threshold τ: rows whose pre-route `pre` is `first` keep its answer
    where trust ≥ τ, else take `second`'s; other rows keep `pre`. The extra $ are the recorded costs of the calls
    whose answer was not returned: `extras` on every cascaded row, `first` where it escalated."""
    cascaded = (np.asarray(pre) == first)[None, :]
    keep = trust[None, :] >= np.asarray(thresholds, float)[:, None]
    choices = np.where(cascaded & ~keep, second, np.asarray(pre)[None, :]).astype(np.int32)
    extras = list(extras)
    always = costs[:, extras].sum(axis=1) if extras else np.zeros(len(pre))
    extra = np.where(cascaded, always[None, :] + np.where(keep, 0.0, costs[:, first][None, :]), 0.0)
    return choices, extra, keep


def second_cheapest(ctx: ReplayContext, name: str | None) -> int:
    """The fleet index of `name`, else the cheapest model after the fleet's cheapest (fleet order is by tier,
    then price), never the premium one."""
    if name:
        return ctx.fleet.index(name)
    rest = [i for i in range(len(ctx.fleet.names)) if i not in (ctx.cheapest_idx, ctx.premium_idx)]
    if not rest:
        raise ValueError(f"cascade agreement needs a second cheap model; the fleet has only {ctx.fleet.names}")
    return rest[0]


class CascadeRouter(Router):
    """Call `first` (default: the cheapest model); keep its answer when the signal trusts it, else call
    `second` (default: the premium model) and return that. Named ``cascade:<signal>``."""

    def __init__(self, signal: CascadeSignal, first: str | None = None, second: str | None = None,
                 name: str | None = None, num: int = 41):
        self.signal, self.first, self.second = signal, first, second
        self.name = name or f"cascade:{signal.name}"
        self.num = int(num)

    def _needs(self, ctx: ReplayContext, first: int) -> list[int]:
        return [first, *self.signal.extra_models(ctx)]

    def _missing(self, mats: Matrices | None, models: list[int]) -> str | None:
        if mats is None or mats.n == 0:
            return "the split is empty"
        if mats.responses is None:
            return "the outcome table records no responses"
        miss = np.equal(mats.responses[:, models], None).any(axis=1)
        if miss.any():
            return f"{int(miss.sum())} of {mats.n} queries have no recorded response of a model it reads"
        return None

    def route(self, ctx):
        try:
            first = ctx.fleet.index(self.first) if self.first else ctx.cheapest_idx
            second = ctx.fleet.index(self.second) if self.second else ctx.premium_idx
            needs = self._needs(ctx, first)
        except ValueError as e:  # e.g. agreement on a two-model fleet
            log.info("%s: not replayed (%s)", self.name, e)
            return {}
        why = self._missing(ctx.test, needs) or (self._missing(ctx.train, needs) if not self.signal.fixed else None)
        if why:
            log.info("%s: not replayed on this split (%s)", self.name, why)
            return {}
        self.signal.fit(ctx, first)
        s = self.signal.score(ctx, ctx.test, first)
        thresholds = np.array([0.5]) if self.signal.fixed else self._thresholds(s)
        extras = [j for j in needs if j != first]
        choices, extra, keep = self._plan(ctx.test, s, thresholds, first, second, extras)
        calls = 1 + len(extras) + (~keep).mean(axis=1)
        info: dict[str, Any] = {"family": "cascade", "cascade": {
            "signal": self.signal.name, "first": ctx.fleet.names[first], "second": ctx.fleet.names[second],
            "also_calls": [ctx.fleet.names[j] for j in extras], "calls_per_query": [float(c) for c in calls],
            **self.signal.info}}
        if not self.signal.fixed:
            info["cascade"]["val_threshold"] = self._val_threshold(ctx, first, second, needs)
        rr = RouteResult(choices, None if self.signal.fixed else thresholds, None if self.signal.fixed else "threshold",
                         info=info, extra_cost=extra)
        return {self.name: rr}

    @staticmethod
    def _plan(mats: Matrices, s: np.ndarray, thresholds: np.ndarray, first: int, second: int,
              extras: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`cascade_plan` with every query sent to `first`."""
        return cascade_plan(np.full(mats.n, first), s, thresholds, mats.costs, first, second, extras)

    def _thresholds(self, s: np.ndarray) -> np.ndarray:
        return threshold_grid(s, self.num)

    def _val_threshold(self, ctx: ReplayContext, first: int, second: int, needs: list[int]) -> float | None:
        """The threshold a deployment would ship: on val, the cheapest point at ≥ 95 % of premium accuracy."""
        va = ctx.val
        if self._missing(va, needs):
            return None
        s = self.signal.score(ctx, va, first)
        th = self._thresholds(s)
        choices, extra, _ = self._plan(va, s, th, first, second, [j for j in needs if j != first])
        cost, acc = M.choices_metrics_batch(choices, va.scores, va.costs, va.correct, extra)
        i = operating_point(cost, acc, PREMIUM_ACCURACY_SHARE * float(va.scores[:, second].mean()))
        return float(th[i])
