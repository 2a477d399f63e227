"""What the router wires in: the decision log, shadow evaluation and their Prometheus gauges, behind a few calls.

    monitor = LiveMonitor(settings, bundle, governance, engine, registry, call=..., available=upstreams.names)
    await monitor.start() / await monitor.stop()                 # the app's lifespan
    monitor.decided(convs, decisions, "route", bodies)            # POST /v1/route: decisions only
    monitor.routed(conv, d, body, shadowable, upstream_s)         # an upstream answered (forward)
    monitor.answered(conv, model, n_in, n_out, cost, premium, text)   # its usage was accounted: record (+ shadow)
    monitor.failed(conv, d, status, body)                         # refused (403) or every upstream failed

Every call is O(1) on the event loop and never raises into the request (a failure is logged and counted);
with `decision_log.path` unset and `shadow.enabled` false they do nothing.

Gauges (in the app's registry, next to kronaxis_requests_total & co):
- `kronaxis_decision_log_records_total{table}`, `kronaxis_decision_log_dropped_total{reason}`;
- `kronaxis_drift_p_value`, `kronaxis_drift_mmd2`: the last `decision_log.drift_window` sketches against
  `decision_log.drift_reference` (kronaxis-monitor's reference_sketch.npz), every `drift_every` records;
- `kronaxis_live_premium_share`: the premium share of the same window;
- `kronaxis_shadow_escalations_missed_rate`, `kronaxis_shadow_premium_wasted_rate`,
  `kronaxis_shadow_quality_vs_reference`, `kronaxis_shadow_window_rows`: over the last `shadow.window` graded rows;
- `kronaxis_shadow_requests_total{status}` (sampled, graded, skipped_budget, skipped_governance, error, ...),
  `kronaxis_shadow_spend_usd_total`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab.monitoring.decision_log import DecisionLog
from kronaxis_lab.monitoring.drift import mmd_test
from kronaxis_lab.monitoring.settings import DecisionLogSettings, ShadowSettings
from kronaxis_lab.monitoring.shadow import ShadowEvaluator, ShadowJob, misrouting_flags
from kronaxis_lab.serving.governance import GovernancePolicy
from kronaxis_lab.serving.protocols import RouterBundle

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # forwarded requests awaiting their usage (a stream the client dropped never reports it)


def governance_action(decision: Any) -> str | None:
    """refused | rerouted (governance moved the choice) | found (classes found, choice kept) | None."""
    if decision.refused:
        return "refused"
    if any(r.startswith("governance:") and " -> " in r for r in decision.reasons):
        return "rerouted"
    return "found" if decision.data_classes else None


def metadata_category(body: Mapping[str, Any] | None) -> str | None:
    """The request's `metadata.category` (else `metadata.task`) when it is a string."""
    meta = (body or {}).get("metadata")
    if not isinstance(meta, Mapping):
        return None
    v = meta.get("category", meta.get("task"))
    return v if isinstance(v, str) and v.strip() else None


class DriftGauge:
    """Writer-thread observer: MMD p-value of the recent sketches against a reference, and the premium share."""

    def __init__(self, settings: DecisionLogSettings, premium: str, set_gauges: Callable[[dict[str, float]], None]):
        self.settings, self.premium, self.set_gauges = settings, premium, set_gauges
        ref = settings.drift_reference
        self.reference = np.load(Path(ref).expanduser())["sketch"].astype(np.float64) if ref else None
        self.sketches: collections.deque[np.ndarray] = collections.deque(maxlen=settings.drift_window)
        self.models: collections.deque[str | None] = collections.deque(maxlen=settings.drift_window)
        self.since = 0

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.models.append(r.get("model"))
            if isinstance(r.get("sketch"), np.ndarray):
                self.sketches.append(r["sketch"])
                self.since += 1
        routed = [m for m in self.models if m]
        values = {"premium_share": sum(m == self.premium for m in routed) / len(routed)} if routed else {}
        if self.reference is not None and self.since >= self.settings.drift_every and len(self.sketches) >= 10:
            self.since = 0
            res = mmd_test(self.reference, np.stack(self.sketches), self.settings.drift_permutations)
            values.update({"p_value": res["p_value"], "mmd2": res["mmd2"]})
        self.set_gauges(values)


class LiveMonitor:
    """Decision log + shadow evaluation of one router app (module docstring).

    Args:
        decision_log / shadow: their settings (`ServeSettings.decision_log`, `ServeSettings.shadow`).
        bundle: the served bundle (id, fleet, premium). governance: the serving policy (redaction, shadow targets).
        classify_text: conversation user turns → the classifier's input (what the log stores and sketches).
        registry: the app's Prometheus registry (None: no gauges).
        call: `(model, chat body) -> awaitable upstream JSON` for shadow calls. available: models with an upstream.
    """

    def __init__(self, decision_log: DecisionLogSettings, shadow: ShadowSettings, bundle: RouterBundle,
                 governance: GovernancePolicy, classify_text: Callable[[Sequence[str]], str], registry: Any = None,
                 call: Callable[[str, dict[str, Any]], Awaitable[Mapping[str, Any]]] | None = None,
                 available: Sequence[str] = ()) -> None:
        self.bundle, self.classify_text = bundle, classify_text
        self.premium = str(bundle.premium)
        self._pending: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.gauges = _Gauges(registry) if registry is not None else None
        self.log: DecisionLog | None = None
        if decision_log.path:
            observers = [DriftGauge(decision_log, self.premium, self.gauges.set_drift), self.gauges.written] \
                if self.gauges else []
            self.log = DecisionLog(decision_log, redact=governance.redact, bundle_id=str(bundle.bundle_id),
                                   on_drop=self.gauges.dropped if self.gauges else None, observers=observers)
        self.shadow: ShadowEvaluator | None = None
        if shadow.enabled:
            if call is None or not available:
                log.warning("shadow evaluation is enabled but no upstreams are configured: it stays off")
            else:
                self.shadow = ShadowEvaluator(shadow, bundle.fleet, governance, call, available,
                                              sink=self._shadow_row, on_row=self._shadow_gauges)

    @property
    def enabled(self) -> bool:
        return self.log is not None or self.shadow is not None

    async def start(self) -> None:
        if self.log is not None:
            self.log.start()
            log.info("decision log: %s (text %s)", self.log.dir, "stored redacted" if self.log.settings.store_text
                     else "not stored")
        if self.shadow is not None:
            await self.shadow.start()
            s = self.shadow.settings
            log.info("shadow evaluation: %.1f %% of chat answers vs %s, %s grading, $%g per hour",
                     100 * s.sample_rate, self.shadow.reference, self.shadow.mode, s.budget_usd_per_hour)

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.stop()
        if self.log is not None:
            self.log.close()

    # -- hooks -------------------------------------------------------------------------------------
    def _row(self, d: Any, endpoint: str) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "ts": time.time(), "endpoint": endpoint, "model": d.model, "tier": d.tier,
                "policy": d.policy, "param": d.param, "scores": d.scores, "reasons": list(d.reasons),
                "sticky": any(r.startswith("sticky") for r in d.reasons), "governance": governance_action(d),
                "fallback": any(r.startswith("fallback") for r in d.reasons), "data_classes": list(d.data_classes)}

    def _record(self, row: dict[str, Any], conv: Any, body: Mapping[str, Any] | None) -> None:
        if self.log is None:
            return
        try:
            self.log.record(row, text=self.classify_text(conv.user_turns), category=metadata_category(body))
        except Exception as e:  # noqa: BLE001 - logging never fails a request
            log.warning("decision log: record failed: %s", type(e).__name__)

    def decided(self, convs: Sequence[Any], decisions: Sequence[Any], endpoint: str,
                bodies: Sequence[Mapping[str, Any] | None] | None = None, latency_s: float | None = None) -> None:
        """Decisions answered without an upstream call (POST /v1/route)."""
        if self.log is None:
            return
        for k, (conv, d) in enumerate(zip(convs, decisions)):
            row = self._row(d, endpoint)
            row["decision_latency_s"] = latency_s
            self._record(row, conv, bodies[k] if bodies else None)

    def routed(self, conv: Any, d: Any, body: Mapping[str, Any], shadowable: bool,
               upstream_latency_s: float | None = None, endpoint: str = "chat") -> None:
        """An upstream answered `d`'s request; the record waits for `answered` (its usage)."""
        if not self.enabled:
            return
        with self._lock:
            self._pending[id(conv)] = {"d": d, "body": body if shadowable else None, "endpoint": endpoint,
                                       "upstream_latency_s": upstream_latency_s}
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)

    def answered(self, conv: Any, model: str, input_tokens: float, output_tokens: float, cost_usd: float,
                 premium_cost_usd: float, text: str | None = None) -> None:
        """The routed answer's usage (and text, when not streamed): write the record, offer it to the shadow."""
        with self._lock:
            ctx = self._pending.pop(id(conv), None)
        if ctx is None:
            return
        d = ctx["d"]
        row = self._row(d, ctx["endpoint"])
        row.update({"input_tokens": int(input_tokens), "output_tokens": int(output_tokens), "cost_usd": cost_usd,
                    "premium_cost_usd": premium_cost_usd, "upstream_status": 200,
                    "upstream_latency_s": ctx["upstream_latency_s"], "model": model})
        if self.shadow is not None and ctx["body"] is not None and text is not None:
            job = ShadowJob(row["id"], model, dict(ctx["body"]), text, list(d.data_classes), cost_usd,
                            int(input_tokens), int(output_tokens))
            try:
                row["shadow"] = self.shadow.offer(job)
            except Exception as e:  # noqa: BLE001
                log.warning("shadow: offer failed: %s", type(e).__name__)
            if self.gauges:
                self.gauges.shadow_status("sampled", int(bool(row.get("shadow"))))
        self._record(row, conv, ctx["body"] or None)

    def failed(self, conv: Any, d: Any, status: int, body: Mapping[str, Any] | None = None,
               endpoint: str = "chat") -> None:
        """A request that got no answer: governance refusal (403) or every upstream failed (502, 400)."""
        with self._lock:
            self._pending.pop(id(conv), None)
        if self.log is None:
            return
        row = self._row(d, endpoint)
        row["upstream_status"] = int(status)
        self._record(row, conv, body)

    # -- shadow → log and gauges -------------------------------------------------------------------
    def _shadow_row(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.record_shadow(row)
        if self.gauges:
            self.gauges.shadow_status(row["status"], 1, row.get("shadow_cost_usd") or 0.0)

    def _shadow_gauges(self, row: dict[str, Any]) -> None:
        if self.gauges is None or self.shadow is None:
            return
        f = misrouting_flags(pd.DataFrame(list(self.shadow.rows)))
        low = f["routed_low"]
        self.gauges.set_shadow({
            "escalations_missed_rate": float(f.loc[low, "escalation_missed"].mean()) if low.any() else None,
            "premium_wasted_rate": float(f.loc[~low, "premium_wasted"].mean()) if (~low).any() else None,
            "quality_vs_reference": (float(f["routed_score"].sum() / f["reference_score"].sum())
                                     if f["reference_score"].sum() > 0 else None),
            "window_rows": float(len(f))})


class _Gauges:
    """The monitoring metrics in the app's registry (module docstring)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        r = registry
        self.records = Counter("kronaxis_decision_log_records", "Decision-log records written", ["table"],
                               registry=r)  # table=decisions (shadow rows: kronaxis_shadow_requests_total)
        self.drops = Counter("kronaxis_decision_log_dropped", "Decision-log records dropped (queue_full, "
                             "write_error: disk full, file-size limit, I/O error)", ["reason"], registry=r)
        self.drift_p = Gauge("kronaxis_drift_p_value", "MMD permutation p-value of the recent query sketches vs "
                             "the training reference (low = drift)", registry=r)
        self.drift_mmd = Gauge("kronaxis_drift_mmd2", "MMD² of the recent query sketches vs the training reference",
                               registry=r)
        self.premium_share = Gauge("kronaxis_live_premium_share", "Premium share of the recent decisions",
                                   registry=r)
        self.shadow = {k: Gauge(f"kronaxis_shadow_{k}", h, registry=r) for k, h in (
            ("escalations_missed_rate", "Shadow: share of requests routed below the reference that failed where "
                                        "the reference passed"),
            ("premium_wasted_rate", "Shadow: share of reference-tier requests a cheaper model answered well"),
            ("quality_vs_reference", "Shadow: mean routed score / mean reference score"),
            ("window_rows", "Shadow: graded rows behind the shadow gauges"))}
        self.shadow_requests = Counter("kronaxis_shadow_requests", "Shadow evaluations by outcome", ["status"],
                                       registry=r)
        self.shadow_spend = Counter("kronaxis_shadow_spend_usd", "Shadow evaluation spend (USD)", registry=r)

    def written(self, rows: list[dict[str, Any]]) -> None:
        self.records.labels(table="decisions").inc(len(rows))

    def dropped(self, reason: str, n: int) -> None:
        self.drops.labels(reason=reason).inc(n)

    def set_drift(self, values: Mapping[str, float | None]) -> None:
        for key, g in (("p_value", self.drift_p), ("mmd2", self.drift_mmd), ("premium_share", self.premium_share)):
            if values.get(key) is not None:
                g.set(float(values[key]))

    def set_shadow(self, values: Mapping[str, float | None]) -> None:
        for k, v in values.items():
            if v is not None:
                self.shadow[k].set(v)

    def shadow_status(self, status: str, n: int, spend_usd: float = 0.0) -> None:
        if n:
            self.shadow_requests.labels(status=status).inc(n)
        if spend_usd > 0:
            self.shadow_spend.inc(spend_usd)
