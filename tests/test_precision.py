"""precision.py: which autocast a run gets on a CPU, the measured bf16 check and its cache."""

from __future__ import annotations

import json

import pytest
import torch

from distill_nb import precision


def test_cpu_precisions_fail_or_choose_with_reasons(monkeypatch):
    monkeypatch.delenv("DISTILL_NB_CPU_AUTO", raising=False)  # conftest pins fp32; here the verdict decides
    cpu = torch.device("cpu")
    assert precision.amp_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="fp16.*needs a CUDA device"):
        precision.amp_dtype("fp16", cpu)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        precision.amp_dtype("bf16", cpu)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.amp_dtype("bf16", cpu) is torch.bfloat16
    for verdict, expected in [(True, torch.bfloat16), (False, None)]:
        monkeypatch.setattr(precision, "cpu_bf16_check", lambda refresh=False, v=verdict: {"use_bf16": v})
        assert precision.amp_dtype("auto", cpu) is expected


def test_bf16_check_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    calls = []
    monkeypatch.setattr(precision, "_measure", lambda: calls.append(1) or {"use_bf16": True, "speedup": 2.0})
    assert precision.cpu_bf16_check()["use_bf16"] and precision.cpu_bf16_check()["use_bf16"]
    assert len(calls) == 1
    (tmp_path / "precision.json").write_text("{not json")  # a corrupt cache is measured again
    assert precision.cpu_bf16_check()["use_bf16"] and len(calls) == 2
    assert json.loads((tmp_path / "precision.json").read_text())


@pytest.mark.skipif(not precision.cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_real_bf16_check_and_a_bf16_run(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    check = precision.cpu_bf16_check()
    assert check["supported"] and check["rel_error"] < 0.05 and check["speedup"] > 0
    from distill_nb import DistillConfig
    from distill_nb.runs import read_status
    from distill_nb.train import train

    cfg = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", max_steps=3,
                        student_layers=2, batch_size=8, precision="bf16")
    record = train(cfg, tmp_path / "run", log=lambda *_: None)
    assert read_status(tmp_path / "run")["precision"] == "bf16" and 0 <= record["accuracy"] <= 1


@pytest.mark.skipif(not precision.cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_attributions_track_fp32(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.attribution import attribute

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = ["the movie was very good", "the plot was a boring mess"]
    full = attribute(model, tok, texts, target=1, n_steps=8)
    low = attribute(model, tok, texts, target=1, n_steps=8, precision="bf16")
    for a, b in zip(full, low):
        assert b.scores.dtype == a.scores.dtype
        cos = float((a.scores * b.scores).sum() / ((a.scores ** 2).sum() * (b.scores ** 2).sum()) ** 0.5)
        assert cos > 0.95, cos


def test_cpu_auto_can_be_pinned(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_check", lambda refresh=False: {"use_bf16": True})
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setenv("DISTILL_NB_CPU_AUTO", "fp32")
    assert precision.amp_dtype("auto", cpu) is None
    monkeypatch.setenv("DISTILL_NB_CPU_AUTO", "bf16")
    assert precision.amp_dtype("auto", cpu) is torch.bfloat16


def test_keep_freed_memory_is_in_effect_after_a_cpu_run(tmp_path, tiny_teacher, tiny_dataset, monkeypatch):
    """train() on a CPU asks for freed large blocks to be kept for reuse (glibc mallopt); idempotent; a no-op off
    glibc."""
    import ctypes
    import sys

    import distill_nb.train as train_module
    from distill_nb import DistillConfig

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(1) or precision.keep_freed_memory())
    train_module.train(DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                                     student_layers=1, max_steps=1, batch_size=8, eval_every=10, checkpoint_every=10,
                                     device="cpu", reason_probe=0), tmp_path / "run", log=lambda *_: None)
    assert calls == [1]  # once per CPU run
    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert precision.keep_freed_memory() is glibc
    assert precision.keep_freed_memory() is glibc  # applied once, the same answer after


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # no CUDA needed: the name is checked before the device
@pytest.mark.parametrize("name, suggestion", [("fp8", None), ("bf-16", "bf16"), ("BF16", "bf16"), ("half", "fp16"),
                                              ("FP32", "fp32"), ("", None), (None, None), ("float64", None)])
def test_unknown_precision_is_refused_with_the_accepted_values(name, suggestion, device):
    with pytest.raises(ValueError) as info:
        precision.amp_dtype(name, torch.device(device))
    message = str(info.value)
    assert f"precision={name!r}" in message and "use one of 'fp32', 'bf16', 'fp16', 'auto'" in message
    assert (f"did you mean {suggestion!r}" in message) if suggestion else "did you mean" not in message


def test_every_accepted_precision_still_works_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setenv("DISTILL_NB_CPU_AUTO", "fp32")
    assert precision.amp_dtype("fp32", cpu) is None
    assert precision.amp_dtype("bf16", cpu) is torch.bfloat16
    assert precision.amp_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        precision.amp_dtype("fp16", cpu)
