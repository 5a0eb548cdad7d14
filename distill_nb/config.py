"""DistillConfig: everything one distillation run needs, saved verbatim as ``config.json``.

Standard library only: the server extension and the run-directory code read configs without torch.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import math
import os
import stat
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .safeio import MAX_RECORD_BYTES as MAX_CONFIG_BYTES
from .safeio import not_utf8

# distill_nb.attribution.METHODS, repeated here: this module imports the standard library only
ATTRIBUTION_METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "occlusion", "leave_one_out")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says what was given and how to fix it."""


@dataclass
class DistillConfig:
    # --- teacher -------------------------------------------------------------------------------------------
    teacher: str = "minilm-l6"  # transformers id, local path, or packaged alias ("minilm-l6", "mpnet-base")
    teacher_prep_steps: int = 1500  # a bare encoder is fine-tuned to its plateau, at most this many steps (0: refuse)
    teacher_prep_minutes: float | None = None  # ... and at most this many minutes (None: no time cap)
    trust_remote_code: bool = False  # run model code from the hub; only for models you trust
    # --- data ----------------------------------------------------------------------------------------------
    dataset: str = "sst2"  # alias (sst2, trec6), datasets name, or a CSV/TSV/JSON/JSONL/Parquet file or dir
    text_column: str | list[str] = "sentence"  # column holding the text, or a list of columns (see text_pair)
    text_pair: bool = False  # with 2 text columns: True passes them as a pair (MNLI/QQP), False joins with "\n"
    label_column: str = "label"  # column holding the labels: any integers or strings (mapped to ids 0..n-1)
    label_names: list[str] | None = None  # class names: names integer ids, orders string labels (a named teacher wins)
    train_split: str = "train"  # split used for training
    eval_split: str = "validation"  # split used for evaluation (this default also finds dev/test/valid/val)
    max_train_examples: int | None = None  # cap on training examples (None: all)
    max_eval_examples: int | None = None  # cap on evaluation examples (None: all)
    max_length: int = 128  # tokens per example; longer texts are truncated
    # --- student -------------------------------------------------------------------------------------------
    student_layers: int = 3  # transformer layers in the student
    student_hidden: int | None = None  # hidden width (None: the teacher's)
    student_heads: int | None = None  # attention heads (None: the teacher's)
    student_ffn: int | None = None  # feed-forward width (None: 4 x hidden, or the teacher's at equal width)
    student_init: str = "every_k"  # "every_k" (copy every k-th teacher layer), "random", or a model id/path
    student_dropout: float | None = None  # dropout in the student (None: the teacher's)
    student_layers_from: list[int] | None = None  # teacher layers copied at init, increasing (None: every k-th;
    # e.g. suggest_layers(...).chosen); needs student_init="every_k"
    student_vocab: str | int = "full"  # "full", "task" (tokens of the train texts + specials) or N (the N most
    # frequent task tokens incl. specials, topped up in the tokenizer's order); other tokens become [UNK]. The
    # texts are the whole training split, not only max_train_examples (kept rows are the teacher's embeddings)
    # --- losses --------------------------------------------------------------------------------------------
    objective: str = "classification"  # "classification" (task-specific) or "mlm" (masked-LM KD on the texts; no labels)
    mlm_probability: float = 0.15  # with objective="mlm": fraction of real tokens masked per text (BERT: 0.15)
    temperature: float = 2.0  # softmax temperature of the soft-label KL (its loss is scaled by T^2)
    alpha_kd: float = 1.0  # weight of soft-label KL against the teacher
    alpha_ce: float = 0.0  # weight of hard-label cross-entropy against the gold labels
    alpha_hidden: float = 0.0  # weight of the hidden-state loss
    hidden_loss: str = "cosine"  # "cosine" or "mse"
    layer_map: list[int] | None = None  # teacher layer for each student layer (None: every k-th, last to last)
    alpha_attn: float = 0.0  # weight of attention-map transfer
    alpha_attr: float = 0.0  # weight of attribution alignment: student's grad x input pulled to the teacher's
    attr_method: str = "input_x_gradient"  # teacher attributions aligned to: "input_x_gradient" or "integrated_gradients"
    attr_n_steps: int = 16  # integration steps when attr_method="integrated_gradients"
    attr_top_k: int | None = None  # align only each example's k tokens the teacher ranks highest (None: all)
    attr_examples: int | None = None  # batch rows aligned per step (None: all, what bench_alignment measured);
    # each costs ~3 forward-backwards: with all 32 rows a CPU step takes ~2.4x a KD step
    # --- reason fidelity (tracked at each evaluation) -------------------------------------------------------
    reason_probe: int = 64  # eval examples whose teacher/student attributions are compared at each eval (0: off)
    reason_method: str = "input_x_gradient"  # probe's attribution method (distill_nb.attribution.METHODS)
    reason_n_steps: int = 8  # integration steps when reason_method="integrated_gradients"
    reason_top_k: int = 5  # k of the probe's top-k token overlap
    # --- optimisation --------------------------------------------------------------------------------------
    learning_rate: float = 5e-5  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    epochs: float = 1.0  # passes over the training data (ignored when max_steps is set)
    max_steps: int | None = None  # total optimiser steps (None: from epochs)
    batch_size: int = 32  # examples per optimiser step (over all processes)
    eval_every: int = 100  # evaluate every N steps (and at the end)
    checkpoint_every: int = 200  # checkpoint every N steps (and at stop and the end)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    seed: int = 0  # seeds data order, init and dropout
    # --- system --------------------------------------------------------------------------------------------
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    precision: str = "auto"  # "auto" (CUDA: bf16/fp16; CPU: bf16 where measured faster), "fp32", "bf16", "fp16"
    cache_teacher_logits: bool = True  # run the teacher once per example (classification, logit-only losses)
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values that can be checked without loading a model.

        Raises:
            ConfigError: naming the field, the value given and what to use instead.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # DistillConfig(batch_size="32") gets here without from_dict
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise ConfigError(_type_message(f.name, value, hints[f.name]))
            _check_number(f.name, value)
        examples = {"teacher": "'minilm-l6', a transformers id or a model folder",
                    "dataset": "'sst2', 'trec6' or a data file/folder", "student_init": "'every_k' or 'random'"}
        for name, example in examples.items():
            value = getattr(self, name)
            if not value.strip():
                raise ConfigError(f"{name}={value!r} is empty: give {example}.")
            if len(value) > 4096 or any(len(part) > 255 for part in value.split("/")) or "\0" in value:
                shown = value[:60] + "..." if len(value) > 60 else value
                raise ConfigError(f"{name}={shown!r} ({len(value)} characters) is no model id, alias or path (a path "
                                  f"part has at most 255 characters, no NUL): give {example}.")
        positive = ["teacher_prep_steps", "student_layers", "batch_size", "eval_every",
                    "checkpoint_every", "keep_checkpoints"]
        for name in positive:
            value = getattr(self, name)
            low = 0 if name == "teacher_prep_steps" else 1
            if value < low:
                raise ConfigError(f"{name}={value!r} is invalid: use an integer >= {low}.")
        for name in ["student_hidden", "student_heads", "student_ffn", "max_steps",
                     "max_train_examples", "max_eval_examples", "num_threads"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value!r} is invalid: use a positive integer or None.")
        if self.max_train_examples == 1:
            raise ConfigError("max_train_examples=1 is too few: one example is one class; use None (all) or at "
                              "least 2 (hundreds to learn anything).")
        if self.teacher_prep_minutes is not None and not 0 < self.teacher_prep_minutes < float("inf"):
            raise ConfigError(f"teacher_prep_minutes={self.teacher_prep_minutes!r} is invalid: use minutes > 0 "
                              "or None (no time cap).")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature!r} is invalid: use a value > 0 (1-4 is usual).")
        if self.temperature < MIN_TEMPERATURE:
            raise ConfigError(f"temperature={self.temperature!r} is too small: below {MIN_TEMPERATURE} the softened "
                              "teacher distribution is one-hot and the soft-label loss vanishes (loss 0, the "
                              "student learns nothing); use a value >= 1 (1-4 is usual).")
        if self.temperature > MAX_TEMPERATURE:
            raise ConfigError(f"temperature={self.temperature!r} is too large: above {MAX_TEMPERATURE} the teacher's "
                              "soft labels are uniform and carry no information; use 1-4 (up to 20).")
        if self.max_length < MIN_MAX_LENGTH:
            raise ConfigError(f"max_length={self.max_length!r} is too short: [CLS] and [SEP] take 2 of the tokens, "
                              f"so the text would be cut to {max(self.max_length - 2, 0)} word pieces; use "
                              f"max_length >= {MIN_MAX_LENGTH} (64-128 is usual for sentences).")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed!r} is out of range: torch seeds are 64-bit; use an integer in "
                              "[0, 2**63), e.g. 0.")
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(f"epochs={self.epochs!r} is too many: use at most {MAX_EPOCHS} (or set max_steps).")
        _check_text_columns(self.text_column, self.text_pair, self.label_column)
        if self.label_names is not None:
            names = self.label_names
            if len(names) < 2 or any(not n.strip() for n in names) or len(set(names)) != len(names):
                raise ConfigError(f"label_names={names!r} is invalid: give at least 2 distinct, non-empty class "
                                  "names in label order (e.g. ['negative', 'positive'] for labels 0 and 1), or "
                                  "None.")
        weights = {n: getattr(self, n) for n in ["alpha_kd", "alpha_ce", "alpha_hidden", "alpha_attn", "alpha_attr"]}
        negative = {n: w for n, w in weights.items() if w < 0}
        if negative:
            raise ConfigError(f"loss weights must be >= 0, got {negative}: set them to 0 (off) or a positive "
                              "weight.")
        if not any(weights.values()):
            raise ConfigError("all loss weights are 0 (alpha_kd, alpha_ce, alpha_hidden, alpha_attn, alpha_attr): "
                              "set at least one > 0, e.g. alpha_kd=1.0.")
        if self.objective not in ("classification", "mlm"):
            raise ConfigError(f"objective={self.objective!r} is invalid: use 'classification' (task-specific) or "
                              "'mlm' (masked-LM distillation on the texts).")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability={self.mlm_probability!r} is invalid: use a value in (0, 1) "
                              "(BERT masks 0.15).")
        if self.alpha_attr and self.objective == "mlm":
            raise ConfigError(f"alpha_attr={self.alpha_attr!r} needs objective='classification' (it aligns "
                              "attributions of the teacher's predicted class): set alpha_attr=0 for 'mlm'.")
        if self.attr_method not in ("input_x_gradient", "integrated_gradients"):
            raise ConfigError(f"attr_method={self.attr_method!r} is invalid: use 'input_x_gradient' (one backward "
                              "per example) or 'integrated_gradients' (attr_n_steps backwards per example).")
        if self.reason_method not in ATTRIBUTION_METHODS:
            raise ConfigError(f"reason_method={self.reason_method!r} is invalid: use one of "
                              f"{', '.join(ATTRIBUTION_METHODS)}.")
        for name in ["attr_n_steps", "reason_n_steps", "reason_top_k"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: use an integer >= 1.")
        if self.attr_examples is not None and self.attr_examples < 1:
            raise ConfigError(f"attr_examples={self.attr_examples!r} is invalid: use an integer >= 1 or None (the "
                              "whole batch).")
        if self.attr_top_k is not None and self.attr_top_k < 1:
            raise ConfigError(f"attr_top_k={self.attr_top_k!r} is invalid: use an integer >= 1 or None (all tokens).")
        if self.reason_probe < 0:
            raise ConfigError(f"reason_probe={self.reason_probe!r} is invalid: use 0 (off) or a number of eval "
                              "examples (64 is the default).")
        if self.hidden_loss not in ("cosine", "mse"):
            raise ConfigError(f"hidden_loss={self.hidden_loss!r} is invalid: use 'cosine' or 'mse'.")
        if self.learning_rate > 1:
            raise ConfigError(f"learning_rate={self.learning_rate!r} is too large: AdamW diverges far below 1; use "
                              "a value like 5e-5 (fine-tuning) to 1e-3.")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate!r} is invalid: use a value > 0 (e.g. 5e-5).")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"weight_decay={self.weight_decay!r} is invalid: use a value in [0, 1] (0.01 is usual, "
                              "0 turns it off).")
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise ConfigError(f"extra={self.extra!r} is invalid: use a dict with string keys (free-form notes).")
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as e:  # a set, an object, NaN/inf: config.json could not hold it
            raise ConfigError(f"extra={self.extra!r} cannot be stored in config.json ({e}): use JSON values only "
                              "(strings, finite numbers, true/false, null, lists and dicts of them).") from None
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio!r} is invalid: use a value in [0, 1).")
        if self.epochs <= 0 and self.max_steps is None:
            raise ConfigError(f"epochs={self.epochs!r} is invalid: use epochs > 0 or set max_steps.")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision={self.precision!r} is invalid: use 'auto', 'fp32', 'bf16' or 'fp16'.")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"device={dev!r} is invalid: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
        if self.student_dropout is not None and not 0 <= self.student_dropout < 1:
            raise ConfigError(f"student_dropout={self.student_dropout!r} is invalid: use a value in [0, 1).")
        if self.student_layers_from is not None:
            given = self.student_layers_from
            if self.student_init != "every_k":
                raise ConfigError(f"student_layers_from={given!r} copies teacher layers, so it needs "
                                  f"student_init='every_k' (got {self.student_init!r}): change one of them.")
            if len(given) != self.student_layers:
                raise ConfigError(f"student_layers_from={given!r} has {len(given)} entries but the student has "
                                  f"{self.student_layers} layers: give one teacher layer per student layer.")
            if any(i < 0 for i in given) or any(b <= a for a, b in itertools.pairwise(given)):
                raise ConfigError(f"student_layers_from={given!r} is invalid: use strictly increasing 0-based "
                                  f"teacher layers, e.g. {sorted({abs(i) for i in given})}.")
        vocab = self.student_vocab
        if isinstance(vocab, str) and vocab not in ("full", "task"):
            raise ConfigError(f"student_vocab={vocab!r} is invalid: use 'full', 'task', or an integer number of "
                              "tokens to keep (e.g. 8000).")
        if isinstance(vocab, int) and vocab < 16:
            raise ConfigError(f"student_vocab={vocab!r} is too small: keep at least 16 tokens (the specials plus "
                              "some words), or use 'task'.")
        if vocab != "full" and self.objective == "mlm":
            raise ConfigError(f"student_vocab={vocab!r} needs objective='classification': masked-LM distillation "
                              "compares the full vocabulary distribution. Use student_vocab='full' with 'mlm'.")
        if self.layer_map is not None:
            if len(self.layer_map) != self.student_layers:
                raise ConfigError(f"layer_map={self.layer_map!r} has {len(self.layer_map)} entries but the "
                                  f"student has {self.student_layers} layers: give one teacher layer per "
                                  "student layer, or None.")
            if any(i < 0 for i in self.layer_map):
                raise ConfigError(f"layer_map={self.layer_map!r} has a negative layer: use 0-based indices.")

    # --- JSON io ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return the config as JSON; with ``path``, also write it there atomically."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)  # validate() made every value finite
        if path is not None:
            path = Path(path)
            if path.is_dir():  # the rename onto it would fail with a temp file's name in the message
                raise IsADirectoryError(errno.EISDIR, f"{str(path)!r} is a folder: give a file name for the config, "
                                        f"e.g. {str(path / 'distill_config.json')!r}", str(path))
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build a config from a dict, rejecting unknown keys and wrong types with a clear message."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}.")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}: remove them or use one of the valid keys: "
                              f"{', '.join(known)}.")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not _type_ok(value, hints[key]):
                raise ConfigError(_type_message(key, value, hints[key]))
        return cls(**data)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> DistillConfig:
        """Read a config from a JSON file path or a JSON string.

        The JSON literals NaN/Infinity (which Python's json accepts) are refused: no field may be NaN or inf.
        """
        text = str(path_or_text)
        source = "config"
        if not text.lstrip().startswith(("{", "[")):
            path = Path(path_or_text).expanduser()
            source = f"config file {str(path)!r}"
            if path.is_dir():
                raise ConfigError(f"{source} is a folder: give the path of the JSON file inside it (e.g. "
                                  f"{str(path / 'config.json')!r}, written by DistillConfig.to_json() or the "
                                  "Launcher's export).")
            if path.exists() and not path.is_file():
                raise ConfigError(f"{source} is not a regular file (a device or a pipe): give the path of a JSON "
                                  "file written by DistillConfig.to_json() or the Launcher's export.")
            if not path.is_file():
                raise ConfigError(f"{source} does not exist: give the path of a JSON file written by "
                                  "DistillConfig.to_json() or the Launcher's export.")
            if path.stat().st_size > MAX_CONFIG_BYTES:  # a config is a few KB: never read a huge file whole
                raise ConfigError(f"{source} is {path.stat().st_size / 2**20:.1f} MB, more than the "
                                  f"{MAX_CONFIG_BYTES >> 20} MB a config may be: give the JSON file written by "
                                  "DistillConfig.to_json() or the Launcher's export.")
            try:
                text = path.read_text(encoding="utf-8-sig")  # an editor's BOM is fine
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{source} cannot be read as UTF-8 text ({e}): re-save it as UTF-8 JSON.") from e
            if not text.strip():
                raise ConfigError(f"{source} is empty: give a JSON object such as {{\"teacher\": \"minilm-l6\"}} "
                                  "(DistillConfig().to_json(path) writes every field).")

        def constant(name: str) -> Any:
            raise ConfigError(f"{source} contains {name}: no field may be NaN or infinite; use a finite number "
                              "(e.g. \"temperature\": 2.0).")

        try:
            data = json.loads(text, parse_constant=constant)
        except RecursionError:
            raise ConfigError(f"{source} nests too deeply to be a config: give one JSON object of fields.") from None
        except ConfigError:
            raise
        except ValueError as e:  # JSONDecodeError, an integer with thousands of digits
            raise ConfigError(f"{source} is not valid JSON ({str(e)[:200]}); check for trailing commas or quotes."
                              ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source} holds a JSON {_json_kind(data)}, but a config is one JSON object "
                              "{\"field\": value, ...}: give the fields of a single DistillConfig (a list of "
                              "configs: launch them one by one).")
        return cls.from_dict(data)

    def diff(self, other: DistillConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ: ``{name: (self's value, other's value)}`` (empty when the configs are equal)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v}

    def replace(self, **changes: Any) -> DistillConfig:
        """A copy with some fields changed (validated)."""
        return DistillConfig.from_dict({**self.to_dict(), **changes})


MIN_TEMPERATURE = 0.1  # below it softmax(z / T) is one-hot in float32: the KD loss is 0
MAX_TEMPERATURE = 100.0
MIN_MAX_LENGTH = 8  # [CLS] + [SEP] + at least a few word pieces
MAX_EPOCHS = 10_000
INT_LIMIT = 2**63  # torch tensors, seeds and step counters are int64


def _check_number(name: str, value: Any) -> None:
    """Floats must be finite (NaN passes every comparison); integers must fit torch's int64."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not a finite number: NaN/inf would train a NaN student; give a "
                          "finite value (see the field's comment in DistillConfig for the usual range).")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT <= value < INT_LIMIT:
        raise ConfigError(f"{name}={value!r} is too large: torch counts with 64-bit integers; use a value below "
                          "2**63 (for steps, epochs and sizes a far smaller one).")
    if isinstance(value, list):
        for v in value:
            _check_number(name, v)


def _check_text_columns(text_column: str | list[str], pair: bool, label_column: str) -> None:
    cols = [text_column] if isinstance(text_column, str) else text_column
    if not cols or any(not c.strip() for c in cols) or len(set(cols)) != len(cols):
        raise ConfigError(f"text_column={text_column!r} is invalid: give a column name, or a list of distinct "
                          "column names (e.g. ['title', 'description']).")
    if label_column in cols:
        raise ConfigError(f"text_column={text_column!r} includes the label_column {label_column!r}: the model "
                          "would read the answer; set text_column to the text column(s) only.")
    if pair and len(cols) != 2:
        raise ConfigError(f"text_pair=True needs exactly 2 text columns, got text_column={text_column!r}: give "
                          "two (e.g. ['premise', 'hypothesis']), or text_pair=False to join the columns.")


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _type_message(key: str, value: Any, hint: Any) -> str:
    return (f"{key}={value!r} has type {type(value).__name__}, expected {_type_name(hint)}: give a value of "
            f"that type (in JSON: numbers and true/false without quotes, null for None).")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # the errno stays; the file it was writing is named (a bare write error names none)
        Path(tmp).unlink(missing_ok=True)
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- folders named by environment variables ---------------------------------------------------------------------
ENV_FOLDERS = ("DISTILL_NB_RUNS", "DISTILL_NB_CACHE", "DISTILL_NB_DATA")


def env_folder(name: str, default: Path | None = None) -> Path | None:
    """The folder ``$name`` names: ``~`` expanded and made absolute (against the current directory, once), or
    ``default`` when the variable is unset or empty.

    A worker runs in ``/``: it gets these absolute values (:func:`env_folders`), so it sees the same folder.

    Raises:
        ValueError: the value is a file or lies inside one, or is not valid UTF-8 (the message names the variable,
            its value and the fix).
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    hint = f"set {name} to a folder (or unset it for the default)"
    try:
        path = Path(os.path.abspath(Path(raw).expanduser()))
    except RuntimeError:  # ~user of an unknown user, or no home folder at all
        raise ValueError(f"${name}={raw!r} cannot be used: its '~' names no home folder on this machine; give an "
                         f"absolute path, or {hint}.") from None
    if why := not_utf8(path):
        raise ValueError(f"${name}={raw!r} cannot be used: {why}; rename the folder or {hint}.")
    for part in [path, *path.parents]:
        if os.path.isdir(part):
            break
        if os.path.lexists(part):
            what = _not_a_folder(part)
            where = f"is {what}" if part == path else f"is inside {str(part)!r}, which is {what}"
            raise ValueError(f"${name}={raw!r} {where}, not a folder: {hint}.")
    return path


def _not_a_folder(path: Path) -> str:
    """What ``path`` is instead of a folder, in words (it exists, at least as a link)."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"a link to {os.readlink(path)!r}, which does not exist"
    mode = os.stat(path).st_mode
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a file")


def env_folders() -> dict[str, str]:
    """The set distill_nb folder variables as absolute paths, checked (what a worker's environment gets).

    Raises:
        ValueError: one of them is a file or inside one (see :func:`env_folder`).
    """
    return {name: str(env_folder(name)) for name in ENV_FOLDERS if os.environ.get(name)}
