"""Batch-1 routing-decision latency of exported bundles (format 2), beside a bert-base-sized router, in one run.

    .venv/bin/python benchmarks/routing_latency.py --bundle quality=<minilm bundle> [--bundle tfidf=<dir> ...]
        [--variants fp32,int8] [--n 500] [--threads 1] [--bert-layers 12 --bert-hidden 768 | --no-bert]
        [--queries ../shared/data/llmrouter/queries_train.jsonl] [--json out.json] [--write benchmarks/routing_latency.md]

One *decision* is what the router calls per request (`RoutingEngine.classify` then `RoutingEngine.choose`):

    P = bundle.predict_proba([text], variant)     # runtime tree: tokenize → graph(s) / arrays → P̂ (fleet order)
    bundle.decide(P, [text])                      # cost model (prompt-token count) + the bundle's policy

timed per stage (predict, decide) with wall time and this thread's CPU time (`time.thread_time`; with
`--threads 1` every onnxruntime op runs on the calling thread, so CPU time is the latency the same code has on
an idle core: the number to read on a shared machine). Rows, all on the same queries:

- one row per `--bundle NAME=DIR` and variant it has (`--variants`; TF-IDF and other graph-free runtimes have
  only fp32), plus `bundle.route([text])` (one tokenizer pass for P̂ and the token count) for the first bundle;
- **bert-base-sized, random init**: the first transformer bundle copied with its ONNX graphs replaced by a
  *randomly initialised* `BertForSequenceClassification(BertConfig())` (12 layers, hidden 768, ~110M
  parameters) exported with the bundle's own exporter (`export_graph`, `quantize_int8`) and the same tokenizer,
  head post-processing and policy. No model hub here, and latency does not depend on the weights: the
  row measures a bert-base-*sized* router, not a trained one. `--bert-layers/--bert-hidden` shrink it (tests).

Rows take turns in blocks of `--block` queries (rotating order, one untimed warm-up call per turn), so load
changes on a shared machine hit every row alike. Goals (issue "Ship the router"): default quality bundle
(6-layer MiniLM) p50 ≤ 2 ms; ≥ 10× faster than the bert-base-sized router (same variant).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from bench_common import machine_info as machine
from bench_common import write_block

from kronaxis_lab.export.bundle import Bundle, load_bundle
from kronaxis_lab.export.onnx_export import export_graph, quantize_int8
from kronaxis_lab.export.runtimes import OnnxTransformerRuntime
from kronaxis_lab.export.schema import VARIANT_FILES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QUERIES = ROOT.parent / "shared" / "data" / "llmrouter" / "queries_train.jsonl"
MARK = "routing_latency"  # --write replaces the block between <!-- MARK:begin --> and <!-- MARK:end -->


# -- inputs ---------------------------------------------------------------------------------------------


def load_queries(path: Path, n: int, seed: int) -> list[str]:
    texts = []
    for line in path.read_text().split("\n"):  # not splitlines(): texts may hold U+2028
        if line.strip():
            row = json.loads(line)
            t = row.get("query") or row.get("text") or row.get("prompt") or row.get("question")
            if isinstance(t, str) and t.strip():
                texts.append(t)
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.permutation(len(texts))[:n]]


def pct(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


# -- pipelines -------------------------------------------------------------------------------------------
def _now() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def decision(bundle: Bundle, variant: str) -> Callable[[str], list[float]]:
    """run(text) → [wall predict, wall decide, cpu predict, cpu decide] (s): the server's per-request path."""

    def run(text: str) -> list[float]:
        m0 = _now()
        P = bundle.predict_proba([text], variant)
        m1 = _now()
        bundle.decide(P, [text])
        m2 = _now()
        return [m1[0] - m0[0], m2[0] - m1[0], m1[1] - m0[1], m2[1] - m1[1]]

    return run


def route_call(bundle: Bundle, variant: str) -> Callable[[str], list[float]]:
    """`bundle.route([text])`: predict + decide with one tokenizer pass (timed as one stage)."""

    def run(text: str) -> list[float]:
        m0 = _now()
        bundle.route([text], variant=variant)
        m1 = _now()
        return [m1[0] - m0[0], 0.0, m1[1] - m0[1], 0.0]

    return run


def bert_sized_bundle(src: Bundle, workdir: Path, layers: int, hidden: int, threads: int) -> tuple[Bundle, int]:
    """`src` (an OnnxTransformerRuntime bundle) copied with its graphs replaced by a randomly initialised
    BERT of `layers` × `hidden` (BertConfig defaults otherwise: bert-base at 12 × 768); (bundle, parameters)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    rt = src.classifier
    dst = workdir / "bert_sized_bundle"
    shutil.copytree(src.dir, dst)
    tok = AutoTokenizer.from_pretrained(dst / rt.node["files"]["tokenizer"])
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=max(tok.vocab_size, len(tok)), num_labels=len(rt.label_order),
                     num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=max(1, hidden // 64),
                     intermediate_size=4 * hidden)
    model = BertForSequenceClassification(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    files = rt.node["files"]
    fp32 = dst / files[VARIANT_FILES["fp32"]]
    export_graph(model, tok, fp32, "logits", int(rt.node["onnx"].get("opset", 17)),
                 max_length=int(rt.node["max_length"]))
    if files.get(VARIANT_FILES["int8"]):
        quantize_int8(fp32, dst / files[VARIANT_FILES["int8"]])
    # graphs changed after export: the hashes in router.json no longer match (by design of this benchmark)
    return load_bundle(dst, verify_hashes=False, intra_op_threads=threads, inter_op_threads=1, batch_size=16), n_params


# -- main --------------------------------------------------------------------------------------------------
def parse_bundles(specs: list[str]) -> list[tuple[str, Path]]:
    out = []
    for i, s in enumerate(specs):
        name, sep, path = s.partition("=")
        out.append((name, Path(path)) if sep else (f"bundle{i + 1}" if len(specs) > 1 else "bundle", Path(s)))
    return out


def build_rows(args: argparse.Namespace, texts: list[str], tmp: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    rows: dict[str, dict] = {}
    extra: dict[str, Any] = {"bundles": {}}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    first_transformer = None
    for k, (name, path) in enumerate(parse_bundles(args.bundle)):
        b = load_bundle(path, intra_op_threads=args.threads, inter_op_threads=1, batch_size=16)
        extra["bundles"][name] = {"dir": str(path), "runtime": type(b.classifier).__name__,
                                  "classifier": (b.meta.get("source") or {}).get("classifier_class"),
                                  "default_variant": b.default_variant, "variants": b.variants,
                                  "policy": b.policy_name, "models": len(b.model_names)}
        for v in [v for v in variants if v in b.variants] or [b.default_variant]:
            rows[f"{name} {v}"] = {"run": decision(b, v), "bundle": name, "variant": v}
        if k == 0:
            extra["token_lengths"] = np.asarray(b.count_tokens(texts))  # prompt tokens, no truncation
            rows[f"{name} {b.default_variant}: bundle.route()"] = {"run": route_call(b, b.default_variant),
                                                                    "bundle": name, "variant": b.default_variant}
        if first_transformer is None and isinstance(b.classifier, OnnxTransformerRuntime):
            first_transformer = (name, b)
    if not args.no_bert:
        if first_transformer is None:
            raise SystemExit("the bert-base-sized row needs a transformer bundle (tier predictor) among --bundle "
                             "(its tokenizer and head are reused); or pass --no-bert")
        base_name, base = first_transformer
        bb, n_params = bert_sized_bundle(base, tmp, args.bert_layers, args.bert_hidden, args.threads)
        label = ("bert-base-sized (random init, BertConfig())" if (args.bert_layers, args.bert_hidden) == (12, 768)
                 else f"bert {args.bert_layers}x{args.bert_hidden} (random init)")
        extra["bert"] = {"label": label, "layers": args.bert_layers, "hidden": args.bert_hidden,
                         "parameters": n_params, "tokenizer_and_head_from": base_name}
        for v in [v for v in variants if v in bb.variants]:
            rows[f"{label} {v}"] = {"run": decision(bb, v), "bundle": "bert", "variant": v}
    return rows, extra


def measure(rows: dict[str, dict], texts: list[str], warmup: int, block: int) -> dict[str, np.ndarray]:
    names = list(rows)
    for name in names:  # sessions, lazy imports, allocator warm-up
        for t in texts[:warmup]:
            rows[name]["run"](t)
    out: dict[str, list] = {n: [] for n in names}
    for b_i, s0 in enumerate(range(0, len(texts), block)):
        chunk = texts[s0:s0 + block]
        for k in range(len(names)):
            name = names[(b_i + k) % len(names)]
            rows[name]["run"](chunk[0])  # untimed: re-warm caches after the previous row's block
            out[name] += [rows[name]["run"](t) for t in chunk]
    return {n: np.asarray(v) for n, v in out.items()}


def goals(res: dict[str, Any]) -> list[str]:
    rows, lines = res["rows"], []
    first = next(iter(res["bundles"]))
    default = res["bundles"][first]["default_variant"]
    clock = "cpu" if res["threads"] == 1 else "wall"
    for name, b in res["bundles"].items():  # every bundle in the variant it serves by default
        ref = rows.get(f"{name} {b['default_variant']}")
        if ref:
            p50 = ref[clock]["total"]["p50_ms"]
            lines.append(f"- `{name}` ({b['default_variant']}, its default variant) p50 {p50:.2f} ms ({clock} time): "
                         f"goal ≤ 2 ms {'**met**' if p50 <= 2 else '**not met**'}.")
    for name, r in rows.items():
        if r["bundle"] != "bert":
            continue
        # like for like (same variant), then as each ships: a bert-base router in fp32 (as RouteLLM's BERT
        # router runs) vs this bundle in its default variant
        for mine_v in dict.fromkeys([r["variant"]] + ([default] if r["variant"] == "fp32" else [])):
            mine = rows.get(f"{first} {mine_v}")
            if mine:
                x = r[clock]["total"]["p50_ms"] / mine[clock]["total"]["p50_ms"]
                lines.append(f"- {name} / `{first} {mine_v}` p50: {x:.1f}× (goal ≥ 10× "
                             f"{'**met**' if x >= 10 else '**not met**'}).")
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    clock = "CPU" if res["threads"] == 1 else "wall"
    ref = next(iter(res["rows"].values()))["cpu" if res["threads"] == 1 else "wall"]["total"]["p50_ms"]
    lines = [f"### Batch-1 decision latency — {res['date']}", "",
             f"`{res['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['system']}; onnxruntime "
             f"{res['onnxruntime']}. 1-min load average {res['loadavg_1m_start']:.2f} → {res['loadavg_1m_end']:.2f}.",
             f"{res['n_queries']} queries (prompt tokens p50 {res['tokens_p50']:.0f}, p90 {res['tokens_p90']:.0f}), "
             f"{res['threads']} onnxruntime thread(s); wall {res['wall_s']:.1f} s.", "",
             f"| row | runtime | p50 ms ({clock}) | p99 ms ({clock}) | predict p50 | decide p50 | wall p50 | "
             "wall p99 | p50 / first row |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        c = r["cpu" if res["threads"] == 1 else "wall"]
        rt = res["bundles"].get(r["bundle"], {}).get("runtime", "OnnxTransformerRuntime (BERT)")
        lines.append(f"| {name} | {rt} | {c['total']['p50_ms']:.2f} | {c['total']['p99_ms']:.2f} | "
                     f"{c['predict']['p50_ms']:.3f} | {c['decide']['p50_ms']:.3f} | {r['wall']['total']['p50_ms']:.2f} | "
                     f"{r['wall']['total']['p99_ms']:.2f} | {c['total']['p50_ms'] / ref:.1f}× |")
    if res.get("bert"):
        b = res["bert"]
        lines += ["", f"{b['label']}: {b['layers']} layers × hidden {b['hidden']}, {b['parameters'] / 1e6:.1f}M "
                  f"parameters, **randomly initialised** (no model hub here; latency does not depend on the weights), "
                  f"tokenizer, head and policy of `{b['tokenizer_and_head_from']}`."]
    lines += ["", *goals(res)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="NAME=DIR (repeatable; the first is the reference)")
    ap.add_argument("--variants", default="fp32,int8", help="variants to time where a bundle has them")
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--block", type=int, default=50, help="queries per row turn (rows rotate per block)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (the router uses 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bert", action="store_true", help="skip the bert-base-sized row")
    ap.add_argument("--bert-layers", type=int, default=12)
    ap.add_argument("--bert-hidden", type=int, default=768)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", type=Path, default=None, help="rewrite this script's table block in this markdown file")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import onnxruntime

    load0 = os.getloadavg()[0]
    texts = load_queries(args.queries, args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="routing_latency_") as tmp:
        rows, extra = build_rows(args, texts, Path(tmp))
        t0 = time.perf_counter()
        stages = measure(rows, texts, args.warmup, args.block)
        wall = time.perf_counter() - t0
    lengths = extra.pop("token_lengths")
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", "benchmarks/routing_latency.py",
                                                                       *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "onnxruntime": onnxruntime.__version__, "loadavg_1m_start": load0,
        "loadavg_1m_end": os.getloadavg()[0], "n_queries": len(texts), "threads": args.threads, "wall_s": wall,
        "tokens_p50": float(np.median(lengths)) if len(lengths) else 0.0,
        "tokens_p90": float(np.percentile(lengths, 90)) if len(lengths) else 0.0, **extra, "rows": {}}
    for name, a in stages.items():
        res["rows"][name] = {"bundle": rows[name]["bundle"], "variant": rows[name]["variant"], "n": len(a),
                             "wall": {"total": pct(a[:, 0] + a[:, 1]), "predict": pct(a[:, 0]), "decide": pct(a[:, 1])},
                             "cpu": {"total": pct(a[:, 2] + a[:, 3]), "predict": pct(a[:, 2]), "decide": pct(a[:, 3])}}
    table = markdown(res)
    print(table, flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.write:
        write_block(args.write, MARK, table)
    return res


if __name__ == "__main__":
    main()
