"""A run launched from a notebook in a real JupyterLab survives "Restart Kernel" and is re-attached (issue 16).

The notebook's kernel launches the run on the default backend (a background kernel), the browser restarts the
notebook's kernel from the Kernel menu, and the new kernel re-attaches by id: the run keeps training, and
``metrics.jsonl`` has every step once.
"""

from __future__ import annotations

import json
import os
import subprocess

import nbformat
import pytest

from distill_nb.config import DistillConfig
from distill_nb.runs import Run
from distill_nb.rundir import read_metrics

from conftest import CHROMIUM, LABEXT, REPO, browser_missing

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


def test_run_survives_restart_kernel_in_the_browser(lab, runs_root, tiny_teacher, tiny_dataset):
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, max_steps=100_000, eval_every=10, checkpoint_every=50,
                           batch_size=8, device="cpu", num_threads=1)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("from distill_nb import DistillConfig, launch\n"
                                  f"run = launch(DistillConfig.from_json({config.to_json()!r}), run_id='restart-me')\n"
                                  "print('launched', run.status()['backend'])"),
        nbformat.v4.new_code_cell("from distill_nb.runs import Run\nr = Run.attach('restart-me')\n"
                                  "s = r.status()\nprint('attached', s['state'], s['step'])"),
    ]
    nbformat.write(nb, lab["home"] / "restart.ipynb")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    env = {**os.environ, "JLAB_URL": lab["url"], "JLAB_TOKEN": lab["token"], "NOTEBOOK": "restart.ipynb",
           "RUN_ID": "restart-me", "ARTIFACTS": str(artifacts), "CHROMIUM": CHROMIUM}
    path = runs_root / "restart-me"
    try:
        out = subprocess.run(["node", str(LABEXT / "ui-tests" / "kernel-restart.mjs")], env=env, cwd=LABEXT,
                             capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- lab log ---\n{lab['log'].read_text()[-3000:]}"
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["launched"].startswith("launched kernel"), seen
        assert seen["before"]["state"] == "running" and seen["before"]["backend"] == "kernel", seen
        assert seen["attached"].startswith("attached running") and seen["attachedPrompt"] == "[1]:", seen
        assert seen["later"]["state"] == "running" and seen["later"]["step"] > seen["before"]["step"], seen
    finally:
        if path.exists():
            Run(path).stop(wait=60)
            Run(path).kill()
    steps = [r["step"] for r in read_metrics(path) if r.get("split") == "train"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > seen["before"]["step"]  # none lost or doubled
