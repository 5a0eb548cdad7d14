"""train(): a few CPU steps write a complete run directory; resume; DDP on CPU matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_nb import DistillConfig
from distill_nb.checkpoint import latest_checkpoint
from distill_nb.runs import read_metrics, read_status
from distill_nb.train import train


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


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # 0.1: the CPU dropout's masks replay from the saved RNG state
def test_resume_continues_from_checkpoint_without_duplicate_steps(tiny_teacher, tiny_dataset, tmp_path, monkeypatch,
                                                                  dropout):
    from distill_nb import rundir

    run = tmp_path / "run"
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=7, checkpoint_every=3, eval_every=100,
                      student_dropout=dropout)
    (run).mkdir()
    # ask to stop after step 4 (checkpoint at 3): train() checkpoints where it stops and returns
    real_append = rundir.append_metrics

    def append_and_stop(path, rec):
        real_append(path, rec)
        if rec.get("step") == 4 and rec["split"] == "train":
            (run / "STOP").write_text("now")

    monkeypatch.setattr(rundir, "append_metrics", append_and_stop)
    train(cfg, run, log=lambda *_: None)
    monkeypatch.setattr(rundir, "append_metrics", real_append)
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


def torchrun_two(run, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m distill_nb.train RUN`` on CPU (gloo), one thread each."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "distill_nb.train", str(run)], env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=timeout)


def test_ddp_two_processes_on_cpu_match_one_process(tiny_teacher, tiny_dataset, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): each process takes half of every batch; DDP averages gradients."""
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=4, eval_every=100, checkpoint_every=100)
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(cfg, single, log=lambda *_: None)
    cfg.to_json(multi / "config.json")
    proc = torchrun_two(multi)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((multi / "status.json").read_text())
    assert status["state"] == "completed" and status["world_size"] == 2
    a, b = load_file(single / "student" / "model.safetensors"), load_file(multi / "student" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert [m["step"] for m in read_metrics(multi) if m["split"] == "train"] == [1, 2, 3, 4]


def test_ddp_with_uneven_slices_and_a_batch_smaller_than_the_processes(tiny_teacher, tiny_dataset, tmp_path):
    """Batch 7 of 64 rows: slices of 4 and 3 (each weighed by its share, so the step is the one-process step), and
    a last batch of 1 example, which leaves one process nothing (it joins the step with a weight of 0)."""
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=10, batch_size=7, eval_every=100, checkpoint_every=100,
                      precision="fp32")
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(cfg, single, log=lambda *_: None)
    cfg.to_json(multi / "config.json")
    proc = torchrun_two(multi)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((multi / "status.json").read_text())["state"] == "completed"
    a, b = load_file(single / "student" / "model.safetensors"), load_file(multi / "student" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_torchrun_on_a_stopped_run_ends_every_process_at_once(tiny_teacher, tiny_dataset, tmp_path):
    """Rank 0 finds the run stopped (its STOP file stands) and does not train: the other rank is told so and ends
    too, instead of waiting for a rendezvous that never comes (gloo: 30 minutes)."""
    from distill_nb.rundir import request_stop, write_status

    run = tmp_path / "stopped"
    tiny_config(tiny_teacher, tiny_dataset, max_steps=4).to_json(run / "config.json")
    write_status(run, state="stopped", step=0, total_steps=4, pid=None)
    request_stop(run)
    proc = torchrun_two(run, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "was stopped before this worker started" in proc.stderr
    assert read_status(run)["state"] == "stopped" and not (run / "student").exists()


def one_process_fails(folder: Path, rank: int, how: str) -> str:
    """A ``PYTHONPATH`` whose sitecustomize makes process ``rank`` (only) fail in its first training step: ``raise``
    an exception, or ``die`` at once (SIGKILL, as the OOM killer does) with nothing recorded. A test-only shim:
    monkeypatch does not reach torchrun's processes."""
    folder.mkdir()
    body = (f'raise ValueError("process {rank} read a bad batch")' if how == "raise" else
            "os.kill(os.getpid(), signal.SIGKILL)")
    (folder / "sitecustomize.py").write_text(
        "import os, signal\n"
        f"if os.environ.get('RANK') == '{rank}':\n"
        "    import distill_nb.losses as losses\n"
        "    def kd_loss(*args, **kwargs):\n"
        f"        {body}\n"
        "    losses.kd_loss = kd_loss\n")
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def test_a_failure_on_process_1_is_the_runs_error_not_the_broken_connection(tiny_teacher, tiny_dataset, tmp_path):
    """Process 1 raises inside its training step; process 0 then fails on the next collective (gloo: "Connection
    closed by peer"). status.json names process 1's error; a later attempt whose process 1 dies without a word
    is never blamed on that old error."""
    run = tmp_path / "run"
    tiny_config(tiny_teacher, tiny_dataset, max_steps=4, eval_every=100, checkpoint_every=100).to_json(
        run / "config.json")
    proc = torchrun_two(run, timeout=180, PYTHONPATH=one_process_fails(tmp_path / "raise", 1, "raise"))
    assert proc.returncode != 0
    status = read_status(run)
    assert status["state"] == "failed", (status, proc.stderr[-3000:])
    assert status["error"].startswith("process 1 failed: ValueError: process 1 read a bad batch"), status["error"]
    assert "process 1 read a bad batch" in status["traceback"]

    proc = torchrun_two(run, timeout=180, PYTHONPATH=one_process_fails(tmp_path / "die", 1, "die"))  # Resume, then worse
    assert proc.returncode != 0
    status = read_status(run)
    assert status["state"] == "failed" and "bad batch" not in status["error"], (status, proc.stderr[-3000:])


def test_a_torchrun_worker_that_dies_points_to_its_terminal_not_to_log_txt(tiny_teacher, tiny_dataset, tmp_path):
    """torchrun started by hand prints to its terminal; only launch() and Resume write log.txt. A process 0 that
    dies without a word (SIGKILL) leaves a run whose error says where to look, also after an earlier launch()."""
    from distill_nb.rundir import write_status

    run = tmp_path / "run"
    tiny_config(tiny_teacher, tiny_dataset, max_steps=4, eval_every=100, checkpoint_every=100).to_json(
        run / "config.json")
    write_status(run, state="failed", step=0, backend="subprocess", claimed=True)  # as an earlier launch() left it
    proc = torchrun_two(run, timeout=180, PYTHONPATH=one_process_fails(tmp_path / "die", 0, "die"))
    assert proc.returncode != 0
    status = read_status(run)
    assert status["state"] == "failed" and status["stale"], (status, proc.stderr[-3000:])
    assert str(run / "log.txt") not in status["error"] and "terminal of torchrun" in status["error"], status["error"]
    assert not (run / "log.txt").exists()


@pytest.mark.parametrize("flags, module", [(["--multi_gpu"], "distill_nb.worker"), ([], "distill_nb.train")],
                         ids=["multi_gpu-worker", "plain-train"])
def test_accelerate_launch_two_cpu_processes_give_the_single_process_student(tiny_teacher, tiny_dataset, tmp_path,
                                                                              flags, module):
    """accelerate launch --num_processes 2 on CPU (gloo): with --multi_gpu accelerate starts both processes
    itself; without it, its launcher starts one, and distill_nb.train starts the two it was asked for."""
    pytest.importorskip("accelerate")
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=4, eval_every=100, checkpoint_every=100,
                      precision="fp32")
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(cfg, single, log=lambda *_: None)
    cfg.to_json(multi / "config.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(29500 + len(flags) + os.getpid() % 500),
                           "-m", module, str(multi)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((multi / "status.json").read_text())
    assert status["state"] == "completed" and status["world_size"] == 2, status
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


# --- objective="mlm": task-agnostic masked-LM distillation (DistilBERT's pre-training) ----------------------------
@pytest.fixture(scope="module")
def tiny_mlm_teacher(tmp_path_factory):
    """A 4-layer, 32-wide random BertForMaskedLM with its tokenizer."""
    from conftest import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny_mlm_teacher"), mlm=True)


@pytest.fixture
def one_thread():
    """num_threads=1 for train(): tiny matrices run as fast on one thread, and stay fast on a busy machine."""
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)  # train() sets it for the whole process


def test_mlm_run_writes_run_dir_and_a_fill_mask_student(tiny_mlm_teacher, tiny_dataset, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_mlm_teacher, tiny_dataset, objective="mlm", mlm_probability=0.3, alpha_ce=0.5,
                      alpha_hidden=1.0, label_column="no-such-column", num_threads=one_thread)  # labels unread
    final = train(cfg, run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed" and latest_checkpoint(run).name == "step_0000002"
    assert not (run / "teacher_logits.safetensors").exists()  # vocabulary logits are never cached
    train_recs = [m for m in read_metrics(run) if m["split"] == "train"]
    assert [m["step"] for m in train_recs] == [1, 2, 3] and {"kd", "ce", "hidden"} <= set(train_recs[0])
    evals = [m for m in read_metrics(run) if m["split"] == "eval"]
    assert {"accuracy", "teacher_accuracy", "agreement", "kd_to_teacher", "eval_loss", "masked_tokens"} <= set(
        evals[0])
    assert evals[0]["masked_tokens"] == evals[-1]["masked_tokens"] > 0  # one fixed mask on the eval texts
    assert 0.0 <= final["accuracy"] <= 1.0 and 0.0 <= final["agreement"] <= 1.0
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(run / "student"), top_k=3)
    out = fill("the movie was [MASK] .")
    assert type(fill.model).__name__ == "BertForMaskedLM" and len(out) == 3 and {"token_str", "score"} <= set(out[0])


def test_every_k_student_of_an_mlm_teacher_copies_layers_and_the_tied_mlm_head(tiny_mlm_teacher, tiny_teacher):
    from distill_nb.models import load_teacher, make_student

    teacher, _ = load_teacher(str(tiny_mlm_teacher), head="mlm")
    with torch.no_grad():  # LayerNorm ones, zero biases: a fresh head would match a random teacher's by chance
        for p in teacher.cls.parameters():
            p.add_(torch.randn_like(p))
    student = make_student(teacher, n_layers=2, head="mlm")
    assert type(student).__name__ == "BertForMaskedLM" and student.config.distill_nb_init["teacher_layers"] == [0, 2]
    t_params = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        if ".layer." not in name:  # embeddings and the whole MLM head (transform, decoder bias) are the teacher's
            assert torch.equal(p, t_params[name]), name
    assert any(n.startswith("cls.predictions.transform") for n, _ in student.named_parameters())
    for j, i in enumerate([0, 2]):
        for (name, p_s), (_, p_t) in zip(student.bert.encoder.layer[j].named_parameters(),
                                         teacher.bert.encoder.layer[i].named_parameters()):
            assert torch.equal(p_s, p_t), name
    assert student.cls.predictions.decoder.weight is student.bert.embeddings.word_embeddings.weight  # still tied
    with pytest.raises(ValueError, match="masked-LM head"):
        load_teacher(str(tiny_teacher), head="mlm")  # a classifier cannot teach the vocabulary distribution


def test_mlm_learning_moves_student_towards_teacher(tiny_mlm_teacher, tiny_dataset, tmp_path, one_thread):
    """Masked-LM KD with a high learning rate must reduce the KL to the teacher at the (fixed) eval masks."""
    cfg = tiny_config(tiny_mlm_teacher, tiny_dataset, objective="mlm", student_init="random", max_steps=30,
                      eval_every=5, learning_rate=3e-3, warmup_ratio=0.0, temperature=1.0, checkpoint_every=100,
                      num_threads=one_thread)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    evals = [m for m in read_metrics(tmp_path / "run") if m["split"] == "eval"]
    assert evals[-1]["kd_to_teacher"] < 0.5 * evals[0]["kd_to_teacher"]


@pytest.mark.parametrize("pair", [False, True], ids=["single-text", "text-pairs"])
def test_mlm_with_a_teacher_without_segment_ids_and_a_student_with_them(pair, tiny_dataset, pair_dataset, tmp_path,
                                                                        one_thread, segments_seen, monkeypatch):
    """A DistilBERT masked-LM teacher (no token_type_ids in its forward) and a BERT student from a path, same
    vocabulary, on single texts and on text pairs: each model gets only the inputs its forward takes, in training
    and in evaluation."""
    from conftest import make_tiny_bert, write_vocab
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertForMaskedLM

    teacher_dir = tmp_path / "distilbert-mlm"
    tok = BertTokenizerFast(vocab=str(write_vocab(teacher_dir)), do_lower_case=True)
    torch.manual_seed(0)
    DistilBertForMaskedLM(DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=128)).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    student_dir = make_tiny_bert(tmp_path / "bert-mlm", layers=2, mlm=True, seed=1)
    data = {"dataset": str(pair_dataset), "text_column": ["premise", "hypothesis"], "text_pair": True} if pair else {}
    cfg = tiny_config(teacher_dir, tiny_dataset, objective="mlm", student_init=str(student_dir),
                      label_column="no-such-column", num_threads=one_thread, **data)
    from transformers.models.distilbert.modeling_distilbert import DistilBertForMaskedLM as Teacher

    teacher_got, real = [], Teacher.forward  # the teacher's forward takes **kwargs: an extra input is not refused

    def forward(self, *args, **kwargs):
        teacher_got.append(sorted(kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Teacher, "forward", forward)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    assert read_status(tmp_path / "run")["state"] == "completed"
    assert [m["step"] for m in read_metrics(tmp_path / "run") if m["split"] == "train"] == [1, 2, 3]
    assert teacher_got and not any("token_type_ids" in got for got in teacher_got)
    # the BERT student reads a pair's segments in every forward, training and evaluation alike
    assert segments_seen and all(segments_seen) == pair and any(segments_seen) == pair


@pytest.mark.parametrize("where", ["student", ".tmp-student", "checkpoints/step_0000002",
                                   "checkpoints/step_0000001", "checkpoints/.tmp-step_0000002"])
def test_a_fifo_where_the_run_saves_is_replaced_never_opened(where, tiny_teacher, tiny_dataset, tmp_path, one_thread):
    """Opening a FIFO blocks until a writer comes: a run that met one where it saves (the student, a checkpoint, an
    old checkpoint it prunes, a temp folder) hung for good, Stop and Delete powerless. It must save over it."""
    import threading

    from distill_nb.runs import create_run

    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=4, checkpoint_every=2, keep_checkpoints=1,
                      num_threads=one_thread)
    run = create_run(cfg, tmp_path / "runs", "r")
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(run / where)
    worker = threading.Thread(target=train, args=(cfg, run), kwargs={"log": lambda *_: None}, daemon=True)
    worker.start()
    worker.join(120)
    if worker.is_alive():  # let the stuck reader go, so the test reports instead of hanging
        os.close(os.open(run / where, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail(f"train() blocked on a FIFO at {where}")
    assert read_status(run)["state"] == "completed"
    assert (run / "student").is_dir() and latest_checkpoint(run).name == "step_0000002"
    assert not any(p.is_fifo() for p in run.rglob("*"))


def _broken_teacher(folder: Path, where: str, mlm: bool = False) -> Path:
    """A tiny BERT teacher with inf weights: in its last layer (NaN logits on every text), or in the word
    embedding of "brilliant" or the position embedding 9 (NaN logits only on the texts that reach them)."""
    from conftest import make_tiny_bert
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    make_tiny_bert(folder, mlm=mlm)
    model = (AutoModelForMaskedLM if mlm else AutoModelForSequenceClassification).from_pretrained(folder)
    with torch.no_grad():
        if where == "everywhere":
            model.bert.encoder.layer[3].output.dense.weight.fill_(float("inf"))
        elif where == "training-word":
            row = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("brilliant")
            model.bert.embeddings.word_embeddings.weight[row] = float("nan")
        else:  # position 9: only an eval text is that long (a word's row would reach every text through a tied
            model.bert.embeddings.position_embeddings.weight[9] = float("nan")  # masked-LM decoder)
    model.save_pretrained(folder)
    return folder


BROKEN_TEACHER_CASES = {  # name: (where the teacher is broken, config changes, the texts the error names)
    "hard-labels-only": ("everywhere", {"alpha_kd": 0.0, "alpha_ce": 1.0}, "eval"),
    "kd-cached-logits": ("everywhere", {}, "training"),
    "kd-cached-on-training-texts-only": ("training-word", {"student_init": "random"}, "training"),
    "teacher-every-step": ("training-word", {"alpha_hidden": 1.0, "student_init": "random"}, "training"),
    "mlm": ("everywhere", {"objective": "mlm", "label_column": "no-such-column"}, "training"),  # runs every step
    "kd-nan-on-eval-texts-only": ("eval-position", {"student_init": "random"}, "eval"),
    "mlm-nan-on-eval-texts-only": ("eval-position", {"objective": "mlm", "label_column": "no-such-column",
                                                 "student_init": "random"}, "masked eval"),
}


@pytest.mark.parametrize("case", list(BROKEN_TEACHER_CASES))
def test_a_teacher_with_nan_outputs_fails_the_run_and_says_so(case, tmp_path, one_thread):
    """A run against a teacher whose logits are NaN completed (teacher accuracy 0, kd_to_teacher NaN), or blamed
    the learning rate and cached the NaN logits. It must fail, name the teacher, and leave no student or cache."""
    from conftest import HINT

    from distill_nb.evaluation import BrokenTeacher

    where, changes, texts = BROKEN_TEACHER_CASES[case]
    teacher = _broken_teacher(tmp_path / "teacher", where, mlm=changes.get("objective") == "mlm")
    data = tmp_path / "data"
    data.mkdir()
    for split, n in [("train", 32), ("validation", 16)]:  # "brilliant" only in training texts, 10 tokens in eval
        odd = "brilliant" if split == "train" else "very " * 5 + "good"
        rows = ["text,label"] + [f"the movie was {odd if i % 4 == 1 else 'good'},1" if i % 2
                                 else f"the movie was {'bad' if i % 3 else 'dull'},0" for i in range(n)]
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    cfg = tiny_config(teacher, data, max_steps=4, batch_size=32, eval_every=2, checkpoint_every=100,
                      num_threads=one_thread, **changes)
    with pytest.raises(BrokenTeacher) as err:
        train(cfg, run, log=lambda *_: None)
    message = str(err.value)
    assert "not finite (NaN or inf) on" in message and f" {texts} texts" in message and HINT.search(message)
    status = read_status(run)
    assert status["state"] == "failed" and "the teacher itself is broken" in status["error"]
    assert not (run / "student").exists()
    assert texts != "training" or not (run / "teacher_logits.safetensors").exists()  # never a broken cache
    assert not any(m.get("split") == "eval" for m in read_metrics(run))  # no metric against a broken teacher


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_student_whose_final_logits_are_not_finite_is_never_completed(bad, tiny_teacher, tiny_dataset, tmp_path,
                                                                        one_thread, monkeypatch):
    """Finite weights can still give NaN/inf logits (an overflow): such a student is not saved as completed."""
    from distill_nb import evaluation
    from distill_nb.checkpoint import Diverged

    real = evaluation.predict_logits

    def overflowing(*args, **kwargs):  # the student's eval logits, one row broken
        logits = real(*args, **kwargs)
        logits[0, 0] = bad
        return logits

    monkeypatch.setattr(evaluation, "predict_logits", overflowing)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"student's logits are not finite \(NaN or inf\) on 1 eval texts"):
        train(tiny_config(tiny_teacher, tiny_dataset, num_threads=one_thread), run, log=lambda *_: None)
    assert read_status(run)["state"] == "failed" and not (run / "student").exists()
    assert latest_checkpoint(run).name == "step_0000002"  # the last checkpoint is kept for a resume


NOT_RUN_FOLDERS = {  # what a careless --run-dir (or train(config, folder)) may point at; relative path -> content
    "a-readme": {"README.txt": "mine"},
    "metrics-of-its-own": {"metrics.jsonl": '{"step": 1}\n', "status.json": '{"state": "mine"}'},
    "a-checkpoints-folder": {"checkpoints/step_0000001/notes.txt": "mine"},
    "a-student-folder": {"student/notes.txt": "mine"},
    "a-hidden-file": {".env": "SECRET=1"},
    "a-subfolder": {"data/train.csv": "text,label"},
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "<dir>" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", list(NOT_RUN_FOLDERS))
def test_a_folder_of_other_files_is_never_trained_in(case, tiny_teacher, tiny_dataset, tmp_path, capsys):
    """`distill-nb run --run-dir <a folder of the user's files>` (even `/`) trained there: it overwrote their
    metrics.jsonl and status.json and pruned their checkpoints/. Refused, naming the folder; nothing written."""
    from distill_nb.cli import main as cli

    folder = tmp_path / "mine"
    for rel, text in NOT_RUN_FOLDERS[case].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    before = _snapshot(folder)
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=2, checkpoint_every=1, keep_checkpoints=1)
    with pytest.raises(ValueError, match="is not a run folder: it holds .* but no config.json") as err:
        train(cfg, folder, log=lambda *_: None)
    assert str(folder) in str(err.value) and "Give a new or empty folder" in str(err.value)
    config_file = tmp_path / "c.json"
    config_file.write_text(cfg.to_json())
    assert cli(["run", str(config_file), "--run-dir", str(folder)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert _snapshot(folder) == before  # not one file added, changed or removed


@pytest.mark.parametrize("left", [[], [".worker.lock"], [".worker.lock", ".lock"], ["teacher_logits.safetensors"]])
def test_an_empty_folder_or_one_left_by_an_attempt_before_its_config_is_trained_in(left, tiny_teacher, tiny_dataset,
                                                                                  tmp_path, one_thread):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in left:
        (folder / name).write_text("")
    train(tiny_config(tiny_teacher, tiny_dataset, num_threads=one_thread), folder, log=lambda *_: None)
    assert read_status(folder)["state"] == "completed"


def test_hard_label_run_never_runs_the_teacher_during_training(tiny_teacher, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_teacher, tiny_dataset, alpha_kd=0.0, alpha_ce=1.0)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run" / "teacher_logits.safetensors").exists()
    recs = [m for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert recs and all("kd" not in r and r["loss"] == r["ce"] for r in recs)


# --- a bare encoder teacher: fine-tuned first (prepare_teacher), with progress and Stop ------------------------
def test_bare_encoder_teacher_is_prepared_with_progress_and_stoppable(tmp_path, tiny_dataset, monkeypatch):
    import threading
    import time

    from conftest import make_tiny_bert
    from transformers import BertModel

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    bare = make_tiny_bert(tmp_path / "bare")
    BertModel.from_pretrained(bare).save_pretrained(bare)  # same encoder, no classification head
    # a long fine-tuning: its progress shows in status.json, and STOP ends it (nothing half-cached)
    run = tmp_path / "stopped"
    seen = []

    def stop_when_preparing():
        deadline = time.time() + 60
        while time.time() < deadline:
            message = (read_status(run).get("message") or "") if (run / "status.json").exists() else ""
            if message.startswith("preparing the teacher"):
                seen.append(message)
                (run / "STOP").write_text("")
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_when_preparing, daemon=True)
    watcher.start()
    train(tiny_config(bare, tiny_dataset, teacher_prep_steps=2000), run, log=lambda *_: None)
    watcher.join()
    status = read_status(run)
    assert seen and "/2000" in seen[0], seen
    assert status["state"] == "stopped" and "preparing the teacher" in status["message"], status
    assert not list((tmp_path / "cache").glob("teachers/*/config.json"))
    # a short fine-tuning: cached, recorded in status.json, and the run distils from it
    run = tmp_path / "prepared"
    cfg = tiny_config(bare, tiny_dataset, teacher_prep_steps=3, student_dropout=0.1)  # dropout draws from the RNG
    train(cfg, run, log=lambda *_: None)
    status = read_status(run)
    assert status["state"] == "completed" and "teacher_path" in status
    assert (tmp_path / "cache") in Path(status["teacher_path"]).parents
    # the same config again finds the teacher cached: same student, bit for bit (the RNG is not shifted)
    train(cfg, tmp_path / "cached", log=lambda *_: None)
    first, again = (load_file(r / "student" / "model.safetensors") for r in (run, tmp_path / "cached"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_mlm_evaluation_masks_at_least_one_token_of_every_text():
    """A small mlm_probability on short texts must still measure something (never accuracy NaN over 0 tokens)."""
    from types import SimpleNamespace

    from distill_nb.evaluation import mlm_batch

    ids = torch.tensor([[101, 7, 102, 0], [101, 8, 9, 102], [101, 102, 0, 0]])
    mask = (ids != 0).long()
    tok = SimpleNamespace(all_special_ids=[0, 101, 102, 103], mask_token_id=103)
    for seed in range(20):
        (batch, labels) = mlm_batch({"input_ids": ids, "attention_mask": mask}, tok, 1e-6, seed, at_least_one=True)
        masked = labels != -100
        assert masked[:2].sum(-1).tolist() == [1, 1] and not masked[2].any()  # row 3 has nothing maskable
        assert (batch["input_ids"][masked] == 103).all() and not torch.isin(ids[masked], torch.tensor([0, 101, 102])).any()
    _, plain = mlm_batch({"input_ids": ids, "attention_mask": mask}, tok, 1e-6, 0)
    assert (plain == -100).all()  # training batches keep the plain draw


def test_a_run_that_measured_nothing_never_completes(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    from distill_nb import train as train_module

    nan_eval = lambda *a, **k: {"step": a[-1] if a else 0, "split": "eval", "accuracy": float("nan"),  # noqa: E731
                                "teacher_accuracy": float("nan"), "retention": None}
    monkeypatch.setattr(train_module, "evaluate_classifier", nan_eval)
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, max_steps=2, batch_size=8, reason_probe=0)
    with pytest.raises(ValueError, match="measured nothing"):
        train(config, tmp_path / "run", log=lambda *_: None)
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "measured nothing" in status["error"]
    assert not (tmp_path / "run" / "student").exists()


# --- text pairs: every model call gets the pair's segment ids (token_type_ids); single texts get none -------------
def _pair_logits(model, tok, texts):
    from distill_nb.tables import split_pair

    first, second = zip(*(split_pair(t) for t in texts))
    with torch.no_grad():
        return model(**tok(list(first), list(second), padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("kw", [{}, {"alpha_hidden": 1.0}, {"student_vocab": "task"}],
                         ids=["cached-logits", "teacher-each-step", "trimmed-student-tokenizer"])
def test_a_text_pair_run_reads_every_pair_with_its_segment_ids(pair_teacher, pair_dataset, tmp_path, monkeypatch,
                                                               segments_seen, kw):
    """Cached teacher logits, teacher and student accuracy and the reason probe's attributions: each as
    ``model(**tokenizer(first, second))`` gives them, as a teacher fine-tuned on pairs (e.g. MNLI) was trained."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.rundata import run_task

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    config = tiny_config(pair_teacher, pair_dataset, text_column=["premise", "hypothesis"], text_pair=True,
                         max_steps=2, reason_probe=8, **kw)
    final = train(config, run, log=lambda *_: None)
    # caching, training steps, evaluations, attributions: every forward got the segment ids
    assert len(segments_seen) > 5 and all(segments_seen), segments_seen
    monkeypatch.undo()
    task = run_task(run)
    teacher, tok = (AutoModelForSequenceClassification.from_pretrained(pair_teacher).eval(),
                    AutoTokenizer.from_pretrained(pair_teacher))
    if not kw:
        torch.testing.assert_close(load_file(run / "teacher_logits.safetensors")["logits"],
                                   _pair_logits(teacher, tok, task.train.texts), atol=1e-5, rtol=1e-5)
    assert final["teacher_accuracy"] == 1.0  # the labels are its predictions on the pairs read with their segments
    student = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    s_tok = AutoTokenizer.from_pretrained(run / "student")
    predicted = _pair_logits(student, s_tok, task.eval.texts).argmax(-1)
    assert final["accuracy"] == pytest.approx((predicted == torch.tensor(task.eval.labels)).float().mean().item())


def test_a_single_text_run_calls_the_models_without_segment_ids(tiny_teacher, tiny_dataset, tmp_path, monkeypatch,
                                                                segments_seen):
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    train(tiny_config(tiny_teacher, tiny_dataset, max_steps=2, reason_probe=8), tmp_path / "run", log=lambda *_: None)
    assert segments_seen and not any(segments_seen)  # as before: BERT's own default (all 0), bit for bit


# --- Stop while the teacher's logits are cached ------------------------------------------------------------------
def test_stop_is_heard_while_the_teachers_logits_are_cached(tiny_teacher, tiny_dataset, tmp_path, monkeypatch):
    from functools import partial

    from distill_nb import train as train_module
    from distill_nb.rundir import clear_stop, request_stop

    run = tmp_path / "run"
    phases = []
    real_predict = train_module.predict_logits
    real_forward = None

    def slow_first_batch(model, *args, **kwargs):  # the user clicks Stop while the first batch is computed
        phases.append(read_status(run).get("phase"))
        if len(phases) == 1:
            request_stop(run)
        return real_forward(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "predict_logits", partial(real_predict, batch_size=8))  # 64 texts: 8 batches
    from transformers.models.bert.modeling_bert import BertForSequenceClassification

    real_forward = BertForSequenceClassification.forward
    monkeypatch.setattr(BertForSequenceClassification, "forward", slow_first_batch)
    config = tiny_config(tiny_teacher, tiny_dataset, reason_probe=0)
    assert train(config, run, log=lambda *_: None) == {}
    status = read_status(run)
    assert status["state"] == "stopped" and "teacher's logits" in status["message"] and status["step"] == 0, status
    assert phases == ["caching_logits"]  # stopped after the first of 8 batches
    assert status["phase_total"] == 64 and status["phase_step"] == 0
    assert not (run / "teacher_logits.safetensors").exists()  # nothing half-done cached
    assert not latest_checkpoint(run)
    clear_stop(run)
    monkeypatch.setattr(BertForSequenceClassification, "forward", real_forward)
    train(config, run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed" and (run / "teacher_logits.safetensors").is_file()


@pytest.mark.parametrize("phase", ["caching_logits", "caching_attributions"])
def test_a_stop_while_a_resumed_run_recomputes_its_teacher_cache_keeps_the_runs_step(tiny_teacher, tiny_dataset,
                                                                                     tmp_path, monkeypatch, phase):
    """A resumed run whose teacher cache is gone computes it again; a Stop then ends it at its checkpoint's step
    (Resume continues from there), never at a made-up step 0."""
    from distill_nb import rundir
    from distill_nb.families import cache_dir
    from distill_nb.recorder import Recorder

    run = tmp_path / "run"
    extra = {"alpha_attr": 0.1, "reason_probe": 0} if phase == "caching_attributions" else {"reason_probe": 0}
    cfg = tiny_config(tiny_teacher, tiny_dataset, max_steps=6, checkpoint_every=2, eval_every=100, **extra)
    real_append = rundir.append_metrics

    def append_and_stop(path, rec):
        real_append(path, rec)
        if rec.get("step") == 3 and rec["split"] == "train":
            rundir.request_stop(run)

    monkeypatch.setattr(rundir, "append_metrics", append_and_stop)
    train(cfg, run, log=lambda *_: None)
    monkeypatch.setattr(rundir, "append_metrics", real_append)
    stopped = read_status(run)["step"]
    assert stopped >= 3 and latest_checkpoint(run).name == f"step_{stopped:07d}"
    rundir.clear_stop(run)
    (run / "teacher_logits.safetensors").unlink(missing_ok=True)  # the caches are gone: computed again
    for file in (cache_dir() / "attributions").glob("*"):
        file.unlink()
    real_phase = Recorder.phase

    def phase_and_stop(self, name, *args, **kwargs):
        real_phase(self, name, *args, **kwargs)
        if name == phase:
            rundir.request_stop(run)

    monkeypatch.setattr(Recorder, "phase", phase_and_stop)
    assert train(cfg, run, log=lambda *_: None) == {}
    status = read_status(run)
    assert status["state"] == "stopped" and status["step"] == stopped, status
    assert ("logits" if phase == "caching_logits" else "attributions") in status["message"]
