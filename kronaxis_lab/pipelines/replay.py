"""kronaxis-replay: replay a split of recorded outcomes through routers → metrics.json, report.md, plots.

    kronaxis-replay dataset=llmrouter
    kronaxis-replay dataset=routerbench dataset.path=<dir or file> hydra.run.dir=<out>
    kronaxis-replay -m dataset=llmrouter,routellm_mmlu_gsm8k          # multirun
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.pipelines.common import CONFIG_DIR, build, load_dataset, output_dir
from kronaxis_lab.routing.replay import replay
from kronaxis_lab.routing.report import summary_table, write_report

log = logging.getLogger("kronaxis_lab.replay")


def build_routers(cfg: DictConfig) -> dict[str, Any]:
    routers = {name: build(node, f"router '{name}'") for name, node in (cfg.get("routers") or {}).items() if node}
    return routers


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    ds = load_dataset(cfg)
    if cfg.get("save_dataset"):
        ds.save(out / "dataset")
    routers = build_routers(cfg)
    if not routers:
        raise ValueError("no routers configured (routers=reference, or add entries under 'routers')")
    res = replay(ds, routers, split=cfg.split, seed=cfg.seed)
    extra = {"dataset_info": ds.info, "fleet": ds.fleet.to_dict(),
             "config": OmegaConf.to_container(cfg.dataset, resolve=True)}
    extra["config"].pop("fleet", None)
    paths = write_report(res, out, category_routers=cfg.report.category_routers, extra=extra,
                         max_plot_categories=cfg.report.max_plot_categories)
    table = summary_table(res)
    log.info("\n%s", table.to_string(index=False))
    return {"metrics": res.routers, "paths": {k: str(v) for k, v in paths.items()}, "table": table, "result": res}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="replay")
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    print(out["table"].to_string(index=False))
    print("\n".join(f"{k}: {v}" for k, v in out["paths"].items()))


if __name__ == "__main__":
    main()
