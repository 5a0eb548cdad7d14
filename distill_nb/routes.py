"""REST API for the JupyterLab sidebar: thin jupyter_server handlers over ``runs.py``.

    GET  /distill-nb/runs                     list_runs()
    GET  /distill-nb/runs/<id>                read_status()
    GET  /distill-nb/runs/<id>/metrics?since=N  records with step > N
    POST /distill-nb/runs/<id>/stop           ask the worker to stop (returns at once)
    POST /distill-nb/runs/<id>/resume         continue a stopped/failed run in a subprocess; a run whose config
                                              enables trust_remote_code needs the body {"trust_remote_code": true}
    DELETE /distill-nb/runs/<id>              remove a run that is not active
    GET  /distill-nb/template                 the quickstart notebook (or a small starter)

Every reply is strict JSON (no NaN); a corrupt run is listed as ``unreadable``, never a 500 for the list.
Only ``runs``/``rundir`` are imported (stdlib): the server loads this module, so torch must never come in with it.
The runs folder is ``runs_root()`` unless the server sets ``tornado_settings={"distill_nb": {"runs_root": ...}}``.

Threads: reads (the list, a status, metrics) and actions (stop, resume, delete) run on two small pools of their
own, never on the server's shared default executor, so a Stop or Delete never waits behind slow listings (nor do
the listings of many open tabs starve the rest of Jupyter); concurrent listings of one folder share one read.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from .rundir import (
    RunBusy,
    RunNotFound,
    dumps,
    list_runs,
    read_metrics,
    read_status,
    run_dir,
    runs_root,
    validate_run_id,
)
from .runs import Run
from .safeio import loads, number

_PKG = Path(__file__).resolve().parent
# an installed package carries no notebooks/; a source checkout has them beside the package
QUICKSTART = [_PKG / "notebooks" / "00_quickstart.ipynb", _PKG.parent / "notebooks" / "00_quickstart.ipynb"]
STARTER_CELLS = [
    ("markdown", "# Distillation quickstart\n\nPick a teacher, shape a student, launch a run in the background."),
    ("code", "import distill_nb\n\ndistill_nb.app()"),
]

# reads may take seconds (a folder of long runs); actions must answer at once, so each kind has its own threads
READS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="distill-nb-read")
ACTIONS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="distill-nb-action")
_listing: dict[tuple[Path, asyncio.AbstractEventLoop], asyncio.Future] = {}  # (folder, loop) -> listing in flight


class _Handler(APIHandler):
    """Base: the runs folder, and the one place where exceptions become JSON errors."""

    @property
    def root(self) -> Path:
        return runs_root(self.settings.get("distill_nb", {}).get("runs_root"))

    async def reply(self, fn: Callable[..., Any], *args: Any, pool: ThreadPoolExecutor = READS) -> None:
        """Run ``fn(*args)`` on ``pool`` (it reads files, may signal) and write its result as JSON."""
        await self.answer(IOLoop.current().run_in_executor(pool, fn, *args))

    async def answer(self, work: Awaitable[Any]) -> None:
        """Await ``work`` and write its result as JSON, or its exception as a JSON error."""
        code = 200
        try:
            result = await work
            body = dumps(result)  # strict: NaN/Infinity become null, so JSON.parse never fails
        except RunNotFound as e:
            result, code = {"message": str(e)}, 404
        except RunBusy as e:  # a second Resume/Delete while a worker owns the run
            result, code = {"message": str(e)}, 409
        except PermissionError as e:
            # 403 is the sidebar's "your session is no longer valid": a file the server may not read is a 500
            if e.errno is None:  # a refusal of ours (remote code without consent)
                result, code = {"message": str(e)}, 403
            else:
                result, code = {"message": f"{e}: give the Jupyter server's user access to it."}, 500
        except ValueError as e:  # bad run id, bad ?since=, resuming a completed run, ...
            result, code = {"message": str(e)}, 400
        except Exception as e:
            self.log.exception("distill_nb: %s %s failed", self.request.method, self.request.path)
            result, code = {"message": f"{type(e).__name__}: {e}"}, 500
        if code != 200:
            body = dumps(result)
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class RunsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        # many open tabs poll one folder: a GET that finds a listing of it in flight waits for that one (at most
        # one read old) instead of queueing a read of its own
        root, loop = self.root, asyncio.get_running_loop()
        key = (root, loop)
        listing = _listing.get(key)
        if listing is None:
            listing = _listing[key] = loop.run_in_executor(READS, list_runs, root)
            listing.add_done_callback(lambda done: _listing.pop(key, None))
        await self.answer(asyncio.shield(listing))  # a client that goes away cancels its wait, not the read


class RunHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        await self.reply(lambda: {**read_status(run_dir(run_id, self.root)), "run_id": run_id})

    @tornado.web.authenticated
    async def delete(self, run_id: str) -> None:
        def delete() -> dict[str, Any]:
            Run(listed_run_dir(run_id, self.root)).delete()
            return {"run_id": run_id, "deleted": True}

        await self.reply(delete, pool=ACTIONS)


def listed_run_dir(run_id: str, root: Path) -> Path:
    """The folder of any run ``list_runs`` lists, the unreadable ones included, for Delete (it only renames it).

    ``run_dir`` wants a regular config.json; the list also shows a folder whose config.json is a directory or a
    link (as unreadable), and what the list shows, Delete must be able to remove.
    """
    try:
        return run_dir(run_id, root)
    except RunNotFound:
        path = root / validate_run_id(run_id)
        if not path.is_symlink() and path.is_dir() and os.path.lexists(path / "config.json"):
            return path
        raise


class MetricsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        since = self.get_query_argument("since", None)

        def page() -> dict[str, Any]:
            try:
                after = None if since in (None, "") else number(float(since))
            except ValueError:
                after = None
            if since not in (None, "") and after is None:  # -> 400
                raise ValueError(f"since={since!r} is not a finite number: pass the last next_since (or nothing).")
            records = read_metrics(run_dir(run_id, self.root), after)
            last = max((r.get("step", 0) for r in records), default=after)
            return {"run_id": run_id, "records": records, "next_since": last}

        await self.reply(page)


class StopHandler(_Handler):
    @tornado.web.authenticated
    async def post(self, run_id: str) -> None:
        # wait=None: the worker checkpoints before stopping; the sidebar's poll shows the new state
        await self.reply(lambda: Run(run_dir(run_id, self.root)).stop(wait=None), pool=ACTIONS)


class ResumeHandler(_Handler):
    @tornado.web.authenticated
    async def post(self, run_id: str) -> None:
        try:  # any body that is not a JSON object with "trust_remote_code": true is no consent
            body = loads(self.request.body or b"{}")  # also nesting too deep for json (a 500 before)
        except ValueError:
            body = None
        confirmed = isinstance(body, dict) and body.get("trust_remote_code") is True

        def resume() -> dict[str, Any]:
            run = Run(run_dir(run_id, self.root))
            if run.config.trust_remote_code and not confirmed:  # a click must not run hub code unseen
                raise PermissionError(f"run {run_id!r} enables trust_remote_code: resuming runs the model's own code "
                                      "from its repository. Confirm by sending {\"trust_remote_code\": true}.")
            # a server is not a kernel: the worker always runs as a plain subprocess here
            return run.resume(backend="subprocess").status()

        await self.reply(resume, pool=ACTIONS)


class TemplateHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.reply(template_notebook)


def template_notebook() -> dict[str, Any]:
    """The quickstart notebook as nbformat JSON, or a two-cell starter when it is not on disk."""
    for path in QUICKSTART:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    cells = [{"cell_type": kind, "metadata": {}, "source": text,
              **({"outputs": [], "execution_count": None} if kind == "code" else {})}
             for kind, text in STARTER_CELLS]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def setup_handlers(web_app: Any) -> None:
    """Register the routes under ``<base_url>/distill-nb/``."""
    base = url_path_join(web_app.settings["base_url"], "distill-nb")
    run = r"/runs/([^/]+)"  # tornado url-decodes the id, so %2F.. arrives as '/..' and validate_run_id rejects it
    web_app.add_handlers(".*$", [
        (base + "/runs", RunsHandler),
        (base + run, RunHandler),
        (base + run + "/metrics", MetricsHandler),
        (base + run + "/stop", StopHandler),
        (base + run + "/resume", ResumeHandler),
        (base + "/template", TemplateHandler),
    ])
