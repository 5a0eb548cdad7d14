"""The REST API under /distill-nb/ against an in-process Jupyter server (pytest-jupyter's jp_fetch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from distill_nb import routes
from distill_nb.config import DistillConfig
from distill_nb.runs import Run, append_metrics, create_run, write_status

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"distill_nb": True}}}


@pytest.fixture
def api(jp_fetch):
    """GET/POST a /distill-nb/ path; returns (status code, parsed JSON) without raising on 4xx/5xx."""

    async def call(*parts, method="GET", **kwargs):
        body = b"" if method == "POST" else None
        resp = await jp_fetch("distill-nb", *parts, method=method, body=body, raise_error=False, **kwargs)
        return resp.code, json.loads(resp.body or b"null")

    return call


def fabricate(root, run_id, **status):
    """A run directory as a worker would leave it, without running one."""
    path = create_run(DistillConfig(teacher="tiny", max_steps=10), root, run_id)
    write_status(path, **status)
    return path


@pytest.fixture
def sleeper():
    """A live process whose pid stands in for a worker's."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_list_empty_then_runs_with_last_eval(api, runs_root):
    assert await api("runs") == (200, [])
    path = fabricate(runs_root, "run-a", state="completed", step=10, total_steps=10)
    append_metrics(path, {"step": 5, "split": "train", "loss": 0.9})
    append_metrics(path, {"step": 10, "split": "eval", "accuracy": 0.75})
    code, runs = await api("runs")
    assert code == 200
    assert [(r["run_id"], r["state"], r["step"], r["total_steps"]) for r in runs] == [("run-a", "completed", 10, 10)]
    assert runs[0]["last_eval"]["accuracy"] == 0.75


async def test_status_and_unknown_run(api, runs_root):
    fabricate(runs_root, "run-b", state="stopped", step=3, total_steps=10)
    code, status = await api("runs", "run-b")
    assert (code, status["state"], status["step"], status["run_id"]) == (200, "stopped", 3, "run-b")
    code, err = await api("runs", "nope")
    assert code == 404 and "no run 'nope'" in err["message"]


async def test_metrics_paging_with_since(api, runs_root):
    path = fabricate(runs_root, "run-c", state="completed")
    for step in (1, 2, 3, 4):
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0 / step})
    code, page = await api("runs", "run-c", "metrics")
    assert code == 200 and [r["step"] for r in page["records"]] == [1, 2, 3, 4] and page["next_since"] == 4
    code, page = await api("runs", "run-c", "metrics", params={"since": 2})
    assert [r["step"] for r in page["records"]] == [3, 4]
    code, page = await api("runs", "run-c", "metrics", params={"since": page["next_since"]})
    assert (code, page["records"], page["next_since"]) == (200, [], 4)
    code, err = await api("runs", "run-c", "metrics", params={"since": "soon"})
    assert code == 400 and "soon" in err["message"]


async def test_stop_returns_at_once_and_leaves_stop_file(api, runs_root, sleeper):
    path = fabricate(runs_root, "run-d", state="running", step=4, total_steps=10, pid=sleeper.pid,
                     host=socket.gethostname())
    t0 = time.monotonic()
    code, status = await api("runs", "run-d", "stop", method="POST")
    assert time.monotonic() - t0 < 2.0  # the worker, not the request, waits for the checkpoint
    assert (code, status["state"]) == (200, "running")
    assert (path / "STOP").is_file()


async def test_stop_queued_run_without_worker_stops_it(api, runs_root):
    fabricate(runs_root, "run-e")  # queued, no pid
    code, status = await api("runs", "run-e", "stop", method="POST")
    assert (code, status["state"]) == (200, "stopped")


async def test_resume_stopped_run_starts_a_worker(api, runs_root):
    path = fabricate(runs_root, "run-f", state="stopped", step=5, total_steps=10)
    (path / "STOP").write_text("x")
    code, status = await api("runs", "run-f", "resume", method="POST")
    try:
        assert code == 200 and status["state"] == "queued" and status["backend"] == "subprocess"
        assert status["pid"] and not (path / "STOP").exists()
    finally:
        Run(path).kill()  # the test checks the hand-off, not the training


async def test_resume_refusals_say_why(api, runs_root, sleeper):
    fabricate(runs_root, "done", state="completed")
    fabricate(runs_root, "busy", state="running", pid=sleeper.pid, host=socket.gethostname())
    for run_id, code_wanted, words in [("done", 400, "already completed"), ("busy", 409, "already running")]:
        code, err = await api("runs", run_id, "resume", method="POST")
        assert code == code_wanted and words in err["message"], err


async def test_auth_required(jp_fetch, runs_root):
    for method, path in [("GET", "runs"), ("GET", "runs/x"), ("POST", "runs/x/stop"), ("GET", "template")]:
        resp = await jp_fetch("distill-nb", path, method=method, body=b"" if method == "POST" else None,
                              headers={"Authorization": ""}, raise_error=False)
        assert resp.code == 403, (method, path)


@pytest.mark.parametrize("raw", ["..%2F..%2Fetc", "%2Fetc%2Fpasswd", "..", "%2E%2E", "a%00b", "..%5Cwin"])
async def test_traversal_rejected(http_server_client, jp_auth_header, jp_base_url, runs_root, raw):
    # raw URL (jp_fetch would re-escape the '%'): tornado decodes %2F into the id, validate_run_id refuses it
    for suffix in ("", "/metrics"):
        url = f"{jp_base_url}distill-nb/runs/{raw}{suffix}"
        resp = await http_server_client.fetch(url, headers=jp_auth_header, raise_error=False)
        assert resp.code in (400, 404), (url, resp.code)
        if resp.code == 400:
            assert "invalid run id" in json.loads(resp.body)["message"]


async def test_dotdot_path_segments_never_reach_a_handler(http_server_client, jp_auth_header, jp_base_url,
                                                          runs_root):
    url = f"{jp_base_url}distill-nb/runs/../../api/contents"
    resp = await http_server_client.fetch(url, headers=jp_auth_header, raise_error=False)
    assert resp.code in (400, 404)


async def test_unexpected_errors_become_json_500(api, runs_root, monkeypatch):
    def boom(root):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(routes, "list_runs", boom)
    code, err = await api("runs")
    assert code == 500 and err["message"] == "RuntimeError: disk on fire"


async def test_server_setting_overrides_runs_root(api, jp_serverapp, runs_root, tmp_path):
    other = tmp_path / "elsewhere"
    fabricate(other, "run-g", state="completed")
    jp_serverapp.web_app.settings["distill_nb"] = {"runs_root": str(other)}
    code, runs = await api("runs")
    assert (code, [r["run_id"] for r in runs]) == (200, ["run-g"])


async def test_template_is_a_notebook(api):
    code, nb = await api("template")
    assert code == 200 and nb["nbformat"] == 4 and nb["cells"]


def test_starter_template_when_quickstart_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(routes, "QUICKSTART", [tmp_path / "missing.ipynb"])
    nb = routes.template_notebook()
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "distill_nb" in "".join(c["source"] for c in nb["cells"])


def test_importing_routes_does_not_import_torch():
    code = "import sys, distill_nb.routes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(routes._PKG.parent)})
    assert out.stdout.strip() == "False"
