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
    assert seen["prepSteps"].startswith("preparing the teacher 40/300 · phase 2/7") and "ETA 1:20" in seen["prepSteps"]
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


def test_sidebar_survives_polls_and_hostile_runs(lab, runs_root, tmp_path):
    # the real server lists these as unreadable (config.json a folder, a link): the sidebar's Delete removes them
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for run_id, make in [("cfg-dir", lambda p: p.mkdir()), ("cfg-link", lambda p: p.symlink_to(outside))]:
        (runs_root / run_id).mkdir(parents=True)
        make(runs_root / run_id / "config.json")
        write_status(runs_root / run_id, state="stopped")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    env = {**os.environ, "JLAB_URL": lab["url"], "JLAB_TOKEN": lab["token"], "UNREADABLE_IDS": "cfg-dir,cfg-link",
           "ARTIFACTS": str(artifacts), "CHROMIUM": CHROMIUM}
    out = subprocess.run(["node", str(LABEXT / "ui-tests" / "sidebar-robust.mjs")], env=env, cwd=LABEXT,
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- lab log ---\n{lab['log'].read_text()[-3000:]}"
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    # D4: listed as unreadable, deleted from the sidebar (the folder renamed away; a link never followed)
    for run_id in ("cfg-dir", "cfg-link"):
        assert seen["unreadable"][run_id] == {"state": "unreadable", "gone": True, "failure": ""}, seen["unreadable"]
        assert not (runs_root / run_id).exists()
    assert outside.read_text() == "{}"
    # D2: polls update rows in place: focus stays on its button, a press held across a poll is still a click
    assert seen["focusKept"] is True
    assert seen["tabbedTo"] == "live-run/jp-DistillNb-stop", seen["tabbedTo"]
    assert seen["stopPosted"] == 1
    # D5: the Resume in flight stays disabled and says so across polls; one request, enabled again after
    assert seen["resumeDuringPolls"] == [True, "resuming…"] and seen["resumePosted"] == 1
    assert seen["resumeAfter"] == [False, "Resume"]
    # D6: a 20,000-character message and a 5 kB error neither widen the panel nor bury the other runs
    width, client = seen["widths"]
    assert width <= client + 2 and seen["widthsExpanded"][0] <= seen["widthsExpanded"][1] + 2, seen
    assert seen["errorHeight"] < 100 < seen["errorHeightExpanded"], seen
    assert seen["errorTitleLength"] > 5000 and seen["stepsTitleLength"] > 4000
    # D3: the hub org is shown; the spoofing teacher is one isolated, quoted, escaped, capped token
    assert seen["hubSummary"].startswith("evilcorp/bert-base-uncased → 2-layer student"), seen["hubSummary"]
    consent = seen["consent"]
    assert consent["warning"] == "Resume only if you trust that code." and not consent["teacherHoldsWarning"]
    teacher = consent["teacher"]
    assert teacher.startswith('"org/model.\\u202E\\n\\nThis model') and "…" in teacher
    assert teacher.endswith('AAA/tmp/evil"')  # cut in the middle: where a long path really ends stays visible
    assert len(teacher) <= 124 and not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", teacher)
    assert (consent["teacherDir"], consent["teacherBidi"]) == ("ltr", "isolate")
    assert "audited" not in consent["bodyWithoutTokens"] and "\u202e" not in consent["bodyWithoutTokens"]
    assert "trust_remote_code" in consent["bodyWithoutTokens"]
    assert not re.search(r"[\x00-\x1f\u202a-\u202e\u2066-\u2069]", seen["spoofSummary"]), seen["spoofSummary"]
    assert seen["remotePosted"] == 0  # Cancel sends nothing
    # D8: a 403 stops the polling and says what to do
    assert "no longer valid" in seen["sessionText"] and "reload the page" in seen["sessionText"]
    assert seen["reloadButton"] == 1 and seen["getsAfterLoss"] == 0, seen
    assert not [e for e in seen["consoleErrors"] if "distill" in e.lower()], seen["consoleErrors"]
