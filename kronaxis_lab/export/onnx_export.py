"""Transformer → ONNX graph (+ int8 copy): the graph step of every bundle runtime that runs an encoder.

`export_graph` writes a Hugging Face model's graph: it takes the tokenizer's tensors (input_ids,
attention_mask and, for BERT-style models, token_type_ids; dynamic batch and sequence axes) and returns one
named output — the tier predictor's raw head `logits` (post-processing, σ and the ordinal running max, stays
in numpy: `heads.logits_to_proba`) or a sentence encoder's `last_hidden_state` (pooling and L2 norm in numpy).
Exported with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): it traces the HF model in one
pass and handles dynamic axes for BERT/DistilBERT families.

int8 (`quantize_int8`, onnx.quantize in configs/export.yaml): onnxruntime `quantize_dynamic` (QInt8 weights,
activations quantised on the fly, per call) or `quantize_static` (QDQ, activation scales calibrated once on
tokenised train queries, so a query's output no longer depends on its batch); about 4× smaller and faster on
CPU. The exporter judges the int8 copy against the fp32 model on held-out queries (decision agreement and
routing quality, `exporter.parity_decisions` / `exporter.quality_parity`).

Nothing here imports a classifier (classifiers call in to export themselves); torch, onnx and onnxruntime are
imported when a graph is written.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kronaxis_lab.export.schema import ONNX_INPUTS, ExportError

log = logging.getLogger(__name__)

__all__ = ["CALIBRATE_METHODS", "MIN_OPSET", "QUANTIZE_METHODS", "ExportError", "export_graph", "export_onnx",
           "onnx_input_names", "quantize_int8"]

MIN_OPSET = 17
OUTPUTS = ("logits", "last_hidden_state")


def onnx_input_names(tokenizer) -> list[str]:
    """The ONNX inputs for this tokenizer, in canonical order (token_type_ids only when the model uses it)."""
    names = [n for n in ONNX_INPUTS if n in getattr(tokenizer, "model_input_names", ONNX_INPUTS[:2])]
    if "input_ids" not in names:
        raise ExportError(f"tokenizer {type(tokenizer).__name__} produces no input_ids: not a text encoder")
    return names


def export_graph(model, tokenizer, path: str | Path, output: str = "logits", opset: int = MIN_OPSET,
                 sample_texts: Sequence[str] | None = None, max_length: int = 128) -> dict[str, Any]:
    """Write `model` (a HF PyTorch model) to `path` with one output, `output` (an attribute of the model's
    output: "logits" or "last_hidden_state"); return {"inputs", "output", "opset"}."""
    import torch

    if output not in OUTPUTS:
        raise ExportError(f"graph output must be one of {OUTPUTS}, got {output!r}")
    if int(opset) < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the bundle needs opset ≥ {MIN_OPSET}")
    path = Path(path)
    names = onnx_input_names(tokenizer)
    texts = list(sample_texts or ["a short query", "a longer query, so the traced batch has padding in it"])
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")

    class OneOutput(torch.nn.Module):
        """Positional inputs in a fixed order → one output tensor (what the traced graph returns)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *tensors):
            return getattr(self.m(**dict(zip(names, tensors))), output)

    was_training, device = model.training, next(model.parameters()).device
    model = model.to("cpu").eval()
    wrapper = OneOutput(model).eval()
    out_axes = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {output: out_axes}
    with warnings.catch_warnings():
        # tracer notes about python-side shape checks (constant for a given mask/ids length pairing) and the
        # exporter's own deprecation notice are expected here
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        with torch.no_grad():
            torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), input_names=names,
                              output_names=[output], dynamic_axes=axes, opset_version=int(opset),
                              do_constant_folding=True, dynamo=False)
    # the exporter restores the wrapper's (default: training) mode recursively: put the model back
    model.train(was_training).to(device)
    check_graph(path)
    log.info("exported %s (%s inputs → %s, opset %d, %.1f MB)", path.name, names, output, opset,
             path.stat().st_size / 1e6)
    return {"inputs": names, "output": output, "opset": int(opset)}


def export_onnx(clf, path: str | Path, opset: int = MIN_OPSET, sample_texts: Sequence[str] | None = None,
                max_length: int | None = None) -> dict[str, Any]:
    """A fitted tier predictor's network (`clf.model_`, `clf.tokenizer_`) → `path`, output = the head logits."""
    if not hasattr(clf, "model_"):
        raise ExportError(f"this {type(clf).__name__} is not fitted: nothing to export")
    return export_graph(clf.model_, clf.tokenizer_, path, "logits", opset, sample_texts,
                        int(max_length or clf.max_length))


def check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: the exported graph is not valid ONNX: {e}") from e


#: onnx.quantize.method values
QUANTIZE_METHODS = ("dynamic", "static")
#: onnx.quantize.static.calibrate_method values (onnxruntime.quantization.CalibrationMethod names)
CALIBRATE_METHODS = ("MinMax", "Percentile", "Entropy")


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True, reduce_range: bool = True,
                  exclude_nodes: Sequence[str] = (), method: str = "dynamic",
                  calibration_feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
                  calibrate_method: str = "MinMax", op_types: Sequence[str] = ("MatMul", "Gemm"),
                  percentile: float = 99.999) -> dict[str, Any]:
    """int8 copy of the graph `src` → `dst` with onnxruntime; returns what was done (router.json `onnx.int8`).

    `method="dynamic"` (`quantize_dynamic`): QInt8 weights, activations quantised on the fly per call, so a
    query's int8 output depends on the batch it is run in.
    `method="static"` (`quantize_static`, QDQ format): QInt8 weights and QUInt8 activations whose scales are
    fixed by running the fp32 graph over `calibration_feeds` (tokenised train queries: never the held-out
    splits) and reading each activation's range with `calibrate_method` (MinMax: the observed min/max;
    Percentile: the `percentile` of |x|; Entropy: the KL-optimal clip). Only the `op_types` whose second input
    is a constant weight (MatMulConstBOnly) are quantised: the attention products Q·Kᵀ and A·V, softmax,
    LayerNorm and GELU stay fp32.
    `per_channel`: one scale per output channel (about half the error of one scale per tensor, ~10 % slower).
    `exclude_nodes`: regular expressions; matching graph nodes stay fp32 (e.g. `"layer\\.\\d+/output/dense/MatMul"`,
    the FFN output projections whose post-GELU activations have the widest range, or `"classifier"`, the head).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic  # heavy optional dependency

    if method not in QUANTIZE_METHODS:
        raise ExportError(f"onnx.quantize.method must be one of {QUANTIZE_METHODS}, got {method!r}")
    patterns = [re.compile(p) for p in exclude_nodes]
    excluded = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                if any(p.search(n.name) for p in patterns)] if patterns else []
    if patterns and not excluded:
        raise ExportError(f"onnx.quantize.exclude_nodes {list(exclude_nodes)} match no node of {Path(src).name}")
    done: dict[str, Any] = {"method": method, "weight_type": "QInt8", "per_channel": bool(per_channel),
                            "reduce_range": bool(reduce_range), "excluded_nodes": excluded}
    root = logging.getLogger()
    quiet = _DropInfo()
    root.addFilter(quiet)  # the quantiser logs one root-logger line per tensor it skips, and a pre-processing tip
    try:
        if method == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=bool(per_channel),
                             reduce_range=bool(reduce_range), nodes_to_exclude=excluded)
        else:
            done |= _quantize_static(src, dst, per_channel, reduce_range, excluded, calibration_feeds,
                                     calibrate_method, op_types, percentile)
    finally:
        root.removeFilter(quiet)
    check_graph(Path(dst))
    log.info("quantised %s → %s (%s, %.1f MB, %d nodes kept fp32)", Path(src).name, Path(dst).name, method,
             Path(dst).stat().st_size / 1e6, len(excluded))
    return done


def _quantize_static(src, dst, per_channel: bool, reduce_range: bool, excluded: list[str],
                     feeds: Iterable[Mapping[str, np.ndarray]] | None, calibrate_method: str,
                     op_types: Sequence[str], percentile: float) -> dict[str, Any]:
    """`quantize_int8(method="static")`: QDQ graph calibrated on `feeds`; returns the extra router.json fields."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibrate_method not in CALIBRATE_METHODS:
        raise ExportError(f"onnx.quantize.static.calibrate_method must be one of {CALIBRATE_METHODS}, "
                          f"got {calibrate_method!r}")
    batches = [dict(f) for f in (feeds or [])]
    if not batches:
        raise ExportError("static int8 quantisation needs calibration inputs (tokenised train queries): none given")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    extra = {"MatMulConstBOnly": True, "ActivationSymmetric": False, "WeightSymmetric": True}
    if calibrate_method == "Percentile":
        extra["CalibPercentile"] = float(percentile)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                    per_channel=bool(per_channel), reduce_range=bool(reduce_range), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                    calibrate_method=getattr(CalibrationMethod, calibrate_method), extra_options=extra)
    return {"format": "QDQ", "activation_type": "QUInt8", "calibrate_method": calibrate_method,
            "op_types": list(op_types), "n_calibration": int(sum(len(next(iter(b.values()))) for b in batches)),
            **({"percentile": float(percentile)} if calibrate_method == "Percentile" else {})}


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO and "pre-processing before quantization" not in record.getMessage()
