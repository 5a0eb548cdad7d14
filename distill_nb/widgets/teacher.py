"""TeacherPicker: choose a teacher (packaged offline models first) and see its shape, size and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as W
import traitlets as T

from ..safeio import number
from ._util import Panel, esc, fmt_number, fmt_params, guarded, note_html, table_html

CUSTOM = "other (type an id or path)…"


def teacher_options() -> list[tuple[str, str]]:
    """(label, value) pairs: packaged aliases, then the prepared teachers in the cache, newest first, each
    named by task, base, dev accuracy, steps and date."""
    from ..models import PACKAGED
    from ..teacher_cache import teachers

    options = [(f"{alias} — {desc}", alias) for alias, (_, desc) in PACKAGED.items()]
    options += [(f"prepared: {t.label}", str(t.path)) for t in teachers()]
    return options


def teacher_info(name: str) -> tuple[Any, dict[str, Any]]:
    """Load only the config of ``name`` (no weights) and summarise it.

    Returns:
        (transformers config, info dict with model_type, architecture, shape, params, mb, labels,
        is_classifier, path).
    """
    from ..models import describe, is_classifier, load_config
    from ..teacher_cache import config_problem, teacher_meta, teachers_dir

    entry = Path(name)
    problem = config_problem(entry) if entry.parent == teachers_dir() else None  # a listed cache entry
    if problem:  # never loaded through a link or a FIFO
        raise ValueError(f"the prepared teacher {entry.name!r} cannot be used: {problem}. Remove it (the Remove "
                         "button, or distill_nb.remove_teacher) and prepare it again by launching a run.")
    path, config = load_config(name, False)
    info = describe(config)
    info.update(name=name, path=str(path), architecture=", ".join(config.architectures or [config.model_type]),
                is_classifier=is_classifier(config),
                labels=[config.id2label[i] for i in sorted(config.id2label)] if is_classifier(config) else [],
                prepared=teacher_meta(path) if Path(path).is_dir() else None)
    return config, info


class TeacherPicker(Panel):
    """Dropdown of offline teachers plus a text box for any transformers id or local folder.

    Traits:
        teacher: the chosen name (alias, id or path), as ``DistillConfig.teacher`` takes it.
        info: shape/size/labels of the chosen teacher ({} while none is loaded).
        teacher_config: its transformers config (None when loading failed).
    """

    teacher = T.Unicode("minilm-l6")
    info = T.Dict()
    teacher_config = T.Any(None, allow_none=True)

    def __init__(self, teacher: str = "minilm-l6", **kwargs: Any):
        super().__init__(**kwargs)
        options = teacher_options()
        values = [v for _, v in options]
        self.dropdown = W.Dropdown(options=options + [(CUSTOM, CUSTOM)], description="Teacher",
                                   value=teacher if teacher in values else CUSTOM,
                                   layout=W.Layout(width="520px"), style={"description_width": "70px"})
        self.text = W.Text(value="" if teacher in values else teacher, placeholder="model id or folder",
                           description="id / path", style={"description_width": "70px"},
                           layout=W.Layout(width="420px"))
        self.load_button = W.Button(description="Load", icon="download", layout=W.Layout(width="90px"))
        self.refresh_button = W.Button(description="Refresh list", icon="refresh", layout=W.Layout(width="120px"),
                                       tooltip="list the prepared teachers in the cache again")
        self.remove_button = W.Button(description="Remove", icon="trash", button_style="danger",
                                      layout=W.Layout(width="100px"), disabled=True,
                                      tooltip="delete the selected prepared teacher from the cache")
        self.cache_note = W.HTML()
        self.summary = W.HTML()
        self._loaded = ""  # the last teacher that loaded: a failed name falls back to it
        self._keep = False  # show(): a failed name stays the teacher (no fall-back)
        self._syncing = False
        self.dropdown.observe(self._on_dropdown, names=["value"])
        self.load_button.on_click(lambda _: self._set(self.text.value.strip()))
        self.text.on_submit(lambda _: self._set(self.text.value.strip()))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.remove_button.on_click(lambda _: self.remove_selected())
        self.observe(self._on_teacher, names=["teacher"])
        self.children = [W.HTML("<b>1. Teacher</b> — a fine-tuned classifier, or a bare encoder (it is "
                                "fine-tuned on your task first)"),
                         W.HBox([self.dropdown, self.refresh_button, self.remove_button]),
                         W.HBox([self.text, self.load_button]), self.cache_note, self.summary, *self._footer()]
        self._note_cache()
        self.teacher = teacher
        self._on_teacher({"new": teacher})

    def _on_dropdown(self, change: dict[str, Any]) -> None:
        self.remove_button.disabled = not self._is_prepared(change["new"])
        if change["new"] != CUSTOM and not self._syncing:
            self._set(change["new"])

    @staticmethod
    def _is_prepared(value: str) -> bool:
        from ..teacher_cache import teachers_dir

        return value not in (CUSTOM, "") and Path(value).parent == teachers_dir()

    def _note_cache(self) -> None:
        from ..teacher_cache import teachers, teachers_dir

        n = len(teachers())
        self.cache_note.value = note_html(
            f"{n} prepared teacher{'s' if n != 1 else ''} in <code>{esc(teachers_dir())}</code> (set "
            "<code>$DISTILL_NB_CACHE</code> to move the cache; <code>distill_nb.teachers()</code> lists them).")

    @guarded
    def refresh(self) -> None:
        """List the cache again (a teacher prepared by a run since, or removed elsewhere)."""
        current = self.dropdown.value
        options = teacher_options()
        values = [v for _, v in options]
        self.dropdown.options = options + [(CUSTOM, CUSTOM)]
        self.dropdown.value = current if current in values or current == CUSTOM else CUSTOM
        self.remove_button.disabled = not self._is_prepared(self.dropdown.value)
        self._note_cache()

    @guarded
    def remove_selected(self) -> None:
        """Delete the selected prepared teacher from the cache and fall back to the packaged default."""
        from ..teacher_cache import remove_teacher

        value = self.dropdown.value
        if not self._is_prepared(value):
            raise ValueError("only a prepared teacher from the cache can be removed: select one in the list.")
        remove_teacher(value)
        self.teacher = "minilm-l6"
        self.refresh()
        self.dropdown.value = "minilm-l6"

    def _show_choice(self, name: str) -> None:
        """Make the dropdown (and the id box) say ``name``, the teacher the config uses."""
        values = [v for _, v in self.dropdown.options]
        self._syncing = True
        try:
            if name in values and name != CUSTOM:
                self.dropdown.value = name
            else:
                self.dropdown.value = CUSTOM
                self.text.value = name
        finally:
            self._syncing = False

    def show(self, name: str) -> None:
        """Make ``name`` the teacher, as given, and load its config again (e.g. the teacher of a run the app
        opened): unlike a choice in the list it stays the teacher when it cannot be loaded, and the error says
        so; an earlier error is cleared when it loads."""
        self._keep = True
        try:
            self._set(name)
        finally:
            self._keep = False

    def _set(self, name: str) -> None:
        if name == self.teacher:
            self._on_teacher({"new": name})  # reload (e.g. after a failed attempt)
        else:
            self.teacher = name

    @guarded
    def _on_teacher(self, change: dict[str, Any]) -> None:
        name = change["new"]
        if not name:
            raise ValueError("no teacher given: pick one from the list or type a transformers id or folder.")
        self.summary.value = note_html(f"loading the config of {esc(name)}…")
        try:
            config, info = teacher_info(name)
        except Exception as exc:
            previous = self._loaded
            if self._keep:  # show(): the name stays (a run's config names it); no shape, no summary
                self.teacher_config, self.info = None, {}
                self.summary.value = ""
                self._show_choice(name)
                raise type(exc)(f"{exc}\nThe teacher stays {name!r} (the opened run's config names it): put it "
                                "back, or pick another teacher before Start.") if _plain(exc) else exc
            if previous and previous != name:
                # keep dropdown, config and designer on the teacher that works; say what failed
                self.teacher = previous
                raise type(exc)(f"{exc}\nThe teacher stays {previous!r}.") if _plain(exc) else exc
            self.teacher_config, self.info = None, {}
            self.summary.value = ""
            self._show_choice(name)
            raise
        self._loaded = name
        self._show_choice(name)
        self.teacher_config, self.info = config, info
        self.summary.value = self.summary_html()

    def summary_html(self) -> str:
        i = self.info
        if not i:
            return ""
        # every value below comes from files (config.json, teacher.json): escaped, numbers formatted by us
        rows = [("architecture", esc(i["architecture"])),
                ("shape", esc(f"{i['layers']} layers, hidden {i['hidden']}, {i['heads']} heads, FFN {i['ffn']}")),
                ("parameters", esc(f"{fmt_params(i['params'])} ({i['mb']:.1f} MB fp32)")),
                ("labels", esc(", ".join(map(str, i["labels"]))) if i["labels"] else "none (bare encoder)"),
                ("folder", f"<code>{esc(i['path'])}</code>")]
        if p := i.get("prepared"):
            acc = p.get("dev_accuracy")
            rows.insert(0, ("prepared", esc(f"{p.get('task')} from {p.get('base')}: dev accuracy "
                                            f"{fmt_number(acc, '{:.4f}')} on {p.get('dev_examples')} texts, "
                                            f"{p.get('steps')} steps, {(number(p.get('seconds')) or 0) / 60:.1f} "
                                            f"min, stopped by {p.get('stopped_by')}, {p.get('precision')}"
                                            if acc is not None else "no record (teacher.json missing)")))
        html = table_html(rows)
        if not i["is_classifier"]:
            html += note_html("This is a bare encoder without a classification head: the run fine-tunes it "
                              "(with a new head) on the task first, until its accuracy on a held-out slice of "
                              "the training data stops improving (at most <code>teacher_prep_steps</code> steps "
                              "or <code>teacher_prep_minutes</code>), and caches the result here by task.",
                              "#8a5a00")
        return html

    def __repr__(self) -> str:
        i = self.info
        if not i:
            return f"TeacherPicker(teacher={self.teacher!r}, not loaded{': ' + self.error if self.error else ''})"
        kind = "classifier" if i["is_classifier"] else "bare encoder (fine-tuned on the task first)"
        return (f"TeacherPicker(teacher={self.teacher!r}: {i['model_type']} {kind}, {i['layers']} layers, "
                f"hidden {i['hidden']}, {fmt_params(i['params'])} params, {i['mb']:.1f} MB)")


def _plain(exc: BaseException) -> bool:
    """True when ``type(exc)(message)`` rebuilds the exception (OSError, ValueError, ...)."""
    try:
        type(exc)("x")
    except Exception:  # noqa: BLE001
        return False
    return True


__all__ = ["TeacherPicker", "teacher_info", "teacher_options"]
