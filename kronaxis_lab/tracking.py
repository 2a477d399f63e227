"""Experiment tracking: one `Tracker` interface over MLflow, TensorBoard or nothing (configs/logger/).

    kronaxis-train dataset=llmrouter logger=mlflow            # a local file store: <run dir>/mlruns
    MLFLOW_TRACKING_URI=http://mlflow:5000 kronaxis-compare logger=mlflow     # a tracking server
    kronaxis-train classifier=tier_predictor logger=tensorboard   # + the HF Trainer's curves (report_to)
    mlflow ui --backend-store-uri outputs/train/<run>/mlruns;  tensorboard --logdir outputs/train/<run>/tensorboard

Every console script runs its pure `run(cfg)` through `tracked(task, run, cfg)`: with a logger it opens a run,
logs the resolved config (flattened params + config.yaml), runs the pipeline, then logs what that pipeline's
result holds (`RESULT_LOGGERS[task]`): metrics (AIQ, savings, CPAO, val AUC / ECE, ...), plots and reports, and
the classifier or bundle as an artifact. kronaxis-compare logs one parent run and one child run per classifier.
In a multirun (sweeps, launchers) the local store sits in the sweep dir, so every job of a sweep shares it.
Only rank 0 of a distributed job (torchrun / accelerate launch) logs. `run(cfg)` itself never tracks: tests and
library calls stay offline unless they call `tracked` with a logger.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

#: MLflow keys may hold only these characters; others become "_" (router names carry "+", "[", "]")
_KEY_BAD = re.compile(r"[^\w\-. :/]")
#: MLflow's limits: characters per param value, params per batch call
MAX_PARAM_CHARS, PARAMS_PER_CALL = 6000, 100


def is_main_process() -> bool:
    """False on ranks > 0 of a torchrun / accelerate launch job (env RANK): those neither save nor log."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def world_size() -> int:
    """Processes in a torchrun / accelerate launch job (env WORLD_SIZE); 1 outside one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def flat_metrics(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Every finite number (bools as 0/1) at any depth of `d`, keyed by its path; strings, lists and None dropped."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key, sep))
        elif isinstance(v, (bool, int, float)) and not isinstance(v, str):
            x = float(v)
            if math.isfinite(x):
                out[key] = x
        elif type(v).__module__ == "numpy" and getattr(v, "ndim", 1) == 0:  # numpy scalars
            x = float(v)
            if math.isfinite(x):
                out[key] = x
    return out


def flat_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every leaf of a (resolved) config as `a.b.c → str(value)`; lists stay one value."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flat_params(v, key))
        else:
            out[key] = str(v)[:MAX_PARAM_CHARS]
    return out


def plain_config(cfg: Any) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved (a missing `???` stays as written)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return dict(cfg)


class Tracker:
    """logger=none: every call is a no-op. Subclasses log to a backend; `start` opens the run they log into."""

    enabled = False
    log_models = False

    @staticmethod
    def from_cfg(node: Any) -> "Tracker":
        """The tracker a `logger` config node describes (None / {} = the no-op one)."""
        if node is None or (isinstance(node, (Mapping, DictConfig)) and not node.get("_target_")):
            return Tracker()
        tracker = instantiate(node)
        if not isinstance(tracker, Tracker):
            raise TypeError(f"logger config <{node.get('_target_')}> built a {type(tracker).__name__}, not a Tracker")
        return tracker

    def prepare(self, cfg: DictConfig) -> None:
        """Adjust the pipeline config before it runs (e.g. the HF Trainer's report_to)."""

    @contextmanager
    def start(self, store_root: Path, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator["Tracker"]:
        yield self

    def log_config(self, cfg: Any) -> None:
        """The resolved config: flattened params and the whole of it as config.yaml."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """A flat {name: number} dict (see `flat_metrics`)."""

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """A file, or a directory (logged under `name`, default its own name). Missing paths are skipped."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    @contextmanager
    def child_run(self, name: str) -> Iterator["Tracker"]:
        """A run nested under this one (kronaxis-compare: one per classifier)."""
        yield self


class MLflowTracker(Tracker):
    """Logs to MLflow through an explicit `MlflowClient` (no global active run, so nested runs are plain tags).

    Args:
        tracking_uri: a server (http://...), a database (sqlite:///...), or None: a local file store
            `<store root>/mlruns` (the run dir; a multirun's sweep dir).
        experiment_name: created on first use (by whichever parallel job gets there first).
        run_name: None = the run dir's name (a multirun job's number) + its overrides as a tag.
        tags: extra run tags.
        log_models: also log the classifier / bundle directory (MiniLM: ~90 MB per copy).
        artifact_location: for a new experiment on a database store (None = the store's default).
    """

    enabled = True

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "kronaxis_lab",
                 run_name: str | None = None, tags: Mapping[str, Any] | None = None, log_models: bool = True,
                 artifact_location: str | None = None):
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_models, self.artifact_location = bool(log_models), artifact_location
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    @contextmanager
    def start(self, store_root: Path, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator["Tracker"]:
        mlflow = _optional("mlflow", "logger=mlflow")

        uri = self.tracking_uri or (Path(store_root).resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):  # the local file store the issue asks for; MLflow 3 wants this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment()
        run = self.client.create_run(self.experiment_id, run_name=self.run_name or run_name,
                                     tags={**self.tags, **(tags or {})})
        self.run_id = run.info.run_id
        log.info("MLflow run %s in experiment '%s' at %s", self.run_id, self.experiment_name, uri)
        with self._lifetime(self.run_id):
            yield self

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        except MlflowException:  # another job of the sweep created it meanwhile
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    @contextmanager
    def _lifetime(self, run_id: str) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    def log_config(self, cfg: Any) -> None:
        plain = plain_config(cfg)
        self.log_params(flat_params(plain))
        self.client.log_text(self.run_id, OmegaConf.to_yaml(OmegaConf.create(plain)), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_CALL])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's metrics-per-batch limit
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        p = Path(path)
        if not p.exists():
            log.debug("artifact %s does not exist: skipped", p)
        elif p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path=name or p.name)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path=name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, _key(k), str(v))

    @contextmanager
    def child_run(self, name: str) -> Iterator["Tracker"]:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        child = MLflowTracker(self.tracking_uri, self.experiment_name, name, self.tags, self.log_models,
                              self.artifact_location)
        child.client, child.experiment_id = self.client, self.experiment_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**self.tags, MLFLOW_PARENT_RUN_ID: self.run_id})
        child.run_id = run.info.run_id
        with child._lifetime(child.run_id):
            yield child


class TensorBoardTracker(Tracker):
    """Scalars and the config as text in `log_dir` (TensorBoard has no artifacts: their paths are logged as text).

    The HF Trainer of a transformer classifier reports its own curves to `<log_dir>/trainer` (`report_to`);
    a child run is the sub-directory `<log_dir>/<name>` (TensorBoard shows it as a run).

    Args:
        log_dir: None = `<run dir>/tensorboard`.
        hf_report_to: let the HF Trainer (tier predictor, student) report to TensorBoard too.
        log_models: record the classifier / bundle path (as text).
    """

    enabled = True

    def __init__(self, log_dir: str | None = None, hf_report_to: bool = True, log_models: bool = True):
        self.log_dir, self.hf_report_to, self.log_models = log_dir, bool(hf_report_to), bool(log_models)
        self.writer: Any = None
        self._artifacts: list[str] = []

    def prepare(self, cfg: DictConfig) -> None:
        clf = cfg.get("classifier")
        if self.hf_report_to and isinstance(clf, DictConfig) and "training_args" in clf:
            with open_dict(cfg):
                clf.training_args.report_to = ["tensorboard"]

    @contextmanager
    def start(self, store_root: Path, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator["Tracker"]:
        _optional("tensorboard", "logger=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        root = Path(self.log_dir) if self.log_dir else Path(store_root) / "tensorboard"
        if is_multirun():  # one sub-directory (a TensorBoard run) per job of the sweep
            root = root / _key(run_name).replace("/", "_").replace(" ", "")
        self.log_dir = str(root)
        env_key, before = "TENSORBOARD_LOGGING_DIR", os.environ.get("TENSORBOARD_LOGGING_DIR")
        os.environ[env_key] = str(root / "trainer")  # where transformers' TensorBoardCallback writes
        self.writer = SummaryWriter(log_dir=str(root))
        if tags:
            self.set_tags(tags)
        try:
            yield self
        finally:
            self.close()
            if before is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = before

    def close(self) -> None:
        if self._artifacts:
            self.writer.add_text("artifacts", "\n".join(f"- `{a}`" for a in self._artifacts))
        self.writer.close()

    def log_config(self, cfg: Any) -> None:
        text = OmegaConf.to_yaml(OmegaConf.create(plain_config(cfg)))
        self.writer.add_text("config", "```yaml\n" + text + "\n```")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("params", "\n".join(f"- {k}: {v}" for k, v in params.items()))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), int(step or 0))

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        if Path(path).exists():
            self._artifacts.append(str(Path(path).resolve()))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in tags.items()))

    @contextmanager
    def child_run(self, name: str) -> Iterator["Tracker"]:
        from torch.utils.tensorboard import SummaryWriter

        child = TensorBoardTracker(str(Path(self.log_dir) / _key(name).replace("/", "_")), False, self.log_models)
        child.writer = SummaryWriter(log_dir=child.log_dir)
        try:
            yield child
        finally:
            child.close()


def _key(name: Any) -> str:
    return _KEY_BAD.sub("_", str(name))


def _optional(module: str, what: str) -> Any:
    """Import an optional tracking backend, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs `{module}`: pip install -e \".[track]\" ({e})") from e


# -- what each pipeline's result holds ------------------------------------------------------------------------
def _log_classifier(tr: Tracker, classifier_dir: Any) -> None:
    if classifier_dir and tr.log_models:
        tr.log_artifact(classifier_dir, "classifier")


def log_train(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """train_metrics.json (val AUC / Brier / ECE per model, timings), the Trainer's log history, the classifier."""
    tr.log_metrics(flat_metrics(res.get("metrics") or {}))
    for entry in getattr(res.get("classifier"), "train_log_", None) or []:  # HF Trainer: loss per logging step
        step = entry.get("step")
        tr.log_metrics({f"trainer/{k}": v for k, v in flat_metrics(entry).items() if k not in ("step", "epoch")}
                       | ({"trainer/epoch": entry["epoch"]} if "epoch" in entry else {}), step=step)
    out = Path(cfg.paths.output_dir)
    tr.log_artifact(out / "train_metrics.json")
    _log_classifier(tr, res.get("classifier_dir"))


def _router_metrics(metrics: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """Each router's scalar metrics (aiq, savings_at_95pct_premium, cpao, apgr, ...) as `<router>/<metric>`."""
    return {f"{prefix}{name}/{k}": v for name, m in metrics.items()
            for k, v in flat_metrics({k: v for k, v in m.items() if not isinstance(v, Mapping)}).items()}


def log_replay(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """Every router's metrics, and metrics.json, report.md and the plots."""
    tr.log_metrics(_router_metrics(res.get("metrics") or {}))
    for path in (res.get("paths") or {}).values():
        tr.log_artifact(path, "replay")


def log_compare(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """Parent: each dataset's winner and the comparison; a child run per classifier with its rows and classifier."""
    out = Path(cfg.paths.output_dir)
    by_label: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for r in res.get("results") or []:
        ds, w = r["dataset"], r.get("winner") or {}
        tr.log_metrics(flat_metrics({"val_aiq": w.get("val_aiq"), "test_aiq": w.get("test_aiq")}, f"{ds}/winner"))
        if w:
            tr.set_tags({f"{ds}/winner": f"{w.get('label')} ({w.get('policy')})"})
        refs = {row["label"]: row for row in r.get("rows", []) if row.get("kind") == "reference"}
        tr.log_metrics(_router_metrics(refs, f"{ds}/"))
        for key in ("report", "plot"):
            tr.log_artifact(r.get(key, ""), ds)
        for row in r.get("rows", []):
            if row.get("kind") == "classifier":
                by_label.setdefault(row["label"], []).append((ds, row))
    tr.log_artifact(out / "comparison.md")
    tr.log_artifact(out / "comparison.json")
    for label, rows in by_label.items():
        with tr.child_run(label) as child:
            for ds, row in rows:
                child.log_metrics(flat_metrics({k: v for k, v in row.items() if k != "focus_minus"}, ds))
                child.set_tags({f"{ds}/router": row.get("router", label)})
                if tr.log_models:  # compare's layout: <out>/<dataset>/train/<label>/classifier
                    child.log_artifact(out / ds / "train" / label / "classifier", f"{ds}/classifier")


def log_export(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """Parity (fp32 / int8), the bundle's replayed metrics, the bundle itself."""
    meta, metrics = res.get("meta") or {}, res.get("metrics") or {}
    tr.log_metrics(flat_metrics(meta.get("parity") or {}, "parity"))
    tr.log_metrics(flat_metrics({k: v for k, v in metrics.items() if k not in ("train", "parity")}, "bundle"))
    tr.set_tags({"bundle_id": meta.get("bundle_id"), "default_variant": meta.get("default_variant"),
                 "policy": (meta.get("policy") or {}).get("name")})
    if tr.log_models:
        tr.log_artifact(res.get("bundle_dir", ""), "bundle")


def log_label(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """Per model accuracy / cost / errors / latency, the run's call and cache counts, summary.md + summary.json."""
    summary = res.get("summary")
    if summary is not None:
        tr.log_metrics(_router_metrics({row["model"]: row for row in summary.to_dict("records")}))
    stats = res.get("stats") or {}
    tr.log_metrics(flat_metrics({k: v for k, v in stats.items() if k in ("cache_hits", "cache_misses", "calls",
                                                                          "generation_wall_s")}, "label"))
    paths = res.get("paths") or {}
    tr.log_artifact(paths.get("summary", ""))
    if paths.get("dir"):
        tr.log_artifact(Path(paths["dir"]) / "summary.json")


def log_tune(tr: Tracker, cfg: DictConfig, res: Mapping[str, Any]) -> None:
    """The objective (val AIQ of the val-chosen policy), that entry's val metrics, the training metrics."""
    tr.log_metrics(flat_metrics({"objective": res.get("objective"), "val": res.get("val") or {},
                                 "train": res.get("train_metrics") or {}}))
    tr.set_tags({"policy": res.get("policy")})
    _log_classifier(tr, res.get("classifier_dir"))


#: pipeline name → what its `run(cfg)` result holds, as metrics and artifacts
RESULT_LOGGERS: dict[str, Callable[[Tracker, DictConfig, Mapping[str, Any]], None]] = {
    "train": log_train, "replay": log_replay, "compare": log_compare, "export": log_export, "label": log_label,
    "tune": log_tune,
}


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def store_root(cfg: DictConfig) -> Path:
    """Where a local store goes: a multirun's sweep dir (one store for all its jobs), else the run dir."""
    return Path(HydraConfig.get().sweep.dir) if is_multirun() else Path(cfg.paths.output_dir)


def _run_identity(cfg: DictConfig, task: str) -> tuple[str, dict[str, str]]:
    name, tags = Path(cfg.paths.output_dir).name, {"kronaxis.pipeline": task}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if overrides:
            tags["hydra.overrides"] = " ".join(overrides)[:MAX_PARAM_CHARS]
        if is_multirun():
            name = f"{hc.job.name} #{hc.job.num}"
    return name, tags


def tracked(task: str, run_fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """`run_fn(cfg)` inside a run of the tracker `cfg.logger` selects (none: just `run_fn(cfg)`), then its result
    logged by `RESULT_LOGGERS[task]`. A run that raises is marked FAILED and the error propagates."""
    tracker = Tracker.from_cfg(cfg.get("logger")) if is_main_process() else Tracker()
    if not tracker.enabled:
        return run_fn(cfg)
    tracker.prepare(cfg)
    name, tags = _run_identity(cfg, task)
    with tracker.start(store_root(cfg), name, tags) as tr:
        tr.log_config(cfg)
        res = run_fn(cfg)
        RESULT_LOGGERS[task](tr, cfg, res)
    return res


__all__ = ["Tracker", "MLflowTracker", "TensorBoardTracker", "tracked", "is_main_process", "flat_metrics",
           "flat_params", "RESULT_LOGGERS", "store_root"]
