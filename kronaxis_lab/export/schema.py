"""The schema of a bundle's router.json (pydantic): one place that says what a bundle holds.

`RouterMeta.check(meta, path)` validates a parsed router.json and raises `BundleError` naming the file and
the field; the file and hash checks (which need the directory) stay in `bundle.validate_meta`.

router.json's `classifier` is a tree of *runtime nodes* (see kronaxis_lab/export/runtimes.py):

    {"kind": "kronaxis_lab.export.runtimes.TfidfLinearRuntime",   # the runtime class (import path)
     "label_order": [...],                                        # its output columns
     "files": {"weights": "weights.npz", ...},                    # relative to the node's directory
     "nodes": {"encoder": {...}, ...},                            # child nodes, each in <node dir>/<name>/
     ...}                                                         # kind-specific settings

The root node's directory is the bundle directory. A node whose `files` has `onnx_fp32` is an ONNX graph;
the exporter adds its dynamically quantised copy as `onnx_int8`, which makes "int8" a variant of the bundle.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FORMAT_VERSION = 2  # 2: the classifier is a `classifier` runtime tree (any classifier); 1 was ONNX-only
KIND = "kronaxis-router-bundle"
ROUTER_FILE = "router.json"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: variant name → key of a graph node's `files`; "fp32" is every runtime's reference path (float numpy for
#: runtimes without a graph), "int8" exists where an ONNX graph was quantised
VARIANT_FILES = {"fp32": "onnx_fp32", "int8": "onnx_int8"}
#: runtime classes may only come from this package (a bundle cannot name arbitrary callables)
RUNTIME_PACKAGE = "kronaxis_lab."


class BundleError(ValueError):
    """A bundle directory is missing, incomplete, tampered with or inconsistent."""


class ExportError(ValueError):
    """The classifier cannot be exported, or the exported runtime does not reproduce it."""


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


def walk_nodes(node: Mapping[str, Any], path: str = "classifier", rel: str = "") -> Iterator[tuple[str, str, Any]]:
    """(where, directory relative to the bundle, node) for `node` and every child node, depth first."""
    yield path, rel, node  # the node itself: the exporter adds int8 files in place
    for name, child in (node.get("nodes") or {}).items():
        yield from walk_nodes(child, f"{path}.nodes.{name}", f"{rel}{name}/")


def tree_variants(node: Mapping[str, Any]) -> list[str]:
    """Variants of a runtime tree: fp32 always, int8 when some graph node has an int8 file."""
    int8 = any((n.get("files") or {}).get("onnx_int8") for _, _, n in walk_nodes(node))
    return ["fp32", "int8"] if int8 else ["fp32"]


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


class NodeMeta(_Open):
    """One runtime node (module docstring); `kind` is checked to be a runtime class when the bundle loads."""

    kind: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    nodes: dict[str, "NodeMeta"] = Field(default_factory=dict)
    onnx: dict[str, Any] | None = None

    @field_validator("kind")
    @classmethod
    def _package(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith(RUNTIME_PACKAGE) or "." not in v[len(RUNTIME_PACKAGE):]):
            raise ValueError(f"kind {v!r} must name a runtime class in {RUNTIME_PACKAGE.rstrip('.')} "
                             "(module.Class)")
        return v

    @field_validator("nodes")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [n for n in v if not n or "/" in n or "\\" in n or n in (".", "..")]
        if bad:
            raise ValueError(f"child node names {bad} are not plain directory names")
        return v

    @model_validator(mode="after")
    def _graph(self) -> "NodeMeta":
        if self.files.get("onnx_fp32"):
            inputs = (self.onnx or {}).get("inputs")
            if not inputs or "input_ids" not in inputs or any(i not in ONNX_INPUTS for i in inputs):
                raise ValueError(f"onnx.inputs must list input_ids and only {ONNX_INPUTS}, got {inputs!r}")
        for key, rel in self.files.items():
            if rel and (rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/")):
                raise ValueError(f"files.{key} = {rel!r} must be a path inside the node's directory")
        return self


class RouterMeta(_Open):
    """router.json. Unknown fields are kept (a newer exporter may add some) and ignored."""

    format_version: int
    kind: str
    created: str
    label_order: list[str] = Field(min_length=1)
    fleet: dict[str, Any]
    premium: str
    policy: PolicyMeta
    classifier: NodeMeta
    files: dict[str, str | None] = Field(default_factory=dict)  # bundle-level files (cost_tokenizer)
    sha256: dict[str, str] = Field(min_length=1)
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
        if not self.classifier.kind:
            raise ValueError("classifier.kind is missing (the runtime class of the bundle's classifier)")
        own = getattr(self.classifier, "label_order", None)
        if own is not None and list(own) != list(labels):
            raise ValueError(f"classifier.label_order {own} differs from label_order {labels}")
        variants = tree_variants(self.classifier.model_dump())
        if self.default_variant not in variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not a variant of the classifier "
                             f"({variants})")
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
