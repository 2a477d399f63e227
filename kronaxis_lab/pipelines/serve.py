"""kronaxis-serve: the OpenAI-compatible router over an exported bundle.

    kronaxis-serve bundle=<bundle dir> server.host=127.0.0.1 server.port=8080
    kronaxis-serve bundle=<dir> upstreams=local_cpu                      # chat → configs/upstreams/local_cpu.yaml
    kronaxis-serve bundle=<dir> governance=local_cloud settings.batching.max_batch=128
    KRONAXIS_STICKY_SALT=<secret> kronaxis-serve bundle=<dir> ...        # same salt in every process behind the LB
    kronaxis-serve bundle=<dir> decision_log.path=<log dir> [decision_log.store_text=true] [shadow.enabled=true]
    kronaxis-serve bundle=<dir> server.workers=2                         # one router process per core

`server.workers=N` (N > 1) runs N router processes on one port (uvicorn's process supervisor), as N routers
behind a load balancer would: one Python process is held to about one core by the GIL, whatever the cores.
Each worker loads the bundle and decides on its own; /metrics sums every worker's counters (Prometheus
multiprocess mode); each worker enforces 1/N of the per-key rate limit (a key never gets more than the
configured rate, though one that keeps a single connection gets 1/N of it); session stickiness holds across
workers as across processes behind a load balancer (the floor is recomputed from the conversation, escalations
travel in the signed routing token). A decision log needs one writer: `decision_log.path` with N > 1 is refused.

Without upstreams the router still answers POST /v1/route (decisions) and /v1/chat/completions answers 503.
Bound to a non-loopback address the router requires client API keys (`Authorization: Bearer <key>`):

    KRONAXIS_API_KEYS=<key>[,<key>...] kronaxis-serve bundle=<dir> server.host=0.0.0.0
    kronaxis-serve bundle=<dir> server.host=0.0.0.0 settings.auth.keys_file=/etc/kronaxis/keys   # sha256:<hex> lines

The `settings` and `bundle_options` nodes of the composed config are the defaults of `ServeSettings` and
`BundleOptions` (kronaxis_lab/serving/settings.py, their one source), registered below as the config-store
entries `settings/defaults` and `bundle_options/defaults` that configs/serve.yaml selects.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hydra
from fastapi import FastAPI
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from kronaxis_lab.export.bundle import BundleError, load_bundle
from kronaxis_lab.monitoring.settings import DecisionLogSettings, MonitorSettings, ShadowSettings
from kronaxis_lab.pipelines.common import CONFIG_DIR, build
from kronaxis_lab.serving.app import create_app
from kronaxis_lab.serving.components import build_governance, stickiness_factory
from kronaxis_lab.serving.metrics import MULTIPROC_ENV
from kronaxis_lab.serving.settings import BundleOptions, ServeConfigError, ServeSettings

log = logging.getLogger("kronaxis_lab.serve")

_store = ConfigStore.instance()
_store.store(group="settings", name="defaults", node=ServeSettings().model_dump())
_store.store(group="bundle_options", name="defaults", node=BundleOptions().model_dump())
# the root nodes `decision_log` / `shadow` (kronaxis_lab/monitoring/settings.py): `decision_log.path=<dir>`
_store.store(group="serve_decision_log", name="defaults", node=DecisionLogSettings().model_dump())
_store.store(group="serve_shadow", name="defaults", node=ShadowSettings().model_dump())


def _node(cfg: DictConfig, key: str) -> dict[str, Any] | None:
    return OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) else None


def build_app(cfg: DictConfig) -> FastAPI:
    """Load the bundle and build the FastAPI app from a composed serve config (pure: no server started)."""
    if not cfg.get("bundle"):
        raise ServeConfigError("kronaxis-serve needs bundle=<dir> (a directory written by kronaxis-export)")
    bundle_dir = Path(str(cfg.bundle)).expanduser()
    if not bundle_dir.is_dir():
        raise ServeConfigError(f"bundle={bundle_dir}: no such directory")
    log.info("Loading bundle <%s>", bundle_dir)
    bundle = load_bundle(bundle_dir, **BundleOptions.from_config(_node(cfg, "bundle_options")).model_dump())
    try:
        upstreams = build(cfg.upstreams, "upstreams") if cfg.get("upstreams") else None
    except InstantiationException as e:  # e.g. an API-key env var that is not set
        raise ServeConfigError(f"upstreams: {e.__cause__ or e}") from e
    governance = build_governance(cfg.get("governance"), bundle)
    stickiness = stickiness_factory(cfg.get("stickiness"), bundle)
    settings = ServeSettings.from_config(_node(cfg, "settings"))
    monitor = MonitorSettings.from_config({k: _node(cfg, k) for k in ("decision_log", "shadow")})
    return create_app(bundle, upstreams, settings, governance=governance, stickiness=stickiness,
                      policies=_node(cfg, "policies"), host=str(cfg.server.host),  # host: auth on unless loopback
                      monitor=monitor)


WORKER_CONFIG_ENV = "KRONAXIS_SERVE_WORKER_CONFIG"  # the composed config each worker process builds its app from


def workers_of(cfg: DictConfig) -> int:
    n = cfg.server.workers
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ServeConfigError(f"server.workers must be an integer ≥ 1, got {n!r}")
    if n > 1 and cfg.get("decision_log") and cfg.decision_log.get("path"):
        raise ServeConfigError(f"decision_log.path with server.workers={n}: the decision log has one writer; "
                               "serve it with server.workers=1 (or one router per log directory)")
    return n


def per_worker(cfg: DictConfig, n: int) -> DictConfig:
    """`cfg` for one of `n` worker processes: its share of the per-key rate limit (never more than the total)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    rl = ServeSettings.from_config(_node(cfg, "settings")).auth.rate_limit
    with open_dict(cfg):
        cfg.settings.auth.rate_limit.burst = max(1, math.floor(rl.burst / n))
        if rl.requests_per_minute is not None:
            cfg.settings.auth.rate_limit.requests_per_minute = rl.requests_per_minute / n
    return cfg


def worker_app() -> FastAPI:
    """The app of one worker process (`server.workers` > 1): uvicorn imports this factory in each worker."""
    return build_app(OmegaConf.load(os.environ[WORKER_CONFIG_ENV]))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Serve until interrupted; returns where it served."""
    import uvicorn

    s, n = cfg.server, workers_of(cfg)
    opts = dict(host=str(s.host), port=int(s.port), log_level=str(s.log_level), access_log=bool(s.access_log),
                timeout_keep_alive=int(s.timeout_keep_alive))
    if n == 1:
        app = build_app(cfg)
        log.info("kronaxis-serve listening on http://%s:%s", s.host, s.port)
        uvicorn.Server(uvicorn.Config(app, **opts)).run()
        return {"host": str(s.host), "port": int(s.port), "workers": 1}
    if cfg.get("bundle"):  # workers may start elsewhere: the absolute path
        with open_dict(cfg):
            cfg.bundle = str(Path(str(cfg.bundle)).expanduser().resolve())
    wcfg = per_worker(cfg, n)
    build_app(wcfg)  # fail here, with the config error, rather than in N workers that uvicorn keeps restarting
    spool = Path(tempfile.mkdtemp(prefix="kronaxis-serve-"))
    try:
        (spool / "prometheus").mkdir()
        OmegaConf.save(wcfg, spool / "serve.yaml")
        os.environ[WORKER_CONFIG_ENV] = str(spool / "serve.yaml")
        os.environ[MULTIPROC_ENV] = str(spool / "prometheus")  # read by prometheus_client at its import
        log.info("kronaxis-serve listening on http://%s:%s with %d worker processes", s.host, s.port, n)
        uvicorn.run("kronaxis_lab.pipelines.serve:worker_app", factory=True, workers=n, **opts)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return {"host": str(s.host), "port": int(s.port), "workers": n}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ServeConfigError, BundleError) as e:
        raise SystemExit(f"kronaxis-serve: {e}") from None


if __name__ == "__main__":
    main()
