"""What a run will cost before Start: steps per phase from the config and the data, minutes from this machine.

``plan(config)`` counts steps without torch (it reads the data files' rows, as ``preflight`` does).
``measure(config)`` times one batch of teacher and student of the configured shapes on this machine (random
weights of the same shape: the cost depends on the shape, not the values) and stores the rates in
``<cache>/speed.json``, so the next estimate for the same shapes and device is read, not measured again.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any

from ..config import DistillConfig

SPEED_FILE = "speed.json"


_ROWS: dict[tuple, tuple[int | None, int | None, str]] = {}  # counted once per file version and columns


def rows(config: DistillConfig) -> tuple[int | None, int | None, str]:
    """(train rows, eval rows, where they were counted), memoised per file modification time."""
    from pathlib import Path

    path = Path(config.dataset).expanduser()
    try:
        stamp = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()] if path.is_dir() else
                    [path.stat().st_mtime])
    except OSError:
        stamp = None
    key = (config.dataset, stamp, str(config.text_column), config.label_column, config.train_split,
           config.eval_split, config.objective)
    if key not in _ROWS:
        _ROWS[key] = _count_rows(config)
    return _ROWS[key]


def _count_rows(config: DistillConfig) -> tuple[int | None, int | None, str]:
    """(train rows, eval rows, where they were counted); None where they cannot be counted cheaply."""
    from ..data import LABEL_NAMES, find_shared_data
    from ..preflight import read_task_labels

    key = config.dataset.lower().replace("-", "")
    if key in LABEL_NAMES:
        shared = find_shared_data()
        folder = shared / key if shared else None
        if folder is None or not folder.is_dir():
            return None, None, f"{config.dataset} from the hub (not counted)"
        files = ("train.tsv", "dev.tsv") if key == "sst2" else ("train.txt", "test.txt")
        counts = [sum(1 for line in (folder / f).open(encoding="utf-8", errors="replace") if line.strip())
                  for f in files]
        header = 1 if key == "sst2" else 0
        return counts[0] - header, counts[1] - header, str(folder)
    found = read_task_labels(config)  # raises for a missing column: the message says which columns exist
    if found is None:
        return None, None, f"{config.dataset} (not counted: a datasets name or a large file)"
    rows = found[2]
    if "eval" not in rows:  # one file: the worker holds out 10 % for evaluation
        n_eval = max(1, rows["train"] // 10)
        return rows["train"] - n_eval, n_eval, config.dataset
    return rows["train"], rows["eval"], config.dataset


def _teacher_needs_prep(config: DistillConfig) -> bool | None:
    from ..preflight import is_classifier, model_config

    if config.objective == "mlm":
        return False
    try:
        cfg = model_config(config.teacher, "teacher")
    except Exception:  # noqa: BLE001 - the picker shows that error; the plan just cannot say
        return None
    return None if cfg is None else not is_classifier(cfg)


def plan(config: DistillConfig) -> dict[str, Any]:
    """Steps of each phase of ``config``'s run, counted from the config and the data's row counts.

    Returns:
        dict with train_examples, eval_examples (None when not counted), prep_steps (teacher fine-tuning
        steps; 0 for a classifier teacher, None when unknown), cache_examples (teacher forward passes cached
        once; 0 when the teacher runs at every step), steps_per_epoch, total_steps (None when unknown),
        evaluations, source.
    """
    n_train, n_eval, source = rows(config)
    if n_train is not None and config.max_train_examples:
        n_train = min(n_train, config.max_train_examples)
    if n_eval is not None and config.max_eval_examples:
        n_eval = min(n_eval, config.max_eval_examples)
    per_epoch = math.ceil(n_train / config.batch_size) if n_train else None
    total = config.max_steps or (max(1, math.ceil(config.epochs * per_epoch)) if per_epoch else None)
    needs_prep = _teacher_needs_prep(config)
    cached = (config.cache_teacher_logits and config.alpha_kd and not (config.alpha_hidden or config.alpha_attn)
              and config.objective != "mlm")
    return {"train_examples": n_train, "eval_examples": n_eval, "steps_per_epoch": per_epoch,
            "total_steps": total, "prep_steps": (config.teacher_prep_steps if needs_prep else 0)
            if needs_prep is not None else None,
            "cache_examples": ((n_train or 0) + (n_eval or 0)) if cached else 0, "teacher_every_step": not cached,
            "evaluations": (total // config.eval_every + (total % config.eval_every != 0)) if total else None,
            "source": source}


# --- this machine's speed ----------------------------------------------------------------------------------
def _device(config: DistillConfig) -> tuple[str, str]:
    """(torch device string, a readable device name) the run would use."""
    import torch

    want = config.device
    if want.startswith("cuda") or (want == "auto" and torch.cuda.is_available()):
        index = int(want.split(":")[1]) if ":" in want else 0
        return f"cuda:{index}", torch.cuda.get_device_name(index)
    import platform

    return "cpu", f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _key(config: DistillConfig) -> str:
    """Rates are kept per machine (host name) and device choice, and per shape, batch and data."""
    import platform

    fields = [platform.node(), config.device, config.teacher, config.student_init, config.student_layers,
              config.student_hidden, config.student_heads, config.student_ffn, config.batch_size, config.max_length,
              config.dataset, config.objective, config.precision, config.num_threads]
    return "|".join(map(str, fields))


def _speed_file() -> Any:
    from ..families import cache_dir

    return cache_dir() / SPEED_FILE


def _table() -> dict[str, Any]:
    try:
        table = json.loads(_speed_file().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return table if isinstance(table, dict) else {}


RATE_KEYS = ("teacher_forward_s", "teacher_train_s", "student_forward_s", "student_train_s")


def _usable(rates: Any) -> bool:
    """Whether ``rates`` (a speed.json entry, which anyone can edit) holds a finite number for every timing."""
    from ..safeio import number

    return isinstance(rates, dict) and all(number(rates.get(k)) is not None for k in RATE_KEYS)


def stored_rates(config: DistillConfig) -> dict[str, Any] | None:
    """Rates measured earlier on this machine for these shapes (None when there are none, or when the stored
    entry does not hold a number for every timing: it is measured again); no torch."""
    rates = _table().get(_key(config))
    return rates if _usable(rates) else None


def _mean_tokens(config: DistillConfig, tokenizer: Any) -> float:
    """Mean tokens per example over a sample of the training texts (length-bucketed batches pad to about
    this); ``max_length`` when the texts cannot be read cheaply."""
    try:
        from ..data import load_task

        text_column = config.text_column if isinstance(config.text_column, str) else config.text_column[0]
        task = load_task(config.dataset, text_column=text_column, label_column=config.label_column,
                         train_split=config.train_split, eval_split=config.eval_split, max_train=256, max_eval=1,
                         seed=config.seed)
        lengths = [len(ids) for ids in tokenizer(list(task.train.texts), truncation=True,
                                                  max_length=config.max_length)["input_ids"]]
        return min(float(config.max_length), statistics.mean(lengths)) if lengths else float(config.max_length)
    except Exception:  # noqa: BLE001 - an estimate falls back to full-length batches (an upper bound)
        return float(config.max_length)


def measure(config: DistillConfig, repeats: int = 1) -> dict[str, Any]:
    """Seconds per batch of teacher/student forward and training passes on this machine; stored for reuse.

    The models have random weights and the configured shapes (cost depends on shape only); batches have
    ``batch_size`` examples of the mean token length of a sample of the training texts.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..models import load_config, student_config

    hf_logging.disable_progress_bar()
    device, name = _device(config)
    folder, t_cfg = load_config(config.teacher, config.trust_remote_code)
    tokens = _mean_tokens(config, AutoTokenizer.from_pretrained(folder))
    seq = max(4, round(tokens))
    if config.student_init in ("every_k", "random"):
        s_cfg = student_config(t_cfg, n_layers=config.student_layers, hidden_size=config.student_hidden,
                               n_heads=config.student_heads, ffn_size=config.student_ffn)
    else:
        s_cfg = load_config(config.student_init, config.trust_remote_code)[1]
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(t_cfg).to(device)
    student = AutoModelForSequenceClassification.from_config(s_cfg).to(device)
    vocab = min(getattr(t_cfg, "vocab_size", 1000), getattr(s_cfg, "vocab_size", 1000))
    batch = {"input_ids": torch.randint(5, max(vocab, 6), (config.batch_size, seq), device=device),
             "attention_mask": torch.ones(config.batch_size, seq, dtype=torch.long, device=device)}

    def timed(model: Any, train: bool) -> float:
        times = []
        for i in range(repeats + 1):  # the first pass warms up (allocations, kernels) and is not counted
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            if train:
                model.train()
                model(**batch).logits.float().sum().backward()
                model.zero_grad(set_to_none=True)
            else:
                model.eval()
                with torch.no_grad():
                    model(**batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        return min(times)

    rates = {"device": name, "tokens": seq, "batch_size": config.batch_size,
             "teacher_forward_s": timed(teacher, False), "teacher_train_s": timed(teacher, True),
             "student_forward_s": timed(student, False), "student_train_s": timed(student, True),
             "measured_at": time.time()}
    table = _table()
    table[_key(config)] = rates
    try:
        from ..config import atomic_write_text

        atomic_write_text(_speed_file(), json.dumps(table, indent=1))
    except OSError:
        pass  # a read-only cache only means measuring again next time
    return rates


def minutes(p: dict[str, Any], rates: dict[str, Any], batch_size: int) -> dict[str, float | None]:
    """Seconds per phase from a plan and measured rates (None where the plan has no count)."""
    def batches(n: int | None) -> int | None:
        return None if n is None else math.ceil(n / batch_size)

    total = p["total_steps"]
    train_step = rates["student_train_s"] + (rates["teacher_forward_s"] if p["teacher_every_step"] else 0.0)
    evals, n_eval = p["evaluations"], batches(p["eval_examples"])
    return {
        "preparing_teacher": None if p["prep_steps"] is None else p["prep_steps"] * rates["teacher_train_s"],
        "caching_logits": (batches(p["cache_examples"]) or 0) * rates["teacher_forward_s"],
        "training": None if total is None else total * train_step,
        "evaluating": None if evals is None or n_eval is None else evals * n_eval * rates["student_forward_s"],
    }


def summary_html(p: dict[str, Any], rates: dict[str, Any] | None, batch_size: int) -> str:
    """One paragraph: steps per phase, and minutes when rates are known."""
    from ._util import esc, fmt_eta

    def n(value: Any) -> str:
        return "?" if value is None else esc(f"{value:,}")

    parts = []
    if p["prep_steps"]:
        parts.append(f"prepare the teacher: up to <b>{n(p['prep_steps'])}</b> fine-tuning steps (skipped when "
                     "a prepared teacher is cached)")
    if p["cache_examples"]:
        parts.append(f"cache teacher logits: {n(p['cache_examples'])} examples")
    parts.append(f"train: <b>{n(p['total_steps'])}</b> steps ({n(p['train_examples'])} examples, "
                 f"{n(p['steps_per_epoch'])} steps/epoch)")
    parts.append(f"evaluate {n(p['evaluations'])}× on {n(p['eval_examples'])} examples")
    text = " → ".join(parts)
    if not _usable(rates):  # none yet (or a hand-edited speed.json entry that holds no numbers)
        return (f"<div class='distill-nb-estimate'><b>Estimate:</b> {text}. <i>Minutes: measuring this "
                "machine's speed…</i></div>")
    secs = minutes(p, rates, batch_size)
    known = [v for v in secs.values() if v is not None]
    total = sum(known) if known else None
    detail = ", ".join(f"{k.replace('_', ' ')} {fmt_eta(v)}" for k, v in secs.items() if v)
    unknown = " (more: some counts are unknown)" if len(known) < len(secs) else ""
    return (f"<div class='distill-nb-estimate'><b>Estimate:</b> {text}.<br><b>≈ {fmt_eta(total)}</b> (m:ss) on "
            f"{esc(rates.get('device', '?'))}{unknown}: {esc(detail)}. <span style='color:#777'>Measured with "
            f"batches of {esc(rates.get('batch_size', '?'))} × {esc(rates.get('tokens', '?'))} tokens; loading models "
            "and data adds about a "
            "minute.</span></div>")


__all__ = ["measure", "minutes", "plan", "rows", "stored_rates", "summary_html"]
