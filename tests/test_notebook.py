"""demo.ipynb runs from top to bottom on the built-in default (executed with nbclient), so the
notebook the original package shipped never rots. Its committed outputs come from a real run:

    .venv/bin/python -c "import nbformat, nbclient; nb = nbformat.read('demo.ipynb', 4); \\
        nbclient.NotebookClient(nb, timeout=600).execute(); nbformat.write(nb, 'demo.ipynb')"
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "demo.ipynb"


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}).execute()
    return nb


def test_the_notebook_runs_without_errors(executed):
    errors = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert errors == []


def test_the_exact_methods_return_hfs_items_in_the_notebook(executed):
    text = outputs_text(executed)
    assert text.count("same top-20 items as HF: True") == 3
    assert "patched generate() returns HF's items: True" in text


def test_the_committed_notebook_holds_the_outputs_of_a_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs for cell in code)
    assert "same top-20 items as HF: True" in outputs_text(nb)
