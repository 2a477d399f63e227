"""kronaxis-data: fill the data directory (from the mirror, an HTTP mirror, or the public sources).

    kronaxis-data                      # every file of configs/data/sources.yaml
    kronaxis-data only=[routellm,llmrouter]
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from kronaxis_lab.pipelines.common import CONFIG_DIR, make_store


def run(cfg: DictConfig) -> dict[str, Any]:
    store = make_store(cfg)
    status = store.fetch_all(only=list(cfg.only) if cfg.get("only") else None)
    return {"data_dir": str(store.data_dir), "mirror": str(store.mirror) if store.mirror else None, "files": status}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="data")
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    counts: dict[str, int] = {}
    for s in out["files"].values():
        counts[s] = counts.get(s, 0) + 1
    print(f"data dir: {out['data_dir']} (mirror: {out['mirror']})")
    print(", ".join(f"{n} {s}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
