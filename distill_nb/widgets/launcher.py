"""Launcher: losses, temperature, optimiser and system settings; the exact config it runs; Start/Stop/Resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets as T

from ..config import DistillConfig
from ._util import Panel, esc, guarded, note_html

BACKENDS = ["auto", "subprocess", "kernel"]


class Launcher(Panel):
    """Training settings on top of a base config; Start launches ``runs.launch`` and hands the Run on.

    Traits:
        config: the base ``DistillConfig`` (teacher/student fields come from ``picker``/``designer`` if given).
        run_id: the id of the last run started here ('' before the first Start).
        config_json: the JSON of the config Start would run now (what Export writes).
    """

    config = T.Instance(DistillConfig)
    run_id = T.Unicode("")
    config_json = T.Unicode("")
    backend = T.Unicode("auto")

    def __init__(self, config: DistillConfig | None = None, *, picker: Any = None, designer: Any = None,
                 monitor: Any = None, backend: str = "auto", root: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.picker, self.designer, self.monitor, self.root = picker, designer, monitor, root
        c = config or DistillConfig()
        s = {"description_width": "120px"}
        lay = W.Layout(width="330px")
        self.fields: dict[str, W.ValueWidget] = {
            "objective": W.Dropdown(options=[("classification (task)", "classification"),
                                             ("masked LM (task-agnostic)", "mlm")], value=c.objective,
                                    description="objective", style=s, layout=lay),
            "alpha_kd": W.BoundedFloatText(c.alpha_kd, min=0, max=100, step=0.1, description="α KD (soft)",
                                           style=s, layout=lay),
            "alpha_ce": W.BoundedFloatText(c.alpha_ce, min=0, max=100, step=0.1, description="α CE (gold)",
                                           style=s, layout=lay),
            "alpha_hidden": W.BoundedFloatText(c.alpha_hidden, min=0, max=100, step=0.1, description="α hidden",
                                               style=s, layout=lay),
            "alpha_attn": W.BoundedFloatText(c.alpha_attn, min=0, max=100, step=0.1, description="α attention",
                                             style=s, layout=lay),
            "temperature": W.FloatSlider(c.temperature, min=0.5, max=10, step=0.5, description="temperature T",
                                         style=s, layout=lay),
            "learning_rate": W.FloatLogSlider(c.learning_rate, base=10, min=-6, max=-2, step=0.1,
                                              readout_format=".1e", description="learning rate", style=s,
                                              layout=lay),
            "max_steps": W.BoundedIntText(c.max_steps or 0, min=0, max=10**7, description="steps (0: epochs)",
                                          style=s, layout=lay),
            "epochs": W.BoundedFloatText(c.epochs, min=0.01, max=1000, step=0.5, description="epochs", style=s,
                                         layout=lay),
            "batch_size": W.Dropdown(options=sorted({8, 16, 32, 64, 128, c.batch_size}), value=c.batch_size,
                                     description="batch size", style=s, layout=lay),
            "eval_every": W.BoundedIntText(c.eval_every, min=1, max=10**7, description="eval every", style=s,
                                           layout=lay),
            "dataset": W.Text(c.dataset, description="dataset", style=s, layout=lay),
            "max_train_examples": W.BoundedIntText(c.max_train_examples or 0, min=0, max=10**9,
                                                   description="train cap (0: all)", style=s, layout=lay),
            "max_eval_examples": W.BoundedIntText(c.max_eval_examples or 0, min=0, max=10**9,
                                                  description="eval cap (0: all)", style=s, layout=lay),
            "max_length": W.BoundedIntText(c.max_length, min=8, max=4096, description="max tokens", style=s,
                                           layout=lay),
            "device": W.Dropdown(options=sorted({"auto", "cpu", "cuda", c.device}), value=c.device,
                                 description="device", style=s, layout=lay),
        }
        self.backend_dropdown = W.Dropdown(options=BACKENDS, value=backend, description="backend", style=s,
                                           layout=lay)
        self.start_button = W.Button(description="Start", icon="play", button_style="success")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="warning", disabled=True)
        self.resume_button = W.Button(description="Resume", icon="redo", disabled=True)
        self.export_path = W.Text("distill_config.json", description="export to", style=s,
                                  layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="Export JSON", icon="save")
        self.preview = W.Textarea(layout=W.Layout(width="100%", height="220px"), disabled=True)
        self.message = W.HTML()
        self.config = c
        self.backend = backend
        for w in self.fields.values():
            w.observe(self._changed, names=["value"])
        self.backend_dropdown.observe(lambda ch: setattr(self, "backend", ch["new"]), names=["value"])
        for source in (picker, designer):
            if source is not None:
                source.observe(self._changed, names=["teacher", "estimates", "init", "pretrained"]
                               if source is designer else ["teacher"])
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self.resume())
        self.export_button.on_click(lambda _: self.export())
        half = len(self.fields) // 2 + 1
        keys = list(self.fields)
        grid = W.HBox([W.VBox([self.fields[k] for k in keys[:half]]),
                       W.VBox([self.fields[k] for k in keys[half:]] + [self.backend_dropdown])])
        self.children = [W.HTML("<b>3. Train</b> — loss weights, temperature, optimiser; the config below is "
                                "exactly what runs (<code>distill-nb run FILE</code> takes the exported file)"),
                         grid, W.HBox([self.start_button, self.stop_button, self.resume_button]), self.message,
                         W.Accordion(children=[W.VBox([self.preview,
                                                       W.HBox([self.export_path, self.export_button])])],
                                     titles=("config JSON",)),
                         *self._footer()]
        self._changed(None)

    # --- the config ----------------------------------------------------------------------------------------
    def build_config(self) -> DistillConfig:
        """The DistillConfig Start would run now: base config + teacher + student design + these fields."""
        values: dict[str, Any] = {k: w.value for k, w in self.fields.items()}
        for key in ("max_steps", "max_train_examples", "max_eval_examples"):
            values[key] = values[key] or None  # 0 in the box means "none"
        values["dataset"] = values["dataset"].strip()
        if self.picker is not None:
            values["teacher"] = self.picker.teacher
        if self.designer is not None and self.designer.estimates:
            values.update(self.designer.config_fields())
        return self.config.replace(**values)

    @guarded
    def _changed(self, change: Any) -> None:
        self.config_json = self.build_config().to_json()
        self.preview.value = self.config_json

    @guarded
    def export(self, path: str | None = None) -> Path:
        """Write the config JSON (the file ``distill-nb run`` and ``DistillConfig.from_json`` take)."""
        target = Path(path or self.export_path.value).expanduser()
        self.build_config().to_json(target)
        self.message.value = note_html(f"config written to <code>{esc(target.resolve())}</code>; run it headless "
                                       f"with <code>distill-nb run {esc(target)}</code>")
        return target

    # --- run control -------------------------------------------------------------------------------------------
    @property
    def run(self) -> Any:
        from ..runs import Run, run_dir

        return Run(run_dir(self.run_id, self.root)) if self.run_id else None

    @guarded
    def start(self, run_id: str | None = None) -> Any:
        """Launch the config in the background (``runs.launch``) and hand the Run to the monitor."""
        from ..runs import launch

        config = self.build_config()
        run = launch(config, backend=self.backend, root=self.root, run_id=run_id)
        self.run_id = run.id
        self.message.value = note_html(f"started run <code>{esc(run.id)}</code> ({esc(self.backend)} backend) in "
                                       f"<code>{esc(run.path)}</code>")
        if self.monitor is not None:
            self.monitor.watch(run)
        self._buttons("running")
        return run

    @guarded
    def stop(self) -> None:
        """Ask the run to checkpoint and stop (returns at once; the monitor shows when it has stopped)."""
        if self.run is None:
            raise ValueError("no run to stop: press Start first.")
        self.run.stop(wait=None)
        self.message.value = note_html(f"asked run <code>{esc(self.run_id)}</code> to stop at its next step")
        self._buttons("stopping")

    @guarded
    def resume(self) -> None:
        """Continue a stopped or failed run from its last checkpoint."""
        if self.run is None:
            raise ValueError("no run to resume: press Start first.")
        run = self.run.resume(backend=self.backend)
        if self.monitor is not None:
            self.monitor.watch(run)
        self.message.value = note_html(f"resumed run <code>{esc(self.run_id)}</code>")
        self._buttons("running")

    def _buttons(self, state: str) -> None:
        active = state in ("running", "queued", "stopping")
        self.start_button.disabled = active
        self.stop_button.disabled = not active or state == "stopping"
        self.resume_button.disabled = active or state == "completed" or not self.run_id

    def run_finished(self, state: str) -> None:
        """Called by the monitor when the run leaves queued/running."""
        self._buttons(state)

    def __repr__(self) -> str:
        try:
            summary = json.dumps({k: v for k, v in self.build_config().to_dict().items()
                                  if k in ("teacher", "objective", "student_layers", "alpha_kd", "alpha_ce",
                                           "temperature", "learning_rate", "max_steps", "batch_size")})
        except Exception as e:  # noqa: BLE001 - the repr must never raise
            summary = f"invalid config: {e}"
        return f"Launcher(run_id={self.run_id!r}, backend={self.backend!r}, config={summary})"


__all__ = ["Launcher"]
