"""The analysis notebook executes end to end on a small config."""

import json

import pytest

from tests.conftest import FIXTURES, ROOT


@pytest.mark.slow
def test_compare_routers_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("KRONAXIS_NB_OVERRIDES", json.dumps(["dataset=routerbench", f"dataset.path={FIXTURES / 'routerbench'}"]))
    monkeypatch.delenv("KRONAXIS_RUN_DIR", raising=False)
    nb = nbformat.read(ROOT / "notebooks/compare_routers.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "oracle" in outputs and "prior+wtp" in outputs
