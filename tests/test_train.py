"""train(): a few CPU steps write a complete run directory; resume; DDP on CPU matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from distill_nb import DistillConfig
from distill_nb.runs import read_metrics, read_status
from distill_nb.train import latest_checkpoint, train


def tiny_config(teacher, data, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2, max_steps=3,
                batch_size=8, eval_every=2, checkpoint_every=2, seed=0, student_dropout=0.0)
    return DistillConfig(**{**base, **kw})


def test_three_steps_write_config_metrics_checkpoint_and_loadable_student(tiny_teacher, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    final = train(tiny_config(tiny_teacher, tiny_dataset, alpha_ce=0.5), run, log=lambda *_: None)
    assert DistillConfig.from_json(run / "config.json").max_steps == 3
    status = read_status(run)
    assert status["state"] == "completed" and status["step"] == 3 and status["total_steps"] == 3
    train_steps = [m["step"] for m in read_metrics(run) if m["split"] == "train"]
    assert train_steps == [1, 2, 3]
    assert {"kd", "ce", "loss", "lr"} <= set(read_metrics(run)[0])
    assert latest_checkpoint(run).name == "step_0000002"
    assert (run / "checkpoints" / "step_0000002" / "model.safetensors").is_file()
    assert 0.0 <= final["accuracy"] <= 1.0 and final["step"] == 3
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run / "student"))
    out = clf(["the movie was good", "the movie was awful"])
    assert len(out) == 2 and {"label", "score"} <= set(out[0])


def test_all_losses_with_narrow_student_and_projection(tiny_teacher, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_teacher, tiny_dataset, student_hidden=16, student_heads=2, student_init="random",
                      alpha_hidden=1.0, alpha_attn=1.0, alpha_ce=1.0, hidden_loss="mse", layer_map=[1, 3],
                      checkpoint_every=1)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    recs = [m for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert all(r["hidden"] > 0 and r["attn"] >= 0 for r in recs)
    proj = load_file(latest_checkpoint(tmp_path / "run") / "projections.safetensors")
    assert proj["0.weight"].shape == (32, 16)  # maps student width 16 to teacher width 32


def test_learning_moves_student_towards_teacher(tiny_teacher, tiny_dataset, tmp_path):
    """KD with a high learning rate must reduce the KL to the teacher on the eval split."""
    cfg = tiny_config(tiny_teacher, tiny_dataset, student_init="random", max_steps=40, eval_every=5,
                      learning_rate=3e-3, warmup_ratio=0.0, temperature=1.0)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    evals = [m for m in read_metrics(tmp_path / "run") if m["split"] == "eval"]
    assert evals[-1]["kd_to_teacher"] < evals[0]["kd_to_teacher"]


def test_resume_continues_from_checkpoint_without_duplicate_steps(tiny_teacher, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=7, checkpoint_every=3, eval_every=100)
    (run).mkdir()
    # ask to stop after step 4 (checkpoint at 3): train() checkpoints where it stops and returns
    import distill_nb.train as tr

    calls = {"n": 0}
    real_append = tr.append_metrics

    def append_and_stop(path, rec):
        real_append(path, rec)
        calls["n"] += 1
        if rec.get("step") == 4 and rec["split"] == "train":
            (run / "STOP").write_text("now")

    tr.append_metrics = append_and_stop
    try:
        train(cfg, run, log=lambda *_: None)
    finally:
        tr.append_metrics = real_append
    stopped = read_status(run)
    assert stopped["state"] == "stopped" and 4 <= stopped["step"] < 7
    assert latest_checkpoint(run).name == f"step_{stopped['step']:07d}"  # stop writes a checkpoint first
    (run / "STOP").unlink()
    train(cfg, run, log=lambda *_: None)
    steps = [m["step"] for m in read_metrics(run) if m["split"] == "train"]
    assert steps == list(range(1, 8))
    # same final weights as an uninterrupted run (same data order, rng and optimizer state)
    train(cfg, tmp_path / "straight", log=lambda *_: None)
    a, b = load_file(run / "student" / "model.safetensors"), load_file(tmp_path / "straight" / "student" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_ddp_two_processes_on_cpu_match_one_process(tiny_teacher, tiny_dataset, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): each process takes half of every batch; DDP averages gradients."""
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=4, eval_every=100, checkpoint_every=100)
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(cfg, single, log=lambda *_: None)
    cfg.to_json(multi / "config.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "distill_nb.train", str(multi)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((multi / "status.json").read_text())
    assert status["state"] == "completed" and status["world_size"] == 2
    a, b = load_file(single / "student" / "model.safetensors"), load_file(multi / "student" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert [m["step"] for m in read_metrics(multi) if m["split"] == "train"] == [1, 2, 3, 4]


def test_bad_inputs_fail_with_clear_errors(tiny_teacher, tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        train(tiny_config(tmp_path / "no-such-model", tiny_dataset), tmp_path / "r1", log=lambda *_: None)
    assert read_status(tmp_path / "r1")["state"] == "failed"
    with pytest.raises(KeyError, match="'sentence'.*columns are"):
        train(tiny_config(tiny_teacher, tiny_dataset, text_column="sentence"), tmp_path / "r2", log=lambda *_: None)
    with pytest.raises(ValueError, match="not divisible"):
        train(tiny_config(tiny_teacher, tiny_dataset, student_hidden=30, student_init="random"), tmp_path / "r3",
              log=lambda *_: None)
    assert "not divisible" in read_status(tmp_path / "r3")["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.csv").write_text("text,label\n")
    (empty / "validation.csv").write_text("text,label\nfine,1\n")
    with pytest.raises(ValueError, match="empty"):
        train(tiny_config(tiny_teacher, empty), tmp_path / "r4", log=lambda *_: None)
