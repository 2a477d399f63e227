"""The schema of a bundle's router.json (pydantic): one place that says what a bundle holds.

`RouterMeta.check(meta, path)` validates a parsed router.json and raises `BundleError` naming the file and
the field; the file and hash checks (which need the directory) stay in `bundle.validate_meta`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FORMAT_VERSION = 1
KIND = "kronaxis-router-bundle"
ROUTER_FILE = "router.json"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: variant name → key of router.json `files`
VARIANT_FILES = {"fp32": "onnx_fp32", "int8": "onnx_int8"}


class BundleError(ValueError):
    """A bundle directory is missing, incomplete, tampered with or inconsistent."""


def encode_param(x: float | None) -> float | str | None:
    """JSON has no inf/NaN: an infinite operating parameter (λ = ∞: always the most likely model) is "inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        raise ValueError("an operating parameter cannot be NaN")
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def decode_param(x: Any, where: str = "router.json: policy.param") -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise BundleError(f"{where} must be a number (or \"inf\"), got {x!r}") from None
    if math.isnan(v):
        raise BundleError(f"{where} is NaN")
    return v


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PolicyMeta(_Open):
    name: str = "policy"
    config: dict[str, Any]
    param: float | str

    @field_validator("param")
    @classmethod
    def _finite_or_inf(cls, v: Any) -> Any:
        decode_param(v)
        return v


class OnnxMeta(_Open):
    inputs: list[str]

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, v: list[str]) -> list[str]:
        if not v or "input_ids" not in v or any(i not in ONNX_INPUTS for i in v):
            raise ValueError(f"onnx.inputs must list input_ids and only {ONNX_INPUTS}, got {v!r}")
        return v


class FilesMeta(_Open):
    onnx_fp32: str
    tokenizer: str
    onnx_int8: str | None = None
    cost_tokenizer: str | None = None


class RouterMeta(_Open):
    """router.json. Unknown fields are kept (a newer exporter may add some) and ignored."""

    format_version: int
    kind: str
    created: str
    label_order: list[str] = Field(min_length=1)
    head: str
    tier_order: list[str]
    max_length: int = Field(ge=2)
    fleet: dict[str, Any]
    premium: str
    policy: PolicyMeta
    files: FilesMeta
    sha256: dict[str, str] = Field(min_length=1)
    tokenizer: dict[str, Any]
    onnx: OnnxMeta
    cost_model: dict[str, Any]
    default_variant: str

    @model_validator(mode="after")
    def _consistent(self) -> "RouterMeta":
        labels = self.label_order
        if len(set(labels)) != len(labels):
            raise ValueError(f"label_order must be a list of distinct model names, got {labels!r}")
        models = self.fleet.get("models")
        if not models:
            raise ValueError("fleet.models is missing or empty")
        names = [m["name"] for m in models] if isinstance(models, list) else list(models)
        if sorted(map(str, labels)) != sorted(map(str, names)):
            raise ValueError(f"label_order {labels} does not match the fleet models {names} (the classifier's "
                             "outputs must be exactly the fleet's models)")
        if self.premium not in names:
            raise ValueError(f"premium {self.premium!r} is not a fleet model {names}")
        if sorted(self.tier_order) != sorted(labels):
            raise ValueError(f"tier_order {self.tier_order!r} must list each model of label_order once")
        key = VARIANT_FILES.get(self.default_variant)
        if key is None or not getattr(self.files, key):
            raise ValueError(f"default_variant {self.default_variant!r} has no ONNX file in 'files'")
        return self

    @classmethod
    def check(cls, meta: dict[str, Any], where: str) -> "RouterMeta":
        """Validate a parsed router.json (`where`: its path, for messages)."""
        if meta.get("kind") != KIND:
            raise BundleError(f"{where}: field 'kind' is {meta.get('kind')!r}, expected {KIND!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {meta.get('format_version')!r} is not supported by this "
                              f"kronaxis_lab (it reads format_version {FORMAT_VERSION}); re-export the bundle")
        try:
            return cls.model_validate(meta)
        except ValidationError as e:
            missing = [".".join(map(str, err["loc"])) for err in e.errors() if err["type"] == "missing"]
            if missing:
                raise BundleError(f"{where}: required field(s) {missing} are missing") from None
            err = e.errors()[0]
            field = ".".join(map(str, err["loc"]))
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise BundleError(f"{where}: {field + ': ' if field else ''}{msg}") from None
