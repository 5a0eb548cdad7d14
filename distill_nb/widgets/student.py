"""StudentDesigner: shape a student with sliders that only offer valid shapes; live size and speed-up.

Estimates come from configs (``models.student_config`` + ``models.describe``): no model is built per tick.
With task data (``use_task``) it also suggests which teacher layers to copy (``advisor.suggest_layers``),
can rank the advisor's best candidates and every-k by short proxy runs in a background thread
(``layer_search.rank_by_proxy_runs``, stoppable), and counts the task's vocabulary for a trimmed student
(``vocab.choose_vocab``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import traitlets as T

from ._util import Panel, esc, fmt_params, guarded, note_html, table_html

INITS = [("every_k: copy every k-th teacher layer (DistilBERT)", "every_k"), ("random init", "random"),
         ("pretrained model (id or path)…", "pretrained")]


VOCABS = [("full: the teacher's vocabulary", "full"), ("task: tokens of the training texts", "task"),
          ("N most frequent tokens…", "count")]
MIN_VOCAB = 16  # DistillConfig refuses fewer kept tokens (the specials plus some words)
INIT_VALUES = [value for _, value in INITS]


def _fmt_options(options: list[int]) -> str:
    """``[1, 2, 4, 8]`` as "1, 2, 4, 8" (a long list shortened in the middle)."""
    shown = [str(o) for o in options]
    return ", ".join(shown if len(shown) <= 12 else shown[:5] + ["..."] + shown[-5:])


def check_init(init: Any) -> str:
    """``init`` if it is one of the inits the designer offers; else a ValueError naming them."""
    if not isinstance(init, str) or init not in INIT_VALUES:
        raise ValueError(f"init={init!r} is not an init the designer offers: use one of "
                         f"{', '.join(repr(v) for v in INIT_VALUES)} (for a pretrained student set init='pretrained' "
                         "and put its model id or folder in designer.pretrained).")
    return init


def check_vocab(vocab: Any) -> str | int:
    """``vocab`` if it is a valid ``student_vocab`` ('full', 'task' or a number of tokens >= 16); else a
    ValueError saying what was given and what to use."""
    if isinstance(vocab, str) and vocab in ("full", "task"):
        return vocab
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= MIN_VOCAB:
        return vocab
    if isinstance(vocab, int) and not isinstance(vocab, bool):
        raise ValueError(f"vocab={vocab!r} is too small: keep at least {MIN_VOCAB} tokens (the specials plus "  # noqa: TRY004
                         "some words), or use 'full' (the teacher's vocabulary) or 'task' (the training texts' tokens).")
    raise ValueError(f"vocab={vocab!r} is not a vocabulary choice: use 'full' (the teacher's vocabulary), 'task' "
                     f"(the training texts' tokens) or an integer number of tokens to keep (>= {MIN_VOCAB}, e.g. "
                     "8000).")


def check_layers_from(layers_from: Any, n_layers: int | None = None, teacher_layers: int | None = None) -> list[int]:
    """``layers_from`` as a list if it names distinct teacher layers in increasing order (0-based, below the
    teacher's layer count when known, one per student layer when ``n_layers`` is given); else a ValueError."""
    given = list(layers_from)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in given):
        raise ValueError(f"layers_from={given!r} must hold integer teacher layer indices: use e.g. [0, 2, 4].")
    top = f"0..{teacher_layers - 1}" if teacher_layers else "0 or more"
    n = n_layers or len(given)
    example = ([i * (teacher_layers // n) for i in range(n)] if teacher_layers and 0 < n <= teacher_layers
               else sorted({abs(i) for i in given}))  # every k-th, as models.every_k_layers picks them
    if any(i < 0 for i in given) or (teacher_layers and any(i >= teacher_layers for i in given)):
        raise ValueError(f"layers_from={given!r} names a layer the teacher does not have: the teacher's layers are "
                         f"{top} (0-based); use indices in that range, e.g. {example}.")
    if any(b <= a for a, b in itertools.pairwise(given)):
        raise ValueError(f"layers_from={given!r} is not strictly increasing: give distinct teacher layers in order, "
                         f"e.g. {sorted(set(given))}.")
    if n_layers is not None and given and len(given) != n_layers:
        raise ValueError(f"layers_from={given!r} has {len(given)} entries but the student has {n_layers} layers: "
                         "give one teacher layer per student layer (or set layers first), or [] for every k-th.")
    return given


def hidden_options(teacher_hidden: int) -> list[int]:
    """Widths a student may take: multiples of 16 up to the teacher's width, plus the teacher's own."""
    step = 16 if teacher_hidden >= 64 else 8
    return sorted({h for h in range(step, teacher_hidden + 1, step)} | {teacher_hidden})


def head_options(hidden: int) -> list[int]:
    """Head counts that divide ``hidden`` (so every head gets an integer width), at most 32."""
    return [h for h in range(1, min(hidden, 32) + 1) if hidden % h == 0]


def ffn_options(hidden: int, teacher_hidden: int, teacher_ffn: int) -> list[int]:
    """FFN widths: 1x to 4x the hidden width in half steps, plus the teacher's at equal width."""
    opts = {hidden * k // 2 for k in range(2, 9)}
    if hidden == teacher_hidden:
        opts.add(teacher_ffn)
    return sorted(opts)


def _nearest(options: list[int], value: int) -> int:
    return min(options, key=lambda o: (abs(o - value), -o))


class StudentDesigner(Panel):
    """Sliders for layers, hidden width, heads and FFN width, with live params/MB/speed-up estimates.

    Traits:
        teacher_config: the teacher's transformers config (set by TeacherPicker in the app).
        layers, hidden, heads, ffn: the student shape (always valid for the current init).
        init: "every_k", "random" or "pretrained" (then ``pretrained`` holds the id/path).
        estimates: ``models.describe(student_config, teacher_config)`` of the current shape.
    """

    teacher_config = T.Any(None, allow_none=True)
    layers = T.Int(3)
    hidden = T.Int(0)
    heads = T.Int(0)
    ffn = T.Int(0)
    init = T.Unicode("every_k")
    pretrained = T.Unicode("")
    estimates = T.Dict()
    layer_map = T.List(T.Int())
    layers_from = T.List(T.Int())  # teacher layers to copy (the advisor's choice); [] = every k-th
    vocab = T.Union([T.Unicode(), T.Int()], default_value="full")  # student_vocab: "full", "task" or N
    task_vocab_size = T.Int(0)  # tokens the task's training texts use (0: not counted yet, see use_task)

    def __init__(self, teacher_config: Any = None, *, layers: int = 3, init: str = "every_k", **kwargs: Any):
        check_init(init)  # a clear message instead of the dropdown's "Invalid selection"
        super().__init__(**kwargs)
        style = {"description_width": "90px"}
        wide = W.Layout(width="460px")
        self.layers_slider = W.IntSlider(value=1, min=1, max=2, description="layers", style=style, layout=wide,
                                         continuous_update=True)
        self.hidden_slider = W.SelectionSlider(options=[0], description="hidden", style=style, layout=wide)
        self.heads_slider = W.SelectionSlider(options=[0], description="heads", style=style, layout=wide)
        self.ffn_slider = W.SelectionSlider(options=[0], description="FFN", style=style, layout=wide)
        self.init_dropdown = W.Dropdown(options=INITS, value=init, description="init", style=style,
                                        layout=W.Layout(width="460px"))
        self.pretrained_text = W.Text(placeholder="e.g. a folder with a small BERT", description="pretrained",
                                      style=style, layout=W.Layout(width="460px", display="none"))
        self.estimate_box = W.HTML()
        self.map_box = W.HTML()
        self._task: tuple[Any, Any, Any] | None = None  # (task, teacher model, tokenizer), see use_task
        # where "suggest layers" gets them, if set (then it wins over use_task): DistillApp's gives the Train tab's
        # data and the teacher a run would use, the same objects while those settings are unchanged
        self.task_source: Callable[[], tuple[Any, Any, Any]] | None = None
        self.vocab_dropdown = W.Dropdown(options=VOCABS, value="full", description="vocabulary", style=style,
                                         layout=W.Layout(width="460px"))
        self.vocab_size = W.BoundedIntText(value=8000, min=MIN_VOCAB, max=10**7, description="tokens", style=style,
                                           layout=W.Layout(width="200px", display="none"))
        self.suggest_button = W.Button(description="suggest layers", icon="lightbulb-o",
                                       tooltip="measure per-layer evidence on task data and propose the layers")
        self.advice_box = W.HTML()
        self.advice = None  # the last advisor.LayerAdvice
        # "rank by short runs": the run's config comes from here (DistillApp: the Train tab's build_config)
        self.config_source: Callable[[], Any] | None = None
        self.rank_button = W.Button(description="rank by short runs", icon="flask", disabled=True,
                                    tooltip="train the advisor's best few candidates and every-k for a few steps "
                                            "each (successive halving) and keep the best on held-out training texts")
        self.rank_stop = W.Button(description="cancel", icon="times", layout=W.Layout(display="none"),
                                  tooltip="end the proxy runs after the current one (the run's Stop is the Monitor's)")
        self.rank_box = W.HTML()
        self.ranking = None  # the last layer_search.ProxyRanking
        self.rank_thread: threading.Thread | None = None
        self._rank_stop = threading.Event()
        self.rank_button.on_click(lambda _: self.rank())
        self.rank_stop.on_click(lambda _: self._rank_stop.set())
        self.vocab_dropdown.observe(self._vocab_widget_changed, names=["value"])
        self.vocab_size.observe(self._vocab_widget_changed, names=["value"])
        self.suggest_button.on_click(lambda _: self.suggest())
        self.observe(self._on_evidence, names=["vocab", "task_vocab_size", "layers_from"])
        self._syncing = False
        for slider, name in [(self.layers_slider, "layers"), (self.hidden_slider, "hidden"),
                             (self.heads_slider, "heads"), (self.ffn_slider, "ffn")]:
            slider.observe(self._slider_moved(name), names=["value"])
        self.init_dropdown.observe(lambda c: setattr(self, "init", c["new"]), names=["value"])
        self.pretrained_text.on_submit(lambda _: setattr(self, "pretrained", self.pretrained_text.value.strip()))
        self.observe(self._on_teacher, names=["teacher_config"])
        self.observe(self._on_init, names=["init", "pretrained"])
        self.observe(self._on_shape, names=["layers", "hidden", "heads", "ffn"])
        self.children = [W.HTML("<b>2. Student</b> — only valid shapes can be chosen"), self.init_dropdown,
                         self.pretrained_text, self.layers_slider, self.hidden_slider, self.heads_slider,
                         self.ffn_slider, W.HBox([self.vocab_dropdown, self.vocab_size]),
                         W.HBox([self.estimate_box, self.map_box], layout=W.Layout(gap="24px")),
                         W.HBox([self.suggest_button, self.rank_button, self.rank_stop]), self.advice_box,
                         self.rank_box, *self._footer()]
        self._wanted_layers = layers
        self.init = init
        if teacher_config is not None:
            self.teacher_config = teacher_config

    # --- teacher shape ---------------------------------------------------------------------------------------
    def teacher_shape(self) -> dict[str, int]:
        from ..models import shape

        return shape(self.teacher_config)

    @guarded
    def _on_teacher(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.estimate_box.value = note_html("pick a teacher first")
            return
        self._constrain(keep_layers=self._wanted_layers)

    @guarded
    def _on_init(self, change: dict[str, Any]) -> None:
        if change["name"] == "init" and change["new"] not in INIT_VALUES:
            self._roll_back("init", change["old"] if change["old"] in INIT_VALUES else "every_k")
            check_init(change["new"])  # raises: shown in the panel, the init stays as it was
        if self.init_dropdown.value != self.init:
            self.init_dropdown.value = self.init
        self.pretrained_text.layout.display = "" if self.init == "pretrained" else "none"
        if self.teacher_config is not None:
            self._constrain(keep_layers=self.layers)

    def _slider_moved(self, name: str):
        def handler(change: dict[str, Any]) -> None:
            if not self._syncing and change["new"] != getattr(self, name):
                setattr(self, name, change["new"])
        return handler

    def _roll_back(self, name: str, old: Any) -> None:
        """Put trait ``name`` back to ``old`` (a refused value) without re-running its checks."""
        syncing, self._syncing = self._syncing, True
        try:
            setattr(self, name, old)
        finally:
            self._syncing = syncing

    def _allowed(self, name: str) -> list[int]:
        """The values the ``name`` slider offers now (the only valid ones for the teacher and init)."""
        if name == "layers":
            return list(range(self.layers_slider.min, self.layers_slider.max + 1))
        return list({"hidden": self.hidden_slider, "heads": self.heads_slider, "ffn": self.ffn_slider}[name].options)

    def _refusal(self, name: str, value: Any, old: Any) -> str:
        """Why ``value`` is not a valid ``name`` now, and what to choose instead."""
        options = self._allowed(name)
        t = self.teacher_shape()
        if name == "layers" and self.init == "every_k":
            why = (f"with init='every_k' the student copies teacher layers, so it has 1..{options[-1]} (the teacher "
                   f"has {t['layers']}); use init='random' for a deeper student")
        elif name == "layers":
            why = f"choose 1..{options[-1]} layers"
        elif self.init == "every_k":
            why = (f"with init='every_k' the widths are the teacher's ({name}={options[0]}): set init='random' to "
                   "choose another")
        elif name == "heads":
            why = f"heads must divide hidden={self.hidden}: choose one of {_fmt_options(options)}"
        elif name == "ffn":
            why = f"for hidden={self.hidden} choose one of {_fmt_options(options)}"
        else:
            why = (f"a student of this teacher (hidden {t['hidden']}) takes one of {_fmt_options(options)}")
        return f"{name}={value!r} is not offered: {why}. Kept {name}={old!r}."

    def _constrain(self, keep_layers: int) -> None:
        """Set slider ranges/options for the teacher and init, clamping the current shape into them."""
        t = self.teacher_shape()
        locked = self.init == "every_k"
        pretrained = self.init == "pretrained"
        max_layers = t["layers"] if locked else max(2 * t["layers"], 12)
        layers = min(max(keep_layers, 1), max_layers)
        hidden_opts = [t["hidden"]] if locked else hidden_options(t["hidden"])
        hidden = t["hidden"] if locked else _nearest(hidden_opts, self.hidden or t["hidden"])
        heads_opts = [t["heads"]] if locked else head_options(hidden)
        heads = t["heads"] if locked else _nearest(heads_opts, self.heads or t["heads"])
        ffn_opts = [t["ffn"]] if locked else ffn_options(hidden, t["hidden"], t["ffn"])
        ffn = t["ffn"] if locked else _nearest(ffn_opts, self.ffn or t["ffn"])
        self._syncing = True
        try:
            self.layers_slider.max = max_layers
            self.layers_slider.value = layers
            self._set_options(self.hidden_slider, hidden_opts, hidden)
            self._set_options(self.heads_slider, heads_opts, heads)
            self._set_options(self.ffn_slider, ffn_opts, ffn)
            for s in (self.hidden_slider, self.heads_slider, self.ffn_slider):
                s.disabled = locked or pretrained
            self.layers_slider.disabled = pretrained
        finally:
            self._syncing = False
        with self.hold_trait_notifications():
            self.layers, self.hidden, self.heads, self.ffn = layers, hidden, heads, ffn
        self._refresh()

    @staticmethod
    def _set_options(slider: W.SelectionSlider, options: list[int], value: int) -> None:
        if list(slider.options) != options:
            slider.options = options
        slider.value = value

    @guarded
    def _on_shape(self, change: dict[str, Any]) -> None:
        if self._syncing or self.teacher_config is None:
            return
        if change["new"] not in self._allowed(change["name"]):
            message = self._refusal(change["name"], change["new"], change["old"])
            self._roll_back(change["name"], change["old"])  # never keep (nor export) a shape the sliders refuse
            raise ValueError(message)
        if change["name"] == "hidden" and self.init != "every_k":
            t = self.teacher_shape()
            self._syncing = True  # re-derive heads and FFN options for the new width
            try:
                heads = _nearest(head_options(self.hidden), self.heads)
                ffn = _nearest(ffn_options(self.hidden, t["hidden"], t["ffn"]), self.ffn)
                self._set_options(self.heads_slider, head_options(self.hidden), heads)
                self._set_options(self.ffn_slider, ffn_options(self.hidden, t["hidden"], t["ffn"]), ffn)
                self.hidden_slider.value = self.hidden
            finally:
                self._syncing = False
            self.heads, self.ffn = heads, ffn
        else:
            slider = {"layers": self.layers_slider, "hidden": self.hidden_slider, "heads": self.heads_slider,
                      "ffn": self.ffn_slider}[change["name"]]
            if slider.value != change["new"]:
                slider.value = change["new"]  # raises (and shows) when the value is not an allowed option
        self._refresh()

    # --- estimates ---------------------------------------------------------------------------------------------
    def student_config(self) -> Any:
        """The transformers config of the current student shape (built from the teacher's config)."""
        from ..models import student_config

        if self.init == "pretrained":
            from ..models import load_config

            if not self.pretrained:
                raise ValueError("init='pretrained' needs a model id or folder in the 'pretrained' box.")
            return load_config(self.pretrained, False)[1]
        return student_config(self.teacher_config, n_layers=self.layers, hidden_size=self.hidden,
                              n_heads=self.heads, ffn_size=self.ffn)

    def _refresh(self) -> None:
        from ..models import copied_layer_map, default_layer_map, describe, every_k_layers

        if self.teacher_config is None:
            return
        if self.layers_from and (self.init != "every_k" or len(self.layers_from) != self.layers):
            self.layers_from = []  # the advice was for another depth or init: back to every k-th
        config = self.student_config()
        tokens = self.vocab_tokens()
        if tokens and self.init != "pretrained":
            config.vocab_size = min(tokens, config.vocab_size)
        self.estimates = describe(config, self.teacher_config)
        e = self.estimates
        t = self.teacher_shape()
        self.estimate_box.value = table_html([
            ("parameters", f"<b>{fmt_params(e['params'])}</b> ({100 * e['params_ratio']:.0f}% of the teacher)"),
            ("size", f"<b>{e['mb']:.1f} MB</b> fp32"),
            ("speed-up", f"<b>{e['speedup']:.2f}x</b> (estimated from FLOPs, an upper bound)"),
            ("shape", esc(f"{e['layers']} x {e['hidden']} wide, {e['heads']} heads, FFN {e['ffn']}")),
            ("vocabulary", self._vocab_text(tokens))])
        n = e["layers"]
        copied = (list(self.layers_from) or every_k_layers(t["layers"], n)) if self.init == "every_k" else []
        imitated = (copied_layer_map(self.layers_from, t["layers"]) if self.layers_from else
                    default_layer_map(t["layers"], n) if n <= t["layers"] else [])
        self.layer_map = imitated
        self.map_box.value = layer_map_html(t["layers"], copied, imitated)

    @guarded
    def set_config(self, config: Any) -> None:
        """Show the student of ``config`` (a DistillConfig), e.g. of a run the app re-attached to."""
        init = config.student_init if config.student_init in ("every_k", "random") else "pretrained"
        if init == "pretrained":
            self.pretrained_text.value = config.student_init
            self.pretrained = config.student_init
        self._wanted_layers = config.student_layers
        self.init = init
        vocab = getattr(config, "student_vocab", "full")
        if vocab != self.vocab:
            self.vocab = vocab
        if self.teacher_config is None:
            if init == "every_k":
                self.layers_from = list(getattr(config, "student_layers_from", None) or [])
            return
        shown = [] if init == "pretrained" else [("layers", config.student_layers)]
        if init == "random":
            t = self.teacher_shape()
            hidden = config.student_hidden or t["hidden"]
            shown += [("hidden", hidden), ("heads", config.student_heads or t["heads"]),
                      ("ffn", config.student_ffn or (t["ffn"] if hidden == t["hidden"] else 4 * hidden))]
        refused = []
        for name, value in shown:  # in this order: each one's options depend on the one before
            if value in self._allowed(name):
                setattr(self, name, value)
            else:
                refused.append(self._refusal(name, value, getattr(self, name)))
        if init == "every_k" and not refused:
            self.layers_from = list(getattr(config, "student_layers_from", None) or [])
        if refused:
            raise ValueError("the config's student cannot be shown as given (Start would run the shape shown "
                             "here): " + " ".join(refused))

    def config_fields(self) -> dict[str, Any]:
        """The ``DistillConfig`` fields of this design (every_k leaves widths to the teacher's).

        Raises:
            ValueError: the design holds a value the designer refuses (it is never exported as another value).
        """
        fields = {**self._shape_fields(), "student_vocab": check_vocab(self.vocab)}
        layers_from = list(self.layers_from)
        if layers_from:
            if self.init != "every_k":
                raise ValueError(f"layers_from={layers_from!r} copies teacher layers, so it needs init='every_k' "
                                 f"(init is {self.init!r}): set init='every_k', or layers_from=[].")
            check_layers_from(layers_from, fields["student_layers"], self._teacher_layers())
        fields["student_layers_from"] = layers_from or None
        return fields

    def _teacher_layers(self) -> int | None:
        """The teacher's layer count, None while there is no teacher (or its shape cannot be read)."""
        if self.teacher_config is None:
            return None
        try:
            return self.teacher_shape()["layers"]
        except Exception:  # noqa: BLE001 - an unsupported teacher is reported by _on_teacher
            return None

    def _shape_fields(self) -> dict[str, Any]:
        check_init(self.init)
        if self.estimates and self._teacher_layers() is not None and self.init != "pretrained":
            for name in ("layers", "hidden", "heads", "ffn") if self.init == "random" else ("layers",):
                value, allowed = getattr(self, name), self._allowed(name)
                if value not in allowed:
                    raise ValueError(f"student {name}={value!r} is not a valid choice for this teacher: use one of "
                                     f"{_fmt_options(allowed)} (the {name} slider offers only those).")
        if self.init == "pretrained" and not self.pretrained:
            raise ValueError("init='pretrained' needs a model id or folder: type it in the 'pretrained' box "
                             "(designer.pretrained = 'path/or/id'), or choose init='every_k' or 'random'.")
        if self.init == "every_k":
            return {"student_layers": self.layers, "student_hidden": None, "student_heads": None, "student_ffn": None,
                        "student_init": "every_k"}
        if self.init == "pretrained":
            return {"student_layers": self.estimates.get("layers", self.layers), "student_hidden": None,
                        "student_heads": None, "student_ffn": None, "student_init": self.pretrained}
        return {"student_layers": self.layers, "student_hidden": self.hidden, "student_heads": self.heads,
                    "student_ffn": self.ffn, "student_init": "random"}

    # --- evidence: the layer advisor and the task's vocabulary -----------------------------------------------------
    def use_task(self, task: Any, teacher: Any = None, tokenizer: Any = None, *, max_length: int = 128) -> None:
        """Task data for "suggest layers" (needs the teacher model too) and the task-vocabulary count.

        Args:
            task: a ``data.TaskData`` (its training split is used, never the eval split).
            teacher, tokenizer: the teacher model and its tokenizer (``models.load_teacher``).
        """
        self._task = (task, teacher, tokenizer)
        if tokenizer is not None:
            from ..vocab import choose_vocab

            self.task_vocab_size = choose_vocab(tokenizer, task.train.texts, "task", max_length=max_length).size

    def vocab_tokens(self) -> int | None:
        """Tokens the student keeps under the current vocabulary choice (None: full, or not counted yet)."""
        if self.vocab == "task":
            return self.task_vocab_size or None
        return self.vocab if isinstance(self.vocab, int) else None

    @guarded
    def suggest(self, *, max_examples: int = 256) -> Any:
        """Run ``advisor.suggest_layers`` on the task's training texts for the current depth; show and use it."""
        from ..advisor import suggest_layers

        if self.task_source is not None:
            self.advice_box.value = note_html("loading the task data and the teacher...")
            try:
                inputs = self.task_source()
            except Exception:
                self.advice_box.value = ""
                raise
            if self._task is None or any(a is not b for a, b in zip(inputs, self._task)):
                self.use_task(*inputs)
        if self._task is None or self._task[1] is None:
            self.advice_box.value = note_html("suggest layers needs task data and the teacher model: call "
                                              "designer.use_task(task, teacher, tokenizer) first")
            return None
        if self.init != "every_k":
            self.advice_box.value = note_html("suggest layers chooses teacher layers to copy: set init to every_k")
            return None
        task, teacher, tokenizer = self._task
        n = min(max_examples, len(task.train))
        self.advice_box.value = note_html(f"measuring on {n} training texts: about {2 + 2 * self.teacher_shape()['layers']}"
                                          " teacher passes or more (seconds on a GPU, minutes on a busy CPU)...")
        self.suggest_button.disabled = True
        try:
            advice = suggest_layers(teacher, tokenizer, task.train.texts, task.train.labels, n_layers=self.layers,
                                    max_examples=max_examples)
        finally:
            self.suggest_button.disabled = False
        self.advice = advice
        self.advice_box.value = advice.to_html()
        self.layers_from = list(advice.chosen)
        self.rank_button.disabled = False
        return advice

    @guarded
    def rank(self, *, candidates: int = 4, steps: int = 25, holdout: int = 256) -> threading.Thread | None:
        """Rank the advisor's ``candidates`` best layer sets (by KL) and every-k by short proxy runs, in a thread.

        Each round trains the survivors for ``steps`` (doubling) with the run's config and keeps the better half by
        accuracy on ``holdout`` held-out training texts; the winner becomes ``layers_from``. "cancel" ends it
        between runs (the leader of the last complete round is then used, if there is one). Returns the thread.
        """
        from ..layer_search import total_steps

        if self.advice is None:
            self.rank_box.value = note_html("rank by short runs ranks the advisor's candidates: suggest layers first")
            return None
        if self.advice.student_layers != self.layers or self.init != "every_k":
            self.rank_box.value = note_html(esc(f"the advice is for {self.advice.student_layers} copied layers and "
                                                f"the student now has {self.layers} ({self.init}): suggest layers "
                                                "again"))
            return None
        if self.config_source is None:
            self.rank_box.value = note_html("rank by short runs needs the run's config: set designer.config_source "
                                            "= lambda: config (distill_nb.app() does)")
            return None
        if self.rank_thread is not None and self.rank_thread.is_alive():
            return self.rank_thread  # a second click while one runs: the running one
        advice = self.advice
        config = self.config_source().replace(student_layers=advice.student_layers, student_init="every_k")
        pool = advice.shortlist(candidates)
        lines: list[str] = []

        def log(message: str) -> None:
            lines.append(esc(message))
            self.rank_box.value = note_html("<br>".join(lines))

        self._rank_stop.clear()
        self.rank_button.disabled = True
        self.rank_stop.layout.display = ""
        log(f"ranking {len(pool)} layer sets by short runs ({steps} steps, doubling; {holdout} held-out training "
            f"texts): {total_steps(len(pool), steps)} optimiser steps in all...")

        def work() -> None:
            from ..layer_search import rank_by_proxy_runs

            try:
                ranking = rank_by_proxy_runs(config, pool, steps=steps, holdout=holdout,
                                             should_stop=self._rank_stop.is_set, log=log)
                self.ranking = ranking
                if ranking.chosen is not None and self.advice is advice and self.layers == advice.student_layers:
                    self.layers_from = list(ranking.chosen)
                log(str(ranking).replace("\n", " · "))
            except Exception as exc:  # noqa: BLE001 - shown in the panel, as guarded does for the UI thread
                self.show_error(exc)
            finally:
                self.rank_button.disabled = False
                self.rank_stop.layout.display = "none"

        self.rank_thread = threading.Thread(target=work, name="distill_nb-rank-layers", daemon=True)
        self.rank_thread.start()
        return self.rank_thread

    def _vocab_text(self, tokens: int | None) -> str:
        full = getattr(self.teacher_config, "vocab_size", 0)
        if self.vocab == "full" or self.init == "pretrained":
            return f"{full:,} tokens (the teacher's)"
        if tokens is None:
            return ("task: counted when the run starts (designer.use_task(task, teacher, tokenizer) shows it "
                    "here); the estimate above is for the full vocabulary")
        return f"<b>{min(tokens, full):,}</b> of {full:,} tokens; the rest read as [UNK]"

    @guarded
    def _vocab_widget_changed(self, change: dict[str, Any]) -> None:
        # (not named _vocab_changed: traitlets calls a method of that name on every change of the vocab trait,
        # which wrote the dropdown's older value back over designer.vocab = N)
        choice = self.vocab_dropdown.value
        self.vocab_size.layout.display = "" if choice == "count" else "none"
        if getattr(self, "_showing_vocab", False):
            return  # the widgets are being set to show self.vocab: they must not write an older value back
        self.vocab = self.vocab_size.value if choice == "count" else choice

    @guarded
    def _on_evidence(self, change: dict[str, Any]) -> None:
        if change["name"] == "vocab":
            try:
                check_vocab(change["new"])
            except ValueError:
                self._roll_back("vocab", change["old"])  # the refused value is never exported as another one
                raise
            self._showing_vocab = True
            try:
                if isinstance(self.vocab, int):
                    self.vocab_size.max = max(self.vocab_size.max, self.vocab)  # any count the config takes
                    self.vocab_size.value = self.vocab
                want = "count" if isinstance(self.vocab, int) else self.vocab
                if self.vocab_dropdown.value != want:
                    self.vocab_dropdown.value = want
            finally:
                self._showing_vocab = False
        if change["name"] == "layers_from" and change["new"]:
            try:
                if self.init != "every_k":
                    raise ValueError(f"layers_from={list(change['new'])!r} copies teacher layers, so it needs "
                                     f"init='every_k' (init is {self.init!r}): set init='every_k' first.")
                check_layers_from(change["new"], self.layers if self.teacher_config is not None else None,
                                  self._teacher_layers())
            except ValueError:
                self._roll_back("layers_from", list(change["old"] or []))
                raise
        if self.teacher_config is not None and not self._syncing:
            self._refresh()

    def __repr__(self) -> str:
        e = self.estimates
        if not e:
            return f"StudentDesigner(init={self.init!r}, no teacher yet)"
        return (f"StudentDesigner(init={self.init!r}, {e['layers']} layers x {e['hidden']}, {e['heads']} heads, "
                f"FFN {e['ffn']}: {fmt_params(e['params'])} params, {e['mb']:.1f} MB, "
                f"~{e['speedup']:.2f}x faster than the teacher)")


def layer_map_html(teacher_layers: int, copied: list[int], imitated: list[int]) -> str:
    """Teacher layers as boxes: filled when a student layer copies it, outlined when one imitates it."""
    boxes = []
    for i in range(teacher_layers):
        roles = []
        if i in copied:
            roles.append(f"copied by student {copied.index(i)}")
        if i in imitated:
            roles.append(f"imitated by student {imitated.index(i)}")
        bg = "#4a90d9" if i in copied else "#fff"
        border = "#d9534f" if i in imitated else "#bbb"
        colour = "#fff" if i in copied else "#333"
        boxes.append(f"<div title='{esc('; '.join(roles) or 'not used')}' style='display:inline-block;width:26px;"
                     f"height:22px;margin:1px;text-align:center;line-height:20px;background:{bg};color:{colour};"
                     f"border:2px solid {border};border-radius:3px;font-size:11px'>{i}</div>")
    legend = ("<span style='color:#4a90d9'>■</span> copied at init &nbsp; <span style='color:#d9534f'>□</span> "
              "imitated by the hidden-state loss (layer_map)")
    rows = "".join(f"<li>student {j} ← teacher {c}" + (f", imitates {imitated[j]}" if j < len(imitated) else "")
                   + "</li>" for j, c in enumerate(copied))
    return (f"<div><div style='font-weight:600'>teacher layers</div><div>{''.join(boxes)}</div>"
            f"<div style='font-size:0.85em;color:#555'>{legend}</div>"
            + (f"<ul style='margin:2px 0;font-size:0.85em'>{rows}</ul>" if rows else "") + "</div>")


__all__ = ["StudentDesigner", "ffn_options", "head_options", "hidden_options", "layer_map_html"]
