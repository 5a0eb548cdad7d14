"""report: table columns, retention from accuracies, interleaved timing, compare / compare_run; bench smoke test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_nb.report import Candidate, ModelRow, Report, compare, compare_run, interleaved_latency

ROOT = Path(__file__).resolve().parents[1]


def _report() -> Report:
    return Report([ModelRow("teacher", 1000, 4.0, 10.0, 80.0, 0.90),
                   ModelRow("student", 600, 2.4, 5.0, 40.0, 0.873, note="3 layers"),
                   ModelRow("no labels", 600, 2.4, 5.0, 40.0, None)], device="cpu", data="toy")


def test_report_table_columns_and_retention():
    rep = _report()
    text = str(rep)
    header = next(line for line in text.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "params", "params%", "MB", "b1", "ms", "b32", "ms", "ex/s", "speed-up",
                              "accuracy", "retention"]
    student_line = next(line for line in text.splitlines() if line.startswith("student"))
    assert "97.0%" in student_line and "2.00x" in student_line and "60.0%" in student_line
    assert rep.retention(rep.rows[1]) == pytest.approx(100 * 0.873 / 0.90)
    assert rep.retention(rep.rows[2]) is None
    rows = rep.to_dict()["rows"]
    assert rows[1]["retention_%"] == pytest.approx(97.0)
    assert rows[1]["throughput_b32"] == pytest.approx(800.0)  # 32 examples / 40 ms
    frame = rep.to_frame()
    assert {"params_%", "speedup_b32", "throughput_b32", "retention_%"} <= set(frame.columns)
    assert frame.loc["student", "speedup_b1"] == pytest.approx(2.0)


def test_report_shows_reason_agreement_only_when_measured():
    rows = [ModelRow("teacher", 1000, 4.0, 10.0, 80.0, 0.90),
            ModelRow("student", 600, 2.4, 5.0, 40.0, 0.873, reason_spearman=0.4213)]
    text = str(Report(rows, device="cpu", data="toy"))
    header = next(line for line in text.splitlines() if line.startswith("model"))
    assert header.split()[-2:] == ["retention", "reasons"]
    assert next(line for line in text.splitlines() if line.startswith("teacher")).split()[-1] == "-"
    assert next(line for line in text.splitlines() if line.startswith("student")).split()[-1] == "0.421"
    assert "reason_spearman" in Report(rows, device="cpu", data="toy").to_frame().columns
    assert "reason_spearman" not in _report().to_frame().columns and "reasons" not in str(_report())


@pytest.mark.parametrize("records, expected", [
    ([], None),
    ([{"step": 1, "split": "train", "reason_spearman": 0.5}], None),  # only evals count
    ([{"step": 1, "split": "eval", "accuracy": 0.5}], None),  # tracking off
    ([{"step": 1, "split": "eval", "reason_spearman": 0.3}, {"step": 2, "split": "eval", "reason_spearman": None}],
     (0.3, 1)),  # the last *measured* value (NaN is written as null)
    ([{"step": 1, "split": "eval", "reason_spearman": 0.3}, {"step": 2, "split": "eval", "reason_spearman": 0.6}],
     (0.6, 2)),
    ([{"step": 1, "split": "eval", "reason_spearman": "0.9"}, {"step": 2, "split": "eval", "reason_spearman": True}],
     None),  # not numbers
])
def test_last_reason_agreement(tmp_path, records, expected):
    from distill_nb.report import last_reason_agreement

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                            + '{"step": 3, "split": "eval", "reason_spearman": NaN}\n')
    assert last_reason_agreement(tmp_path) == expected


class _Logged(nn.Module):
    """Records its name on every forward, so the timing order can be checked."""

    def __init__(self, name: str, log: list[str]):
        super().__init__()
        self.name, self.log, self.w = name, log, nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return input_ids


class _Tok:
    """Three token ids per text; latency encodes texts as training does (``data.encode``, then padding)."""

    pad_token_id = 0

    def __call__(self, texts, *pair, **_):
        return {"input_ids": [[1, 2, 3] for _ in texts]}


_tok = _Tok()


def test_latency_is_measured_interleaved():
    log: list[str] = []
    models = [(_Logged(n, log), _tok) for n in "abc"]
    times = interleaved_latency(models, ["x"] * 5, batch_size=2, repeats=3, warmup=1)
    assert len(times) == 3 and all(t >= 0 for t in times)
    # warm-up once each, then every repeat runs every model once, in a rotating order
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_compare_with_quantized_and_pruned_rows(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb import compress
    from distill_nb.models import count_params

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = ["the movie was good", "awful boring film", "fun and great", "a dull mess"] * 3
    labels = [1, 0, 1, 0] * 3
    q = compress.quantize_int8(model)
    h = compress.prune_heads(model, tok, texts, labels, fraction=0.25)
    rep = compare([Candidate("fp32", model, tok, tiny_teacher),
                   Candidate("int8", q.model, tok, params=count_params(model), note=q.summary),
                   Candidate("heads", h.model, tok, note=h.summary)], texts, labels, data="toy", repeats=2)
    fp32, int8, heads = rep.rows
    assert [r.name for r in rep.rows] == ["fp32", "int8", "heads"]
    assert int8.params == fp32.params and heads.params < fp32.params
    assert int8.mb < fp32.mb and heads.mb < fp32.mb
    assert all(r.latency_b1_ms > 0 and r.latency_b32_ms > 0 for r in rep.rows)
    assert all(0 <= r.accuracy <= 1 for r in rep.rows)
    assert "int8 dynamic quantization" in str(rep)
    assert rep.retention(fp32) == pytest.approx(100.0)


def test_compare_run_on_a_tiny_finished_run(tiny_teacher, tiny_dataset, tmp_path):
    from distill_nb.config import DistillConfig
    from distill_nb.train import train

    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, max_steps=3, batch_size=8, max_length=32, eval_every=10,
                           checkpoint_every=10, device="cpu")
    final = train(config, tmp_path / "run", log=lambda m: None)
    rep = compare_run(tmp_path / "run", repeats=2)
    assert [r.name for r in rep.rows] == ["teacher", "student (distilled)"]
    teacher, student = rep.rows
    assert student.params < teacher.params
    assert student.accuracy == pytest.approx(final["accuracy"])
    assert teacher.accuracy == pytest.approx(final["teacher_accuracy"])
    assert "retention" in str(rep)
    # the run tracked its reasons (default probe): the student's row carries the last value it logged
    assert final.get("reason_spearman") is not None, final
    assert student.reason_spearman == pytest.approx(final["reason_spearman"]) and teacher.reason_spearman is None
    assert "reasons" in str(rep) and any("probe texts" in n for n in rep.notes)


def test_bench_run_all_tiny(tmp_path, monkeypatch, capsys):
    """run_all.py end to end on random tiny models and toy data (attribution has its own bench and tests)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the scripts import their siblings, as `python bench/x.py`
    monkeypatch.chdir(tmp_path)
    import run_all

    out = tmp_path / "artifacts"
    summary = run_all.main(["--tiny", "--out-dir", str(out), "--skip", "attribution"])
    printed = capsys.readouterr().out
    for name in ("report.json", "compress.json", "train_throughput.json", "summary.json", "tradeoff.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["reports"]["cpu"]["rows"]]
    assert names[:4] == ["teacher", "student distilled", "student hard-label", "distilled int8"]
    assert summary["errors"] == {}
    assert json.loads((out / "summary.json").read_text())["goals"] == summary["goals"]
    assert {g["goal"] for g in summary["goals"]} >= {"retention >= 97% at <= 60% params",
                                                       "training throughput >= 4x naive KD loop"}
    assert "===== goals =====" in printed and "teacher" in printed


def test_bench_student_shape_tiny(tmp_path, monkeypatch, shared_data):
    """bench_student_shape.py end to end on a random 6-label tiny teacher and 64 TREC-6 texts: every variant
    trains, the trimmed student is smaller, the README tables print (the bench is the evidence of issue 15)."""
    from conftest import make_tiny_bert

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_student_shape

    teacher = make_tiny_bert(tmp_path / "teacher", layers=4, labels=6)
    variants = ["every_k", "first_k", "advisor", "advisor+vocab", "every_k+vocab"]
    result = bench_student_shape.main(
        ["--tasks", "trec6", "--seeds", "0", "--steps", "2", "--max-train", "64", "--max-length", "16",
         "--teacher", f"trec6={teacher}", "--advisor-examples", "16", "--vocab", "40", "--repeats", "1",
         "--student-layers", "2", "--variants", *variants, "--out", str(tmp_path / "out.json"),
         "--runs", str(tmp_path / "runs"), "--proxy", "2", "--proxy-steps", "1", "--proxy-holdout", "16"])
    task = result["tasks"]["trec6"]
    proxy = task["advisor"]["proxy"]  # the advisor's choice is the proxy runs' winner among its 2 best + every-k
    assert [len(scores) for _, scores in proxy["rounds"]][0] in (2, 3) and len(proxy["rounds"][-1][1]) == 2
    assert task["advisor"]["chosen"] == proxy["rounds"][-1][1][0][0]
    assert "proxy runs" in task["advisor"]["search"]
    assert sorted(r["variant"] for r in task["runs"]) == sorted(variants)
    assert task["vocab"]["kept"] == 40 and task["advisor"]["teacher_layers"] == 4
    params = task["params"]
    assert params["student every_k+vocab"] < params["student every_k"] < params["teacher"]
    assert params["student advisor+vocab"] < params["student advisor"]
    text = bench_student_shape.markdown([json.loads((tmp_path / "out.json").read_text())])
    assert "| trec6 | teacher | 4 |" in text and "every_k+vocab" in text and "40 (40)" in text


def test_bench_precision_tiny(tmp_path, monkeypatch, shared_data):
    """bench_precision.py end to end on a random tiny teacher: both precisions train per seed, the table prints."""
    from conftest import make_tiny_bert

    from distill_nb.precision import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16: bench_precision compares bf16 with fp32")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_precision

    teacher = make_tiny_bert(tmp_path / "teacher", layers=4, labels=6)
    result = bench_precision.main(["--tasks", "trec6", "--seeds", "0", "--steps", "2", "--max-train", "32",
                                   "--max-length", "16", "--teacher", f"trec6={teacher}",
                                   "--out", str(tmp_path / "out.json"), "--runs", str(tmp_path / "runs")])
    runs = result["tasks"]["trec6"]["runs"]
    assert [len(runs["bf16"]), len(runs["fp32"])] == [1, 1] and len(result["tasks"]["trec6"]["diff_points"]) == 1
    assert json.loads((tmp_path / "runs" / "trec6" / "bf16-s0" / "status.json").read_text())["precision"] == "bf16"
    assert "| trec6 | 500 |" in bench_precision.table(result)


@pytest.mark.parametrize("state", ["stopped", "failed", "running", "queued"])
def test_compare_run_without_a_final_student_says_what_to_do(tmp_path, state):
    from distill_nb.config import DistillConfig
    from distill_nb.report import compare_run, load_run_models
    from distill_nb.rundir import create_run, write_status

    path = create_run(DistillConfig(teacher="tiny", max_steps=4), tmp_path, "r")
    write_status(path, state=state)
    for call in (lambda: compare_run(path), lambda: load_run_models(path)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert f"run 'r' is {state}" in str(info.value) and "no final student" in str(info.value)


@pytest.mark.parametrize("final_only", [True, False])
def test_a_completed_run_without_its_student_folder_says_what_happened(tmp_path, final_only):
    from distill_nb.config import DistillConfig
    from distill_nb.report import load_run_models
    from distill_nb.rundir import create_run, write_status

    path = create_run(DistillConfig(teacher="minilm-l6"), tmp_path, "done")
    write_status(path, state="completed", pid=None, step=5, total_steps=5)
    (path / "checkpoints" / "step_0000005").mkdir(parents=True)  # a checkpoint is not the final student
    with pytest.raises(FileNotFoundError, match="is completed but its student/ folder is missing.*fork") as info:
        load_run_models(path, final_only=final_only)
    assert "wait for" not in str(info.value) and "finish the run" not in str(info.value)
