"""The speed benchmarks (benchmarks/routing_latency.py, route_throughput.py, gateway_overhead.py, speed_suite.py) run
end to end in a tiny mode against small real bundles, so they cannot rot. No wall-clock asserts: the tests check
that every script produces its rows, its table block and zero errors.

Bundles: the e2e test's one-layer MiniLM tier predictor (`tests/test_serve_e2e.py::build_bundle`, int8 + fp32
graphs) and a TF-IDF + logistic regression bundle trained on the same crafted data.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose
from tests.test_serve_e2e import build_bundle, easy_queries, hard_queries, routing_dataset

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import their sibling route_throughput (benchmarks/ is no package)

import bench_common  # noqa: E402
import cpu_pulse  # noqa: E402
import gateway_overhead  # noqa: E402
import route_throughput  # noqa: E402

LITELLM = ROOT / "outputs" / "venv-litellm" / "bin" / "litellm"
GATEWAY_ROWS = ["direct", "kronaxis forward-only", "kronaxis classify+forward"]


def run_script(name: str, *args: str, timeout: float = 900) -> str:
    out = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    from kronaxis_lab.pipelines import export, train

    work = tmp_path_factory.mktemp("bench_bundles")
    tier = build_bundle(work / "tier")
    data = routing_dataset(work / "tfidf_dataset")
    train.run(compose("train", ["dataset=saved", f"dataset.path={data}", "classifier=tfidf_logreg",
                                "classifier.show_progress=false"], output_dir=work / "tfidf_train"))
    tfidf = Path(export.run(compose("export", [f"run_dir={work / 'tfidf_train'}", "parity.n=32", "metrics.n_boot=50"],
                                    output_dir=work / "tfidf_export"))["bundle_dir"])
    queries = work / "queries.jsonl"
    texts = easy_queries(["Italy", "Canada"]) + hard_queries(["Hadamard", "Poincare"])
    queries.write_text("".join(json.dumps({"query": t}) + "\n" for t in texts))
    return {"tier": tier, "tfidf": tfidf, "queries": queries}


# -- fast: the load generator and the local upstream, no bundle ----------------------------------------------
def test_load_generator_against_the_local_upstream(tmp_path):
    """The upstream answers OpenAI chat completions on keep-alive connections; the load generator counts every
    request once, and a wrong path or a missing field in the answer as an error."""
    port = route_throughput.free_port()
    proc = gateway_overhead.start_process([sys.executable, str(BENCH / "gateway_overhead.py"), "--upstream",
                                           "--port", str(port)], tmp_path / "up.log", port, "/health", timeout_s=60)
    try:
        bodies = gateway_overhead.chat_bodies(["hello", "a longer question about primes"], "m")
        ok = asyncio.run(route_throughput.load(port, bodies, 25, 4, 30, "/v1/chat/completions", b"", b'"choices"',
                                               keep_latencies=True))
        assert (ok["requests"], ok["errors"], len(ok["latencies_ms"])) == (25, 0, 25)
        wrong_path = asyncio.run(route_throughput.load(port, bodies, 5, 1, 30, "/v1/nope", b"", b'"choices"'))
        assert (wrong_path["requests"], wrong_path["errors"]) == (5, 5)
        wrong_field = asyncio.run(route_throughput.load(port, bodies, 3, 1, 30, "/v1/chat/completions", b"",
                                                        b'"decision"'))
        assert wrong_field["errors"] == 3 and "200 without" in wrong_field["error_examples"][0]
    finally:
        route_throughput.stop(proc)


def test_cpu_pulse_counts_each_second_and_steal_is_a_share(capsys):
    out = cpu_pulse.main(["--seconds", "2"])
    assert len(out) == 2 and all(n > 0 and cpu > 0 for n, cpu in out)
    assert "iterations per second" in capsys.readouterr().out
    assert bench_common.steal_percent((5, 100), (15, 300)) == 5.0
    assert bench_common.steal_percent((5, 100), (5, 100)) is None


def test_write_block_replaces_only_its_block(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Prose\n\nkept\n")
    bench_common.write_block(md, "b", "first table")
    bench_common.write_block(md, "other", "other table")
    bench_common.write_block(md, "b", "second table")
    text = md.read_text()
    assert text.startswith("# Prose\n\nkept\n") and "other table" in text
    assert "second table" in text and "first table" not in text and text.count("<!-- b:begin -->") == 1


# -- each script in tiny mode ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_routing_latency_smoke(bundles, tmp_path):
    out, md = tmp_path / "rl.json", tmp_path / "rl.md"
    md.write_text("# Notes\n\n<!-- routing_latency:begin -->\nold numbers\n<!-- routing_latency:end -->\n")
    run_script("routing_latency.py", "--bundle", f"tier={bundles['tier']}", "--bundle", f"tfidf={bundles['tfidf']}",
               "--queries", str(bundles["queries"]), "--n", "12", "--warmup", "2", "--block", "4",
               "--bert-layers", "1", "--bert-hidden", "32", "--json", str(out), "--write", str(md))
    res = json.loads(out.read_text())
    bert = "bert 1x32 (random init)"
    expected = {"tier fp32", "tier int8", f"tier {res['bundles']['tier']['default_variant']}: bundle.route()",
                "tfidf fp32", f"{bert} fp32", f"{bert} int8"}
    assert set(res["rows"]) == expected
    assert all(r["n"] == 12 and r["cpu"]["total"]["p50_ms"] > 0 for r in res["rows"].values())
    assert res["bundles"]["tfidf"]["runtime"] == "TfidfLinearRuntime" and res["bert"]["layers"] == 1
    text = md.read_text()
    assert "old numbers" not in text and text.startswith("# Notes") and "1-min load average" in text
    assert all(f"| {name} |" in text for name in expected)


@pytest.mark.slow
def test_route_throughput_smoke(bundles, tmp_path):
    out, md = tmp_path / "rt.json", tmp_path / "rt.md"
    run_script("route_throughput.py", "--bundle", f"tier={bundles['tier']}", "--bundle", f"tfidf={bundles['tfidf']}",
               "--queries", str(bundles["queries"]), "--requests", "40", "--concurrency", "4", "--warmup", "4",
               "--max-seconds", "60", "--modes", "on,off", "--goal", "tfidf=5000", "--json", str(out),
               "--write", str(md))
    info = json.loads(out.read_text())
    assert [(r["bundle"], r["mode"]) for r in info["results"]] == [("tier", "on"), ("tier", "off"), ("tfidf", "on"),
                                                                   ("tfidf", "off")]
    for r in info["results"]:
        assert (r["requests"], r["decisions"], r["errors"], r["warmup_errors"]) == (40, 40, 0, 0)
        assert r["server_cpu_ms_per_decision"] > 0 and r["classifier_calls"] >= 1
        if r["mode"] == "off":
            assert r["mean_classifier_batch"] == 1.0
    text = md.read_text()
    assert "<!-- route_throughput:begin -->" in text and "goal ≥ 5000/s" in text and "1-min load average" in text


@pytest.mark.slow
def test_gateway_overhead_smoke(bundles, tmp_path):
    out = tmp_path / "go.json"
    run_script("gateway_overhead.py", "--bundle", str(bundles["tier"]), "--queries", str(bundles["queries"]),
               "--latency-requests", "10", "--requests", "40", "--concurrency", "4", "--warmup", "4",
               "--no-litellm", "--json", str(out), "--write", str(tmp_path / "go.md"))
    info = json.loads(out.read_text())
    assert [r["target"] for r in info["rows"]] == GATEWAY_ROWS
    for r in info["rows"]:
        assert (r["latency_requests"], r["latency_errors"], r["load_requests"], r["load_errors"]) == (10, 0, 40, 0)
        assert (r["added_p50_ms"] is None) == (r["target"] == "direct")
        assert (r["gateway_cpu_ms_per_request"] is None) == (r["target"] == "direct")
    assert "forward-only adds" in (tmp_path / "go.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not (LITELLM.exists() or shutil.which("litellm")),
                    reason="LiteLLM is a benchmark-only dependency (outputs/venv-litellm, see gateway_overhead.py)")
def test_gateway_overhead_with_litellm_smoke(bundles, tmp_path):
    out = tmp_path / "go.json"
    run_script("gateway_overhead.py", "--bundle", str(bundles["tier"]), "--queries", str(bundles["queries"]),
               "--latency-requests", "10", "--requests", "20", "--concurrency", "4", "--warmup", "4",
               "--json", str(out))
    info = json.loads(out.read_text())
    assert [r["target"] for r in info["rows"]] == [*GATEWAY_ROWS, "LiteLLM proxy"]
    assert all(r["latency_errors"] == 0 and r["load_errors"] == 0 for r in info["rows"])
    assert info["litellm_version"]


@pytest.mark.slow
def test_speed_suite_tiny(bundles, tmp_path):
    md = tmp_path / "speed.md"
    run_script("speed_suite.py", "--quality", str(bundles["tier"]), "--tfidf", str(bundles["tfidf"]), "--no-litellm",
               "--winner", str(bundles["tfidf"]), "--workers", "2",
               "--queries", str(bundles["queries"]), "--tiny", "--write", str(md), timeout=1800)
    text = md.read_text()
    assert text.startswith("<!-- speed_suite:begin -->\n# Router speed")
    for mark in ("speed_suite", "routing_latency", "gateway_overhead", "route_throughput"):
        assert text.count(f"<!-- {mark}:begin -->") == 1, mark
    assert all(f"| {row} |" in text for row in GATEWAY_ROWS)
    # bundle | micro-batching | router processes | decisions/request
    for row in ("quality | on | 1 | 1", "quality | off | 1 | 1", "quality | on | 2 | 1", "quality | off | 2 | 1",
                "tfidf | on | 1 | 1", "tfidf | on | 2 | 1", "tfidf | on | 2 | 16", "winner | on | 2 | 1"):
        assert f"| {row} |" in text, row
    assert "2 process(es) per gateway" in text
    assert "bert 1x64 (random init) fp32" in text
