"""Replay = serve: over real HTTP, the served router's decisions on a test split equal `kronaxis-replay bundle=`'s.

A classifier is trained (kronaxis-train) and exported (kronaxis-export); `kronaxis-replay bundle=<dir>` replays the
test split; the same bundle is served by `kronaxis_lab.serving.app.create_app` under uvicorn on 127.0.0.1, and
every test query is POSTed to /v1/route — half as one `{"requests": [...]}` batch, half as concurrent single
requests that the server micro-batches. Deterministic variants (TF-IDF, rules; the tier predictor's fp32 graph)
must agree on 100 % of the decisions, and the scores the server returns are the bundle's P̂. The fleet lets
every model receive every data class, so governance (which runs after the decision) never changes one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kronaxis_lab.export.bundle import load_bundle
from kronaxis_lab.export.replay import bundle_router_names
from kronaxis_lab.serving.app import create_app
from tests.conftest import compose
from tests.test_export_all import export, routing_dataset, train

CASES = [pytest.param("tfidf_logreg", [], id="tfidf_logreg"), pytest.param("rules", [], id="rules"),
         pytest.param("tier_predictor", ["parity.prefer_variant=fp32"], id="tier_predictor-fp32",
                      marks=pytest.mark.slow)]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a background thread (real HTTP)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _singles(url: str, texts: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        rs = await asyncio.gather(*(client.post(url + "/v1/route", json={"messages": _messages(t)}) for t in texts))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200][:3]
    return [r.json() for r in rs]


def served_decisions(bundle_dir: Path, texts: list[str]) -> list[dict]:
    """/v1/route answers for `texts` from a server over the bundle (loaded as kronaxis-serve loads it)."""
    bundle = load_bundle(bundle_dir, intra_op_threads=1, batch_size=16)
    # host: the address it listens on, as kronaxis-serve passes server.host (loopback, no API key configured)
    app = create_app(bundle, settings={"batching": {"max_batch": 8, "max_wait_ms": 5.0}}, host="127.0.0.1",
                     environ={})
    half = len(texts) // 2
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/route", timeout=120,
                       json={"requests": [{"messages": _messages(t)} for t in texts[:half]]})
        assert r.status_code == 200, r.text
        batch = r.json()["results"]
        singles = asyncio.run(_singles(srv.url, texts[half:]))
    return batch + singles


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_replay")


@pytest.fixture(scope="module")
def dataset_dir(work) -> Path:
    return routing_dataset(work / "ds", open_fleet=True)


@pytest.mark.parametrize(("name", "export_overrides"), CASES)
def test_served_decisions_equal_the_bundle_replay(name, export_overrides, work, dataset_dir):
    from kronaxis_lab.pipelines.replay import run as replay_run

    run_dir = train(name, dataset_dir, work / f"train_{name}", str(work / "emb_cache"))
    bundle_dir = export(run_dir, work / f"export_{name}", *export_overrides)
    res = replay_run(compose("replay", ["dataset=saved", f"dataset.path={dataset_dir}", "routers=minimal",
                                        f"bundle={bundle_dir}"], work / f"replay_{name}"))["result"]
    b = load_bundle(bundle_dir)
    assert b.default_variant == "fp32"  # deterministic: no per-batch int8 activation scales
    _, fixed = bundle_router_names(b)
    texts = res.queries["text"].astype(str).tolist()
    replayed = [b.model_names[i] for i in res.choices[fixed]]
    assert len(set(replayed)) >= 2, "the test split should exercise more than one model"

    served = served_decisions(bundle_dir, texts)
    assert [d["model"] for d in served] == replayed  # 100 %
    assert [d["tier"] for d in served] == [int(b.fleet[m].tier) for m in replayed]
    P = b.predict_proba(texts)
    got = np.array([[d["scores"][m] for m in b.model_names] for d in served])
    np.testing.assert_allclose(got, np.round(P, 4), atol=1e-4)
    assert all(d["policy"] == b.policy_name and not d["refused"] for d in served)
