"""Teacher vs student, as the DistilBERT paper reported it: params, MB, latency, throughput, accuracy, retention.

Latencies of all models are measured interleaved (each repeat times one forward of every model in turn, in a
rotating order) and summarised by the median, so background load on a shared machine hits every model alike.
Accuracy counts an example whose logits hold a NaN or inf as wrong (see :mod:`distill_nb.evaluation`), and the
report's notes say how many there were. The models are left in the train/eval mode they came in.
"""

from __future__ import annotations

import contextlib
import os
import stat
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compress import state_size_bytes, texts_batch
from .evaluation import accuracy_of, check_labels, nonfinite_rows, predictions
from .models import count_params, predict_logits
from .safeio import kind


@dataclass(frozen=True)
class ModelRow:
    name: str
    params: int  # weights (a quantized model counts its int8 weights too)
    mb: float  # size of the weights on disk (safetensors files, or the serialised state dict)
    latency_b1_ms: float  # median forward time, batch of 1
    latency_b32_ms: float  # median forward time, batch of 32
    accuracy: float | None
    note: str = ""  # what this model is (data, training, compression)
    reason_spearman: float | None = None  # agreement of its token attributions with the teacher's (a run's probe)

    @property
    def throughput(self) -> float:
        """Examples per second at batch 32."""
        return 32_000 / self.latency_b32_ms if self.latency_b32_ms else float("nan")


@dataclass(frozen=True)
class Candidate:
    """One model to measure: the model, its tokenizer, and optionally its saved folder and a logical size."""

    name: str
    model: nn.Module
    tokenizer: Any
    folder: str | os.PathLike | None = None  # saved weights (safetensors) to size; else the state is serialised
    params: int | None = None  # override (e.g. the fp32 count for a quantized model, whose Linear weights
    # are no longer nn.Parameters)
    note: str = ""
    reason_spearman: float | None = None  # measured elsewhere (a run's last probe); shown as "reasons"


@dataclass(frozen=True)
class Report:
    rows: list[ModelRow]
    device: str
    data: str
    latency_inputs: str = ""  # what the latency batches were
    notes: list[str] = field(default_factory=list)

    def retention(self, row: ModelRow) -> float | None:
        """Accuracy of ``row`` as a percentage of the first row's (the teacher's)."""
        base = self.rows[0].accuracy
        return 100 * row.accuracy / base if row.accuracy is not None and base else None

    def to_frame(self) -> Any:
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows]).set_index("name")
        if all(r.reason_spearman is None for r in self.rows):
            frame = frame.drop(columns="reason_spearman")
        base = self.rows[0]
        frame["params_%"] = 100 * frame["params"] / base.params
        frame["throughput_b32"] = [r.throughput for r in self.rows]
        frame["speedup_b1"] = base.latency_b1_ms / frame["latency_b1_ms"]
        frame["speedup_b32"] = base.latency_b32_ms / frame["latency_b32_ms"]
        if base.accuracy:
            frame["retention_%"] = [self.retention(r) for r in self.rows]
        return frame

    def to_dict(self) -> dict[str, Any]:
        base = self.rows[0]
        rows = [{**asdict(r), "throughput_b32": r.throughput, "params_%": 100 * r.params / base.params,
                 "speedup_b1": base.latency_b1_ms / r.latency_b1_ms,
                 "speedup_b32": base.latency_b32_ms / r.latency_b32_ms, "retention_%": self.retention(r)}
                for r in self.rows]
        return {"device": self.device, "data": self.data, "latency_inputs": self.latency_inputs,
                "notes": list(self.notes), "rows": rows}

    def __str__(self) -> str:
        base = self.rows[0]
        width = max(22, *(len(r.name) + 2 for r in self.rows))
        head = (f"{'model':<{width}}{'params':>12}{'params%':>9}{'MB':>8}{'b1 ms':>8}{'b32 ms':>9}{'ex/s':>8}"
                f"{'speed-up':>10}{'accuracy':>10}{'retention':>11}")
        reasons = any(r.reason_spearman is not None for r in self.rows)
        head += f"{'reasons':>9}" if reasons else ""
        lines = [f"device: {self.device}; data: {self.data}"]
        if self.latency_inputs:
            lines.append(f"latency: {self.latency_inputs}")
        lines += [head, "-" * len(head)]
        for r in self.rows:
            acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "-"
            ret = self.retention(r)
            lines.append(f"{r.name:<{width}}{r.params:>12,}{100 * r.params / base.params:>8.1f}%{r.mb:>8.1f}"
                         f"{r.latency_b1_ms:>8.1f}{r.latency_b32_ms:>9.1f}{r.throughput:>8.0f}"
                         f"{base.latency_b32_ms / r.latency_b32_ms:>9.2f}x{acc:>10}"
                         f"{f'{ret:.1f}%' if ret is not None else '-':>11}"
                         + (f"{_fmt(r.reason_spearman):>9}" if reasons else ""))
        lines += [f"  {r.name}: {r.note}" for r in self.rows if r.note]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format=lambda v: f"{v:,.3f}")


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@contextlib.contextmanager
def _modes_kept(models: Sequence[nn.Module]) -> Iterator[None]:
    """Restore each model's train/eval mode afterwards (measuring switches them to eval)."""
    modes = [(m, m.training) for m in models]
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def _texts(texts: Any) -> list[str]:
    """``texts`` as a list (a pandas Series or numpy array too), or a TypeError/ValueError with a hint."""
    if isinstance(texts, str):
        raise TypeError(f"texts is one string ({texts[:40]!r}): pass a list of texts, e.g. [{texts[:40]!r}]")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: pass the evaluation texts (a non-empty list of strings).")
    return texts


def _num_labels(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "num_labels", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def evaluate(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
             batch_size: int = 64, max_length: int = 128) -> tuple[float, int]:
    """(accuracy, examples with NaN/inf logits) over ``texts``; such an example counts as wrong."""
    from .attribution.methods import check_max_length
    from .data import encode

    texts = _texts(texts)
    check_max_length(max_length, model)  # past the model's positions the forward fails deep inside it
    labels = check_labels(labels, len(texts), _num_labels(model))
    with _modes_kept([model]):
        logits = predict_logits(model, encode(tokenizer, texts, max_length), tokenizer.pad_token_id,
                                _device(model), batch_size=batch_size)
    labels = check_labels(labels, len(texts), logits.shape[-1])  # the head's real width
    return accuracy_of(predictions(logits), torch.tensor(labels)), nonfinite_rows(logits)


def accuracy(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
             batch_size: int = 64, max_length: int = 128) -> float:
    """Accuracy over ``texts`` in length-sorted batches; an example with NaN/inf logits counts as wrong."""
    return evaluate(model, tokenizer, texts, labels, batch_size=batch_size, max_length=max_length)[0]


def param_count(model: nn.Module) -> int:
    """Weights of ``model``: its parameters plus the packed int8 weights and biases of quantized Linear layers
    (which are no longer ``nn.Parameter``s), so an int8 model counts as many weights as its float source."""
    total = count_params(model)
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is None or not callable(getattr(m, "weight", None)):
            continue
        weight, bias = m.weight(), m.bias() if callable(getattr(m, "bias", None)) else None
        total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


def disk_mb(folder: str | os.PathLike | None, model: nn.Module) -> float:
    """MB of the safetensors files in ``folder``, else of the serialised state dict (quantized too)."""
    files = list(Path(folder).glob("*.safetensors")) if folder else []
    if files:
        return sum(f.stat().st_size for f in files) / 2**20
    return state_size_bytes(model)[0] / 2**20


@torch.inference_mode()
def interleaved_latency(models: Sequence[tuple[nn.Module, Any]], texts: Sequence[str], *, batch_size: int,
                        repeats: int = 5, max_length: int = 128, warmup: int = 1) -> list[float]:
    """Median seconds per forward of ``batch_size`` texts, for each (model, tokenizer), measured interleaved.

    Each repeat times one forward of every model; the order rotates between repeats so no model always runs
    first (or right after the same neighbour). Noise from other processes therefore lands on all models.
    Texts are encoded as training encodes them (a text pair as the tokenizer's pair); each model's train/eval
    mode is restored afterwards.
    """
    from .attribution.methods import check_positive

    texts = _texts(texts)
    check_positive(batch_size=batch_size, repeats=repeats)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: give a number of untimed forwards >= 0, e.g. warmup=1.")
    with _modes_kept([m for m, _ in models]):
        return _timed(models, texts, batch_size, repeats, max_length, warmup)


def _timed(models: Sequence[tuple[nn.Module, Any]], texts: list[str], batch_size: int, repeats: int,
           max_length: int, warmup: int) -> list[float]:
    chosen = list(texts[:batch_size])
    chosen += [chosen[i % len(chosen)] for i in range(batch_size - len(chosen))]  # fewer texts than the batch
    inputs = []
    for model, tok in models:
        model.eval()
        inputs.append(texts_batch(tok, chosen, max_length, _device(model), model))
    cuda = any(_device(m).type == "cuda" for m, _ in models)
    for (model, _), batch in zip(models, inputs):
        for _ in range(warmup):
            model(**batch)
    times: list[list[float]] = [[] for _ in models]
    n = len(models)
    for r in range(repeats):
        for k in range(n):
            i = (r + k) % n
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            models[i][0](**inputs[i])
            if cuda:
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _candidates(models: dict[str, tuple] | Sequence[Candidate]) -> list[Candidate]:
    if isinstance(models, dict):
        return [Candidate(name, *value) for name, value in models.items()]
    return list(models)


def compare(models: dict[str, tuple[nn.Module, Any, str | os.PathLike | None]] | Sequence[Candidate],
            texts: Sequence[str], labels: Sequence[int] | None, *, data: str = "", repeats: int = 5,
            max_length: int = 128, notes: Sequence[str] = ()) -> Report:
    """Measure models side by side; the first one is the reference (the teacher).

    Args:
        models: ``{name: (model, tokenizer, folder)}`` or a list of :class:`Candidate`.
        texts, labels: evaluation data (lists, numpy arrays or pandas Series); labels are integer class ids,
            one per text, or None. Latency uses the first 1 and 32 texts (padded to the longest).
        repeats: timed forwards per model and batch size (interleaved across models; medians reported).
        max_length: tokens per text; at most what every model's positions allow.

    Raises:
        ValueError/TypeError: no models, empty texts, labels of another length or not class ids of the models,
            max_length beyond a model's positions, repeats < 1, a tokenizer that does not fit a
            vocabulary-trimmed model.
    """
    from .attribution.methods import check_max_length, check_positive
    from .vocab import check_tokenizer

    cands = _candidates(models)
    if not cands:
        raise ValueError("compare() needs at least one model: pass {name: (model, tokenizer, folder)}.")
    texts = _texts(texts)
    check_positive(repeats=repeats)
    check_max_length(max_length, *(c.model for c in cands))
    for c in cands:
        check_tokenizer(c.model, c.tokenizer, f"model {c.name!r}")
    if labels is not None:
        known = [n for n in (_num_labels(c.model) for c in cands) if n is not None]
        labels = check_labels(labels, len(texts), min(known) if known else None)
    with _modes_kept([c.model for c in cands]):
        rows, bad = _rows(cands, texts, labels, repeats, max_length)
    notes = list(notes) + [f"{name}: {k} of {len(texts)} eval texts gave NaN/inf logits; they count as wrong "
                           "(accuracy, retention)" for name, k in bad if k]
    if labels is not None:  # a student above its teacher beyond noise means the teacher is the bottleneck
        from .teacher_cache import student_beats_teacher

        notes += [f"{r.name}: {w}" for r in rows[1:]
                  if (w := student_beats_teacher(r.accuracy, rows[0].accuracy, len(texts)))]
    n32 = texts_batch(cands[0].tokenizer, texts[:32], max_length, torch.device("cpu"))
    lat = (f"median of {repeats} interleaved forwards; batch 1 = first text, batch 32 = first 32 texts padded to "
           f"{n32['input_ids'].shape[1]} tokens; threads={torch.get_num_threads()}")
    return Report(rows, str(_device(cands[0].model)), data, lat, notes)


def _rows(cands: list[Candidate], texts: list[str], labels: list[int] | None, repeats: int, max_length: int
          ) -> tuple[list[ModelRow], list[tuple[str, int]]]:
    """The measured rows, and (name, examples with NaN/inf logits) per model."""
    pairs = [(c.model, c.tokenizer) for c in cands]
    b1 = interleaved_latency(pairs, texts, batch_size=1, repeats=repeats, max_length=max_length)
    b32 = interleaved_latency(pairs, texts, batch_size=32, repeats=repeats, max_length=max_length)
    rows, bad = [], []
    for c, t1, t32 in zip(cands, b1, b32):
        acc, nonfinite = (evaluate(c.model, c.tokenizer, texts, labels, max_length=max_length)
                          if labels is not None else (None, 0))
        bad.append((c.name, nonfinite))
        rows.append(ModelRow(name=c.name, params=c.params if c.params is not None else param_count(c.model),
                             mb=disk_mb(c.folder, c.model), latency_b1_ms=1000 * t1, latency_b32_ms=1000 * t32,
                             accuracy=acc, note=c.note, reason_spearman=c.reason_spearman))
    return rows, bad


def load_run_models(run_dir: str | os.PathLike, *, final_only: bool = True) -> tuple[Any, Any, Any, Any]:
    """(teacher, teacher_tokenizer, student, student_tokenizer) of a run, in eval mode.

    The teacher is the one train() used: a bare encoder was fine-tuned first, and status.json says where
    that teacher was saved. The student is ``student/``; without ``final_only``, an unfinished run's latest
    checkpoint stands in for it.
    """
    from .checkpoint import latest_checkpoint
    from .config import DistillConfig
    from .models import load_teacher
    from .rundir import read_status

    run_dir = Path(run_dir)
    config = DistillConfig.from_json(run_dir / "config.json")
    status = read_status(run_dir)
    folder = run_dir / "student"
    state = status.get("state")
    gone = ("its student/ folder is missing (moved or deleted?); a completed run is never trained again: put the "
            "folder back, or train it anew with Run.attach(run_id).fork()")
    _check_student_folder(run_dir, folder)
    if not (folder / "config.json").is_file() and (final_only or state == "completed"):
        if state == "completed":
            raise FileNotFoundError(f"run {run_dir.name!r} is completed but {gone}.")
        todo = {"running": "wait for it to finish", "queued": "wait for it to finish",
                "stopped": "resume it (run.resume()) and let it finish",
                "failed": "see its error, then resume it (run.resume()) or fork it"}.get(state, "finish the run")
        raise FileNotFoundError(f"run {run_dir.name!r} is {state} and has no final student yet (no student/): "
                                f"{todo}, then compare it.")
    teacher_path = status.get("teacher_path") or config.teacher
    teacher, t_tok = load_teacher(teacher_path, trust_remote_code=config.trust_remote_code)
    if not (folder / "config.json").is_file() and not final_only:
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise FileNotFoundError(f"run {run_dir.name!r} has no student yet (no student/ and no checkpoint): "
                                    "wait for its first checkpoint or for it to finish.")
        _check_student_folder(run_dir, folder)
    return (teacher, t_tok, *_load_student(run_dir, folder))


def _check_student_folder(run_dir: Path, folder: Path) -> None:
    """Refuse a student folder that is, or holds, a symbolic link or anything but files and folders: a model is
    never loaded from outside the run folder (as :func:`~distill_nb.rundir.run_dir` refuses a linked run), and a
    FIFO would block the load forever.

    Raises:
        ValueError: the message names the run, the entry, what it is and the fix.
    """
    fix = ("remove it and copy the real files into the run folder in its place, or compare the models yourself "
           "with distill_nb.report.compare(...)")
    entries = [folder]
    if not folder.is_symlink() and folder.is_dir():
        entries += sorted(folder.iterdir())
    for entry in entries:
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            where = str(entry.relative_to(run_dir)) + ("/" if entry == folder else "")
            target = f" to {os.readlink(entry)!r}" if stat.S_ISLNK(mode) else ""
            raise ValueError(f"run {run_dir.name!r}: {where} is {kind(mode)}{target}; distill_nb never loads a "
                             f"student through a link out of its run folder, nor from a FIFO or device: {fix}.")


def _load_student(run_dir: Path, folder: Path) -> tuple[Any, Any]:
    """(student in eval mode, its tokenizer) from ``folder`` of the run.

    Raises:
        ValueError: a damaged file (garbage or truncated weights, a broken config): the message names the run, the
            file and the fix.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        student = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        return student, AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # safetensors, transformers and json each raise their own types
        what = f"{(_damaged_file(folder) or folder).relative_to(run_dir)} is damaged"
        raise ValueError(f"run {run_dir.name!r}: the student cannot be loaded: {what} ({type(e).__name__}: "
                         f"{str(e)[:300]}); check whether a full disk truncated it, then put an intact copy of "
                         f"{folder.name}/ back, or train the run anew with Run.attach({run_dir.name!r}).fork().") from e


def _damaged_file(folder: Path) -> Path | None:
    """The first file of a saved model in ``folder`` that cannot be read (a safetensors file whose header or size
    is wrong, a config.json that is not JSON), or None when each looks intact on its own."""
    from safetensors import safe_open

    from .safeio import read_json

    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass  # opening checks the header and that the file covers every tensor it lists (not truncated)
        except Exception:  # noqa: BLE001 -- SafetensorError (garbage, truncated, empty), OSError
            return weights
    try:
        read_json(folder / "config.json")
    except (OSError, ValueError):
        return folder / "config.json"
    return None


def compare_run(run_dir: str | os.PathLike, *, max_eval: int | None = None, repeats: int = 5) -> Report:
    """Teacher vs the finished student of a run, on the run's eval split."""
    from .config import DistillConfig
    from .rundata import run_task
    from .rundir import read_status

    run_dir = Path(run_dir)
    config = DistillConfig.from_json(run_dir / "config.json")
    task = run_task(run_dir, max_eval=max_eval)  # the run's own label mapping: numbers match training
    from .teacher_cache import teacher_meta

    teacher, t_tok, student, s_tok = load_run_models(run_dir)
    notes = vocab_notes(student, t_tok, task.eval.texts, max_length=config.max_length)
    status = read_status(run_dir)
    t_folder = status.get("teacher_path")
    t_path = Path(t_folder or config.teacher)
    prep = teacher_meta(t_folder) if t_folder else None
    t_note = config.teacher
    if prep:  # how the teacher was prepared: is it at its plateau?
        t_note += f" + {prepared_note(prep)}: {t_folder}"
    elif t_folder:
        t_note += f" (fine-tuned: {t_folder})"
    run_notes = [(f"the run trained in {status.get('precision') or '?'} on {status.get('device') or '?'}; "
                  "latencies here are fp32")]
    reasons = last_reason_agreement(run_dir)
    if reasons is not None:
        run_notes.append(f"reasons: mean Spearman of the student's token attributions with the teacher's on the "
                         f"run's {config.reason_probe} probe texts ({config.reason_method}) at step {reasons[1]}")
    return compare([Candidate("teacher", teacher, t_tok, t_folder if t_path.is_dir() else None, note=t_note),
                    Candidate("student (distilled)", student, s_tok, run_dir / "student",
                              reason_spearman=reasons[0] if reasons is not None else None,
                              note=f"{config.student_layers} layers, {config.student_init} init"
                                   + (f" from {config.student_layers_from}" if config.student_layers_from else "")
                                   + (f", vocab {config.student_vocab}" if config.student_vocab != "full" else "")
                                   + ", "
                                   f"{config.max_steps or config.epochs} {'steps' if config.max_steps else 'epochs'}")],
                   task.eval.texts, task.eval.labels, data=task.source, repeats=repeats,
                   max_length=config.max_length, notes=run_notes + notes)


STOPS = ("plateau", "max_steps", "time")  # what teacher_cache writes as stopped_by


def prepared_note(meta: dict[str, Any]) -> str:
    """How a prepared teacher was fine-tuned, from its ``teacher.json`` summary: only what is known (a missing,
    NaN or odd value, e.g. ``"seconds": "10"``, is said to be unknown, never formatted as a number)."""
    from .safeio import number

    stop = meta.get("stopped_by") if meta.get("stopped_by") in STOPS else None
    steps, seconds, acc = (number(meta.get(k)) for k in ("steps", "seconds", "dev_accuracy"))
    known = [f"{int(steps)} steps" if steps is not None and 0 <= steps < 1e12 else None,
             f"{seconds / 60:.1f} min" if seconds is not None and seconds >= 0 else None,
             f"dev accuracy {acc:.4f}" if acc is not None and 0 <= acc <= 1 else None,
             f"stopped by {stop}" if stop else None]
    names = ["steps", "time", "dev accuracy", "what stopped it"]
    unknown = [n for n, k in zip(names, known) if k is None]
    parts = [k for k in known if k] + ([f"not recorded: {', '.join(unknown)}"] if unknown else [])
    to = {"plateau": "its plateau", None: "an unknown point"}.get(stop, "a cap")
    return f"head fine-tuned to {to} ({'; '.join(parts)})"


def last_reason_agreement(run_dir: str | os.PathLike) -> tuple[float, int] | None:
    """(reason_spearman, step) of the run's last evaluation that measured it; None when it never did."""
    from .rundir import read_metrics
    from .safeio import number

    for record in reversed(read_metrics(Path(run_dir))):
        value = number(record.get("reason_spearman"))
        if record.get("split") == "eval" and value is not None:
            return value, int(record.get("step") or 0)
    return None


def vocab_notes(student: nn.Module, teacher_tokenizer: Any, eval_texts: Sequence[str], *,
                max_length: int | None = 128) -> list[str]:
    """A report note for a vocabulary-trimmed student: its size and how many eval tokens fall outside it."""
    from .vocab import outside_vocab, trim_of

    trim = trim_of(student)
    if trim is None:
        return []
    out = outside_vocab(teacher_tokenizer, trim, eval_texts, max_length=max_length)
    note = (f"student vocabulary: {trim.size:,} of {trim.source_size:,} tokens (student_vocab={trim.mode!r}, "
            f"chosen from {trim.texts:,} training texts); {out['outside']:,} of {out['tokens']:,} eval tokens "
            f"({100 * out['outside_fraction']:.1f}%, in {out['texts_with_outside']:,} of {out['texts']:,} texts) "
            "fall outside it and read as [UNK]")
    return [note]
