"""kronaxis-serve: the OpenAI-compatible router over an exported bundle.

    kronaxis-serve bundle=<bundle dir> server.host=127.0.0.1 server.port=8080
    kronaxis-serve bundle=<dir> upstreams=local_cpu                      # chat → configs/upstreams/local_cpu.yaml
    kronaxis-serve bundle=<dir> governance=local_cloud settings.batching.max_batch=128
    KRONAXIS_STICKY_SALT=<secret> kronaxis-serve bundle=<dir> ...        # same salt in every process behind the LB
    kronaxis-serve bundle=<dir> decision_log.path=<log dir> [decision_log.store_text=true] [shadow.enabled=true]

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
from pathlib import Path
from typing import Any

import hydra
from fastapi import FastAPI
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.export.bundle import BundleError, load_bundle
from kronaxis_lab.monitoring.settings import DecisionLogSettings, MonitorSettings, ShadowSettings
from kronaxis_lab.pipelines.common import CONFIG_DIR, build
from kronaxis_lab.serving.app import create_app
from kronaxis_lab.serving.components import build_governance, stickiness_factory
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Serve until interrupted; returns where it served."""
    import uvicorn

    app = build_app(cfg)
    s = cfg.server
    log.info("kronaxis-serve listening on http://%s:%s", s.host, s.port)
    config = uvicorn.Config(app, host=str(s.host), port=int(s.port), log_level=str(s.log_level),
                            access_log=bool(s.access_log), timeout_keep_alive=int(s.timeout_keep_alive))
    uvicorn.Server(config).run()
    return {"host": str(s.host), "port": int(s.port)}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ServeConfigError, BundleError) as e:
        raise SystemExit(f"kronaxis-serve: {e}") from None


if __name__ == "__main__":
    main()
