"""Request metadata in a bundle: a tag the deployment's clients send (OpenAI `metadata: {<field>: <tag>}` or the
`x-kronaxis-tag` header) blended into the classifier's P̂ — logit P = w · logit P̂_text + (1 − w) · logit rate_tag,
the per-tag success rates learned on train, w on val (`routing.routers.MetadataBlendPredictor`). Requests without
the tag are routed on the text alone. The bundle replay (`export/replay.py`) applies it with the queries' `by`
column as the tag, the server with the request's, through the same `BundleMetadata.apply`.

router.json `metadata` node:

    {"by": "<queries column it was learned from>", "field": "<metadata key / tag name>", "weight": w,
     "smoothing": s, "tags": ["<tag>", ...], "rates": [[p per fleet model], ...], "overall": [p per model]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kronaxis_lab.export.schema import BundleError, ExportError
from kronaxis_lab.routing.routers import MetadataBlendPredictor, PriorPredictor, ReplayContext

#: the header a client may send the tag in, instead of the body's `metadata`
TAG_HEADER = "x-kronaxis-tag"


@dataclass
class BundleMetadata:
    by: str
    field: str
    weight: float
    tags: list[str]
    rates: np.ndarray  # (t, m) in fleet order
    overall: np.ndarray  # (m,)
    smoothing: float = 10.0

    def apply(self, P: np.ndarray, tags: Sequence[str | None]) -> np.ndarray:
        """P̂ with the rows that carry a tag blended with that tag's rates (an unseen tag: the overall rate)."""
        P = np.asarray(P, dtype=float)
        if len(tags) != len(P):
            raise ValueError(f"{len(tags)} tags for {len(P)} rows of P")
        rows = [i for i, t in enumerate(tags) if t is not None]
        if not rows:
            return P
        out = P.copy()
        T = PriorPredictor.lookup(self.tags, self.rates, self.overall, [tags[i] for i in rows])
        out[rows] = MetadataBlendPredictor.blend(P[rows], T, self.weight)
        return out

    def to_node(self) -> dict[str, Any]:
        return {"by": self.by, "field": self.field, "weight": float(self.weight), "smoothing": float(self.smoothing),
                "tags": list(self.tags), "rates": np.asarray(self.rates, float).tolist(),
                "overall": np.asarray(self.overall, float).tolist()}

    @classmethod
    def from_node(cls, node: Any, n_models: int, where: str) -> "BundleMetadata":
        if not isinstance(node, Mapping):
            raise BundleError(f"{where}: must be an object")
        for key in ("by", "field"):
            if not isinstance(node.get(key), str) or not node[key]:
                raise BundleError(f"{where}.{key}: a non-empty string is required, got {node.get(key)!r}")
        try:
            weight = float(node["weight"])
            tags = [str(t) for t in node.get("tags") or []]
            rates = np.asarray(node.get("rates") or np.zeros((0, n_models)), float).reshape(len(tags), -1)
            overall = np.asarray(node["overall"], float)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: weight, tags, rates and overall are required and numeric ({e})") from None
        if not 0.0 <= weight <= 1.0:
            raise BundleError(f"{where}.weight: must be in [0, 1], got {weight}")
        if overall.shape != (n_models,) or rates.shape != (len(tags), n_models):
            raise BundleError(f"{where}: rates {rates.shape} / overall {overall.shape} do not fit {len(tags)} tags × "
                              f"{n_models} fleet models")
        if not (np.all((rates >= 0) & (rates <= 1)) and np.all((overall >= 0) & (overall <= 1))):
            raise BundleError(f"{where}: rates must be probabilities in [0, 1]")
        return cls(node["by"], node["field"], weight, tags, rates, overall, float(node.get("smoothing", 10.0)))


def fit_metadata(predictor, ctx: ReplayContext,
                 cfg: Mapping[str, Any]) -> tuple[BundleMetadata, MetadataBlendPredictor]:
    """The blend of `predictor` (the bundle runtime's P̂) with the train split's per-tag rates of the queries column
    `cfg.by`, its weight chosen on val by log-loss; (the bundle node, the predictor the operating point is
    calibrated with)."""
    by = str(cfg.get("by") or "task")
    for split, mats in (("train", ctx.train), ("val", ctx.val)):
        if mats is None or by not in mats.queries.columns:
            raise ExportError(f"metadata.by: the {split} split's queries have no column {by!r} to learn the tag from")
    blend = MetadataBlendPredictor(predictor, by=by, smoothing=float(cfg.get("smoothing", 10.0)))
    weight = blend.fit_weight(ctx)
    tags, rates, overall = blend.tag.rates(ctx)
    node = BundleMetadata(by, str(cfg.get("field") or by), weight, tags, rates, overall, blend.tag.smoothing)
    return node, blend
