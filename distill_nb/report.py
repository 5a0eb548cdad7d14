"""Teacher vs student, as the DistilBERT paper reported it: params, MB, latency, accuracy, retention."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .models import count_params, measure_latency


@dataclass(frozen=True)
class ModelRow:
    name: str
    params: int
    mb: float  # size of the weights on disk (safetensors), or in memory when not saved
    latency_b1_ms: float  # median forward time, batch of 1
    latency_b32_ms: float  # median forward time, batch of 32
    accuracy: float | None


@dataclass(frozen=True)
class Report:
    rows: list[ModelRow]
    device: str
    data: str

    def to_frame(self) -> Any:
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows]).set_index("name")
        base = self.rows[0]
        frame["params_%"] = 100 * frame["params"] / base.params
        frame["speedup_b32"] = base.latency_b32_ms / frame["latency_b32_ms"]
        if base.accuracy:
            frame["retention_%"] = 100 * frame["accuracy"] / base.accuracy
        return frame

    def __str__(self) -> str:
        base = self.rows[0]
        head = (f"{'model':<22}{'params':>12}{'MB':>9}{'b1 ms':>9}{'b32 ms':>9}{'speed-up':>10}{'accuracy':>10}"
                f"{'retention':>11}")
        lines = [f"device: {self.device}; data: {self.data}", head, "-" * len(head)]
        for r in self.rows:
            acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "-"
            ret = f"{100 * r.accuracy / base.accuracy:.1f}%" if r.accuracy and base.accuracy else "-"
            lines.append(f"{r.name:<22}{r.params:>12,}{r.mb:>9.1f}{r.latency_b1_ms:>9.1f}{r.latency_b32_ms:>9.1f}"
                         f"{base.latency_b32_ms / r.latency_b32_ms:>9.2f}x{acc:>10}{ret:>11}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format=lambda v: f"{v:,.3f}")


@torch.inference_mode()
def accuracy(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
             batch_size: int = 64, max_length: int = 128) -> float:
    """Accuracy over ``texts`` in length-sorted batches."""
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        pred = model(**batch).logits.argmax(-1).cpu()
        correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
    return correct / len(texts)


def disk_mb(folder: str | os.PathLike | None, model: nn.Module) -> float:
    files = list(Path(folder).glob("*.safetensors")) if folder else []
    if files:
        return sum(f.stat().st_size for f in files) / 2**20
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def measure(name: str, model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None, *,
            folder: str | os.PathLike | None = None, repeats: int = 5) -> ModelRow:
    """One row: size, latency at batch 1 and 32, accuracy (when labels are given)."""
    return ModelRow(
        name=name, params=count_params(model), mb=disk_mb(folder, model),
        latency_b1_ms=1000 * measure_latency(model, tokenizer, texts, batch_size=1, repeats=repeats),
        latency_b32_ms=1000 * measure_latency(model, tokenizer, texts, batch_size=32, repeats=repeats),
        accuracy=accuracy(model, tokenizer, texts, labels) if labels is not None else None)


def compare(models: dict[str, tuple[nn.Module, Any, str | os.PathLike | None]], texts: Sequence[str],
            labels: Sequence[int] | None, *, data: str = "", repeats: int = 5) -> Report:
    """Measure each (model, tokenizer, folder) side by side; the first one is the reference (the teacher)."""
    rows = [measure(n, m, tok, texts, labels, folder=f, repeats=repeats) for n, (m, tok, f) in models.items()]
    device = str(next(next(iter(models.values()))[0].parameters()).device)
    return Report(rows, device, data)


def compare_run(run_dir: str | os.PathLike, *, max_eval: int | None = None, repeats: int = 5) -> Report:
    """Teacher vs the finished student of a run, on the run's eval split."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .config import DistillConfig
    from .data import load_task
    from .models import load_teacher

    run_dir = Path(run_dir)
    config = DistillConfig.from_json(run_dir / "config.json")
    task = load_task(config.dataset, text_column=config.text_column, label_column=config.label_column,
                     train_split=config.train_split, eval_split=config.eval_split,
                     max_train=config.max_train_examples, max_eval=max_eval or config.max_eval_examples,
                     seed=config.seed)
    from .runs import read_status

    # a bare-encoder teacher was fine-tuned by train(); status.json says where that teacher was saved
    t_folder = read_status(run_dir).get("teacher_path")
    teacher, t_tok = load_teacher(t_folder or config.teacher, trust_remote_code=config.trust_remote_code)
    student = AutoModelForSequenceClassification.from_pretrained(run_dir / "student").eval()
    s_tok = AutoTokenizer.from_pretrained(run_dir / "student")
    return compare({"teacher": (teacher, t_tok, t_folder), "student (distilled)": (student, s_tok,
                                                                                   run_dir / "student")},
                   task.eval.texts, task.eval.labels, data=task.source, repeats=repeats)
