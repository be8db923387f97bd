"""The notebooks run top to bottom on the tiny campaign and draw their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbformat, nbclient and ipykernel")
pytest.importorskip("ipykernel", reason="notebook tests need nbformat, nbclient and ipykernel")


@pytest.mark.parametrize(
    ("name", "min_figures"),
    [
        ("training_dashboard.ipynb", 4),  # a figure per component, returns and score
        ("dataset_explorer.ipynb", 4),  # lengths/returns, achievements, frames, actions
        pytest.param("world_model_analysis.ipynb", 5, marks=pytest.mark.slow),
    ],
)
def test_notebook_runs_on_a_workspace(
    name: str, min_figures: int, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRIS_WORKSPACE", str(workspace))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend keeps the figures
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= min_figures
    # The notebook read the workspace it was given, not the repository root.
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(workspace.resolve()) in printed


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path.name
