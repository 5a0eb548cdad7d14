"""The labextension in a real JupyterLab and headless Chromium: sidebar lists runs, Stop works, launcher item.

Needs Debian's /usr/bin/chromium, node, ``labextension/node_modules`` (playwright-core) and a built extension
in ``distill_nb/labextension``; ``.ci/setup-browser.sh`` and ``pip install -e .`` provide them.
Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distill_nb.config import DistillConfig
from distill_nb.runs import append_metrics, create_run, launch, write_status

REPO = Path(__file__).resolve().parents[1]
LABEXT_SRC = REPO / "labextension"
BUILT = REPO / "distill_nb" / "labextension"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (apt-get install chromium, see .ci/setup-browser.sh)"
    if shutil.which("node") is None:
        return "node not found"
    if not (LABEXT_SRC / "node_modules" / "playwright-core").is_dir():
        return "labextension/node_modules missing (cd labextension && npm ci, see .ci/setup-browser.sh)"
    if not (BUILT / "package.json").is_file():
        return "labextension not built (pip install -e . or cd labextension && npm run build)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, runs_root):
    """A `jupyter lab` on 127.0.0.1 that loads this checkout's server and lab extensions only."""
    port, token = _free_port(), secrets.token_hex(16)
    home, config, labext = tmp_path / "home", tmp_path / "config", tmp_path / "labextensions"
    for d in (home, config, labext):
        d.mkdir()
    (labext / "distill-nb").symlink_to(BUILT)  # this build wins over any installed copy
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "Jupyter news?" toast over the screenshots
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"distill_nb": True}},
        "LabApp": {"extra_labextensions_path": [str(labext)], "user_settings_dir": str(tmp_path / "settings"),
                   "workspaces_dir": str(tmp_path / "workspaces")},
    }))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "DISTILL_NB_RUNS": str(runs_root),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}",
           "--allow-root"]  # CI containers run as root
    url, log_path = f"http://127.0.0.1:{port}/", tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "home": home, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sidebar_stop_and_launcher(lab, runs_root, tiny_teacher, tiny_dataset):
    done = create_run(DistillConfig(teacher="tiny", max_steps=100), runs_root, "sst2-done")
    write_status(done, state="completed", step=100, total_steps=100)
    append_metrics(done, {"step": 100, "split": "eval", "accuracy": 0.875})
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
               "DONE_ID": "sst2-done", "ARTIFACTS": str(artifacts), "CHROMIUM": CHROMIUM}
        out = subprocess.run(["node", str(LABEXT_SRC / "ui-tests" / "sidebar.mjs")], env=env, cwd=LABEXT_SRC,
                             capture_output=True, text=True, timeout=240, check=False)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- lab log ---\n{lab['log'].read_text()[-3000:]}"
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if live.state.active:
            live.kill()

    assert seen["stateBefore"] == "running" and re.fullmatch(r"step \d+/100000", seen["stepsBefore"])
    assert seen["doneAccuracy"] == "acc 87.5%" and seen["doneStopDisabled"]
    assert not [e for e in seen["consoleErrors"] if "distill" in e.lower()], seen["consoleErrors"]
    assert seen["stateAfter"] == "stopped"
    assert live.state.value == "stopped"  # Stop went from the button through the server to the worker
    assert seen["templateTab"].startswith("Untitled") and seen["templateCells"] >= 1
    assert any("distill_nb" in text for text in seen["templateText"])
    assert 'RunMonitor.attach("sst2-live")' in seen["monitorText"]
    notebooks = sorted(lab["home"].glob("Untitled*.ipynb"))
    assert len(notebooks) == 2  # the launcher's and the sidebar's "Open in notebook"
    assert (artifacts / "browser-sidebar.png").stat().st_size > 10_000
