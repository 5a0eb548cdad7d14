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
from distill_nb.owner import process_start
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
                     pid_start=process_start(sleeper.pid), host=socket.gethostname())
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
    fabricate(runs_root, "busy", state="running", pid=sleeper.pid, pid_start=process_start(sleeper.pid),
              host=socket.gethostname())
    for run_id, code_wanted, words in [("done", 400, "already completed"), ("busy", 409, "already running")]:
        code, err = await api("runs", run_id, "resume", method="POST")
        assert code == code_wanted and words in err["message"], err


async def test_auth_required(jp_fetch, runs_root):
    for method, path in [("GET", "runs"), ("GET", "runs/x"), ("POST", "runs/x/stop"), ("GET", "template"),
                         ("POST", "runs/x/resume"), ("DELETE", "runs/x"), ("GET", "runs/x/metrics")]:
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


# --- issue 12: one bad run never breaks the list; strict JSON; remote code needs a yes; delete ------------------
async def test_list_survives_corrupt_runs_and_nan_metrics(api, runs_root, http_server_client, jp_auth_header,
                                                          jp_base_url):
    fabricate(runs_root, "good", state="completed", step=10, total_steps=10)
    for run_id, raw in [("utf8", b'{"state": "running", "x": "\xff"}'), ("list", b"[1]"),
                        ("state", b'{"state": "exploded"}'), ("pid", b'{"state": "running", "pid": "7"}')]:
        (fabricate(runs_root, run_id) / "status.json").write_bytes(raw)
    nan = fabricate(runs_root, "nan", state="completed")
    (nan / "metrics.jsonl").write_text('{"step": 1, "split": "eval", "accuracy": NaN, "retention": Infinity}\n')
    append_metrics(nan, {"step": 2, "split": "eval", "accuracy": float("nan")})
    resp = await http_server_client.fetch(f"{jp_base_url}distill-nb/runs", headers=jp_auth_header)
    body = resp.body.decode()
    assert "NaN" not in body and "Infinity" not in body
    runs = json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c} in the reply"))
    states = {r["run_id"]: r["state"] for r in runs}
    assert states == {"good": "completed", "nan": "completed", "utf8": "unreadable", "list": "unreadable",
                      "state": "unreadable", "pid": "unreadable"}
    assert all(r["error"] for r in runs if r["state"] == "unreadable")
    code, one = await api("runs", "list")
    assert code == 200 and one["state"] == "unreadable"


async def test_resume_with_remote_code_needs_an_explicit_yes(api, runs_root, jp_fetch):
    path = create_run(DistillConfig(teacher="tiny", max_steps=10, trust_remote_code=True), runs_root, "remote")
    write_status(path, state="stopped", step=5, total_steps=10)
    code, runs = await api("runs")
    assert runs[0]["trust_remote_code"] is True and runs[0]["summary"]["teacher"] == "tiny"
    deep = b'{"trust_remote_code": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    for body in (b"", b"{}", b'{"trust_remote_code": "yes"}', b'{"trust_remote_code": 1}', b"not json", deep,
                 b'{"trust_remote_code": NaN}', b"[true]", b"\xff\xfe", b"true", b"[" * 100_000):
        resp = await jp_fetch("distill-nb", "runs", "remote", "resume", method="POST", body=body, raise_error=False)
        assert resp.code == 403 and "trust_remote_code" in json.loads(resp.body)["message"], body
        assert Run(path).state == "stopped"  # refused without touching the run
    resp = await jp_fetch("distill-nb", "runs", "remote", "resume", method="POST",
                          body=b'{"trust_remote_code": true}', raise_error=False)
    try:
        assert resp.code == 200 and json.loads(resp.body)["state"] == "queued"
    finally:
        Run(path).kill()


async def test_concurrent_rest_resumes_start_one_worker(api, runs_root):
    import asyncio

    path = fabricate(runs_root, "twice", state="stopped", step=5, total_steps=10)
    try:
        results = await asyncio.gather(*[api("runs", "twice", "resume", method="POST") for _ in range(4)])
        codes = sorted(code for code, _ in results)
        assert codes == [200, 409, 409, 409], results
    finally:
        Run(path).kill()


async def test_delete_refuses_active_runs_and_removes_finished_ones(api, runs_root, sleeper):
    fabricate(runs_root, "live", state="running", pid=sleeper.pid, pid_start=process_start(sleeper.pid),
              host=socket.gethostname())
    done = fabricate(runs_root, "done", state="completed")
    code, err = await api("runs", "live", method="DELETE")
    assert code == 409 and "stop it" in err["message"] and (runs_root / "live").is_dir()
    code, reply = await api("runs", "done", method="DELETE")
    assert (code, reply) == (200, {"run_id": "done", "deleted": True}) and not done.exists()
    code, _ = await api("runs", "done", method="DELETE")
    assert code == 404


# every shape of file json can choke on: huge integers, nesting past the recursion limit and just inside it
HOSTILE = {"huge-int": '{"state": "completed", "step": 1' + "0" * 5000 + "}",
           "deep-100k": "[" * 100_000 + "]" * 100_000,
           "deep-600": '{"state": "completed", "x": ' + "[" * 600 + "]" * 600 + "}",
           "deep-70": '{"state": "completed", "x": ' + "[" * 70 + "]" * 70 + "}"}


@pytest.mark.parametrize("where", ["status.json", "config.json", "metrics.jsonl"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_one_hostile_json_file_never_breaks_the_list(api, runs_root, where, case, capsys):
    from distill_nb.cli import main as cli

    fabricate(runs_root, "good", state="completed", step=10, total_steps=10)
    bad = fabricate(runs_root, "bad", state="completed", step=10, total_steps=10)
    if where == "metrics.jsonl":
        append_metrics(bad, {"step": 1, "split": "eval", "accuracy": 0.5})
        with open(bad / where, "a") as f:
            f.write(HOSTILE[case] + "\n" + '{"step": 1e400, "split": "eval", "accuracy": 1' + "0" * 400 + "}\n")
    else:
        (bad / where).write_text(HOSTILE[case])
    code, runs = await api("runs")
    assert code == 200, runs
    states = {r["run_id"]: r["state"] for r in runs}
    assert states["good"] == "completed" and "bad" in states
    code, one = await api("runs", "bad")
    assert code == 200, one
    code, page = await api("runs", "bad", "metrics")
    assert code == 200 and all(isinstance(r["step"], (int, float)) for r in page["records"])
    assert cli(["list"]) == 0 and "good" in capsys.readouterr().out


async def test_metrics_since_takes_back_its_own_next_since(api, runs_root):
    path = fabricate(runs_root, "r", state="completed")
    for step in (1, 2.5, 3):
        append_metrics(path, {"step": step, "split": "train", "loss": 1.0})
    code, page = await api("runs", "r", "metrics", params={"since": "1"})
    assert code == 200 and [r["step"] for r in page["records"]] == [2.5, 3]
    code, page = await api("runs", "r", "metrics", params={"since": "2.5"})
    assert code == 200 and [r["step"] for r in page["records"]] == [3]
    for bad in ("nan", "inf", "x", "1e400"):
        code, reply = await api("runs", "r", "metrics", params={"since": bad})
        assert code == 400 and "since" in reply["message"], bad


async def test_a_second_delete_is_404_not_500(api, runs_root):
    fabricate(runs_root, "done", state="completed")
    assert (await api("runs", "done", method="DELETE"))[0] == 200
    code, reply = await api("runs", "done", method="DELETE")
    assert code == 404 and "done" in reply["message"]


@pytest.mark.parametrize("kind", ["dir", "link"])
async def test_a_lock_file_that_cannot_be_locked_does_not_block_delete(api, runs_root, tmp_path, kind):
    path = fabricate(runs_root, "done", state="completed")
    lock = path / ".worker.lock"
    lock.unlink(missing_ok=True)
    if kind == "dir":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    assert (await api("runs", "done", method="DELETE"))[0] == 200 and not path.exists()


@pytest.mark.parametrize("pid", [0, -1, -5, 2**40])
async def test_a_pid_that_names_no_single_process_is_not_a_live_worker(api, runs_root, pid):
    from distill_nb.owner import alive

    assert not alive(pid)
    path = fabricate(runs_root, "r", state="stopped")
    (path / "status.json").write_text(json.dumps({"state": "running", "pid": pid, "host": socket.gethostname()}))
    code, one = await api("runs", "r")
    assert code == 200 and one["state"] in ("unreadable", "failed"), one
    assert (await api("runs", "r", "stop", method="POST"))[0] == 200
    assert (await api("runs", "r", method="DELETE"))[0] == 200


def test_kill_never_signals_a_process_it_cannot_identify(tmp_path, sleeper):
    from distill_nb.owner import process_start

    Run._kill({"pid": sleeper.pid})  # no start time recorded: proves nothing
    Run._kill({"pid": sleeper.pid, "pid_start": 12345})  # another process's start time
    time.sleep(0.2)
    assert sleeper.poll() is None
    Run._kill({"pid": sleeper.pid, "pid_start": process_start(sleeper.pid)})
    assert sleeper.wait(timeout=10) == -9


@pytest.mark.parametrize("kind", ["dir", "link"])
async def test_a_run_listed_as_unreadable_can_be_deleted(api, runs_root, tmp_path, kind):
    # what the list shows, Delete removes: config.json a folder or a link is listed (unreadable), not a 404
    path = runs_root / "odd"
    path.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    if kind == "dir":
        (path / "config.json").mkdir()
    else:
        (path / "config.json").symlink_to(outside)
    write_status(path, state="stopped")
    (runs_root / "not-a-run").mkdir()  # no config.json: neither listed nor deletable
    code, runs = await api("runs")
    assert code == 200 and [(r["run_id"], r["state"]) for r in runs] == [("odd", "unreadable")], runs
    code, reply = await api("runs", "odd", method="DELETE")
    assert (code, reply) == (200, {"run_id": "odd", "deleted": True}) and not path.exists()
    assert outside.read_text() == "{}"  # a link is removed, never followed
    assert (await api("runs"))[1] == []
    code, err = await api("runs", "not-a-run", method="DELETE")
    assert code == 404 and "not-a-run" in err["message"] and (runs_root / "not-a-run").is_dir()


async def test_an_unreadable_run_that_is_still_active_is_not_deleted(api, runs_root, sleeper):
    from distill_nb.rundir import process_start

    path = runs_root / "odd-live"
    path.mkdir(parents=True)
    (path / "config.json").mkdir()
    write_status(path, state="running", pid=sleeper.pid, pid_start=process_start(sleeper.pid),
                 host=socket.gethostname())
    code, err = await api("runs", "odd-live", method="DELETE")
    assert code == 409 and "stop it" in err["message"] and path.is_dir()


async def test_actions_never_wait_behind_slow_listings(api, runs_root, monkeypatch, jp_http_port, jp_base_url,
                                                      jp_auth_header):
    import asyncio
    import threading

    from tornado.httpclient import AsyncHTTPClient

    release, calls = threading.Event(), []

    def slow_list(root):  # a folder of long runs: every listing takes seconds
        calls.append(threading.current_thread().name)
        release.wait(20)
        return []

    monkeypatch.setattr(routes, "list_runs", slow_list)
    fabricate(runs_root, "queued-run")
    done = fabricate(runs_root, "done-run", state="completed")
    # many tabs polling at once (a client of their own: jp_fetch's sends at most 10 requests at a time)
    tabs = AsyncHTTPClient(force_instance=True, max_clients=64)
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}distill-nb/runs"
    polls = [asyncio.ensure_future(tabs.fetch(url, headers=jp_auth_header, request_timeout=60)) for _ in range(40)]
    try:
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        code, status = await api("runs", "queued-run", "stop", method="POST")
        assert (code, status["state"]) == (200, "stopped")
        assert (await api("runs", "done-run", method="DELETE"))[0] == 200 and not done.exists()
        assert time.monotonic() - t0 < 5.0  # did not queue behind the 40 listings
    finally:
        release.set()
        results = await asyncio.gather(*polls)
        tabs.close()
    assert all((r.code, json.loads(r.body)) == (200, []) for r in results)
    assert len(calls) <= 2 and all(name.startswith("distill-nb-read") for name in calls), calls  # shared reads


async def test_a_runs_folder_the_server_may_not_read_is_a_500_not_a_403(api, runs_root, monkeypatch):
    # the sidebar reads a 403 as "your Jupyter session is no longer valid": a filesystem refusal must not say that
    def denied(root):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(routes, "list_runs", denied)
    code, err = await api("runs")
    assert code == 500 and "Permission denied" in err["message"] and "access" in err["message"]


@pytest.mark.parametrize("raw", [b'{"a": 1}', '{"a": 1}', bytearray(b'{"a": 1}')], ids=["bytes", "str", "bytearray"])
def test_tolerant_json_reads_text_and_bytes_alike(raw):
    from distill_nb.safeio import loads

    assert loads(raw) == {"a": 1}


@pytest.mark.parametrize("raw", [b"\xff\xfe", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
                                 '{"a": ' * 100_000 + "1" + "}" * 100_000, b"[" * 100_000, b"{", b""],
                         ids=["not-utf8", "deep-bytes", "deep-str", "deep-unclosed", "cut", "empty"])
def test_tolerant_json_refuses_what_json_cannot_take_as_a_value_error(raw):
    """A request body or a run file: whatever it holds, a ValueError (a 400 or 'unreadable'), never a 500."""
    import json

    from distill_nb.safeio import loads

    with pytest.raises(json.JSONDecodeError):
        loads(raw)
