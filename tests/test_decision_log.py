"""The decision log: written off the request path, redacted, rotated and bounded, and a full disk only counts.

The router-level tests serve the small fake bundle of tests/test_serve_app.py over real HTTP (uvicorn on
127.0.0.1) with `create_app(..., monitor={"decision_log": {...}})`, what `kronaxis-serve decision_log.path=<dir>`
builds; the command itself runs in tests/test_live_loop_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from kronaxis_lab.monitoring.decision_log import LIVE_FILE, DecisionLog, log_files, read_decision_log
from kronaxis_lab.monitoring.settings import DecisionLogSettings
from kronaxis_lab.monitoring.sketch import SKETCH_DIM
from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import GovernancePolicy
from tests.conftest import FIXTURES, ROOT
from tests.test_serve_app import EASY, HARD, FakeBundle, ServerThread, route, router

CARD = "4111 1111 1111 1111"  # Luhn-valid Visa test number


def policy() -> GovernancePolicy:
    return GovernancePolicy(default_detectors())


def decision(i: int, **kw) -> dict:
    return {"id": f"d{i}", "endpoint": "route", "model": "small", "tier": 0, "policy": "threshold", "param": 0.5,
            "scores": {"small": 0.9, "big": 0.95}, "reasons": ["policy threshold(0.5) -> small"], **kw}


def raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def test_records_are_written_and_read_back(tmp_path):
    log = DecisionLog(DecisionLogSettings(path=str(tmp_path), store_text=True), redact=policy().redact,
                      bundle_id="b1").start()
    for i in range(20):
        assert log.record(decision(i), text=f"what colour is the sky {i}", category="easy")
    assert log.flush()
    log.close()
    data = read_decision_log(tmp_path)
    assert len(data.decisions) == 20 and data.files == [tmp_path / LIVE_FILE]
    row = data.decisions.iloc[3]
    assert row["bundle_id"] == "b1" and row["scores"] == {"small": 0.9, "big": 0.95} and row["category"] == "easy"
    assert row["text"] == "what colour is the sky 3" and row["sketch"].shape == (SKETCH_DIM,)
    assert log.stats["written"] == 20 and log.stats["dropped_queue_full"] == 0


def test_text_is_stored_only_when_configured_and_never_unredacted(tmp_path):
    """Without store_text no text is kept (the sketch is of the redacted text); with it, the planted card number
    and every value the governance detectors find in the governance corpus never reach the files."""
    off = tmp_path / "off"
    log = DecisionLog(DecisionLogSettings(path=str(off)), redact=policy().redact).start()
    log.record(decision(0), text=f"charge my card {CARD} for the order", category=f"card {CARD}")
    log.close()
    d = read_decision_log(off).decisions
    assert d["text"].isna().all() and d["sketch"].iloc[0] is not None
    assert d["category"].iloc[0] is None  # a category is a label: redacted or not label-like, it is not kept

    on = tmp_path / "on"
    corpus = [json.loads(line)["text"] for line in (FIXTURES / "governance_corpus.jsonl").read_text().splitlines()]
    pol = policy()
    found = pol.scan(corpus)
    benign = "\n".join(t for t, fs in zip(corpus, found) if not fs)  # look-alikes are stored as they are
    secrets = {t[f.start:f.end] for t, fs in zip(corpus, found) for f in fs} - {v for v in benign.split()}
    secrets = {v for v in secrets if v not in benign}
    assert len(secrets) > 100  # the corpus plants values of every class
    log = DecisionLog(DecisionLogSettings(path=str(on), store_text=True), redact=pol.redact).start()
    log.record(decision(0), text=f"charge my card {CARD} for the order")
    for i, t in enumerate(corpus, start=1):
        log.record(decision(i, data_classes=["email"]), text=t, category=t)
    assert log.flush()
    live = raw_bytes(on)  # db + WAL while the writer is still open
    log.close()
    stored = live + raw_bytes(on)
    for value in secrets | {CARD, CARD.replace(" ", "")}:
        assert value.encode() not in stored, value
    d = read_decision_log(on).decisions
    texts = d["text"]
    flagged = [bool(fs) for fs in found]
    assert d["category"].iloc[1:][flagged].isna().all()  # a redacted category is no label: not kept
    assert texts.iloc[0] == "charge my card [REDACTED:credit_card] for the order"
    assert texts.iloc[1:][flagged].str.contains("[REDACTED:", regex=False).all() and sum(flagged) > 100


def test_rotation_keeps_the_log_bounded(tmp_path):
    s = DecisionLogSettings(path=str(tmp_path), store_text=True, max_file_mb=0.05, max_files=3, batch_size=50)
    log = DecisionLog(s, redact=policy().redact).start()
    for i in range(3000):
        log.record(decision(i), text=f"question number {i} " + "about rivers and bridges " * 4)
    assert log.flush(60)
    log.close()
    files = log_files(tmp_path)
    assert log.stats["rotations"] >= 3 and len(files) <= 3
    assert all(p.name.startswith("decisions") for p in tmp_path.iterdir())
    limit = s.max_file_mb * 1024 * 1024
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 1.5 * limit
    ids = read_decision_log(tmp_path).decisions["id"].tolist()
    assert "d2999" in ids and "d0" not in ids and len(ids) < 3000  # the newest kept, the oldest rotated away


def test_recording_never_waits_for_the_writer(tmp_path, monkeypatch):
    """A stuck writer (slow disk): `record` still returns at once; a full queue drops and counts; nothing is lost
    of what fit once the writer moves again."""
    gate = threading.Event()
    log = DecisionLog(DecisionLogSettings(path=str(tmp_path), queue_size=10, batch_size=1), redact=policy().redact)
    real = log._write

    def slow(batch):
        gate.wait(30)
        real(batch)

    monkeypatch.setattr(log, "_write", slow)
    log.start()
    accepted = [log.record(decision(i), text="hello") for i in range(30)]  # returns although nothing is written
    assert sum(accepted) <= 11 and log.stats["dropped_queue_full"] == 30 - sum(accepted)
    gate.set()
    assert log.flush(30)
    log.close()
    assert len(read_decision_log(tmp_path).decisions) == sum(accepted)


def _router_with_log(path: Path, **log_settings):
    return router(FakeBundle(), monitor={"decision_log": {"path": str(path), **log_settings}})


def test_the_router_logs_every_decision_with_its_reasons(tmp_path):
    app = _router_with_log(tmp_path, store_text=True)
    with ServerThread(app) as srv:
        assert route(srv.url, {"messages": EASY}).status_code == 200
        assert route(srv.url, {"messages": HARD, "metadata": {"category": "proofs"}}).status_code == 200
        assert route(srv.url, {"messages": [{"role": "user", "content": f"hard: mail bob@example.com {CARD}"}]}
                     ).status_code == 200
        assert route(srv.url, {"requests": [{"messages": EASY}, {"messages": HARD}]}).status_code == 200
    d = read_decision_log(tmp_path).decisions
    assert d["model"].tolist() == ["small", "big", "big", "small", "big"]
    assert d["tier"].tolist() == [0, 1, 1, 0, 1] and (d["bundle_id"] == "fake-bundle-id").all()
    assert d["category"].isna().iloc[0] and d["category"].iloc[1] == "proofs"
    assert all(r[0].startswith("policy threshold") for r in d["reasons"])
    assert d["data_classes"].iloc[2] == ["credit_card", "email"] and d["governance"].iloc[2] == "found"
    assert "bob@example.com" not in "".join(d["text"]) and "[REDACTED:email]" in d["text"].iloc[2]
    assert CARD.encode() not in raw_bytes(tmp_path)


FULL_DISK = r"""
import json, resource, signal, sys
sys.path.insert(0, {root!r})
from fastapi.testclient import TestClient
from tests.test_serve_app import EASY, FakeBundle, router
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)             # writes past the limit fail with EFBIG, not a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))   # every file this process writes: <= 96 KB
app = router(FakeBundle(), monitor={{"decision_log": {{"path": {path!r}, "store_text": True, "max_file_mb": 1,
                                                      "batch_size": 20}}}})
statuses = []
with TestClient(app) as client:
    for i in range(600):
        r = client.post("/v1/route", json={{"messages": [{{"role": "user", "content": "question %d " % i + "x" * 300}}]}})
        statuses.append(r.status_code)
    svc = app.state.service
    svc.monitor.log.flush(30)
    metrics = client.get("/metrics").text
print(json.dumps({{"statuses": sorted(set(statuses)), "n": len(statuses), "stats": svc.monitor.log.stats,
                  "metrics": [ln for ln in metrics.splitlines() if ln.startswith("kronaxis_decision_log")]}}))
"""


def test_a_full_disk_drops_and_counts_records_and_requests_still_succeed(tmp_path):
    """RLIMIT_FSIZE makes every write past 96 KB fail (as a full disk does): the writer counts the dropped
    records, /metrics shows them, and all 600 requests are answered."""
    code = FULL_DISK.format(root=str(ROOT), path=str(tmp_path / "log"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["statuses"] == [200] and out["n"] == 600
    stats = out["stats"]
    assert stats["dropped_write_error"] > 0 and stats["written"] > 0
    assert stats["written"] + stats["dropped_write_error"] + stats["dropped_queue_full"] == 600
    assert any(ln.startswith('kronaxis_decision_log_dropped_total{reason="write_error"}') and float(ln.split()[-1]) > 0
               for ln in out["metrics"])
    assert all(p.stat().st_size <= 96 * 1024 for p in (tmp_path / "log").iterdir())


def test_sketches_separate_topics():
    from kronaxis_lab.monitoring.sketch import text_sketch

    a = text_sketch(["what colour is the sky", "what colour is the sea", "prove the theorem about primes"])
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2]
    assert np.array_equal(text_sketch(["same text"]), text_sketch(["same text"]))
    assert not text_sketch([""]).any()


@pytest.mark.parametrize("bad", [{"max_file_mb": 0}, {"queue_size": 0}, {"nope": 1}])
def test_bad_settings_are_clear(bad):
    from kronaxis_lab.monitoring.settings import MonitorSettings
    from kronaxis_lab.serving.settings import ServeConfigError

    with pytest.raises(ServeConfigError, match=next(iter(bad))):
        MonitorSettings.from_config({"decision_log": {"path": "x", **bad}})
