"""kronaxis-compare: train every listed classifier, replay them all next to the reference routers, one table.

    kronaxis-compare                                   # configs/compare.yaml: both datasets, all classifiers
    kronaxis-compare experiment=demo                   # the CPU-sized `make demo` setup
    kronaxis-compare datasets=[llmrouter] classifiers=[tier_predictor,tfidf_logreg]
    kronaxis-compare "classifiers=[tier_predictor,'tp1:tier_predictor@classifier.training_args.num_train_epochs=1']"

A classifier spec is `[label:]<configs/classifier name>[@<train override>]...`; the label (default: the config
name) names its run dir and its rows in the report.

Per dataset: `kronaxis-train` each classifier on the train split (val drives early stopping), then one
`kronaxis-replay` of the **val** split to choose each classifier's policy (highest val AIQ) and one of the
**test** split whose numbers are reported, so nothing is tuned on test. The **winner** is the trained
classifier (under its val-chosen policy) with the highest val AIQ, ties to the first listed; the reference
routers never win (the task prior reads labels production lacks, oracle reads outcomes), nor do cascades (rows of
kind `cascade`, replayed where the outcome table records responses; exported with `kronaxis-export cascade=...`), nor
"text + metadata" rows (kind `metadata`, with `metadata={by:<queries column>}`: each classifier blended with the per-tag
success rates of a request tag, for deployments whose clients send one). It is printed first,
and comparison.json holds it per dataset: `winner: {label, classifier, classifier_dir, policy, val_aiq,
test_aiq, export_command}` (`kronaxis-export run_dir=<classifier_dir> policy=<policy>`). Writes
`<out>/<dataset>/train/<label>/`, `<out>/<dataset>/replay{,_val}/` (metrics.json with dataset_info, report.md,
cost_quality.png with every router's curve) and `<out>/comparison.{md,json}`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from kronaxis_lab.classifiers.pretrained import TARGET as PRETRAINED_TARGET
from kronaxis_lab.pipelines.common import CONFIG_DIR, output_dir
from kronaxis_lab.pipelines.replay import run as replay_run
from kronaxis_lab.pipelines.train import run as train_run
from kronaxis_lab.routing.replay import paired_bootstrap
from kronaxis_lab.tracking import tracked

log = logging.getLogger("kronaxis_lab.compare")

#: reference routers shown next to the trained ones (when the replay has them)
REFERENCES = ("oracle", "random", "task-prior+wtp (uses task label)")
#: written beside each trained classifier: the kronaxis-train overrides it was trained with (for `resume`)
SPEC_FILE = "compare_spec.json"
COLUMNS = ["router", "inputs", "aiq", "savings_at_95pct_premium", "cpao_at_95pct_premium", "max_accuracy", "apgr",
           "val_aiq", "val_mean_auc", "train_s"]


def compose(config: str, overrides: list[str], out: Path) -> DictConfig:
    """Compose a pipeline config (train/replay) the way its CLI would, with its run dir set to `out`."""
    outer = GlobalHydra.instance().hydra  # set when called under an enclosing @hydra.main
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = hydra_compose(config_name=config, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = outer
    with open_dict(cfg):  # the only ${hydra:...} interpolation in the pipeline configs
        cfg.paths.output_dir = str(out)
    return cfg


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """`[label:]config[@override]...` → (label, kronaxis-train overrides)."""
    head, *over = str(spec).split("@")
    label, _, name = head.rpartition(":")
    label = label or name
    if not name or not label or "+" in label or "/" in label or "[" in label:
        raise ValueError(f"compare: bad classifier spec {spec!r}: expected [label:]config[@override]..., "
                         "labels without '+', '/' or '['")
    return label, [f"classifier={name}", *over]


def entries_of(metrics: dict[str, dict[str, Any]], classifier_dir: str,
               metadata: bool = False) -> dict[str, dict[str, Any]]:
    """The replay entries of one trained classifier (one per policy), found by the `identity` each carries: its
    text-only entries, or (`metadata`) its "text + metadata" ones."""
    want = Path(classifier_dir).resolve()
    return {k: v for k, v in metrics.items()
            if "classifier_dir" in v.get("identity", {}) and Path(v["identity"]["classifier_dir"]).resolve() == want
            and bool(v["identity"].get("metadata")) == metadata}


def pick_policy_on_val(val_metrics: dict[str, dict[str, Any]], classifier_dir: str, metadata: bool = False) -> str:
    """The entry of the classifier in `classifier_dir` with the highest AIQ on the val split."""
    cands = entries_of(val_metrics, classifier_dir, metadata)
    if not cands:
        raise KeyError(f"no replay entry for the classifier in {classifier_dir} (entries: {sorted(val_metrics)})")
    return max(cands, key=lambda k: cands[k].get("aiq") or 0.0)


#: what each kind of row reads when it decides (the table's `inputs` column): only "text" (and "text + responses",
#: a cascade's own calls) is what every production router sees; a metadata tag only where clients send one
INPUTS = {"classifier": "text", "metadata": "text + metadata", "cascade": "text + responses", "oracle": "test outcomes",
          "task-prior+wtp (uses task label)": "task label", "random": "none"}


def _row(name: str, r: dict[str, Any], **extra: Any) -> dict[str, Any]:
    kind = extra.get("kind")
    inputs = INPUTS.get(kind) or INPUTS.get(name) or ("none" if name.startswith("always:") else "")
    return {"router": name, "inputs": inputs, **{c: r.get(c) for c in COLUMNS[2:7]}, **extra}


def pick_winner(rows: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trained classifier row with the highest val AIQ (ties: the first listed), as the `winner` entry."""
    def val_aiq(r: dict[str, Any]) -> float:
        v = r.get("val_aiq")
        return float("-inf") if v is None or v != v else float(v)

    trained = [r for r in rows if r.get("kind") == "classifier"]
    if not trained:
        raise ValueError("compare: no trained classifier to name a winner from")
    best = max(trained, key=val_aiq)  # max keeps the first of equal keys
    identity = metrics[best["entry"]]["identity"]
    return {"label": best["label"], "classifier": identity["classifier"], "classifier_dir": identity["classifier_dir"],
            "policy": identity["policy"], "entry": best["entry"], "val_aiq": best.get("val_aiq"),
            "test_aiq": best.get("aiq"),
            "export_command": f"kronaxis-export run_dir={identity['classifier_dir']} policy={identity['policy']}"}


def winner_line(dataset: str, w: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "—" if v is None or v != v else f"{v:.4f}"

    return (f"winner on {dataset}: {w['label']} ({w['policy']}), val AIQ {f(w['val_aiq'])}, test AIQ "
            f"{f(w['test_aiq'])}; export: {w['export_command']}")


#: the ensemble combiners a blend row may use (configs/classifier/ensemble.yaml): no combiner refits a member
BLEND_COMBINERS = ("blend", "mean")


def parse_blends(blends: Any, classifiers: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """`blends: {label: [classifier label, ...]}` (weights chosen on val, combiner=blend), or `{label: {members: [...],
    combiner: mean}}` (the plain average of the members' P̂, e.g. seeds of one classifier), checked against the
    classifier labels → {label: {members, combiner}}."""
    out: dict[str, dict[str, Any]] = {}
    for label, spec in (blends or {}).items():
        spec = dict(spec) if isinstance(spec, dict) else {"members": spec}
        combiner = str(spec.pop("combiner", "blend"))
        members = [str(m) for m in (spec.pop("members", None) or [])]
        if spec or combiner not in BLEND_COMBINERS:
            raise ValueError(f"compare: blends.{label} takes `members` and `combiner` (one of {BLEND_COMBINERS}); "
                             f"got combiner {combiner!r} and extra keys {sorted(spec)}")
        if label in classifiers or "+" in label or "/" in label or "[" in label:
            raise ValueError(f"compare: blend label {label!r} clashes with a classifier label or has '+', '/', '['")
        unknown = [m for m in members if m not in classifiers]
        if len(members) < 2 or unknown or len(set(members)) != len(members):
            raise ValueError(f"compare: blends.{label} must list ≥ 2 distinct classifier labels of `classifiers` "
                             f"({list(classifiers)}), got {members}")
        out[str(label)] = {"members": members, "combiner": combiner}
    return out


def train_blend(dataset: str, label: str, blend: dict[str, Any], dirs: dict[str, str],
                trained: dict[str, dict[str, Any]], out: Path, overrides: list[str], resume: bool) -> None:
    """An ensemble of already-trained classifier rows: each member is loaded (PretrainedClassifier checks it was
    fitted on this train split); combiner=blend fits only the member weights, on val; combiner=mean fits nothing."""
    run_dir = out / "train" / label
    members, combiner = blend["members"], blend["combiner"]
    # `combiner` in the spec: a blend fitted before its val search priced each query (no such key) is refitted
    spec = {"blend_of": {m: dirs[m] for m in members}, "overrides": [f"dataset={dataset}", *overrides],
            "combiner": combiner}
    spec_file, metrics_file = run_dir / SPEC_FILE, run_dir / "train_metrics.json"
    members_s = sum(float(trained[m].get("train_s") or 0.0) for m in members)
    if resume and all(trained[m].get("reused") for m in members) and spec_file.is_file() \
            and json.loads(spec_file.read_text()) == spec and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        own = float(metrics.get("train_seconds") or 0.0)
    else:
        cfg = compose("train", [f"dataset={dataset}", "classifier=ensemble", f"classifier.combiner={combiner}",
                                *overrides], run_dir)
        with open_dict(cfg):
            cfg.classifier.members = {m: {"_target_": PRETRAINED_TARGET, "path": dirs[m]} for m in members}
        t0 = time.perf_counter()
        metrics = train_run(cfg)["metrics"]
        own = time.perf_counter() - t0
        spec_file.write_text(json.dumps(spec))
    # the row's train_s is what the blend costs from scratch: its members' training plus its own weight search
    trained[label] = {"train_s": members_s + own, "blend_s": own, "blend_of": members, "combiner": combiner,
                      "val_mean_auc": metrics.get("val", {}).get("mean_auc")}
    dirs[label] = str(run_dir / "classifier")
    log.info("[%s] blended %s from %s in %.0f s", dataset, label, members, own)


def run_dataset(dataset: str, classifiers: dict[str, list[str]], out: Path, overrides: list[str],
                boot: dict[str, Any] | None = None, resume: bool = False,
                metadata: dict[str, Any] | None = None,
                blends: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    dirs: dict[str, str] = {}
    trained: dict[str, dict[str, Any]] = {}
    for label, clf_over in classifiers.items():
        run_dir = out / "train" / label
        train_over = [f"dataset={dataset}", *clf_over, *overrides]
        spec_file = run_dir / SPEC_FILE
        metrics_file = run_dir / "train_metrics.json"
        if resume and spec_file.is_file() and json.loads(spec_file.read_text()) == {"overrides": train_over} \
                and (run_dir / "classifier" / "classifier.json").is_file() and metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())  # same spec, already trained
            trained[label] = {"train_s": metrics.get("train_seconds"),
                              "val_mean_auc": metrics.get("val", {}).get("mean_auc"), "reused": True}
            dirs[label] = str(run_dir / "classifier")
            log.info("[%s] %s: reusing %s (trained with the same overrides)", dataset, label, dirs[label])
            continue
        t0 = time.perf_counter()
        res = train_run(compose("train", train_over, run_dir))
        spec_file.write_text(json.dumps({"overrides": train_over}))
        trained[label] = {"train_s": time.perf_counter() - t0,
                          "val_mean_auc": res["metrics"].get("val", {}).get("mean_auc")}
        dirs[label] = res["classifier_dir"]
        log.info("[%s] trained %s in %.0f s (val mean AUC %s)", dataset, label, trained[label]["train_s"],
                 trained[label]["val_mean_auc"])
    for label, blend in (blends or {}).items():
        train_blend(dataset, label, blend, dirs, trained, out, overrides, resume)
    dir_list = "[" + ",".join(dirs.values()) + "]"
    meta_over = []
    if metadata:
        metadata = {"by": "task", "smoothing": 10.0, **metadata}
        meta_over = [f"metadata={{by:{metadata['by']},smoothing:{float(metadata['smoothing'])}}}"]
    val = replay_run(compose("replay", [f"dataset={dataset}", f"classifier_dir={dir_list}", "split=val", *meta_over,
                                        *overrides], out / "replay_val"))
    test = replay_run(compose("replay", [f"dataset={dataset}", f"classifier_dir={dir_list}", *meta_over, *overrides],
                              out / "replay"))
    m, mv = test["metrics"], val["metrics"]
    rows = []
    for label in trained:  # each classifier's entries carry their identity (classifier_dir, policy)
        best = pick_policy_on_val(mv, dirs[label])
        rows.append(_row(f"{label} ({m[best]['identity']['policy']})", m[best], entry=best, label=label,
                         kind="classifier", val_aiq=mv[best].get("aiq"), **trained[label]))
        if metadata:  # the same classifier with the request tag: its own row, never the winner
            mbest = pick_policy_on_val(mv, dirs[label], metadata=True)
            rows.append(_row(f"{label} + metadata:{metadata['by']} ({m[mbest]['identity']['policy']})", m[mbest],
                             entry=mbest, label=f"{label}+meta", kind="metadata", val_aiq=mv[mbest].get("aiq")))
    res = test["result"]
    for ref in (*REFERENCES, f"always:{res.premium}", f"always:{res.cheapest}"):
        if ref in m:
            rows.append(_row(ref, m[ref], entry=ref, label=ref, kind="reference", val_aiq=mv.get(ref, {}).get("aiq")))
    for name, entry in m.items():  # multi-call routers (kronaxis_lab/routing/cascades.py), where the data has responses
        if entry.get("family") == "cascade":
            rows.append(_row(name, entry, entry=name, label=name, kind="cascade", val_aiq=mv.get(name, {}).get("aiq")))
    winner = pick_winner(rows, m)
    log.info("[%s] %s", dataset, winner_line(dataset, winner))
    boot = boot or {}
    focus = None
    if int(boot.get("n") or 0) > 0:  # is the focus classifier's lead real? paired bootstrap over test queries
        focus = boot.get("focus") or winner["label"]
        frow = next((r for r in rows if r["kind"] == "classifier" and r["label"] == focus), None)
        if frow is None:
            raise ValueError(f"compare: bootstrap.focus '{focus}' is not one of the classifiers {list(trained)}")
        others = [r["entry"] for r in rows if r is not frow and not r["entry"].startswith("always:")
                  and r["entry"] != "oracle"]
        diffs = paired_bootstrap(res, frow["entry"], others, n_boot=int(boot["n"]), seed=int(boot.get("seed", 0)))
        for r in rows:
            if r["entry"] in diffs:
                r["focus_minus"] = diffs[r["entry"]]
    return {"dataset": dataset, "n_test": res.n_queries, "winner": winner, "rows": rows,
            "report": test["paths"]["report"], "focus": focus, "n_boot": int(boot.get("n") or 0),
            "plot": test["paths"]["cost_quality"]}


def _ci(d: dict[str, float] | None, pct: bool = False) -> str:
    if not d:
        return ""
    if not (d["diff"] == d["diff"] and d["lo"] == d["lo"]):  # NaN: one of the two never reaches 95 %
        return "—"
    f = (lambda v: f"{100 * v:+.1f}") if pct else (lambda v: f"{v:+.4f}")
    return f"{f(d['diff'])} [{f(d['lo'])}, {f(d['hi'])}]"


def format_table(rows: list[dict[str, Any]], focus: str | None = None) -> str:
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if focus:
        fm = [r.get("focus_minus") or {} for r in rows]
        df.insert(3, f"{focus} − this: AIQ [95% CI]", [_ci(d.get("aiq")) for d in fm])
        df.insert(5, f"{focus} − this: savings pts [95% CI]",
                  [_ci(d.get("savings_at_95pct_premium"), True) for d in fm])
    df["savings_at_95pct_premium"] = df["savings_at_95pct_premium"].map(
        lambda v: "—" if v is None or pd.isna(v) else f"{v:.1%}")
    for c in ("train_s",):
        df[c] = df[c].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.0f}")
    return df.to_markdown(index=False, floatfmt=".4g")


def render_markdown(results: list[dict[str, Any]], minutes: float) -> str:
    """comparison.md from the per-dataset results (also re-renders a saved comparison.json)."""
    n_boot = max((int(r.get("n_boot") or 0) for r in results), default=0)
    head = ("# Router comparison on held-out test splits\n\n"
            "Each trained classifier is shown under the policy with the best AIQ on the **val** split (`val_aiq`);\n"
            "every other number is on **test**. AIQ: RouterBench's area under the cost-quality hull; savings and CPAO\n"
            "at 95 % of the premium model's accuracy (— = never reaches it). `<focus> − this`: the difference between\n"
            "the focus classifier and each router, with a paired-bootstrap 95 % interval over the test queries (the\n"
            f"same resample for both; {n_boot} resamples). The winner: the trained classifier with the highest\n"
            f"val AIQ (reference routers never win). Total {minutes:.1f} min.\n\n")
    sections = [f"## {r['dataset']} ({r['n_test']:,} test queries)\n\n**{winner_line(r['dataset'], r['winner'])}**"
                f"\n\n{format_table(r['rows'], r.get('focus'))}\n\n"
                f"Report with every router's curve: `{r['report']}`\n" for r in results]
    return head + "\n".join(sections)


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    classifiers = dict(parse_spec(s) for s in cfg.classifiers)
    if len(classifiers) != len(cfg.classifiers):
        raise ValueError(f"compare: duplicate classifier labels in {list(cfg.classifiers)}")
    if not classifiers or not cfg.datasets:
        raise ValueError("compare: `datasets` and `classifiers` must both be non-empty")
    overrides = [str(o) for o in (cfg.get("overrides") or [])]
    t0 = time.perf_counter()
    boot = OmegaConf.to_container(cfg.bootstrap, resolve=True) if cfg.get("bootstrap") else None
    meta = OmegaConf.to_container(cfg.metadata, resolve=True) if cfg.get("metadata") else None
    blends = parse_blends(OmegaConf.to_container(cfg.blends, resolve=True) if cfg.get("blends") else None, classifiers)
    results = [run_dataset(str(ds), classifiers, out / str(ds), overrides, boot, resume=bool(cfg.get("resume")),
                           metadata=meta, blends=blends)
               for ds in cfg.datasets]
    minutes = (time.perf_counter() - t0) / 60
    md = render_markdown(results, minutes)
    (out / "comparison.md").write_text(md)
    (out / "comparison.json").write_text(json.dumps({"minutes": minutes, "datasets": results}, indent=2, default=str))
    return {"markdown": md, "results": results, "minutes": minutes, "paths": {"markdown": str(out / "comparison.md")}}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    res = tracked("compare", run, cfg)
    print("\n".join(winner_line(r["dataset"], r["winner"]) for r in res["results"]) + "\n")
    print(res["markdown"])
    print(f"written: {res['paths']['markdown']}")


if __name__ == "__main__":
    main()
