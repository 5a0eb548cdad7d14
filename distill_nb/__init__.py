"""distill_nb: knowledge distillation of transformer text classifiers, in JupyterLab.

Importing the package is cheap (no torch): the Jupyter server loads it for its REST routes.
Heavy modules load on first use: ``distill_nb.train``, ``distill_nb.models``, ``distill_nb.attribution``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .config import ConfigError, DistillConfig
from .runs import Run, Status, launch, list_runs


def app(**kwargs: Any):
    """The whole toolkit as one tabbed widget: ``distill_nb.app()``."""
    from .widgets import DistillApp

    return DistillApp(**kwargs)


def teachers() -> list:
    """The prepared teachers in the cache (``$DISTILL_NB_CACHE/teachers``), newest first, each with its task,
    base, dev accuracy, steps and date (``.label``): see :mod:`distill_nb.teacher_cache`."""
    from .teacher_cache import teachers as _teachers

    return _teachers()


def remove_teacher(teacher: Any) -> Any:
    """Delete a prepared teacher (a ``teachers()`` entry, its folder or its name) from the cache."""
    from .teacher_cache import remove_teacher as _remove

    return _remove(teacher)


def suggest_layers(*args: Any, **kwargs: Any):
    """Which teacher layers a student should copy, from evidence on task data: see :mod:`distill_nb.advisor`."""
    from .advisor import suggest_layers as _suggest_layers

    return _suggest_layers(*args, **kwargs)


def rank_by_proxy_runs(*args: Any, **kwargs: Any):
    """Rank candidate layer sets by short distillation runs (successive halving): see :mod:`distill_nb.layer_search`."""
    from .layer_search import rank_by_proxy_runs as _rank

    return _rank(*args, **kwargs)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "distill-nb"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "distill_nb"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .routes import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("distill_nb: REST routes registered under /distill-nb/")


__all__ = ["ConfigError", "DistillConfig", "Run", "Status", "__version__", "app", "launch", "list_runs",
           "rank_by_proxy_runs", "remove_teacher", "suggest_layers", "teachers"]
