"""A run's data as training saw it: texts, label ids and class names, for every consumer of a run.

``train()`` builds its task with :func:`task_for` and :func:`align_labels`; the report (``compare_run``), the
Compare/Errors/Explain views and the sweep call :func:`run_task` on the run directory, which repeats the same
two steps with the teacher the run used. So accuracies and class names agree everywhere, also when the teacher
names its labels in a non-alphabetical order and the data has string labels. Torch-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .config import DistillConfig
from .data import TaskData, load_task
from .preflight import id2label_names, is_classifier, match_labels, model_config


def task_for(config: DistillConfig, *, max_train: int | None = None, max_eval: int | None = None) -> TaskData:
    """The task ``config`` names, with its label mapping (ids follow the data; see :func:`align_labels`)."""
    return load_task(config.dataset, text_column=config.text_column,
                     label_column=None if config.objective == "mlm" else config.label_column,
                     train_split=config.train_split, eval_split=config.eval_split,
                     max_train=max_train or config.max_train_examples, max_eval=max_eval or config.max_eval_examples,
                     seed=config.seed, label_names=config.label_names, text_pair=config.text_pair)


def is_default_names(names: Sequence[str]) -> bool:
    """transformers' placeholder names (LABEL_0, LABEL_1, ...): the model does not name its classes."""
    return all(re.fullmatch(r"LABEL_\d+", str(n)) for n in names)


def align_labels(task: TaskData, teacher_names: Sequence[str] | None, teacher: str) -> TaskData:
    """``task`` with ids in the teacher's output order and the class names the student will carry.

    Named data labels follow the teacher's id2label (matched case-insensitively); integer ids stay as they are
    and take the teacher's names when it has real ones. A teacher without names (LABEL_i) keeps the data's.

    Raises:
        ConfigError: labels the teacher does not predict, or a different number of labels.
    """
    if teacher_names is None:
        return task
    names = match_labels(task.label_names, task.named_labels, teacher_names, teacher)
    if names is not None:
        return task.relabel(names)
    if not is_default_names(teacher_names):
        return replace(task, label_names=[str(n) for n in teacher_names])
    return task


def teacher_label_names(config: DistillConfig, run_dir: str | os.PathLike | None = None) -> list[str] | None:
    """The label names of the teacher a run used (its fine-tuned copy when status.json names one), or None."""
    name = config.teacher
    if run_dir is not None:
        from .rundir import read_status

        name = read_status(Path(run_dir)).get("teacher_path") or name
    try:
        cfg = model_config(name, "teacher")
    except (FileNotFoundError, ValueError):
        return None
    return id2label_names(cfg) if cfg is not None and is_classifier(cfg) else None


def run_task(run_dir: str | os.PathLike, *, max_train: int | None = None,
             max_eval: int | None = None) -> TaskData:
    """Texts, label ids and class names of a run directory, exactly as its ``train()`` used them.

    The saved student's id2label (``student/config.json``) has the last word on the names when it exists.
    """
    run_dir = Path(run_dir)
    config = DistillConfig.from_json(run_dir / "config.json")
    task = task_for(config, max_train=max_train, max_eval=max_eval)
    if config.objective == "mlm":
        return task
    task = align_labels(task, teacher_label_names(config, run_dir), config.teacher)
    student = run_dir / "student"
    if (student / "config.json").is_file():
        cfg = model_config(str(student), "student")
        names = id2label_names(cfg) if cfg else None
        if names and len(names) == task.num_labels and not is_default_names(names):
            task = replace(task, label_names=names)
    return task


def full_task_for(config: DistillConfig) -> TaskData:
    """The run's data without its caps: a prepared teacher depends on the data set, not on the run's subset."""
    return load_task(config.dataset, text_column=config.text_column, label_column=config.label_column,
                     train_split=config.train_split, eval_split=config.eval_split, seed=config.seed,
                     label_names=config.label_names, text_pair=config.text_pair)
