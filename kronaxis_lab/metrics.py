"""Routing metrics: CPAO, the cost–quality hull (NDCH), AIQ, APGR / CPT, savings at a quality target.

Pure numpy and batch-first: per-query work is vectorised (fancy indexing over query × model tables);
the only Python loops run over a router's handful of operating points (hull construction) or over
memory-bounded blocks of operating points (`choices_metrics_batch`).

Vocabulary
----------
A router *result* on ``n`` queries is one model index per query (``choice``), read against the
query × model tables ``scores`` (quality in [0, 1]), ``costs`` ($) and ``correct`` (bool) from the
outcome table. Sweeping a router's knob (threshold, λ, budget) gives a *curve*: one
``(cost, quality, premium_share)`` per operating point.

Sources followed (read for this module; where the code and the paper differ, the code wins)
-------------------------------------------------------------------------------------------
* RouteLLM — Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", arXiv:2406.18665;
  code lm-sys/RouteLLM ``routellm/evals/evaluate.py`` (``generate_results`` → ``auc_metric``,
  ``apgr_metric``, ``pct_call_metric``; read at commit 0aa24fd90b4b88cbc5155e306eef51b1a99797e8) and
  ``routellm/evals/benchmarks.py`` (the threshold sweep; commit 0d78f127ffcda70413e36abe404b4f6c4cc10576).
  Paper: ``PGR = (r(R) − r(weak)) / (r(strong) − r(weak))``, ``APGR = ∫_0^1 PGR d(c)`` with c the share
  of calls to the strong model, ``CPT(x%)`` = minimum share of strong calls needed to reach PGR = x%.
* RouterBench — Hu et al., "RouterBench: A Benchmark for Multi-LLM Routing System", arXiv:2403.12031
  (§3: ``AIQ(R) = 1/(c_max − c_min) ∫_{c_min}^{c_max} R~(c) dc`` with R~ the non-decreasing convex hull);
  code withmartian/routerbench ``evaluation/AIQ.py`` (``get_non_descreasing_convex_hull_of``,
  ``calc_AIQ``; read at commit 30e0925ac07a45108b9ee82086040a5664ea83e6).
  The paper text was read through quotations of it; the code was read directly.

Each function's docstring says exactly which behaviour it reproduces and where it departs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE

__all__ = [
    "cpao",
    "summarize_choice",
    "choices_metrics_batch",
    "ndch",
    "aiq",
    "routerbench_cost_range",
    "max_accuracy",
    "cost_at_quality",
    "savings_at_quality",
    "pgr",
    "apgr",
    "cpt",
    "oracle_gap",
    "router_summary",
]

# choices_metrics_batch gathers this many (operating point, query) cells per block. Measured on the
# 2-core dev box (n=1M, m=11, k=100): 2^20 cells per block ran in ~0.85 s, one monolithic gather of all
# 10^8 cells in ~2.7 s (and needed >2 GB of temporaries) — blocks that stay in cache are faster.
_BLOCK_CELLS = 1 << 20


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------
def _finite_1d(name: str, x, *, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name}: empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]} (values must be finite)")
    return arr


def _curve(costs, quality) -> tuple[np.ndarray, np.ndarray]:
    c = _finite_1d("costs", costs)
    q = _finite_1d("quality", quality)
    if c.shape != q.shape:
        raise ValueError(f"costs has {c.size} points but quality has {q.size}")
    return c, q


def _finite_scalar(name: str, x) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} is {v} (must be finite)")
    return v


def _tables(scores, costs, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    k = np.asarray(correct)
    if s.ndim != 2:
        raise ValueError(f"scores: expected a (queries, models) matrix, got shape {s.shape}")
    for name, arr in (("costs", c), ("correct", k)):
        if arr.shape != s.shape:
            raise ValueError(f"{name} has shape {arr.shape}, scores has {s.shape}; they must match")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores has shape {s.shape}: need at least one query and one model")
    return s, c, k


def _int_choices(name: str, choices, n_models: int) -> np.ndarray:
    ch = np.asarray(choices)
    if ch.dtype.kind not in "iu":
        raise ValueError(f"{name}: model indices must be integers, got dtype {ch.dtype}")
    if ch.size:
        lo, hi = ch.min(), ch.max()
        if lo < 0 or hi >= n_models:
            bad = lo if lo < 0 else hi
            pos = np.unravel_index(int(np.flatnonzero(ch.ravel() == bad)[0]), ch.shape)
            where = ", ".join(str(int(p)) for p in pos)
            raise ValueError(f"{name}[{where}] = {bad} is not a model index in [0, {n_models})")
    return ch


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Own trapezoid rule: np.trapz is gone in numpy 2 and np.trapezoid is missing before 2.0.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def json_float(x) -> float | None:
    """Python float, or None where the value is undefined / infinite (JSON has no NaN or inf)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# per-router results on a query table
# --------------------------------------------------------------------------------------------------
def cpao(total_cost: float, n_correct: float) -> float:
    """Cost per accurate outcome: ``CPAO = total $ / number of correct outcomes``.

    ``inf`` when ``n_correct == 0`` (money spent, nothing right). ``n_correct`` may be fractional (an
    expected count). Negative or non-finite inputs raise ``ValueError``.
    """
    total = _finite_scalar("total_cost", total_cost)
    correct = _finite_scalar("n_correct", n_correct)
    if total < 0 or correct < 0:
        raise ValueError(f"cpao needs non-negative inputs, got total_cost={total}, n_correct={correct}")
    if correct == 0:
        return math.inf
    return total / correct


def summarize_choice(
    choice: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    correct: np.ndarray,
    premium_idx: int,
    extra_cost: np.ndarray | None = None,
) -> dict:
    """Summarise one router result: which model each query went to, read against the outcome tables.

    With ``i = 0..n-1`` the queries and ``j_i = choice[i]``:

    * ``accuracy = (1/n) Σ_i scores[i, j_i]``
    * ``cost_usd = Σ_i costs[i, j_i] + Σ_i extra_cost[i]``;  ``cost_per_query = cost_usd / n`` — ``extra_cost``
      (n,) is what a multi-call router (a cascade) spent on the calls whose answer it did not return
    * ``n_correct = Σ_i correct[i, j_i]``;  ``cpao = cost_usd / n_correct`` (see :func:`cpao`)
    * ``premium_share = (1/n) #{i : j_i = premium_idx}``
    * ``savings_vs_premium = 1 − cost_usd / Σ_i costs[i, premium_idx]``
    * ``model_mix = {j: (1/n) #{i : j_i = j}}`` for every model ``j`` (zeros included)

    Every value is a Python float (or int keys in ``model_mix``) so the dict is JSON-serialisable;
    ``cpao`` is ``None`` when nothing is correct and ``savings_vs_premium`` is ``None`` when the
    always-premium cost is 0 (both undefined, and JSON has no inf/NaN).

    A chosen cell that is NaN (e.g. the model was never run on that query) raises ``ValueError`` naming
    the query row and model; unchosen NaN cells are fine.
    """
    s, c, k = _tables(scores, costs, correct)
    n, m = s.shape
    ch = _int_choices("choice", choice, m)
    if ch.shape != (n,):
        raise ValueError(f"choice has shape {ch.shape}; expected ({n},), one model index per query row")
    p = int(premium_idx)
    if not 0 <= p < m:
        raise ValueError(f"premium_idx={premium_idx} is not a model index in [0, {m})")

    rows = np.arange(n)
    chosen_s, chosen_c = s[rows, ch], c[rows, ch]
    chosen_k = k[rows, ch].astype(np.float64)
    for name, vals in (("scores", chosen_s), ("costs", chosen_c), ("correct", chosen_k)):
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            r = int(bad[0])
            raise ValueError(f"{name}[row {r}, model {int(ch[r])}] is {vals[r]} but the router chose it")

    cost = float(chosen_c.sum()) + _extra_total(extra_cost, (n,))
    n_correct = float(chosen_k.sum())
    premium_total = float(c[:, p].sum())
    mix = np.bincount(ch, minlength=m) / n
    return {
        "accuracy": float(chosen_s.mean()),
        "cost_usd": cost,
        "cost_per_query": cost / n,
        "n_correct": n_correct,
        "cpao": json_float(cpao(cost, n_correct)),
        "premium_share": float(mix[p]),
        "savings_vs_premium": (1.0 - cost / premium_total) if premium_total > 0 else None,
        "model_mix": {int(j): float(mix[j]) for j in range(m)},
    }


def _extra_total(extra_cost: np.ndarray | None, shape: tuple[int, ...]) -> Any:
    """Σ over queries of a multi-call router's extra $ ((n,) → float, (k, n) → (k,)); 0 without one."""
    if extra_cost is None:
        return 0.0 if len(shape) == 1 else np.zeros(shape[0])
    e = np.asarray(extra_cost, dtype=np.float64)
    if e.shape != shape:
        raise ValueError(f"extra_cost has shape {e.shape}; expected {shape}, the shape of the choices")
    if not np.isfinite(e).all() or (e < 0).any():
        raise ValueError("extra_cost must be finite and ≥ 0 (the recorded $ of calls a router made)")
    return float(e.sum()) if len(shape) == 1 else e.sum(axis=1)


def choices_metrics_batch(choices: np.ndarray, scores, costs, correct,
                          extra_cost: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Total cost and accuracy of ``k`` operating points of one router at once (the replay hot path).

    ``choices`` is ``(k, n)``: row ``r`` is the model index per query at operating point ``r`` (a 1-D
    ``(n,)`` array is read as ``k = 1``). Returns ``(total_cost, accuracy)``, both ``(k,)`` float64::

        total_cost[r] = Σ_i costs[i, choices[r, i]] + Σ_i extra_cost[r, i]
        accuracy[r]   = (1/n) Σ_i scores[i, choices[r, i]]

    ``extra_cost`` (k, n), optional: the $ a multi-call router (a cascade) spent on calls whose answer it
    did not return, so every call made is charged.

    Implementation: one flat gather ``table.ravel()[i*m + choices[r, i]]`` per block of rows, where a
    block holds ~2^20 cells, so a large sweep never materialises a (k, n) index or value array (10^8
    cells would be >2 GB) and small sweeps are a single vectorised op. Measured on the 2-core dev box:
    k=100, n=1M, m=11 in about 1 s.

    ``correct`` is accepted so all replay calls share one signature and is checked for shape only.
    Out-of-range or non-integer choices raise ``ValueError``; so does a NaN in a chosen cell (the error
    names operating point, query row and model).
    """
    s, c, _ = _tables(scores, costs, correct)
    n, m = s.shape
    ch = np.asarray(choices)
    if ch.ndim == 1:
        ch = ch[None, :]
    if ch.ndim != 2 or ch.shape[1] != n:
        raise ValueError(
            f"choices has shape {np.shape(choices)}; expected (k, {n}), one row per operating point"
        )
    ch = _int_choices("choices", ch, m)
    k = ch.shape[0]

    s_flat = np.ascontiguousarray(s).ravel()
    c_flat = np.ascontiguousarray(c).ravel()
    row_base = np.arange(n, dtype=np.intp) * m  # flat offset of each query's row in the (n, m) tables
    total_cost = np.empty(k, dtype=np.float64)
    score_sum = np.empty(k, dtype=np.float64)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, k, block):
        # (b, n) flat indices; intp explicitly so uint64 choices do not promote to float
        flat = np.add(ch[start : start + block], row_base, dtype=np.intp, casting="unsafe")
        score_sum[start : start + block] = np.take(s_flat, flat).sum(axis=1)
        total_cost[start : start + block] = np.take(c_flat, flat).sum(axis=1)

    for name, sums, table in (("scores", score_sum, s), ("costs", total_cost, c)):
        bad_rows = np.flatnonzero(~np.isfinite(sums))
        if bad_rows.size:  # only on failure: find the exact cell to name it
            r = int(bad_rows[0])
            vals = table[np.arange(n), ch[r]]
            i = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise ValueError(
                f"{name}[row {i}, model {int(ch[r, i])}] is {vals[i]} but operating point {r} chose it"
            )
    return total_cost + _extra_total(extra_cost, (k, n)), score_sum / n


# --------------------------------------------------------------------------------------------------
# cost–quality curves: RouterBench's NDCH and AIQ
# --------------------------------------------------------------------------------------------------
def ndch(costs: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing convex hull (RouterBench) of a router's ``(cost, quality)`` operating points.

    Returns the hull vertices ``(hull_costs, hull_quality)`` sorted by cost; between vertices the hull
    is the straight line (probabilistic mixing of two operating points realises any point on it).

    Definition (RouterBench ``get_non_descreasing_convex_hull_of``): at every input cost x the hull
    value is ``max(q at x, max over points a, b with c_a < x < c_b of the chord a–b at x)``, i.e. the
    upper concave envelope; the first (cheapest) point is kept, then every point whose hull value is
    *strictly below* its predecessor's is removed. Because the envelope is concave, that keeps exactly
    the envelope up to (and including) the last point of maximal quality, so equal-quality plateaus are
    kept and the decreasing tail is dropped. This function computes the same curve with a monotone-
    chain upper hull (O(k log k)) and returns only its vertices (RouterBench also lists collinear input
    points, which lie on the same line and change no interpolated value or area).

    Departures, all where the reference code is undefined: several points at one cost are reduced
    to the best one (the reference does that at interior costs, but at the cheapest and the dearest
    cost keeps whichever point its non-stable sort puts at the end); 1 or 2 points are handled (the
    reference raises IndexError when there is no interior point).
    """
    c, q = _curve(costs, quality)
    order = np.lexsort((-q, c))  # by cost, best quality first within a cost
    c, q = c[order], q[order]
    first_of_cost = np.r_[True, np.diff(c) > 0]
    c, q = c[first_of_cost], q[first_of_cost]

    hull: list[int] = []  # upper hull by Andrew's monotone chain; loop is over operating points only
    for i in range(c.size):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            # a on or below the segment o→i  ⇔  cross(a−o, i−o) ≥ 0  ⇒  a is no upper-hull vertex
            if (c[a] - c[o]) * (q[i] - q[o]) - (q[a] - q[o]) * (c[i] - c[o]) >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hc, hq = c[hull], q[hull]
    drops = np.flatnonzero(np.diff(hq) < 0)  # concave ⇒ once it drops it keeps dropping
    end = drops[0] + 1 if drops.size else hq.size
    return hc[:end].copy(), hq[:end].copy()


def _hull_value(hc: np.ndarray, hq: np.ndarray, x: np.ndarray) -> np.ndarray:
    """R~(x): linear between vertices, flat after the last vertex, 0 before the first (see :func:`aiq`)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x < hc[0], 0.0, np.interp(x, hc, hq))


def aiq(costs, quality, cost_min: float, cost_max: float) -> float:
    """Average Improvement in Quality (RouterBench).

    ``AIQ = 1/(c_max − c_min) ∫_{c_min}^{c_max} R~(c) dc``.

    ``R~`` is the router's :func:`ndch`, interpolated linearly between vertices. ``cost_min`` and
    ``cost_max`` come from the caller so that all routers on one dataset share one range.

    Outside the router's own hull, R~ follows RouterBench's ``calc_AIQ`` code:

    * beyond its last vertex the hull is extended flat at its last quality (the code appends
      ``(max_x_value, last_y)``, i.e. paying more than needed for the same quality);
    * below its cheapest point R~ is 0: the code integrates only from the router's first hull point,
      yet divides by ``max_x_value`` — the full range starting at cost 0.

    So RouterBench's number is ``aiq(costs, quality, 0, c_max)`` with ``c_max`` the largest hull end
    over the routers compared (the paper writes a general ``c_min``, the code fixes it at 0); see
    :func:`routerbench_cost_range`. The integral is exact for the piecewise-linear R~.
    """
    lo_range = _finite_scalar("cost_min", cost_min)
    hi = _finite_scalar("cost_max", cost_max)
    if not hi > lo_range:
        raise ValueError(f"AIQ needs cost_max > cost_min, got cost_min={lo_range}, cost_max={hi}")
    hc, hq = ndch(costs, quality)
    lo = max(lo_range, float(hc[0]))  # R~ = 0 on [cost_min, first hull cost)
    if lo >= hi:
        return 0.0
    inner = hc[(hc > lo) & (hc < hi)]
    grid = np.concatenate(([lo], inner, [hi]))
    return _trapezoid(np.interp(grid, hc, hq), grid) / (hi - lo_range)


def routerbench_cost_range(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The cost range RouterBench's ``calc_AIQ`` uses for a set of routers on one dataset.

    ``curves`` is a sequence of ``(costs, quality)``; returns ``(0.0, max over routers of the cost of
    the last NDCH vertex)`` — the code's ``max_x_value``, with the integral starting at cost 0.
    """
    if len(curves) == 0:
        raise ValueError("routerbench_cost_range needs at least one (costs, quality) curve")
    return 0.0, float(max(ndch(c, q)[0][-1] for c, q in curves))


def max_accuracy(costs, quality) -> float:
    """Best quality a router reaches at any operating point, ``max_r quality[r]`` (= the NDCH's end)."""
    _, q = _curve(costs, quality)
    return float(q.max())


def cost_at_quality(costs, quality, target_quality: float) -> float | None:
    """Cheapest cost at which the router's NDCH reaches ``target_quality``.

    With hull vertices ``(c_0, q_0) … (c_h, q_h)`` (quality non-decreasing) and ``t`` the target:
    if ``q_0 ≥ t`` the answer is ``c_0`` (the hull starts there); otherwise, for the first vertex
    ``i`` with ``q_i ≥ t``, ``c = c_{i−1} + (t − q_{i−1}) (c_i − c_{i−1}) / (q_i − q_{i−1})``.
    ``None`` when the hull never reaches ``t``.
    """
    t = _finite_scalar("target_quality", target_quality)
    hc, hq = ndch(costs, quality)
    reached = np.flatnonzero(hq >= t)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(hc[0])
    # hq[i-1] < t <= hq[i], so the slope below is finite and positive
    return float(hc[i - 1] + (t - hq[i - 1]) * (hc[i] - hc[i - 1]) / (hq[i] - hq[i - 1]))


def savings_at_quality(costs, quality, target_quality: float, premium_cost: float) -> float | None:
    """Savings versus always-premium at a quality target: ``1 − cost_at_quality / premium_cost``.

    ``costs`` and ``premium_cost`` must be in the same units (e.g. total $ over the same queries).
    ``None`` when the router's hull never reaches the target (see :func:`cost_at_quality`).
    """
    p = _finite_scalar("premium_cost", premium_cost)
    if p <= 0:
        raise ValueError(f"premium_cost must be > 0, got {p}")
    c = cost_at_quality(costs, quality, target_quality)
    return None if c is None else 1.0 - c / p


# --------------------------------------------------------------------------------------------------
# RouteLLM: PGR, APGR, CPT (two-model routing, x-axis = share of calls to the strong model)
# --------------------------------------------------------------------------------------------------
def _gap(weak_quality: float, strong_quality: float) -> tuple[float, float]:
    w = _finite_scalar("weak_quality", weak_quality)
    s = _finite_scalar("strong_quality", strong_quality)
    if s == w:
        raise ValueError(f"PGR is undefined: strong_quality == weak_quality == {s}")
    return w, s


def pgr(quality, weak_quality: float, strong_quality: float) -> np.ndarray:
    """Performance gap recovered (RouteLLM): ``PGR = (q − weak) / (strong − weak)``, elementwise.

    0 at the weak model's quality, 1 at the strong model's. Raises ``ValueError`` when
    ``strong_quality == weak_quality`` (the gap is empty, PGR undefined).
    """
    w, s = _gap(weak_quality, strong_quality)
    return (np.asarray(quality, dtype=np.float64) - w) / (s - w)


def _share_curve(premium_share, quality) -> tuple[np.ndarray, np.ndarray]:
    x = _finite_1d("premium_share", premium_share)
    q = _finite_1d("quality", quality)
    if x.shape != q.shape:
        raise ValueError(f"premium_share has {x.size} points but quality has {q.size}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"premium_share must be fractions in [0, 1], got range [{x.min()}, {x.max()}]")
    order = np.lexsort((q, x))  # by share; ties by quality so the result ignores input order
    return x[order], q[order]


def apgr(premium_share: np.ndarray, quality: np.ndarray, weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered (RouteLLM), following ``evaluate.py``'s ``apgr_metric``.

    The operating points are sorted by share of strong calls ``x`` (a fraction; RouteLLM uses
    ``strong_percentage / 100``) and integrated with the trapezoid rule, with **no endpoints added**::

        AUC      = trapz(quality, x)
        APGR     = (AUC − weak·(x_max − x_min)) / (strong·(x_max − x_min) − weak·(x_max − x_min))
                 = trapz(PGR, x) / (x_max − x_min)

    The paper writes ``APGR = ∫_0^1 PGR dc``; the code integrates only over the observed share range
    and normalises by its width. The two agree when the sweep contains the 0 % and 100 % points,
    which RouteLLM's own sweep always does (its ``pd.qcut`` thresholds start at the minimum win rate
    → 100 % strong, and end with a strict ``>`` at the maximum → 0 % strong). Callers wanting numbers
    comparable with the paper should include the all-weak and all-strong operating points.

    Ties in share are ordered by quality (RouteLLM leaves them in sort order; a threshold sweep of one
    score gives the same quality at the same share anyway). Raises ``ValueError`` when
    ``strong == weak`` or when all points share one share value (the code divides 0 by 0 there).
    """
    w, s = _gap(weak_quality, strong_quality)
    x, q = _share_curve(premium_share, quality)
    width = float(x[-1] - x[0])
    if width == 0:
        raise ValueError(f"APGR needs at least two distinct premium shares, got only {x[0]}")
    return _trapezoid((q - w) / (s - w), x) / width


def cpt(premium_share, quality, weak_quality, strong_quality, pgr_target: float) -> float | None:
    """Call-performance threshold CPT(x) (RouteLLM): minimum share of strong calls to reach PGR ≥ x.

    ``pgr_target`` is a fraction (0.5 for CPT(50%)); the result is a share in [0, 1] (RouteLLM prints
    it as a percentage). The points, sorted by share, are joined by straight lines and the first share
    at which that curve's PGR reaches the target is returned:

        if PGR_0 ≥ x: CPT = share_0;  else for the first i with PGR_i ≥ x (so PGR_{i−1} < x):
        CPT = share_{i−1} + (x − PGR_{i−1}) (share_i − share_{i−1}) / (PGR_i − PGR_{i−1})

    RouteLLM's ``pct_call_metric`` computes ``np.interp(weak + x·(strong − weak), accuracy, share)``
    over the share-sorted points. That is the same number whenever accuracy rises with share and the
    target lies within the curve. Where it does not, ``np.interp`` is undefined (non-monotone ``xp``)
    or clamps (returns the largest share for a target never reached); here the first crossing is taken
    (the paper's "minimum") and a target never reached gives ``None`` instead of a clamped share.
    Raises ``ValueError`` when ``strong == weak``.
    """
    w, s = _gap(weak_quality, strong_quality)
    x, q = _share_curve(premium_share, quality)
    t = _finite_scalar("pgr_target", pgr_target)
    p = (q - w) / (s - w)
    reached = np.flatnonzero(p >= t)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (t - p[i - 1]) * (x[i] - x[i - 1]) / (p[i] - p[i - 1]))


def oracle_gap(accuracy: float, oracle_accuracy: float) -> float:
    """Quality left on the table versus the oracle router: ``oracle_accuracy − accuracy``."""
    return _finite_scalar("oracle_accuracy", oracle_accuracy) - _finite_scalar("accuracy", accuracy)


# --------------------------------------------------------------------------------------------------
# one dict per router for reports
# --------------------------------------------------------------------------------------------------
def router_summary(
    curve_costs,
    curve_quality,
    curve_premium_share,
    *,
    cost_min: float,
    cost_max: float,
    premium_cost: float,
    premium_quality: float,
    n_queries: int | None = None,
    weak_quality: float | None = None,
    strong_quality: float | None = None,
) -> dict:
    """Headline numbers of one router's sweep, JSON-ready (Python floats, ``None`` where undefined).

    Inputs are one router's operating points: ``curve_costs`` (total $ over the ``n_queries`` replayed
    queries, the same units as ``premium_cost`` = total $ of always-premium on them), ``curve_quality``
    (mean score) and ``curve_premium_share`` (fraction of queries sent to the premium model; may be
    ``None`` when only AIQ/savings are wanted). With ``q* = 0.95 · premium_quality`` and
    ``c* = cost_at_quality(curve, q*)`` (cheapest NDCH cost reaching q*):

    * ``aiq`` — :func:`aiq` over ``[cost_min, cost_max]``
    * ``max_accuracy`` — :func:`max_accuracy`
    * ``cost_at_95pct_premium`` — ``c*``
    * ``savings_at_95pct_premium`` — ``1 − c* / premium_cost``
    * ``cpao_at_95pct_premium`` — ``c* / (q* · n_queries)``: the hull point at q* is a mix of operating
      points whose expected number of correct answers is ``q* · n_queries`` (quality read as the
      expected fraction correct — exact for 0/1 scores), so this is CPAO at that point. ``None`` without
      ``n_queries``. (If ``curve_costs`` are per-query averages, pass ``n_queries=1``.)
    * ``apgr``, ``cpt50``, ``cpt80`` — :func:`apgr`, :func:`cpt` at PGR 0.5 / 0.8 (shares as fractions);
      only for two-model sets, i.e. when ``weak_quality`` and ``strong_quality`` are given. ``None`` when
      they are not, when they are equal (PGR undefined), when every point has the same premium share
      (APGR undefined) or, for CPT, when the target is never reached.

    Every key is ``None`` rather than NaN/inf where the value does not exist.
    """
    target = PREMIUM_ACCURACY_SHARE * _finite_scalar("premium_quality", premium_quality)
    c_star = cost_at_quality(curve_costs, curve_quality, target)
    savings = savings_at_quality(curve_costs, curve_quality, target, premium_cost)
    if n_queries is not None and int(n_queries) <= 0:
        raise ValueError(f"n_queries must be a positive count, got {n_queries}")
    if c_star is None or n_queries is None or target <= 0:
        cpao_star = None
    else:
        cpao_star = cpao(c_star, target * int(n_queries))

    apgr_v = cpt50 = cpt80 = None
    two_model = weak_quality is not None and strong_quality is not None and curve_premium_share is not None
    if two_model and float(weak_quality) != float(strong_quality):
        share = _finite_1d("curve_premium_share", curve_premium_share)
        if np.unique(share).size >= 2:
            apgr_v = apgr(share, curve_quality, weak_quality, strong_quality)
        cpt50 = cpt(share, curve_quality, weak_quality, strong_quality, 0.5)
        cpt80 = cpt(share, curve_quality, weak_quality, strong_quality, 0.8)

    return {
        "aiq": json_float(aiq(curve_costs, curve_quality, cost_min, cost_max)),
        "max_accuracy": json_float(max_accuracy(curve_costs, curve_quality)),
        "cost_at_95pct_premium": json_float(c_star),
        "savings_at_95pct_premium": json_float(savings),
        "cpao_at_95pct_premium": json_float(cpao_star),
        "apgr": json_float(apgr_v),
        "cpt50": json_float(cpt50),
        "cpt80": json_float(cpt80),
    }
