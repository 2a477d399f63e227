"""Build the router's guards from configs and the bundle: governance policy and stickiness guards.

Governance (detectors + model → allowed data classes) comes from the first that is set: the serve config when it
names endpoints (e.g. `governance=local_cloud`), the bundle's router.json `governance`, or the serve config's
detectors (without a config: `detectors.default_detectors()`) with endpoints from the fleet's per-model
`data_classes`. Nothing here reads the repository's configs/: the pipeline composes them and passes them in.

Stickiness salts are derived as `<salt>|<bundle id>|<operating point>`: every process serving the same bundle
with the same `KRONAXIS_STICKY_SALT` agrees, and memoised tiers / routing tokens of another bundle or another
`kronaxis/<policy>:<param>` never apply.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import GovernancePolicy, endpoints_from_fleet
from kronaxis_lab.serving.protocols import RouterBundle
from kronaxis_lab.serving.settings import ServeConfigError
from kronaxis_lab.serving.stickiness import StickinessGuard

log = logging.getLogger(__name__)

INSECURE_SALTS = {"dev-only-insecure-salt"}


def _plain(node: Any) -> dict[str, Any]:
    """A config node (DictConfig or mapping, None = empty) as a plain dict without its `defaults` list."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    out = dict(node or {})
    out.pop("defaults", None)
    return out


def build_governance(cfg: Mapping[str, Any] | None, bundle: RouterBundle) -> GovernancePolicy:
    """GovernancePolicy for `bundle` (precedence in the module docstring); model names are checked against the fleet."""
    names = list(bundle.model_names)
    node = _plain(cfg)
    if not node.get("endpoints") and bundle.governance is not None:
        policy, source = bundle.governance, "bundle router.json"
    elif node.get("endpoints"):
        policy, source = instantiate(node, _convert_="all"), "serve config"
    elif node:
        node["endpoints"] = endpoints_from_fleet(bundle.fleet)
        policy, source = instantiate(node, _convert_="all"), "serve config detectors, fleet data_classes"
    else:
        policy = GovernancePolicy(default_detectors(), endpoints=endpoints_from_fleet(bundle.fleet))
        source = "default detectors, fleet data_classes"
    unknown = sorted(set(policy.endpoints) - set(names))
    if unknown:
        raise ServeConfigError(f"governance endpoints ({source}) name models {unknown} that are not in the bundle's "
                               f"fleet {names}; use the fleet's names")
    log.info("governance from %s: %s", source, {n: sorted(a) if a != "*" else a for n in names
                                                for a in [policy.endpoints.get(n, policy.default_allowed)]})
    return policy


def stickiness_factory(cfg: Mapping[str, Any] | None, bundle: RouterBundle) -> Callable[[str], StickinessGuard] | None:
    """Operating-point key → StickinessGuard from `cfg` (else the bundle's router.json `stickiness`); None = off."""
    node = _plain(cfg)
    if not node and bundle.meta.get("stickiness"):
        # resolved here, at run time: the bundle's node may read the salt from the environment
        node = _plain(OmegaConf.create(dict(bundle.meta["stickiness"])))
    if not node:
        return None
    salt = str(node.get("salt") or "")
    if not salt:
        raise ServeConfigError("stickiness.salt is empty: set KRONAXIS_STICKY_SALT (identically in every process)")
    if salt in INSECURE_SALTS:
        log.warning("stickiness: using the development salt; set KRONAXIS_STICKY_SALT in production")
    bid = bundle.bundle_id

    def make(key: str) -> StickinessGuard:
        return instantiate({**node, "salt": f"{salt}|{bid}|{key}"})

    make("default")  # fail at start-up, not on the first keyed request
    return make
