"""Prometheus metrics of one router app (a registry per app instance, so tests and multi-app processes
never share counters).

Savings are estimated per completed request from the upstream's token usage and the fleet's prices:

    saved_usd = in_tok · (p_in[premium] − p_in[chosen]) + out_tok · (p_out[premium] − p_out[chosen])

(the premium model's answer length is assumed equal to the chosen model's; negative when a request goes to a
model pricier than the premium reference).
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `kronaxis-serve server.workers=N`: metrics of every worker


class RouterMetrics:
    """Counters and histograms exported at GET /metrics."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("kronaxis_requests", "Routed requests by endpoint, chosen model and tier",
                                ["endpoint", "model", "tier"], registry=r)
        self.decisions = Counter("kronaxis_decisions", "Routing decisions (a batch /v1/route counts each)",
                                 ["model", "tier"], registry=r)
        self.decision_latency = Histogram(
            "kronaxis_decision_latency_seconds", "Time from parsed request to routing decision (incl. batching wait)",
            registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
        self.batch_size = Histogram("kronaxis_classifier_batch_size", "Texts per classifier call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.upstream_errors = Counter("kronaxis_upstream_errors", "Upstream calls that failed on every endpoint",
                                       ["model"], registry=r)
        self.upstream_latency = Histogram("kronaxis_upstream_latency_seconds", "Upstream call time (non-streaming)",
                                          ["model"], registry=r)
        self.fallbacks = Counter("kronaxis_fallbacks", "Fallbacks: to another endpoint of the same model "
                                 "(kind=endpoint) or to another model (kind=model)", ["kind"], registry=r)
        self.governance_blocks = Counter(
            "kronaxis_governance_blocks", "Queries kept from an endpoint by governance (rerouted or refused)",
            ["action", "data_class"], registry=r)
        self.sticky_escalations = Counter("kronaxis_sticky_escalations",
                                          "Decisions raised to the session's tier floor", registry=r)
        self.cascade = Counter("kronaxis_cascade", "Cascaded requests by outcome: kept (the first model's reply), "
                               "escalated, skipped (a model it calls is off limits, or the first call failed)",
                               ["outcome"], registry=r)
        self.errors = Counter("kronaxis_request_errors", "Requests answered with an error", ["status"], registry=r)
        self.cost_usd = Counter("kronaxis_cost_usd", "Estimated cost of routed completions", ["model"], registry=r)
        self.premium_cost_usd = Counter("kronaxis_premium_cost_usd",
                                        "Estimated cost had every completion gone to the premium model", registry=r)
        self.saved_usd = Gauge("kronaxis_saved_usd", "Estimated $ saved vs always-premium (premium − routed)",
                               registry=r, multiprocess_mode="sum")
        self.classifier_failures = Counter("kronaxis_classifier_failures",
                                           "Classifier calls that failed (requests then fail open or 503)", registry=r)
        # per router API key, labelled by key id (first 8 hex digits of the key's sha256), never the key
        self.key_requests = Counter("kronaxis_key_requests", "Authenticated requests by API key id and HTTP status",
                                    ["key_id", "status"], registry=r)
        self.key_cost_usd = Counter("kronaxis_key_cost_usd", "Estimated cost of routed completions by API key id",
                                    ["key_id"], registry=r)
        self.auth_refusals = Counter("kronaxis_auth_refusals", "Requests refused by authentication (missing_key, "
                                     "invalid_key: 401) or the per-key rate limit (rate_limited: 429)", ["reason"],
                                     registry=r)

    def record_cost(self, model: str, cost: float, premium_cost: float, key_id: str | None = None) -> None:
        self.cost_usd.labels(model=model).inc(max(cost, 0.0))
        if key_id is not None:
            self.key_cost_usd.labels(key_id=key_id).inc(max(cost, 0.0))
        self.premium_cost_usd.inc(max(premium_cost, 0.0))
        self.saved_usd.inc(premium_cost - cost)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if os.environ.get(MULTIPROC_ENV):  # several worker processes: the sum over their metric files
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, Any] | None = None) -> float:
        """Current value of a sample (tests, health)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
