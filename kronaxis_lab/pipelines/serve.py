"""kronaxis-serve — not implemented yet; the entry point exists so the command contract is stable."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from kronaxis_lab.pipelines.common import CONFIG_DIR


def run(cfg: DictConfig) -> dict[str, Any]:
    raise NotImplementedError("kronaxis-serve is not implemented yet (see the project's open issues)")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except NotImplementedError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
