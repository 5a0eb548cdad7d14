"""distill_nb: knowledge distillation of transformer text classifiers, in JupyterLab.

Importing the package is cheap (no torch): the Jupyter server loads it for its REST routes.
Heavy modules load on first use: ``distill_nb.train``, ``distill_nb.models``, ``distill_nb.attribution``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .config import ConfigError, DistillConfig  # noqa: E402  (stdlib only)
from .runs import Run, Status, launch, list_runs  # noqa: E402  (stdlib only)


def app(**kwargs: Any):
    """The whole toolkit as one tabbed widget: ``distill_nb.app()``."""
    from .widgets import DistillApp

    return DistillApp(**kwargs)


def suggest_layers(*args: Any, **kwargs: Any):
    """Which teacher layers a student should copy, from evidence on task data: see :mod:`distill_nb.advisor`."""
    from .advisor import suggest_layers as _suggest_layers

    return _suggest_layers(*args, **kwargs)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "distill-nb"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "distill_nb"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .routes import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("distill_nb: REST routes registered under /distill-nb/")


__all__ = ["ConfigError", "DistillConfig", "Run", "Status", "app", "launch", "list_runs", "suggest_layers",
           "__version__"]
