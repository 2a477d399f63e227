"""Build the router's guards from configs and the bundle: governance policy and stickiness guards.

Governance (detectors + model → allowed data classes) comes from the first that is set: the serve config when it
names endpoints (e.g. `governance=local_cloud`), the bundle's router.json `governance`, or the serve config's
detectors with endpoints from the fleet's per-model `data_classes`.

Stickiness salts are derived as `<salt>|<bundle id>|<operating point>`: every process serving the same bundle
with the same `KRONAXIS_STICKY_SALT` agrees, and memoised tiers / routing tokens of another bundle or another
`kronaxis/<policy>:<param>` never apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from kronaxis_lab.serving.settings import ServeConfigError

log = logging.getLogger(__name__)

INSECURE_SALTS = {"dev-only-insecure-salt"}


def _plain(node: Any) -> Any:
    if node is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return node


def bundle_id(bundle: Any) -> str:
    """The bundle's content id (its identity for salts); a hash of router.json when it has none."""
    bid = getattr(bundle, "bundle_id", None)
    if bid:
        return str(bid)
    meta = getattr(bundle, "meta", None) or {}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fleet_endpoints(fleet: Any) -> dict[str, Any]:
    """Fleet `data_classes` → governance `endpoints` ("*" anywhere in the list means every class)."""
    return {m.name: "*" if "*" in list(m.data_classes) else list(m.data_classes) for m in fleet.models}


def default_governance_config() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from kronaxis_lab.pipelines.common import CONFIG_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "governance" / "default.yaml"), resolve=True)
    cfg.pop("defaults", None)
    return cfg


def build_governance(cfg: Mapping[str, Any] | None, bundle: Any) -> Any:
    """GovernancePolicy for `bundle` (precedence in the module docstring); model names are checked against the fleet."""
    from hydra.utils import instantiate

    names = list(bundle.model_names)
    node = dict(_plain(cfg) or {})
    node.pop("defaults", None)
    policy = None
    if not node.get("endpoints") and getattr(bundle, "governance", None) is not None:
        policy, source = bundle.governance, "bundle router.json"
    else:
        if not node:
            node = default_governance_config()
        if not node.get("endpoints"):
            node["endpoints"] = fleet_endpoints(bundle.fleet)
            source = "fleet data_classes"
        else:
            source = "serve config"
        policy = instantiate(node, _convert_="all")
    unknown = sorted(set(policy.endpoints) - set(names))
    if unknown:
        raise ServeConfigError(f"governance endpoints ({source}) name models {unknown} that are not in the bundle's "
                               f"fleet {names}; use the fleet's names")
    log.info("governance from %s: %s", source, {n: sorted(a) if a != "*" else a for n in names
                                                for a in [policy.endpoints.get(n, policy.default_allowed)]})
    return policy


def stickiness_factory(cfg: Mapping[str, Any] | None, bundle: Any) -> Callable[[str], Any] | None:
    """Operating-point key → StickinessGuard from `cfg` (else the bundle's router.json `stickiness`); None = off."""
    from hydra.utils import instantiate

    node = dict(_plain(cfg) or {})
    if not node and (getattr(bundle, "meta", None) or {}).get("stickiness"):
        from omegaconf import OmegaConf  # the bundle's node may read the salt from the environment

        node = OmegaConf.to_container(OmegaConf.create(dict(bundle.meta["stickiness"])), resolve=True)
    if not node:
        return None
    node.pop("defaults", None)
    salt = str(node.get("salt") or "")
    if not salt:
        raise ServeConfigError("stickiness.salt is empty: set KRONAXIS_STICKY_SALT (identically in every process)")
    if salt in INSECURE_SALTS:
        log.warning("stickiness: using the development salt; set KRONAXIS_STICKY_SALT in production")
    bid = bundle_id(bundle)

    def make(key: str) -> Any:
        return instantiate({**node, "salt": f"{salt}|{bid}|{key}"})

    make("default")  # fail at start-up, not on the first keyed request
    return make
