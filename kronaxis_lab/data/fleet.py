"""The fleet: models, tiers, prices and serving constraints, read from configs/fleet/*.yaml.

Tiers are integers, higher = more capable and more expensive. Prices are USD per 1M tokens.
The fleet order (`Fleet.names`) is the column order of every wide matrix: cheapest tier first,
then by price, then by name — so "the premium model" is the last column.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator


class FleetError(ValueError):
    pass


class ModelSpec(BaseModel):
    name: str
    tier: int = Field(ge=0)
    backend: str | None = None  # name of a configs/backend entry used to call it live
    price_in: float = Field(0.0, ge=0, description="USD per 1M input tokens")
    price_out: float = Field(0.0, ge=0, description="USD per 1M output tokens")
    latency_p50_s: float | None = Field(None, ge=0)
    latency_p95_s: float | None = Field(None, ge=0)
    data_classes: list[str] = Field(default_factory=lambda: ["*"], description="allowed sensitive-data classes")
    description: str | None = None

    model_config = {"extra": "forbid"}

    @field_validator("data_classes", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Fleet(BaseModel):
    models: list[ModelSpec]
    source: str = "config"
    premium_model: str | None = None  # the "always-premium" reference; default: last in fleet order

    model_config = {"extra": "forbid"}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, source: str = "config") -> "Fleet":
        """Build from `{models: {name: {tier, price_in, ...}}}` (the YAML shape) or `{models: [{name, ...}]}`."""
        if cfg is None:
            raise FleetError(f"{source}: no fleet given")
        cfg = dict(cfg)
        models = cfg.get("models")
        if not models:
            raise FleetError(f"{source}: fleet has no 'models'")
        if isinstance(models, Mapping):
            models = [{"name": name, **dict(spec or {})} for name, spec in models.items()]
        try:
            return cls(
                models=[ModelSpec(**dict(m)) for m in models],
                source=str(cfg.get("source", source)),
                premium_model=cfg.get("premium"),
            )
        except ValidationError as e:
            raise FleetError(f"{source}: invalid fleet: {e}") from e
        except TypeError as e:
            raise FleetError(f"{source}: invalid fleet entry: {e}") from e

    def model_post_init(self, __context: Any) -> None:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FleetError(f"{self.source}: duplicate model names in fleet: {dup}")
        self.models.sort(key=lambda m: (m.tier, m.price_in + m.price_out, m.name))
        if self.premium_model is not None and self.premium_model not in names:
            raise FleetError(f"{self.source}: premium '{self.premium_model}' is not one of the models {names}")

    # -- views ---------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def premium(self) -> str:
        return self.premium_model or self.models[-1].name

    @property
    def cheapest(self) -> str:
        return min(self.models, key=lambda m: (m.price_in + m.price_out, m.tier)).name

    @property
    def tiers(self) -> np.ndarray:
        return np.array([m.tier for m in self.models])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise FleetError(f"model '{name}' is not in the fleet {self.names}") from None

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[self.index(name)]

    def prices(self) -> tuple[np.ndarray, np.ndarray]:
        """(price_in, price_out) per model in fleet order, USD per token."""
        return (
            np.array([m.price_in for m in self.models]) / 1e6,
            np.array([m.price_out for m in self.models]) / 1e6,
        )

    def cost(self, models: Sequence[str], input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Vectorised cost in USD: tokens × the model's price."""
        idx = np.array([self.index(m) for m in models]) if len(models) else np.zeros(0, int)
        p_in, p_out = self.prices()
        return np.asarray(input_tokens, float) * p_in[idx] + np.asarray(output_tokens, float) * p_out[idx]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "premium": self.premium}
        out["models"] = {m.name: m.model_dump(exclude={"name"}) for m in self.models}
        return out
