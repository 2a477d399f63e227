"""kronaxis-label: run a question set on every model of a fleet, grade the answers → outcome table.

    kronaxis-label dataset=gsm8k dataset.limit=20 fleet=local_cpu hydra.run.dir=outputs/label/gsm8k20
    kronaxis-label dataset=live_mix fleet=local_cpu                  # 50 GSM8K + 50 MMLU + 20 HumanEval
    kronaxis-label dataset=mmlu dataset.sample=200 fleet=openai_example grader=multiple_choice
    kronaxis-label ... hydra.run.dir=<same dir>                        # resumes: cached calls are not redone

The run dir becomes a saved `RoutingDataset` (queries.parquet, outcomes.parquet, fleet.json,
dataset.json) that `kronaxis-train` / `kronaxis-replay` read, plus summary.md / summary.json,
details.parquet (per-row cache/retry/finish info) and label_cache.sqlite (the resumable call cache).

Backends: each fleet model's backend config comes from `backends.<model>` in this config (explicit
override), else `fleet.backends.<model>` (composed by the fleet YAML's defaults list from
configs/backend/); it is instantiated with `model=<fleet name>` only if some call is not cached.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.data.fleet import Fleet, FleetError
from kronaxis_lab.data.questions import QuestionSet
from kronaxis_lab.data.store import DataError
from kronaxis_lab.data.tables import RoutingDataset, TableError
from kronaxis_lab.labeling.cache import CallCache
from kronaxis_lab.labeling.prompts import PromptError
from kronaxis_lab.labeling.ray_runner import RayBackend
from kronaxis_lab.labeling.runner import LabelError, LabelResult, LabelRunner, ModelPlan
from kronaxis_lab.pipelines.common import (
    CONFIG_DIR,
    QUESTION_SET,
    ConfigKindError,
    build,
    make_store,
    one_line_errors,
    output_dir,
    require_kind,
)
from kronaxis_lab.tracking import tracked

log = logging.getLogger("kronaxis_lab.label")

# errors that describe bad input (files, configs), reported without a traceback by the console script
USER_ERRORS = (LabelError, TableError, PromptError, FleetError, DataError, ConfigKindError)
DETAIL_COLUMNS = ["query_id", "model", "task", "cached", "retries", "fallbacks", "finish_reason"]


def strip_keys(node: Any, ignore: set[str]) -> Any:
    """`node` without the keys in `ignore`, at any depth (what is left is the backend's identity)."""
    if isinstance(node, Mapping):
        return {k: strip_keys(v, ignore) for k, v in node.items() if k not in ignore}
    if isinstance(node, (list, tuple)):
        return [strip_keys(v, ignore) for v in node]
    return node


def backend_node(cfg: DictConfig, name: str, spec_backend: str | None) -> DictConfig:
    explicit = cfg.get("backends") or {}
    if name in explicit and explicit[name] is not None:
        return explicit[name]
    composed = cfg.fleet.get("backends") or {}
    if name in composed and composed[name] is not None:
        return composed[name]
    hint = spec_backend or "<backend config>"
    raise LabelError(
        f"fleet model '{name}' has no backend to label it with: neither backends.{name} (configs/label.yaml) nor "
        f"fleet.backends.{name} is set. Add `- /backend@backends.{name}: {hint}` to the fleet YAML's defaults, "
        f"or pass +backend@backends.{name}={hint} on the command line.")


def prompt_style(cfg: DictConfig, name: str, node: DictConfig) -> str:
    """chat | completion: `fleet.prompt_styles.<model>` if set, else from the backend config
    (`chat: false` or `mode: completion` mean a base model fed raw text), else chat."""
    styles = cfg.fleet.get("prompt_styles") or {}
    if name in styles:
        return str(styles[name])
    if node.get("chat") is False or node.get("mode") == "completion":
        return "completion"
    return "chat"


def make_plans(cfg: DictConfig, fleet: Fleet) -> list[ModelPlan]:
    only = list(cfg.get("models") or [])
    unknown = [m for m in only if m not in fleet.names]
    if unknown:
        raise LabelError(f"models={unknown} are not in the fleet {fleet.names}")
    ignore = set(cfg.cache.get("ignore_backend_keys") or [])
    ray_opts = OmegaConf.to_container(cfg.runner.ray, resolve=True) if cfg.runner.get("ray") else {}
    plans = []
    for spec in fleet.models:
        if only and spec.name not in only:
            continue
        node = backend_node(cfg, spec.name, spec.backend)
        if "_target_" not in node:
            raise LabelError(f"backend config for model '{spec.name}' has no _target_: {OmegaConf.to_yaml(node)}")
        identity = strip_keys(OmegaConf.to_container(node, resolve=True), ignore)

        def factory(node: DictConfig = node, name: str = spec.name) -> Any:
            if ray_opts:  # runner.ray: the same backend config, one engine per Ray replica (same cache identity)
                return RayBackend(name, node, **ray_opts)
            log.info("Instantiating backend for '%s' <%s>", name, node.get("_target_"))
            return instantiate(node, model=name)

        chunk = (cfg.fleet.get("chunk_sizes") or {}).get(spec.name) or cfg.runner.get("chunk_size")
        plans.append(ModelPlan(name=spec.name, backend=factory, style=prompt_style(cfg, spec.name, node),
                               identity=identity, chunk_size=int(chunk) if chunk else None))
    return plans


def make_graders(cfg: DictConfig, tasks: list[str]) -> dict[str, Any]:
    """Task → grader for the tasks present. `grader=<name>` (cfg.grader) grades every task alike."""
    one = cfg.get("grader")
    nodes = cfg.get("graders") or {}
    graders: dict[str, Any] = {}
    for task in tasks:
        node = one if one else nodes.get(task)
        if node is None:
            continue  # reported by LabelRunner.check with the list of tasks lacking a grader
        graders[task] = build(node, f"grader for task '{task}'")
        if hasattr(graders[task], "backend") and graders[task].backend is None:
            raise LabelError(f"the grader for task '{task}' ({type(graders[task]).__name__}) needs a judge backend: "
                             f"set graders.{task}.backend (e.g. +backend@graders.{task}.backend=<config>)")
    return graders


def shared_cache_path(cfg: DictConfig) -> Path | None:
    return Path(cfg.cache.shared_dir) / "label_cache.sqlite" if cfg.cache.get("shared_dir") else None


def make_cache(cfg: DictConfig, out: Path) -> CallCache:
    c = cfg.cache
    path = Path(c.path) if c.get("path") else out / "label_cache.sqlite"
    shared = shared_cache_path(cfg)
    return CallCache(path, retry_errors=bool(c.get("retry_errors", True)),
                     read_only_fallbacks=[shared] if shared else [])


def load_queries(cfg: DictConfig) -> tuple[QuestionSet, pd.DataFrame]:
    require_kind(cfg.dataset, QUESTION_SET)  # e.g. dataset=routellm_gsm8k: one line, before anything is built
    qset = build(cfg.dataset, "question set")
    return qset, qset.load(make_store(cfg))


def write_summary(res: LabelResult, out: Path, name: str, fleet: Fleet) -> Path:
    s = res.summary.copy()
    lines = [f"# Labelling summary: {name}", "",
             f"{int(s['n'].max()) if len(s) else 0} queries × {len(s)} model(s); fleet: {fleet.source}. "
             "accuracy = mean score over rows without error; cost = tokens × fleet prices (USD per 1M tokens).", "",
             "## Per model", "", s.to_markdown(index=False, floatfmt=".4g"), "",
             "## Per model and task", "", res.by_task.to_markdown(index=False, floatfmt=".4g"), "",
             f"Cache: {res.stats['cache_hits']} hits, {res.stats['cache_misses']} misses; "
             f"calls made this run: {res.stats['calls']}.", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    qset, queries = load_queries(cfg)
    fleet_cfg = OmegaConf.to_container(cfg.fleet, resolve=False)  # backends are not part of the fleet record
    fleet = Fleet.from_config({k: fleet_cfg[k] for k in ("models", "source", "premium") if k in fleet_cfg},
                              source=str(fleet_cfg.get("source", "fleet")))
    plans = make_plans(cfg, fleet)
    tasks = sorted(set(queries["task"].fillna("default")))
    graders = make_graders(cfg, tasks)
    fleet = Fleet(models=[fleet[p.name] for p in plans], source=fleet.source,
                  premium_model=fleet.premium_model if fleet.premium_model in [p.name for p in plans] else None)
    log.info("labelling %d queries (%s) with %s", len(queries), ", ".join(tasks), [p.name for p in plans])
    with make_cache(cfg, out) as cache:
        runner = LabelRunner(fleet, plans, build(cfg.prompt, "prompt book"), graders, cache,
                             max_concurrency=int(cfg.runner.max_concurrency),
                             parallel_models=bool(cfg.runner.parallel_models),
                             correct_threshold=float(cfg.correct_threshold),
                             correct_thresholds=OmegaConf.to_container(cfg.get("correct_thresholds") or {}),
                             progress=bool(cfg.runner.get("progress", True)))
        res = runner.run(queries)
        shared = shared_cache_path(cfg)
        if shared is not None and shared != cache.path:
            log.info("shared cache %s: %d new call(s) added", shared, cache.export_to(shared))
    ds = RoutingDataset(queries=queries, outcomes=res.outcomes, fleet=fleet, name=qset.name,
                        info={"n_queries": len(queries), "tasks": tasks, "models": fleet.names,
                              "splits": {k: int(v) for k, v in queries["split"].value_counts().items()},
                              "labelled_by": "kronaxis-label"})
    ds.save(out)
    res.outcomes[DETAIL_COLUMNS].to_parquet(out / "details.parquet", index=False)
    summary_md = write_summary(res, out, qset.name, fleet)
    (out / "summary.json").write_text(json.dumps({
        "summary": res.summary.to_dict("records"), "by_task": res.by_task.to_dict("records"), "stats": res.stats,
    }, indent=2, default=str))
    log.info("\n%s", res.summary.to_string(index=False))
    return {"dataset": ds, "summary": res.summary, "by_task": res.by_task, "stats": res.stats,
            "paths": {"dir": str(out), "outcomes": str(out / "outcomes.parquet"), "summary": str(summary_md)}}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="label")
def main(cfg: DictConfig) -> None:
    with one_line_errors("kronaxis-label", *USER_ERRORS):  # a bad dataset/config: one clear line, no traceback
        res = tracked("label", run, cfg)
    print(f"outcomes: {res['paths']['outcomes']}\nsummary: {res['paths']['summary']}")


if __name__ == "__main__":
    main()
