"""Classifier → ONNX graph (+ int8 copy). Only transformer tier predictors have a faithful ONNX path.

The graph takes the tokenizer's tensors (input_ids, attention_mask and, for BERT-style models,
token_type_ids; dynamic batch and sequence axes) and returns the raw head `logits` in the classifier's
`model_names_` order; the post-processing (σ, ordinal running max) stays in numpy (`logits_to_proba`), so
the same graph serves both heads. Exported with the TorchScript exporter (`torch.onnx.export(...,
dynamo=False)`): it traces the HF model in one pass and handles dynamic axes for BERT/DistilBERT families.

int8: `onnxruntime.quantization.quantize_dynamic` (QInt8 weights, activations quantised on the fly): about
4× smaller and faster on CPU; its agreement with the fp32 model is checked by the exporter (parity).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch

from kronaxis_lab.classifiers.tier_predictor import TierPredictor
from kronaxis_lab.export.schema import ONNX_INPUTS

log = logging.getLogger(__name__)

MIN_OPSET = 17


class ExportError(ValueError):
    """The classifier cannot be exported, or the exported graph does not reproduce it."""


def check_exportable(klass: type, where: str = "the classifier") -> None:
    """Raise `ExportError` unless `klass` is a transformer tier predictor (or a subclass, e.g. the student)."""
    if isinstance(klass, type) and issubclass(klass, TierPredictor):
        return
    name = getattr(klass, "__name__", str(klass))
    raise ExportError(
        f"{where} is a {name}: it cannot be exported to an ONNX bundle. Exportable classifiers: "
        f"TierPredictor and StudentTierPredictor (classifier=tier_predictor / tier_predictor_ordinal / student), "
        "whose transformer graph ONNX represents exactly. The kNN, TF-IDF, rule, MLP and MF routers have no "
        "faithful ONNX path here (skl2onnx is not installed, and embedding-index lookups and the rule engine "
        "are not graph operators); serve them from Python or retrain with classifier=tier_predictor.")


def onnx_input_names(tokenizer) -> list[str]:
    """The ONNX inputs for this tokenizer, in canonical order (token_type_ids only when the model uses it)."""
    names = [n for n in ONNX_INPUTS if n in getattr(tokenizer, "model_input_names", ONNX_INPUTS[:2])]
    if "input_ids" not in names:
        raise ExportError(f"tokenizer {type(tokenizer).__name__} produces no input_ids: not a text encoder")
    return names


def export_onnx(clf, path: str | Path, opset: int = MIN_OPSET, sample_texts: Sequence[str] | None = None,
                max_length: int | None = None) -> dict[str, Any]:
    """Write `clf`'s network (a fitted TierPredictor) to `path`; return {"inputs", "output", "opset"}."""
    check_exportable(type(clf))
    if not hasattr(clf, "model_"):
        raise ExportError(f"this {type(clf).__name__} is not fitted: nothing to export")
    if int(opset) < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the bundle needs opset ≥ {MIN_OPSET}")
    path = Path(path)
    tokenizer, model = clf.tokenizer_, clf.model_
    names = onnx_input_names(tokenizer)
    texts = list(sample_texts or ["a short query", "a longer query, so the traced batch has padding in it"])
    enc = tokenizer(texts, truncation=True, max_length=max_length or clf.max_length, padding=True,
                    return_tensors="pt")
    was_training, device = model.training, next(model.parameters()).device
    model = model.to("cpu").eval()
    wrapper = _LogitsOnly(model, names).eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        # tracer notes about python-side shape checks (constant for a given mask/ids length pairing) and the
        # exporter's own deprecation notice are expected here
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        with torch.no_grad():
            torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), input_names=names,
                              output_names=["logits"], dynamic_axes=axes, opset_version=int(opset),
                              do_constant_folding=True, dynamo=False)
    # the exporter restores the wrapper's (default: training) mode recursively: put the classifier back
    model.train(was_training).to(device)
    _check_graph(path)
    log.info("exported %s (%s inputs, opset %d, %.1f MB)", path.name, names, opset, path.stat().st_size / 1e6)
    return {"inputs": names, "output": "logits", "opset": int(opset)}


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order → the logits tensor only (what the traced graph returns)."""

    def __init__(self, m, input_names):
        super().__init__()
        self.m, self.input_names = m, list(input_names)

    def forward(self, *tensors):
        return self.m(**dict(zip(self.input_names, tensors))).logits


def _check_graph(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: the exported graph is not valid ONNX: {e}") from e


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True, reduce_range: bool = False,
                  exclude_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic int8 quantisation of the weights (QInt8) with onnxruntime; returns what was done.

    `per_channel`: one scale per output channel (about half the error of one scale per tensor, ~10 % slower).
    `exclude_nodes`: regular expressions; matching graph nodes stay fp32 (e.g. `"layer\\.\\d+/output/dense/MatMul"`,
    the FFN output projections whose post-GELU activations have the widest range).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # heavy optional dependency

    patterns = [re.compile(p) for p in exclude_nodes]
    excluded = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                if any(p.search(n.name) for p in patterns)] if patterns else []
    if patterns and not excluded:
        raise ExportError(f"onnx.quantize.exclude_nodes {list(exclude_nodes)} match no node of {Path(src).name}")
    root = logging.getLogger()
    quiet = _DropInfo()
    root.addFilter(quiet)  # the quantiser logs one root-logger line per tensor it skips, and a pre-processing tip
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=bool(per_channel),
                         reduce_range=bool(reduce_range), nodes_to_exclude=excluded)
    finally:
        root.removeFilter(quiet)
    log.info("quantised %s → %s (%.1f MB, %d nodes kept fp32)", Path(src).name, Path(dst).name,
             Path(dst).stat().st_size / 1e6, len(excluded))
    return {"weight_type": "QInt8", "per_channel": bool(per_channel), "reduce_range": bool(reduce_range),
            "excluded_nodes": excluded}


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO and "pre-processing before quantization" not in record.getMessage()
