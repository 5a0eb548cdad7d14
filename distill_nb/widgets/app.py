"""DistillApp: every widget as one tabbed app that shares state; ``distill_nb.app()`` in one line.

Teacher chosen -> the designer's shape limits; designer + launcher -> the config; Start -> the monitor;
a completed run -> explorer, error analysis and comparison.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import traitlets as T

from ..config import DistillConfig
from ._util import esc, note_html
from .attribution import AttributionExplorer
from .comparison import Comparison
from .errors import ErrorAnalysis
from .launcher import Launcher
from .monitor import RunMonitor
from .student import StudentDesigner
from .teacher import TeacherPicker
from .workshop import app_config

TABS = ["Teacher", "Student", "Train", "Monitor", "Explain", "Errors", "Compare"]


class DistillApp(W.VBox):
    """Teacher -> Student -> Train -> Monitor -> Explain -> Errors -> Compare, as tabs.

    Args:
        config: the starting config (default ``workshop.app_config()``: the offline MiniLM-L6 teacher on a
            workshop-sized slice of SST-2; the Train tab shows its steps and minutes before Start).
        run_id: open an existing run (monitor, and explorer/comparison once it has completed).
        backend: how Start runs the training ("auto", "subprocess", "kernel").
        root: the runs folder (default ``$DISTILL_NB_RUNS``).
    """

    run_id = T.Unicode("")

    def __init__(self, config: DistillConfig | None = None, *, run_id: str | None = None, backend: str = "auto",
                 root: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        config = config or app_config()
        self.root = root
        self.picker = TeacherPicker(config.teacher)
        self.designer = StudentDesigner(self.picker.teacher_config, layers=config.student_layers,
                                        init="every_k" if config.student_init == "every_k" else "random")
        self.monitor = RunMonitor()
        self.launcher = Launcher(config, picker=self.picker, designer=self.designer, monitor=self.monitor,
                                 backend=backend, root=root)
        self.explorer = AttributionExplorer()
        self.errors = ErrorAnalysis(self.explorer)
        self.comparison = Comparison()
        self.tabs = W.Tab(children=[self.picker, self.designer, self.launcher, self.monitor, self.explorer,
                                    self.errors, self.comparison], titles=TABS)
        self.picker.observe(self._teacher_changed, names=["teacher_config"])
        self.launcher.observe(self._started, names=["run_id"])
        self.tabs.observe(self._tab_shown, names=["selected_index"])
        self.monitor.observe(self._state_changed, names=["state"])
        self.errors.on_open = lambda _: setattr(self.tabs, "selected_index", TABS.index("Explain"))
        self._advice: tuple[tuple, tuple[Any, Any, Any]] | None = None
        self.designer.task_source = self.advice_inputs  # "suggest layers" reads the Train tab's data
        self.designer.config_source = self.launcher.build_config  # "rank by short runs" trains with its config
        self.children = [W.HTML("<h3 style='margin:4px 0'>distill_nb — distil a transformer classifier</h3>"),
                         self.tabs]
        if run_id:
            self.open_run(run_id)

    def _teacher_changed(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.designer.teacher_config = change["new"]

    def _started(self, change: dict[str, Any]) -> None:
        self.run_id = change["new"]
        for view in (self.explorer, self.errors, self.comparison):  # nothing of the previous run stays
            view.clear()
        self.tabs.selected_index = TABS.index("Monitor")

    def _tab_shown(self, change: dict[str, Any]) -> None:
        # the first look at Train measures this machine (a few seconds) so minutes show before Start
        if change["new"] == TABS.index("Train") and self.launcher.rates is None and self.auto_estimate:
            self.auto_estimate = False
            self.launcher.measure()

    auto_estimate = True  # set False to never time a batch on its own

    def _state_changed(self, change: dict[str, Any]) -> None:
        # Start/Stop/Resume follow the state themselves (the launcher observes the monitor)
        if change["new"] == "completed" and self.monitor.run is not None:
            run = self.monitor.run
            self.explorer.set_run(run)
            self.errors.set_run(run)
            self.comparison.set_run(run)

    def advice_inputs(self) -> tuple[Any, Any, Any]:
        """(task, teacher, tokenizer) for the Student tab's "suggest layers": the Train tab's data and the teacher
        a run would distil from (for a bare encoder, its prepared teacher from the cache). Loaded once per
        teacher + data setting.

        Raises:
            ValueError: the teacher is a bare encoder and no teacher has been prepared on this data yet.
        """
        from ..rundata import full_task_for
        from ..teacher_cache import classifier_teacher

        config = self.launcher.build_config()
        key = tuple(str(getattr(config, k)) for k in ("teacher", "dataset", "text_column", "label_column",
                                                     "train_split", "eval_split", "text_pair", "label_names",
                                                     "seed", "trust_remote_code"))
        if self._advice is not None and self._advice[0] == key:
            return self._advice[1]
        task = full_task_for(config)  # the data a prepared teacher is keyed on (the advisor samples from it)
        teacher, tokenizer, _ = classifier_teacher(config.teacher, task, trust_remote_code=config.trust_remote_code)
        self._advice = (key, (task, teacher.eval(), tokenizer))
        return self._advice[1]

    def open_run(self, run_id: str) -> None:
        """Show an existing run in the monitor (and, when completed, in the analysis tabs)."""
        from ..runs import Run

        run = Run.attach(run_id, self.root)
        config = run.config
        try:  # what the tabs held before: edits the person made are about to be replaced by the run's settings
            held = self.launcher.build_config().diff(config)
        except Exception:  # noqa: BLE001 — tabs that do not make a config have nothing to lose
            held = {}
        held.pop("name", None)
        # every tab shows the attached run's config, so Start there runs what the person sees: the run's teacher
        # also when it cannot be loaded (the picker says so), and its config is read again (no stale error)
        self.picker.show(config.teacher)
        self.designer.set_config(config)
        self.launcher.set_config(config)
        self.run_id = run.id
        for view in (self.explorer, self.errors, self.comparison):
            view.clear()
        self.launcher.run_id = run.id
        self.monitor.watch(run)
        self.launcher.run_finished(self.monitor.state or "stopped")  # Start/Stop/Resume as the run stands
        replaced = ", ".join(f"{k} {v[0]!r} → {v[1]!r}" for k, v in list(held.items())[:4]) + (
            ", …" if len(held) > 4 else "")
        self.launcher.message.value = note_html(f"opened run <code>{esc(run.id)}</code>") + (
            note_html(f"the tabs held other settings than this run's ({esc(replaced)}): they now show the run's. "
                      "To train your settings, set them again and Start with another run id (or fork this run: "
                      "run.fork(...)).", "#a60") if held else "") + (
            note_html(f"the run's teacher <code>{esc(config.teacher)}</code> cannot be loaded (see the Teacher "
                      "tab): put it back before Resume, or pick another teacher before Start.", "#a00")
            if self.picker.teacher_config is None else "")
        self.tabs.selected_index = TABS.index("Monitor")

    def close(self) -> None:
        """Stop the monitor's polling and close the app."""
        self.monitor.close()
        super().close()

    def __repr__(self) -> str:
        lines = ["DistillApp (tabs: " + ", ".join(TABS) + ")", "  " + repr(self.picker), "  " + repr(self.designer),
                 "  " + repr(self.launcher), "  " + repr(self.monitor)]
        return "\n".join(lines)


__all__ = ["DistillApp"]
