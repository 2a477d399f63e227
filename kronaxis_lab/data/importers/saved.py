"""A dataset directory written by `RoutingDataset.save` (e.g. a `kronaxis-label` run dir)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import RoutingDataset, TableError, read_table


class SavedDataset(Importer):
    """Loads queries.parquet + outcomes.parquet (+ fleet.json unless a fleet is configured). Splits stored
    in the queries table are kept; queries without one get the seeded hash split."""

    name = "saved"

    def __init__(self, path: str | None = None, **kw):
        super().__init__(**kw)
        if not path:
            raise TableError("saved dataset: set dataset.path to a directory with queries.parquet and outcomes.parquet")
        self.path = Path(path).expanduser()
        self.name = kw.get("name") or self.path.name

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        for f in ("queries.parquet", "outcomes.parquet"):
            if not (self.path / f).is_file():
                raise TableError(f"{self.path / f} is missing: not a saved dataset directory")
        return read_table(self.path / "queries.parquet"), read_table(self.path / "outcomes.parquet")

    def fleet(self, outcomes: pd.DataFrame) -> Fleet:
        if self.fleet_cfg:
            return super().fleet(outcomes)
        return RoutingDataset.load(self.path).fleet if (self.path / "fleet.json").is_file() else super().fleet(outcomes)
