"""What the router needs from a loaded bundle: `kronaxis_lab.export.bundle.Bundle` is one, a test fake another."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.serving.governance import GovernancePolicy


@runtime_checkable
class RouterBundle(Protocol):
    """The bundle API the serving code uses (columns of P̂ and decided indices follow `model_names`)."""

    dir: Path | str
    meta: Mapping[str, Any]  # router.json: `policy.config` (its policy's Hydra node), `stickiness` (optional node)
    fleet: Fleet
    model_names: list[str]
    premium: str  # the always-premium reference model (fail-open target, savings baseline)
    policy_name: str
    param: float  # the policy's calibrated operating parameter (may be inf)
    bundle_id: str  # content id: part of the stickiness salts
    governance: GovernancePolicy | None  # router.json `governance`, None if it has none

    def predict_proba(self, texts: Sequence[str], variant: str | None = None) -> np.ndarray:
        """(n, m) success probabilities."""
        ...

    def expected_cost(self, texts: Sequence[str]) -> np.ndarray:
        """(n, m) expected USD per query and model, known before the call."""
        ...

    def decide(self, P: np.ndarray, texts: Sequence[str] | None = None, *, param: float | None = None) -> np.ndarray:
        """(n,) model indices under the bundle's policy, at `param` (None = its calibrated one)."""
        ...

    def warmup(self, variant: str | None = None) -> None:
        """Load and run the classifier once, so the first request does not pay for it."""
        ...
