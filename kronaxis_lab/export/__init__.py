"""Export a trained router to a versioned production bundle, and load it.

    kronaxis-export run_dir=<kronaxis-train output> hydra.run.dir=<out>       # writes <out>/bundle/
    from kronaxis_lab.export.bundle import load_bundle; bundle = load_bundle("<out>/bundle")

Modules: `schema` (router.json), `runtimes` (one `BundleRuntime` per classifier family, rebuilt from plain
files), `formats` (the shared file pieces classifiers write in their `export_runtime`), `onnx_export` (graphs,
int8), `bundle` (`load_bundle`, `Bundle`: predict, decide, route), `replay` (a bundle as replay routers: the
decision code the server runs), `exporter` (`export_bundle`: runtime, int8, parity, calibration, replay
metrics, card), `card` (the README model card).

This package's __init__ imports nothing: classifiers import `export.formats` to export themselves, and the
runtimes import classifiers' formulas, so neither may pull in the other through here.
"""
