"""Execute every notebook in notebooks/ with nbclient, small configuration, offline; any error fails.

The notebooks share one runs folder and one teacher cache: 00_quickstart trains the small workshop run, the
later notebooks reuse it (each trains it itself when run alone).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory, shared_data):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("nb")
    for key, value in {"DISTILL_NB_SMALL": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "DISTILL_NB_RUNS": str(root / "runs"), "DISTILL_NB_CACHE": str(root / "cache"),
                       "DISTILL_NB_DATA": str(shared_data), "MPLBACKEND": "Agg",
                       "PYTHONPATH": str(REPO)}.items():
        mp.setenv(key, value)
    yield root
    mp.undo()


def test_notebooks_found():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "00_quickstart.ipynb" and len(names) >= 6, names


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_env):
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    elapsed = time.time() - start
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    static = [o for o in outputs if "text/html" in o.get("data", {}) or "image/png" in o.get("data", {})]
    assert static, f"{path.name} shows no static HTML/PNG result"
    print(f"{path.name}: {elapsed:.0f} s")
    executed = REPO / "artifacts" / "notebooks"  # git-ignored: look at what the notebooks showed
    executed.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, executed / path.name)
