"""Export a trained router to a versioned production bundle, and load it.

    kronaxis-export run_dir=<kronaxis-train output> hydra.run.dir=<out>       # writes <out>/bundle/
    from kronaxis_lab.export import load_bundle; bundle = load_bundle("<out>/bundle")

Modules: `bundle` (format, `load_bundle`, `Bundle` runtime: onnxruntime + tokenizers, numpy only at import),
`exporter` (`export_bundle`: ONNX, int8, parity, calibration, replay metrics, card), `onnx_export`
(graph export / quantisation, which classifiers are exportable), `cost` (decision-time expected cost),
`card` (the README model card).
"""

from kronaxis_lab.export.bundle import Bundle, BundleError, load_bundle

__all__ = ["Bundle", "BundleError", "load_bundle"]
