"""The bundle's model card (README.md): a dataclass filled from router.json + metrics.json, then rendered.

Nothing in the card is written by hand: every number comes from the export (parity, operating point,
replay on the held-out split, training metrics), so a card cannot drift from its bundle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from kronaxis_lab.export.schema import walk_nodes

#: replay rows shown in the card's metrics table (besides the bundle's own), when present
REFERENCE_ROWS = ("oracle", "random")


def _num(x: Any, fmt: str = ".4g") -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    v = float(x)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, fmt)


def _pct(x: Any, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * float(x):.{digits}f}%"


def _usd(x: Any) -> str:
    return "—" if x is None else f"${float(x):.4g}"


@dataclass
class ModelCard:
    """Everything the card shows (see `from_bundle`)."""

    bundle_id: str
    created: str
    classifier_class: str
    base_model: str | None
    runtime: str  # the bundle runtime class (router.json classifier.kind, short name)
    head: str | None  # tier predictors only
    max_length: int | None  # tokens the classifier reads (None: no truncating encoder)
    dataset: str
    n_train: int | None
    n_val: int | None
    targets: str
    fleet: list[dict[str, Any]]  # name, tier, price_in, price_out, data_classes, latency_p95_s
    premium: str
    policy_name: str
    param_name: str
    param: float | str | None
    param_source: str
    operating_point: dict[str, Any] | None
    parity: dict[str, Any]
    default_variant: str
    replay_split: str | None = None
    replay_n: int | None = None
    replay_rows: list[dict[str, Any]] = field(default_factory=list)
    val_mean_auc: float | None = None
    val_brier: float | None = None
    files: dict[str, float] = field(default_factory=dict)  # relative path → size in MB
    quantization: dict[str, Any] | None = None  # the first graph's router.json onnx.int8 (method, calibration)
    warnings: list[str] = field(default_factory=list)
    cascade: dict[str, Any] | None = None  # router.json `cascade` (export/cascade.py), None without one

    @classmethod
    def from_bundle(cls, meta: Mapping[str, Any], metrics: Mapping[str, Any] | None,
                    sizes_mb: Mapping[str, float] | None = None) -> "ModelCard":
        metrics = metrics or {}
        node = meta.get("classifier") or {}
        lengths = [int(n["max_length"]) for _, _, n in walk_nodes(node) if n.get("max_length")] if node else []
        src = meta.get("source") or {}
        info = src.get("train_info") or {}
        train = metrics.get("train") or {}
        val = train.get("val") or {}
        fleet_models = (meta.get("fleet") or {}).get("models") or {}
        keys = ("tier", "price_in", "price_out", "data_classes", "latency_p95_s")
        fleet = [{"name": n, **{k: s.get(k) for k in keys}} for n, s in fleet_models.items()]
        rep = metrics.get("replay") or {}
        routers = rep.get("routers") or {}
        order = [metrics.get("bundle_router"), metrics.get("bundle_sweep"), *REFERENCE_ROWS,
                 f"always:{meta.get('premium')}"]
        order += sorted(k for k in routers if k.startswith("always:") and k not in order)
        rows = [{"router": k, **routers[k]} for k in dict.fromkeys(order) if k and k in routers]
        pol = meta.get("policy") or {}
        targets = info.get("targets") or train.get("targets") or {}
        return cls(
            bundle_id=str(meta.get("bundle_id", "")), created=str(meta.get("created", "")),
            classifier_class=str(src.get("classifier_class", "?")), base_model=src.get("base_model"),
            runtime=str(node.get("kind", "?")).rpartition(".")[2], head=node.get("head"),
            max_length=max(lengths) if lengths else None,
            dataset=str(src.get("dataset", "?")), n_train=info.get("n_train", train.get("n_train")),
            n_val=info.get("n_val", train.get("n_val")),
            targets=str(targets.get("kind", "?")) if isinstance(targets, Mapping) else str(targets),
            fleet=fleet, premium=str(meta.get("premium")), policy_name=str(pol.get("name")),
            param_name=str(pol.get("param_name") or "param"), param=pol.get("param"),
            param_source=str(pol.get("param_source", "?")), operating_point=pol.get("operating_point"),
            parity=dict(meta.get("parity") or {}), default_variant=str(meta.get("default_variant")),
            replay_split=rep.get("split"), replay_n=rep.get("n_queries"), replay_rows=rows,
            val_mean_auc=val.get("mean_auc"), val_brier=val.get("brier"), files=dict(sizes_mb or {}),
            warnings=list(meta.get("warnings") or []), cascade=meta.get("cascade"),
            quantization=next(((n.get("onnx") or {}).get("int8") for _, _, n in walk_nodes(node)
                               if (n.get("onnx") or {}).get("int8")), None) if node else None,
        )

    # -- rendering -------------------------------------------------------------------------------------
    def _fleet_table(self) -> str:
        lines = ["| model | tier | $ / 1M in | $ / 1M out | data classes | p95 latency (s) |",
                 "|---|---:|---:|---:|---|---:|"]
        for m in self.fleet:
            dc = m.get("data_classes")
            dc_s = "all" if dc and "*" in dc else (", ".join(dc) if dc else "none")
            star = " (premium)" if m["name"] == self.premium else ""
            lines.append(f"| {m['name']}{star} | {m.get('tier')} | {_num(m.get('price_in'))} | "
                         f"{_num(m.get('price_out'))} | {dc_s} | {_num(m.get('latency_p95_s'))} |")
        return "\n".join(lines)

    def _metrics_table(self) -> str:
        if not self.replay_rows:
            return "_No replay was run at export (metrics.replay=false)._"
        lines = ["| router | accuracy | cost (USD) | CPAO (USD) | premium share | savings vs premium | AIQ |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.replay_rows:
            lines.append(f"| {r['router']} | {_pct(r.get('accuracy'))} | {_usd(r.get('cost_usd'))} | "
                         f"{_usd(r.get('cpao'))} | {_pct(r.get('premium_share'))} | "
                         f"{_pct(r.get('savings_vs_premium'))} | "
                         f"{_num(r.get('aiq')) if r.get('kind') == 'sweep' else '—'} |")
        return "\n".join(lines)

    def _operating_point(self) -> str:
        head = (f"**Operating point:** policy `{self.policy_name}`, {self.param_name} = {_num(self.param)} "
                f"(source: {self.param_source})")
        op = self.operating_point or {}
        if not op or "target" not in op:
            return head
        ci = op.get("test_ci") or [None, None]
        return (head + f"\n\n**Target:** {op['target']} = {_num(op.get('value'))}; achieved on val "
                f"{_num(op.get('val_achieved'))}, on test {_num(op.get('test_achieved'))} "
                f"[{_num(ci[0])}, {_num(ci[1])}] ({_pct(op.get('ci_level'), 0)} bootstrap CI, "
                f"{op.get('n_boot', '?')} resamples); test accuracy {_pct(op.get('test_accuracy'))}, "
                f"premium share {_pct(op.get('test_premium_share'))}.")

    def _cascade(self) -> str:
        c = self.cascade
        if not c:
            return ""
        fit = c.get("fit") or {}
        who = ("the requests the policy sends to it go" if c.get("pre_route") else "every request goes")
        also = f", also calling {', '.join(c['also_calls'])}" if c.get("also_calls") else ""
        return (f"\n\n**Cascade:** {who} to `{c.get('first')}` first{also}; its reply is judged by the "
                f"`{c.get('signal')}` signal and, below threshold {_num(c.get('threshold'))}, the request escalates "
                f"to `{c.get('second')}` (every call is charged in the metrics above). Chosen on val "
                f"({fit.get('n_val', '?')} queries): accuracy {_pct(fit.get('val_accuracy'))} at target "
                f"{_pct(fit.get('target_accuracy'))}, cost {_usd(fit.get('val_cost_usd'))}. Requests with tools or "
                "n > 1 are not cascaded.")

    def _parity(self) -> str:
        p = self.parity
        out = []
        ref = p.get("reference", "the trained classifier")
        for v, label in (("fp32", f"fp32 vs {ref}"), ("int8", f"int8 vs {ref}")):
            d = p.get(v)
            if d:
                out.append(f"- **Parity ({label}):** max |Δp| = {_num(d.get('max_abs_diff'), '.3g')}, "
                           f"mean |Δp| = {_num(d.get('mean_abs_diff'), '.3g')}, decision agreement "
                           f"{_pct(d.get('decision_agreement'), 2)}"
                           + (f" (batches of {d['batch_size']}); one query per call: max |Δp| = "
                              f"{_num(d.get('batch1_max_abs_diff'), '.3g')}, decision agreement "
                              f"{_pct(d.get('batch1_decision_agreement'), 2)}"
                              if "batch1_decision_agreement" in d else ""))
        out.append(f"- **Sample:** {p.get('n', '?')} held-out queries ({p.get('sample', '?')}) + "
                   f"{p.get('n_edge_cases', 0)} edge cases (empty, over-long, non-ASCII)")
        if p.get("int8_ok") is None:
            out.append("- **int8 check:** no int8 variant (no ONNX graph in this runtime)")
        else:
            floor = p.get("int8_agreement_floor", p.get("int8_min_agreement"))
            agreed = p.get("int8_agreement_ok", p.get("int8_ok"))
            out.append(f"- **int8 check:** agreement ≥ {_pct(floor, 1)} required → {'passed' if agreed else 'FAILED'}"
                       f" (rule `{p.get('int8_rule_applied', p.get('int8_rule', 'agreement'))}`)")
            if self.quantization:
                out.append(f"- **int8 graph:** {self._quantization()}")
            out.extend(self._quality())
        out.append(f"- **Default variant:** {self.default_variant}")
        return "\n".join(out)

    def _quantization(self) -> str:
        q = self.quantization or {}
        parts = [f"{q.get('method', 'dynamic')} quantisation", f"{q.get('weight_type', 'QInt8')} weights"
                 + (" per channel" if q.get("per_channel") else "")]
        if q.get("method") == "static":
            parts.append(f"{q.get('activation_type')} activations ({q.get('format')}), calibrated "
                         f"({q.get('calibrate_method')}) on {q.get('n_calibration')} train queries")
        if q.get("excluded_nodes"):
            parts.append(f"{len(q['excluded_nodes'])} nodes kept fp32")
        return ", ".join(parts)

    def _quality(self) -> list[str]:
        """Quality parity int8 vs fp32 (parity.quality): one table row per held-out split."""
        qp = self.parity.get("quality") or {}
        rows = [(role, qp[role]) for role in ("val", "test") if qp.get(role)]
        if not rows:
            return []
        judged = self.parity.get("int8_rule_applied") == "quality"
        verdict = self.parity.get("int8_quality_ok")
        head = (f"- **Quality parity (int8 − fp32, {_pct(qp.get('ci'), 0)} paired bootstrap, {qp.get('n_boot', '?')} "
                f"resamples; accuracy and cost at the operating point):** on val "
                f"{'passed' if verdict else 'FAILED'}{' (decides)' if judged else ' (for information)'}; test is "
                "reported only")

        def iv(d: Mapping[str, Any], pct: bool = False) -> str:
            def f(x: Any) -> str:
                return "—" if x is None else (f"{100 * float(x):+.2f}%" if pct else f"{float(x):+.4f}")

            return f"{f(d.get('diff'))} [{f(d.get('lo'))}, {f(d.get('hi'))}]"

        lines = ["", "  | split | n | AIQ fp32 | AIQ int8 | ΔAIQ [CI] | acc fp32 | acc int8 | Δacc [CI] | "
                 "cost fp32 | cost int8 | Δcost [CI] | decisions equal |",
                 "  |---|---:|---:|---:|---|---:|---:|---|---:|---:|---|---:|"]
        for role, q in rows:
            a, b, d = q.get("fp32") or {}, q.get("int8") or {}, q.get("delta") or {}
            lines.append(f"  | {q.get('split', role)} ({role}) | {q.get('n')} | {_num(a.get('aiq'))} | "
                         f"{_num(b.get('aiq'))} | {iv(d.get('aiq') or {})} | {_pct(a.get('accuracy'), 2)} | "
                         f"{_pct(b.get('accuracy'), 2)} | {iv(d.get('accuracy') or {}, True)} | "
                         f"{_usd(a.get('cost_usd'))} | {_usd(b.get('cost_usd'))} | "
                         f"{iv(d.get('cost_rel') or {}, True)} | "
                         f"{_pct(q.get('decision_agreement'), 1)} |")
        return [head, *lines, ""]

    def _about(self) -> str:
        parts = [f"{self.head} head" if self.head else None,
                 f"base `{self.base_model}`" if self.base_model else None,
                 f"max {self.max_length} tokens" if self.max_length else None]
        return ", ".join(p for p in parts if p) or "no pretrained encoder"

    def _truncation(self) -> str:
        if self.max_length:
            return (f"Texts longer than {self.max_length} tokens are truncated; only the text the classifier sees "
                    "is judged.")
        return "The classifier reads the whole text (no truncating encoder)."

    def render(self) -> str:
        warn = "".join(f"> **WARNING:** {w}\n\n" for w in self.warnings)
        files = "\n".join(f"- `{k}` ({v:.1f} MB)" for k, v in self.files.items()) or "- (none)"
        auc = _num(self.val_mean_auc, ".3f")
        return f"""# Kronaxis router bundle `{self.bundle_id}`

{warn}A query router exported by `kronaxis-export` on {self.created}: a `{self.classifier_class}`
({self._about()}; bundle runtime `{self.runtime}`) predicts, for each model of the fleet, the
probability that it answers a query well; the `{self.policy_name}` policy turns those probabilities and the
expected cost into a model choice. Load it with `kronaxis_lab.export.bundle.load_bundle(<this dir>)`.

## Data

- **Dataset:** {self.dataset} ({self.n_train if self.n_train is not None else '?'} training queries, \
{self.n_val if self.n_val is not None else '?'} validation queries)
- **Targets:** {self.targets} (per-model success)
- **Validation (classifier):** mean AUC {auc}, Brier {_num(self.val_brier, '.4f')}

## Fleet

{self._fleet_table()}

## Metrics

Replay of the exported router ({self.default_variant} variant) on the held-out **{self.replay_split or '—'}** split \
({self.replay_n if self.replay_n is not None else '—'} queries) with recorded outcomes; the first row is the \
bundle at its operating point, the second its whole policy sweep (summarised at the cheapest point reaching \
95 % of premium accuracy; AIQ, the area under the cost–quality curve, exists for sweeps only).

{self._metrics_table()}

## Operating point

{self._operating_point()}{self._cascade()}

## Export parity

{self._parity()}

## Intended use

Routing each incoming LLM query to the cheapest fleet model likely to answer it well, inside the
Kronaxis router (`kronaxis-serve`), for traffic that resembles the training dataset. The governance guard
(sensitive data classes per endpoint) and session stickiness configured in router.json run after this policy.

## Limits

- Trained and evaluated on {self.dataset} only: quality and savings on other traffic must be re-measured
  (replay your own labelled traffic, or re-calibrate the operating point with `calibration=...`).
- Probabilities are as calibrated as the classifier is; the operating point holds on new traffic only
  within the bootstrap CI above, and only while the fleet, its prices and its models stay the same.
- Expected cost at serving time is estimated from the query text (token count × price, mean output length
  per model and task from the training split), not from the recorded tokens used in replay.
- {self._truncation()}

## Files

{files}
"""
