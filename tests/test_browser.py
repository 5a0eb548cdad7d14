"""The labextension in a real JupyterLab and headless Chromium: sidebar lists runs, Stop works, launcher item.

Needs Debian's /usr/bin/chromium, node, ``labextension/node_modules`` (playwright-core) and a built extension
in ``distill_nb/labextension``; ``.ci/setup-browser.sh`` and ``pip install -e .`` provide them.
Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from distill_nb.config import DistillConfig
from distill_nb.runs import append_metrics, create_run, launch, write_status

from conftest import CHROMIUM, LABEXT, REPO, browser_missing


pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


def test_sidebar_stop_and_launcher(lab, runs_root, tiny_teacher, tiny_dataset):
    # what the real server lists: a corrupt run (unreadable, the others unaffected) and a remote-code run
    broken = create_run(DistillConfig(teacher="tiny"), runs_root, "corrupt-run")
    (broken / "status.json").write_bytes(b"\xff\xfe{not json")
    remote = create_run(DistillConfig(teacher="tiny", trust_remote_code=True, student_layers=2), runs_root,
                        "remote-code-run")
    write_status(remote, state="stopped", step=5, total_steps=50)
    done = create_run(DistillConfig(teacher="tiny", max_steps=100), runs_root, "sst2-done")
    write_status(done, state="completed", step=100, total_steps=100)
    append_metrics(done, {"step": 50, "split": "eval", "accuracy": 0.75, "reason_spearman": 0.2})
    append_metrics(done, {"step": 100, "split": "eval", "accuracy": 0.875, "reason_spearman": 0.4321})
    # a real worker (python -m distill_nb.train) on the tiny offline teacher, long enough to be stopped
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, max_steps=100_000, eval_every=5, checkpoint_every=100_000,
                           batch_size=8, device="cpu", num_threads=1)
    live = launch(config, backend="subprocess", root=runs_root, run_id="sst2-live")
    try:
        deadline = time.time() + 120
        while live.status().get("step", 0) < 1 and live.state.active and time.time() < deadline:
            time.sleep(0.2)
        assert live.state.value == "running", (live.status(), (live.path / "log.txt").read_text()[-2000:])
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        env = {**os.environ, "JLAB_URL": lab["url"], "JLAB_TOKEN": lab["token"], "RUN_ID": "sst2-live",
               "DONE_ID": "sst2-done", "BROKEN_ID": "corrupt-run", "REMOTE_ID": "remote-code-run", "ARTIFACTS": str(artifacts), "CHROMIUM": CHROMIUM}
        out = subprocess.run(["node", str(LABEXT / "ui-tests" / "sidebar.mjs")], env=env, cwd=LABEXT,
                             capture_output=True, text=True, timeout=240, check=False)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- lab log ---\n{lab['log'].read_text()[-3000:]}"
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if live.state.active:
            live.kill()

    assert seen["stateBefore"] == "running" and re.search(r"step \d+/100000", seen["stepsBefore"])
    assert seen["doneAccuracy"] == "acc 87.5%" and seen["doneStopDisabled"]
    assert seen["doneReasons"] == ["reasons ρ 0.43"] and seen["remoteReasons"] == [], seen  # the last value, once
    assert seen["serverBroken"][0] == "unreadable" and seen["serverBroken"][1], seen["serverBroken"]
    assert seen["serverRemote"] == ["remote code", "tiny → 2-layer student · sst2"], seen["serverRemote"]
    assert not [e for e in seen["consoleErrors"] if "distill" in e.lower()], seen["consoleErrors"]
    assert seen["stateAfter"] == "stopped"
    assert live.state.value == "stopped"  # Stop went from the button through the server to the worker
    assert seen["templateTab"].startswith("Untitled") and seen["templateCells"] >= 1
    assert 'RunMonitor.attach("sst2-live")' in seen["monitorText"]
    notebooks = sorted(lab["home"].glob("Untitled*.ipynb"))
    assert len(notebooks) == 1  # the launcher's; "Open" names its notebook after the run
    # what the card made is the quickstart template (read from the saved file: the page renders cells lazily, so
    # their text in the DOM can lag behind on a busy machine)
    cells = json.loads(notebooks[0].read_text())["cells"]
    assert any("distill_nb" in "".join(c["source"]) for c in cells), (cells[:2], seen["templateText"])
    assert (lab["home"] / "monitor-sst2-live.ipynb").is_file()
    assert seen["monitorTabs"] == 1 and seen["currentTab"].startswith("monitor-sst2-live")  # Open twice: one tab
    assert (artifacts / "browser-sidebar.png").stat().st_size > 10_000

    # the REST contract (issue 12, 16): a fixed reply with an unreadable run, a remote-code run, a run in prep
    assert seen["prepSteps"].startswith("preparing the teacher 40/300 · phase 2/6") and "ETA 1:20" in seen["prepSteps"]
    assert seen["prepBar"] == [40, 300]
    assert seen["prepSummary"] == "minilm-l6 → 3-layer student · sst2"
    assert seen["brokenState"] == "unreadable" and "not UTF-8" in seen["brokenError"]
    assert seen["remoteFlag"] == "remote code" and seen["prepFlagCount"] == 0
    assert seen["remoteSummary"] == "custom-bert → 2-layer student · reviews.csv"
    assert "Resume continues" in seen["remoteError"] and "resume()" not in seen["remoteError"]
    assert "on 872 eval examples" in seen["remoteAccuracyTitle"]
    assert seen["prepDeleteDisabled"] and seen["prepResumeDisabled"] and float(seen["disabledOpacity"]) < 0.6
    assert "trust_remote_code" in seen["dialogText"] and "custom-bert" in seen["dialogText"]
    assert seen["postsAfterCancel"] == 0  # Cancel sends nothing
    resume, delete = seen["posted"]
    assert resume["method"] == "POST" and resume["url"].endswith("/distill-nb/runs/remote-run/resume")
    assert json.loads(resume["body"]) == {"trust_remote_code": True}
    assert delete["method"] == "DELETE" and delete["url"].endswith("/distill-nb/runs/broken-run")
    assert "instead of a list" in seen["notListError"] and seen["runsAfterBadReply"] == 0
    assert (artifacts / "sidebar-contract.png").stat().st_size > 5_000
