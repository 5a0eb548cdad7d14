"""Launcher: data columns, losses, temperature, optimiser and system settings; what the run will cost; the
exact config it runs; Start/Stop/Resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets as T

from .. import config as config_module
from ..config import DistillConfig
from ._util import Panel, buttons_say, esc, guarded, note_html
from .datafile import data_columns, guess_label_column, guess_text_column

BACKENDS = ["auto", "subprocess", "kernel"]
# the widgets' ranges: what DistillConfig.validate accepts (a set config outside them widens them, see _fit)
MAX_EPOCHS = getattr(config_module, "MAX_EPOCHS", 10_000)
MIN_MAX_LENGTH = getattr(config_module, "MIN_MAX_LENGTH", 8)
MAX_COUNT = 2**53 - 1  # the largest integer a browser's number holds exactly (larger set values widen the box)
MAX_WEIGHT = 1e6  # loss weights have no upper bound in DistillConfig; larger set values widen the box
HAS_LABEL_NAMES = "label_names" in {f.name for f in dataclasses.fields(DistillConfig)}  # newer configs


def round_lr(value: float) -> float:
    """A log-slider value as a person would type it: 10**-4.3 = 5.0119e-05 becomes 5e-05."""
    return float(f"{value:.2g}") if value > 0 and math.isfinite(value) else value


ATTR_HELP = ("<small><b>α attribution</b> (0: off; 0.3–0.6 measured to work) pulls the student's token "
             "attributions (gradient × input) towards the teacher's, so it decides for the same reasons; costs one "
             "teacher pass over the training set (cached) and ~2.4× the time per step (CPU, every batch row aligned; "
             "<code>attr_examples</code> aligns fewer).</small>")


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
        lay = W.Layout(width="300px")
        self.fields: dict[str, W.ValueWidget] = {
            "objective": W.Dropdown(options=[("classification (task)", "classification"),
                                             ("masked LM (task-agnostic)", "mlm")], value=c.objective,
                                    description="objective", style=s, layout=lay),
            "alpha_kd": W.BoundedFloatText(c.alpha_kd, min=0, max=MAX_WEIGHT, step=0.1, description="α KD (soft)",
                                           style=s, layout=lay),
            "alpha_ce": W.BoundedFloatText(c.alpha_ce, min=0, max=MAX_WEIGHT, step=0.1, description="α CE (gold)",
                                           style=s, layout=lay),
            "alpha_hidden": W.BoundedFloatText(c.alpha_hidden, min=0, max=MAX_WEIGHT, step=0.1,
                                               description="α hidden",
                                               style=s, layout=lay),
            "alpha_attn": W.BoundedFloatText(c.alpha_attn, min=0, max=MAX_WEIGHT, step=0.1,
                                               description="α attention",
                                             style=s, layout=lay),
            "alpha_attr": W.BoundedFloatText(c.alpha_attr, min=0, max=MAX_WEIGHT, step=0.1,
                                               description="α attribution",
                                             style=s, layout=lay),
            "temperature": W.FloatSlider(c.temperature, min=0.5, max=10, step=0.5, description="temperature T",
                                         style=s, layout=lay),
            "learning_rate": W.FloatLogSlider(c.learning_rate, base=10, min=-6, max=-2, step=0.1,
                                              readout_format=".1e", description="learning rate", style=s,
                                              layout=lay),
            "max_steps": W.BoundedIntText(c.max_steps or 0, min=0, max=MAX_COUNT, description="steps (0: epochs)",
                                          style=s, layout=lay),
            "epochs": W.BoundedFloatText(c.epochs, min=0, max=MAX_EPOCHS, step=0.5, description="epochs", style=s,
                                         layout=lay),
            "batch_size": W.Dropdown(options=sorted({8, 16, 32, 64, 128, c.batch_size}), value=c.batch_size,
                                     description="batch size", style=s, layout=lay),
            "eval_every": W.BoundedIntText(c.eval_every, min=1, max=MAX_COUNT, description="eval every", style=s,
                                           layout=lay),
            "dataset": W.Text(c.dataset, description="dataset", style=s, layout=lay, continuous_update=False),
            "text_column": W.TagsInput(value=_as_list(c.text_column), allowed_tags=[], allow_duplicates=False,
                                       layout=W.Layout(width="200px")),
            "label_column": W.Combobox(value=c.label_column, options=[], ensure_option=False,
                                       description="label column", style=s, layout=lay),
            "train_split": W.Combobox(value=c.train_split, options=[], ensure_option=False,
                                      description="train split", style=s, layout=lay),
            "eval_split": W.Combobox(value=c.eval_split, options=[], ensure_option=False, description="eval split",
                                     style=s, layout=lay),
            "teacher_prep_steps": W.BoundedIntText(c.teacher_prep_steps, min=0, max=MAX_COUNT,
                                                   description="teacher prep", style=s, layout=lay,
                                                   tooltip="steps to fine-tune a bare-encoder teacher on this task "
                                                   "before distilling (teacher_prep_steps)"),
            "max_train_examples": W.BoundedIntText(c.max_train_examples or 0, min=0, max=MAX_COUNT,
                                                   description="train cap (0: all)", style=s, layout=lay),
            "max_eval_examples": W.BoundedIntText(c.max_eval_examples or 0, min=0, max=MAX_COUNT,
                                                  description="eval cap (0: all)", style=s, layout=lay),
            "max_length": W.BoundedIntText(c.max_length, min=MIN_MAX_LENGTH, max=MAX_COUNT, description="max tokens",
                                           style=s, layout=lay),
            "device": W.Dropdown(options=sorted({"auto", "cpu", "cuda", c.device}), value=c.device,
                                 description="device", style=s, layout=lay),
        }
        if HAS_LABEL_NAMES:
            self.fields["label_names"] = W.Text(", ".join(getattr(c, "label_names", None) or []),
                                                placeholder="e.g. negative, positive (empty: from the data)",
                                                description="label names", style=s, layout=lay,
                                                continuous_update=False)
        self._loading = False
        self._stop_asked = False  # Stop was clicked and the run has not stopped yet
        self._given: dict[str, tuple[Any, Any]] = {}  # field: (value its widget was given, the config's value)
        self._show(c)  # c's values as given: a widget's range is widened, never c's value clamped into it
        self.columns_note = W.HTML()
        self.estimate = W.HTML()
        self.estimate_button = W.Button(description="Estimate time", icon="clock-o", layout=W.Layout(width="170px"),
                                        tooltip="time a batch of teacher and student on this machine")
        self.rates: dict[str, Any] | None = None
        self.backend_dropdown = W.Dropdown(options=BACKENDS, value=backend, description="backend", style=s,
                                           layout=lay)
        self.start_button = W.Button(description="Start", icon="play", button_style="success")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.resume_button = W.Button(description="Resume", icon="redo", disabled=True)
        self.export_path = W.Text("distill_config.json", description="export to", style=s,
                                  layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="Export JSON", icon="save")
        self.preview = W.Textarea(layout=W.Layout(width="100%", height="220px"), disabled=True)
        self.message = W.HTML()
        self.config = c
        self.backend = backend
        for key, w in self.fields.items():  # the data fields rebuild the config themselves, after their columns:
            if key not in ("dataset", "train_split"):  # a second observer would clear the error the first showed
                w.observe(self._changed, names=["value"])
        self.fields["dataset"].observe(self._dataset_changed, names=["value"])
        self.fields["train_split"].observe(self._dataset_changed, names=["value"])
        self.estimate_button.on_click(lambda _: self.measure())
        self.backend_dropdown.observe(lambda ch: setattr(self, "backend", ch["new"]), names=["value"])
        for source in (picker, designer):
            if source is not None:
                source.observe(self._changed, names=["teacher", "estimates", "init", "pretrained"]
                               if source is designer else ["teacher"])
        # a double-click sends two clicks before the first disables the button: the second is ignored (so is a
        # click sent while the button was still enabled that arrives after the run changed state)
        self.start_button.on_click(lambda _: None if self.start_button.disabled else self.start())
        self.stop_button.on_click(lambda _: None if self.stop_button.disabled else self.stop())
        self.resume_button.on_click(lambda _: None if self.resume_button.disabled else self.resume())
        if monitor is not None:  # the buttons follow the run's state, also when it changes elsewhere
            monitor.observe(self._monitor_state, names=["state"])
        self.export_button.on_click(lambda _: self.export())
        data_keys = ["dataset", "text_column", "label_column", "train_split", "eval_split", "label_names",
                     "max_train_examples", "max_eval_examples", "max_length", "teacher_prep_steps"]
        data_boxes = [W.HBox([W.Label("text column(s)", layout=W.Layout(width="120px")), self.fields[k]])
                      if k == "text_column" else self.fields[k] for k in data_keys if k in self.fields]
        rest = [k for k in self.fields if k not in data_keys]
        half = (len(rest) + 1) // 2
        grid = W.HBox([W.VBox([W.HTML("<b>data</b>")] + data_boxes + [self.columns_note],
                              layout=W.Layout(width="310px")),
                       W.VBox([W.HTML("<b>losses</b>")] + [self.fields[k] for k in rest[:half]]),
                       W.VBox([W.HTML("<b>optimiser and system</b>")] + [self.fields[k] for k in rest[half:]]
                              + [self.backend_dropdown])], layout=W.Layout(flex_flow="row wrap", gap="8px"))
        self.children = [W.HTML("<b>3. Train</b> — data, loss weights, temperature, optimiser; the config below is "
                                "exactly what runs (<code>distill-nb run FILE</code> takes the exported file)"),
                         grid, W.HTML(ATTR_HELP), W.HBox([self.estimate, self.estimate_button]),
                         W.HBox([self.start_button, self.stop_button, self.resume_button]), self.message,
                         W.Accordion(children=[W.VBox([self.preview,
                                                       W.HBox([self.export_path, self.export_button])])],
                                     titles=("config JSON",)),
                         *self._footer()]
        self._dataset_changed(None)
        self._changed(None)

    def show_error(self, exc: BaseException) -> None:
        super().show_error(exc)
        self.error = buttons_say(self.error)  # this tab has Stop/Resume buttons, not stop()/resume()

    # --- the config ----------------------------------------------------------------------------------------
    def build_config(self) -> DistillConfig:
        """The DistillConfig Start would run now: base config + teacher + student design + these fields."""
        values: dict[str, Any] = {}
        for key, w in self.fields.items():
            given = self._given.get(key)
            if given is not None and _same(w.value, given[0]):
                values[key] = given[1]  # still showing the set config's value: exactly it (no rounding, no strip)
                continue
            values[key] = w.value
            if key in ("max_steps", "max_train_examples", "max_eval_examples"):
                values[key] = values[key] or None  # 0 in the box means "none"
            elif key in ("dataset", "label_column", "train_split", "eval_split"):
                values[key] = values[key].strip()
            elif key == "learning_rate":
                values[key] = round_lr(values[key])
            elif key == "text_column":
                texts = [t.strip() for t in values[key] if t.strip()]
                if not texts:
                    raise ValueError("no text column: pick the column that holds the text (the data's columns are "
                                     "listed under the data fields).")
                values[key] = texts[0] if len(texts) == 1 else texts  # a list needs a config that takes one
            elif key == "label_names":
                names = [n.strip() for n in values[key].split(",") if n.strip()]
                values[key] = names or None
        if self.picker is not None:
            values["teacher"] = self.picker.teacher
        if self.designer is not None and self.designer.estimates:
            values.update(self.designer.config_fields())
        return self.config.replace(**values)

    @guarded
    def _changed(self, change: Any) -> None:
        self._rebuild()

    def _rebuild(self) -> None:
        """Build the config from the fields and show it (preview, estimate); a bad value raises."""
        if self._loading:
            return  # set_config: the config is built once, when every field shows it
        try:
            config = self.build_config()
        except Exception:  # never show a config that Start would not run
            self.preview.value = "(no valid config: see the error above)"
            raise
        self.config_json = config.to_json()
        self.preview.value = self.config_json
        self.show_estimate(config)

    def set_config(self, config: DistillConfig) -> None:
        """Show ``config`` in every field (e.g. the config of a run the app re-attached to).

        Every value is kept as given: a widget whose range does not hold it is widened, and ``build_config()``
        returns ``config`` again until a field is changed.
        """
        self._loading = True
        try:
            self._show(config)
            self._dataset_changed(None)  # the file's columns and splits (the config's own ones are kept)
        finally:
            self._loading = False
        self._changed(None)

    def _show(self, config: DistillConfig) -> None:
        """Put ``config``'s values into the fields, as given, and remember them (see ``build_config``)."""
        self.config = config
        loading, self._loading = self._loading, True
        try:
            for key, w in self.fields.items():
                value = getattr(config, key, None)
                if key == "text_column":
                    value = _as_list(value)
                    missing = [t for t in value if w.allowed_tags and t not in w.allowed_tags]
                    if missing:  # not a column of the current file: shown as given (the estimate names it)
                        w.allowed_tags = [*w.allowed_tags, *missing]
                elif key == "label_names":
                    value = ", ".join(value or [])
                elif key in ("max_steps", "max_train_examples", "max_eval_examples"):
                    value = value or 0
                elif key in ("batch_size", "device") and value not in w.options:
                    w.options = sorted({*w.options, value})
                if value is None:
                    continue
                _fit(w, value)
                if not _same(w.value, value):
                    w.value = value
            self._given = {key: (w.value, getattr(config, key, None)) for key, w in self.fields.items()
                           if hasattr(config, key)}
        finally:
            self._loading = loading

    # --- data columns -----------------------------------------------------------------------------------------
    @guarded
    def _dataset_changed(self, change: Any) -> None:
        """The config with the new data (its error, if any, stays shown), then the file's columns and splits."""
        if change is not None:
            self._rebuild()
        self._offer_columns()

    def _offer_columns(self) -> None:
        """Offer the file's columns and splits; pick likely ones when the current ones are not there."""
        dataset = self.fields["dataset"].value.strip()
        columns, splits, fixed = data_columns(dataset, self.fields["train_split"].value.strip() or "train")
        text, label = self.fields["text_column"], self.fields["label_column"]
        text.allowed_tags = [] if fixed else columns
        label.options = columns
        for key in ("train_split", "eval_split"):
            self.fields[key].options = splits
        for w in (text, label, self.fields["train_split"], self.fields["eval_split"]):
            w.disabled = fixed
        if columns and not fixed and not self._loading:  # set_config keeps the config's columns as given
            if not [t for t in text.value if t in columns]:
                guess = guess_text_column(columns)
                text.value = [guess] if guess else []
            if label.value not in columns:
                label.value = guess_label_column(columns) or label.value
        if fixed:
            self.columns_note.value = note_html(f"<code>{esc(dataset)}</code> is a packaged data set: its columns "
                                                "and splits are fixed.")
        elif columns:
            where = "the train file" if len(splits) > 1 else "the file (10 % is held out for evaluation)"
            self.columns_note.value = note_html(f"columns in {where}: " + ", ".join(f"<code>{esc(c)}</code>"
                                                                                      for c in columns))
        else:
            self.columns_note.value = note_html("type the column names (a datasets name is read by the run)")

    # --- cost estimate ------------------------------------------------------------------------------------------
    def show_estimate(self, config: DistillConfig | None = None) -> None:
        """Steps per phase now (no torch); minutes from rates measured on this machine, when there are some."""
        from .estimate import plan, stored_rates, summary_html

        config = config or self.build_config()
        try:
            p = plan(config)
        except Exception as exc:  # noqa: BLE001 - a wrong column is shown here and by Start
            self.estimate.value = note_html(f"<b>Estimate:</b> cannot count the steps yet: {esc(exc)}", "#a00")
            return
        self.rates = stored_rates(config)
        self.plan = p
        html = summary_html(p, self.rates, config.batch_size)
        if self.rates is None:
            html = html.replace("<i>Minutes: measuring this machine's speed…</i>",
                                "<i>Minutes: press Estimate time (times one batch of each model here).</i>")
        self.estimate.value = html

    @guarded
    def measure(self) -> dict[str, Any]:
        """Time one batch of teacher and student on this machine (a few seconds) and show the minutes."""
        from .estimate import measure, plan, summary_html

        config = self.build_config()
        p = plan(config)
        self.estimate.value = summary_html(p, None, config.batch_size)
        self.estimate_button.disabled = True
        try:
            self.rates = measure(config)
        finally:
            self.estimate_button.disabled = False
        self.estimate.value = summary_html(p, self.rates, config.batch_size)
        return self.rates

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

        self.start_button.disabled = True  # until the run ends; a failed launch enables it again
        self.start_button.button_style = ""
        try:
            config = self.build_config()
            run = launch(config, backend=self.backend, root=self.root, run_id=run_id)
        except BaseException:
            self._buttons(self._run_state())  # the buttons of the run this launcher still holds (a live one: no Start)
            raise
        self.run_id = run.id
        self.message.value = note_html(f"started run <code>{esc(run.id)}</code> ({esc(self.backend)} backend) in "
                                       f"<code>{esc(run.path)}</code>")
        if self.monitor is not None:
            self.monitor.watch(run)
        self._buttons("running")
        return run

    @guarded
    def stop(self) -> None:
        """Ask the run to checkpoint and stop (returns at once; the monitor shows when it has stopped).

        A run that is no longer queued/running (it finished before the click arrived) is left as it is: the
        buttons are set from its state and the message says it had already finished.
        """
        run = self.run
        if run is None:
            raise ValueError("no run to stop: press Start first.")
        state = _state_of(run)
        if state not in ACTIVE:
            self._buttons(state)
            self.message.value = note_html(f"run <code>{esc(self.run_id)}</code> had already finished "
                                           f"({esc(state)}); nothing to stop")
            return
        state = _state_value(run.stop(wait=None).get("state"))
        if state not in ACTIVE:  # stopped before its worker started, or it finished meanwhile
            self._buttons(state)
            self.message.value = note_html(f"run <code>{esc(self.run_id)}</code> is {esc(state)}")
            return
        self.message.value = note_html(f"asked run <code>{esc(self.run_id)}</code> to stop at its next step")
        self._buttons("stopping")

    @guarded
    def resume(self) -> None:
        """Continue a stopped or failed run from its last checkpoint.

        A run that is already queued or running (resumed by a second click, the sidebar, the CLI or another
        notebook) is followed instead: the monitor watches it again and the buttons show it as running.
        """
        from ..runs import RunBusy

        run = self.run
        if run is None:
            raise ValueError("no run to resume: press Start first.")
        self.resume_button.disabled = True  # one click, one resume
        self.resume_button.button_style = ""
        try:
            run = run.resume(backend=self.backend)
        except RunBusy:
            state = _state_of(run)
            if state not in ACTIVE:  # e.g. a worker still releasing its lock: a real, passing error
                self._buttons(state)
                raise
            if self.monitor is not None:
                self.monitor.watch(run)
            self._buttons(state)
            self.message.value = note_html(f"run <code>{esc(self.run_id)}</code> is already {esc(state)} (resumed "
                                           "elsewhere or by an earlier click); the monitor follows it")
            return
        except BaseException:
            self._buttons(_state_of(run))  # as the run stands: an unreadable or completed run offers no Resume
            raise
        if self.monitor is not None:
            self.monitor.watch(run)
        self.message.value = note_html(f"resumed run <code>{esc(self.run_id)}</code>")
        self._buttons("running")

    def _run_state(self) -> str:
        """The state of this launcher's run ("" without one, or when it cannot be read)."""
        try:
            return str(self.run.status().get("state") or "") if self.run_id else ""
        except Exception:  # noqa: BLE001 — a deleted or unreadable run: the buttons of no run
            return ""

    def _buttons(self, state: str) -> None:
        active = state in ("running", "queued", "stopping")
        self._stop_asked = state == "stopping"
        self.start_button.disabled = active
        self.stop_button.disabled = not active or state == "stopping"
        # a completed run is never trained again; an unreadable one cannot be resumed (Run.resume raises)
        self.resume_button.disabled = active or state in ("completed", "unreadable") or not self.run_id
        # a disabled button keeps no accent colour, so it does not look pressable
        for button, style in ((self.start_button, "success"), (self.stop_button, "warning"),
                              (self.resume_button, "info")):
            button.button_style = "" if button.disabled else style

    def run_finished(self, state: str) -> None:
        """Called by the monitor when the run leaves queued/running (and when it is queued/running again)."""
        self._buttons(state)

    def _monitor_state(self, change: dict[str, Any]) -> None:
        """The monitor's run changed state: the buttons follow when it is this launcher's run."""
        state = change["new"]
        run = getattr(self.monitor, "run", None)
        if not state or run is None or not self.run_id or run.id != self.run_id:
            return
        if state in ACTIVE and self._stop_asked:
            state = "stopping"  # Stop was clicked: it stays off until the run has stopped
        self._buttons(state)  # finished, or queued/running again (resumed elsewhere)

    def __repr__(self) -> str:
        try:
            summary = json.dumps({k: v for k, v in self.build_config().to_dict().items()
                                  if k in ("teacher", "objective", "student_layers", "alpha_kd", "alpha_ce",
                                           "temperature", "learning_rate", "max_steps", "batch_size")})
        except Exception as e:  # noqa: BLE001 - the repr must never raise
            summary = f"invalid config: {e}"
        return f"Launcher(run_id={self.run_id!r}, backend={self.backend!r}, config={summary})"


ACTIVE = ("queued", "running")


def _state_value(state: Any) -> str:
    """A state as its plain string ('stopped'), also when given as a ``Status`` member."""
    return str(getattr(state, "value", state) or "")


def _state_of(run: Any) -> str:
    """The run's state now (read from status.json); 'unreadable' when it cannot be read."""
    try:
        return _state_value(run.status().get("state"))
    except Exception:  # noqa: BLE001 - a deleted or damaged run: nothing to resume
        return "unreadable"


def _same(a: Any, b: Any) -> bool:
    """Whether a widget's value equals a value it was given (lists and tuples alike)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _fit(w: W.Widget, value: Any) -> None:
    """Widen ``w``'s range (min/max) so that it holds ``value`` as given instead of clamping it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not hasattr(w, "max"):
        return
    if isinstance(w, W.FloatLogSlider):  # min/max are exponents of base
        if not (value > 0 and math.isfinite(value)):
            return
        low = high = math.log(value, w.base)
        if low < w.min:
            w.min = math.floor(low)
            while w.base ** w.min > value:
                w.min -= 1
        if high > w.max:
            w.max = math.ceil(high)
            while w.base ** w.max < value:
                w.max += 1
        return
    w.min = min(w.min, value)
    w.max = max(w.max, value)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


__all__ = ["Launcher", "round_lr"]
