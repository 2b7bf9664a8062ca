"""The tutorial notebook runs top to bottom on an analysed store and shows its pictures."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


def test_tutorial_notebook_runs_and_shows_pictures(demo_run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("VSAE_STORE", demo_run[0])
    monkeypatch.setenv("VSAE_RUN", "r1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's vsae
    nb = nbformat.read(ROOT / "docs/tutorial.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [c for c in nb.cells if c.cell_type == "code"
                and any("image/png" in o.get("data", {}) for o in c.outputs)]
    # two example grids (PIL images), the histogram and the class means (matplotlib figures)
    assert [c.source.splitlines()[-1].split("(")[0] for c in pictures] == [
        "client.example_grid", "client.example_grid", "client.activation_histogram", "client.class_means_plot"]
