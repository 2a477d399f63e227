"""Regenerate notebooks/compare_routers.ipynb (kept as code so its diff stays readable)."""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell("""# Compare routers and policies on one run

Loads a replay run (its outcome table, `metrics.json` and curves) and compares routers and policies.
Point `KRONAXIS_RUN_DIR` at a `kronaxis-replay ... save_dataset=true` run dir, or leave it unset and the
notebook runs a small replay itself (`KRONAXIS_NB_OVERRIDES`: Hydra overrides as a JSON list, default
the LLMRouter dataset)."""),
    nbf.v4.new_code_cell("""import json, os, tempfile
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

RUN_DIR = os.environ.get("KRONAXIS_RUN_DIR")
OVERRIDES = json.loads(os.environ.get("KRONAXIS_NB_OVERRIDES", '["dataset=llmrouter"]'))"""),
    nbf.v4.new_code_cell("""if RUN_DIR is None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from kronaxis_lab.pipelines.common import CONFIG_DIR
    from kronaxis_lab.pipelines.replay import run

    RUN_DIR = tempfile.mkdtemp(prefix="kronaxis_nb_")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("replay", OVERRIDES + ["save_dataset=true"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = RUN_DIR
        del cfg["hydra"]
    run(cfg)
run_dir = Path(RUN_DIR)
metrics = json.loads((run_dir / "metrics.json").read_text())
print(metrics["dataset"], metrics["n_queries"], "test queries; premium:", metrics["premium"])"""),
    nbf.v4.new_markdown_cell("## Routers, best AIQ first"),
    nbf.v4.new_code_cell("""cols = ["accuracy", "cost_usd", "cpao", "premium_share", "aiq", "max_accuracy", "savings_at_95pct_premium", "apgr", "oracle_gap"]
table = pd.DataFrame(metrics["routers"]).T[cols].astype(float).sort_values("aiq", ascending=False)
table"""),
    nbf.v4.new_markdown_cell("## The outcome table: what each model scores per task"),
    nbf.v4.new_code_cell("""outcomes = pd.read_parquet(run_dir / "dataset" / "outcomes.parquet")
queries = pd.read_parquet(run_dir / "dataset" / "queries.parquet")
df = outcomes.merge(queries[["query_id", "task", "split"]], on="query_id")
per_task = df.pivot_table(index="task", columns="model", values="score", aggfunc="mean")
per_task.round(3)"""),
    nbf.v4.new_markdown_cell("## Cost–quality curves: sweep routers vs fixed ones"),
    nbf.v4.new_code_cell("""from kronaxis_lab.metrics import ndch

fig, ax = plt.subplots(figsize=(8, 5))
for name, r in metrics["routers"].items():
    pts = np.asarray(r["curve"])
    if r["kind"] == "sweep":
        hc, hq = ndch(pts[:, 0], pts[:, 1])
        ax.plot(hc, hq, label=name)
    elif name == "oracle" or name.startswith("always:"):
        ax.plot(pts[:, 0], pts[:, 1], "o", label=name)
ax.set_xlabel("total $ on the test split"); ax.set_ylabel("accuracy"); ax.legend(fontsize=6)
fig.savefig(run_dir / "notebook_curves.png", dpi=100)"""),
    nbf.v4.new_markdown_cell("## Policies on the same predictions\n\nRe-run the engine on the saved table: the per-task prior under three policies."),
    nbf.v4.new_code_cell("""from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.routing.policies import Threshold, WillingnessToPay, StrongWinThreshold
from kronaxis_lab.routing.replay import replay
from kronaxis_lab.routing.routers import PolicyRouter, PriorPredictor

ds = RoutingDataset.load(run_dir / "dataset")
policies = [WillingnessToPay(), Threshold()] + ([StrongWinThreshold()] if len(ds.fleet.names) == 2 else [])
res = replay(ds, [PolicyRouter(PriorPredictor(by="task"), p, f"prior+{p.name}") for p in policies])
pd.DataFrame(res.routers).T[["aiq", "max_accuracy", "savings_at_95pct_premium", "cpao"]]"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbf.write(nb, "notebooks/compare_routers.ipynb")
