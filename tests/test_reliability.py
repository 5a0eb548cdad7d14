"""Bad inputs give errors that name what was given and how to fix it, and leave no run directory behind.

One matrix across the Python API (``runs.launch`` with its preflight, config, models, runs), the CLI
(``distill_nb.cli.main`` returns 2 with the message on stderr) and the REST routes; then the errors only the
worker can find (status ``failed`` with the message), long texts, and security checks (safe weight loading,
no pickle/eval, trust_remote_code off by default).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import HINT, clear_error, make_tiny_bert

from distill_nb import cli, runs
from distill_nb.config import ConfigError, DistillConfig
from distill_nb.runs import Run, RunNotFound, create_run, read_status, write_status

PKG = Path(runs.__file__).resolve().parent


# --- models and data the matrix needs (tiny, offline) ------------------------------------------------------------
def _relabel_config(folder: Path, id2label: dict[int, str]) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {str(i): n for i, n in id2label.items()}
    cfg["label2id"] = {n: i for i, n in id2label.items()}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _other_vocab_bert(folder: Path) -> Path:
    """A tiny BERT classifier whose vocabulary lists the same words in another order (other token ids)."""
    import torch
    from conftest import SPECIALS, write_vocab
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = write_vocab(folder).read_text().split()
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + sorted(set(words) - set(SPECIALS))[::-1]) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, tiny_teacher) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("zoo")
    from transformers import BertModel

    bare = base / "bare-encoder"
    make_tiny_bert(bare)
    BertModel.from_pretrained(bare).save_pretrained(bare)  # same weights, no classification head
    no_weights = base / "config-only"
    shutil.copytree(tiny_teacher, no_weights)
    (no_weights / "model.safetensors").unlink()
    empty = base / "empty-folder"
    empty.mkdir()
    named = _relabel_config(make_tiny_bert(base / "named-teacher"), {0: "negative", 1: "positive"})
    swapped = _relabel_config(make_tiny_bert(base / "swapped-teacher"), {0: "positive", 1: "negative"})
    return {"bare": bare, "no_weights": no_weights, "empty": empty, "named": named, "swapped": swapped,
            "other_vocab": _other_vocab_bert(base / "other-vocab-student"),
            "mlm": make_tiny_bert(base / "mlm-teacher", mlm=True)}


def write_data(folder: Path, train: list[tuple[str, Any]], validation: list[tuple[str, Any]] | None = None,
               header: str = "text,label", encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in [("train", train), ("validation", validation or train)]:
        lines = [header] + [f"{t},{y}" for t, y in rows]
        (folder / f"{name}.csv").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return folder


GOOD_ROWS = [("the movie was good", 1), ("the movie was awful", 0)] * 4


@dataclass
class Ctx:
    teacher: Path
    data: Path
    tmp: Path
    root: Path
    zoo: dict[str, Path]

    def cfg(self, **kw: Any) -> DistillConfig:
        base = dict(teacher=str(self.teacher), dataset=str(self.data), text_column="text", student_layers=2,
                    max_steps=3, batch_size=8, eval_every=2, checkpoint_every=2, student_dropout=0.0)
        return DistillConfig(**{**base, **kw})

    def launch(self, **kw: Any) -> Run:
        """launch() for real: when the checks miss a case, a worker starts (and is killed by the test)."""
        run_id = kw.pop("run_id", None)
        run = runs.launch(self.cfg(**kw), backend="subprocess", root=self.root, run_id=run_id)
        run.kill()
        raise AssertionError(f"launch() accepted the config and started {run.path}")

    def data_with(self, name: str, train: list, validation: list | None = None, **kw: Any) -> str:
        return str(write_data(self.tmp / name, train, validation, **kw))


@pytest.fixture
def ctx(tiny_teacher, tiny_dataset, tmp_path, runs_root, zoo) -> Ctx:
    return Ctx(tiny_teacher, tiny_dataset, tmp_path, runs_root, zoo)


def _json_file(c: Ctx, data: dict[str, Any] | str) -> str:
    path = c.tmp / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _resume_completed(c: Ctx) -> None:
    path = create_run(c.cfg(), c.root, "finished-run")
    write_status(path, state="completed", step=3, total_steps=3)
    try:
        Run.attach("finished-run", c.root).resume(backend="subprocess")
    finally:
        assert read_status(path)["state"] == "completed"  # refused without touching the run
        shutil.rmtree(path)


def _load_teacher(name: Path) -> None:
    from distill_nb.models import load_teacher

    load_teacher(str(name))


def _make_student(c: Ctx, **kw: Any) -> None:
    from distill_nb.models import load_teacher, make_student

    teacher, _ = load_teacher(str(c.teacher))
    make_student(teacher, **kw)


# (id, call, expected exception, substrings the message must contain: the bad value / what was given)
API_CASES: list[tuple[str, Callable[[Ctx], Any], type[BaseException], list[str]]] = [
    ("teacher-path-missing", lambda c: c.launch(teacher=str(c.tmp / "no-such-teacher")), FileNotFoundError,
     ["no-such-teacher"]),
    ("teacher-hub-id-unknown", lambda c: c.launch(teacher="no-such-org/no-such-model"), FileNotFoundError,
     ["no-such-org/no-such-model", "offline"]),
    ("teacher-config-without-weights", lambda c: c.launch(teacher=str(c.zoo["no_weights"])), FileNotFoundError,
     ["config-only", "no weights"]),
    ("teacher-empty-folder", lambda c: c.launch(teacher=str(c.zoo["empty"])), FileNotFoundError,
     ["empty-folder", "is empty"]),
    ("load_teacher-without-weights", lambda c: _load_teacher(c.zoo["no_weights"]), FileNotFoundError,
     ["config-only", "model.safetensors"]),
    ("teacher-not-classifier-prep-0", lambda c: c.launch(teacher=str(c.zoo["bare"]), teacher_prep_steps=0),
     ConfigError, ["bare-encoder", "teacher_prep_steps=0", "teacher_prep_steps > 0"]),
    ("load_teacher-not-classifier", lambda c: _load_teacher(c.zoo["bare"]), ValueError,
     ["bare-encoder", "prepare_teacher"]),
    ("mlm-objective-classifier-teacher", lambda c: c.launch(objective="mlm"), ConfigError,
     ["objective='mlm'", "masked-LM head", "BertForSequenceClassification", "objective='classification'"]),
    ("student-heads-not-dividing", lambda c: c.launch(student_heads=5), ConfigError,
     ["student_heads=5", "student_hidden=32"]),
    ("make_student-heads-not-dividing", lambda c: _make_student(c, n_layers=2, n_heads=5, init="random"),
     ValueError, ["n_heads=5"]),
    ("student-deeper-than-teacher-every-k", lambda c: c.launch(student_layers=6), ConfigError,
     ["student_layers=6", "4-layer teacher", "<= 4"]),
    ("make_student-deeper-than-teacher", lambda c: _make_student(c, n_layers=6), ValueError,
     ["6 layers", "4-layer"]),
    ("layer-map-out-of-range", lambda c: c.launch(layer_map=[1, 9], alpha_hidden=1.0), ConfigError,
     ["layer_map=[1, 9]", "0..3"]),
    ("temperature-zero", lambda c: c.cfg(temperature=0), ConfigError, ["temperature=0"]),
    ("temperature-negative", lambda c: c.cfg(temperature=-1.5), ConfigError, ["temperature=-1.5"]),
    ("loss-weight-negative", lambda c: c.cfg(alpha_ce=-0.5), ConfigError, ["alpha_ce", "-0.5"]),
    ("loss-weights-all-zero", lambda c: c.cfg(alpha_kd=0.0), ConfigError, ["all loss weights are 0", "alpha_kd"]),
    ("dataset-empty", lambda c: c.launch(dataset=c.data_with("empty-data", [], GOOD_ROWS)), ValueError,
     ["empty-data", "empty"]),
    ("dataset-file-missing", lambda c: c.launch(dataset=str(c.tmp / "missing.csv")), FileNotFoundError,
     ["missing.csv"]),
    ("text-column-missing", lambda c: c.launch(text_column="sentence"), ConfigError,
     ["'sentence'", "text_column", "columns are ['text', 'label']"]),
    ("label-column-missing", lambda c: c.launch(label_column="target"), ConfigError, ["'target'", "label_column"]),
    ("labels-outside-teacher-set", lambda c: c.launch(teacher=str(c.zoo["named"]), dataset=c.data_with(
        "meh-data", [("the movie was good", "positive"), ("the movie was so so", "meh")])), ConfigError,
     ["'meh'", "'negative', 'positive'"]),
    ("label-count-differs", lambda c: c.launch(dataset=c.data_with(
        "three-labels", [("good", 0), ("bad", 1), ("what", 2)])), ConfigError, ["predicts 2 labels", "has 3"]),
    ("text-not-utf8", lambda c: c.launch(dataset=c.data_with(
        "latin1-data", [("un film très réussi", 1), ("nul", 0)], encoding="latin-1")), ValueError,
     ["latin1-data", "train.csv", "not UTF-8"]),
    ("tokenizers-differ-with-hidden-loss", lambda c: c.launch(student_init=str(c.zoo["other_vocab"]),
                                                             alpha_hidden=1.0), ConfigError,
     ["other-vocab-student", "another vocabulary", "alpha_hidden=0"]),
    ("student-init-path-missing", lambda c: c.launch(student_init=str(c.tmp / "no-student")), FileNotFoundError,
     ["no-student"]),
    ("max-length-beyond-positions", lambda c: c.launch(max_length=4096), ConfigError,
     ["max_length=4096", "128"]),
    ("batch-size-zero", lambda c: c.cfg(batch_size=0), ConfigError, ["batch_size=0", ">= 1"]),
    ("batch-size-string", lambda c: c.cfg(batch_size="32"), ConfigError, ["batch_size='32'", "int"]),
    ("config-json-unknown-key", lambda c: DistillConfig.from_json('{"batchsize": 8}'), ConfigError,
     ["'batchsize'", "batch_size"]),
    ("config-json-wrong-type", lambda c: DistillConfig.from_json('{"temperature": "hot"}'), ConfigError,
     ["temperature='hot'", "float"]),
    ("config-json-invalid", lambda c: DistillConfig.from_json('{"batch_size": 8,}'), ConfigError,
     ["not valid JSON", "trailing commas"]),
    ("run-id-traversal", lambda c: c.launch(run_id="../escape"), ValueError, ["'../escape'", "invalid run id"]),
    ("backend-unknown", lambda c: runs.launch(c.cfg(), backend="slurm", root=c.root), ValueError, ["'slurm'"]),
    ("resume-completed-run", _resume_completed, ValueError, ["'finished-run'", "already completed"]),
    ("stop-run-that-does-not-exist", lambda c: Run.attach("ghost-run", c.root).stop(), RunNotFound,
     ["'ghost-run'", "list_runs()"]),
]


@pytest.mark.parametrize("name,call,exc,needles", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(ctx, name, call, exc, needles):
    clear_error(lambda: call(ctx), exc, needles)
    left = sorted(p.name for p in ctx.root.iterdir()) if ctx.root.exists() else []
    assert left == [], f"run directories left behind: {left}"
    assert not (ctx.root.parent / "escape").exists()


def test_launch_check_false_leaves_the_error_to_the_worker(ctx):
    """What preflight skips, the worker finds: the run ends failed with the same clear message."""
    run = runs.launch(ctx.cfg(layer_map=[1, 9], alpha_hidden=1.0), backend="subprocess", root=ctx.root,
                      run_id="unchecked", check=False)
    try:
        assert run.wait(120) == runs.Status.FAILED
    finally:
        run.kill()
    status = run.status()
    assert "layer_map=[1, 9]" in status["error"] and "0..3" in status["error"], status
    assert not status.get("stale"), "the worker must record the failure itself, not just die"


# --- the CLI: exit code 2 and the message on stderr, no run directory -------------------------------------------
def _cfg_dict(c: Ctx, **kw: Any) -> dict[str, Any]:
    return {**c.cfg().to_dict(), **kw}


CLI_CASES: list[tuple[str, Callable[[Ctx], list[str]], list[str]]] = [
    ("unknown-key", lambda c: ["run", _json_file(c, {**_cfg_dict(c), "learning_rat": 1e-4})], ["'learning_rat'"]),
    ("wrong-type", lambda c: ["run", _json_file(c, _cfg_dict(c, batch_size="8"))], ["batch_size='8'"]),
    ("invalid-json", lambda c: ["run", _json_file(c, '{"teacher": "x",}')], ["not valid JSON"]),
    ("config-file-missing", lambda c: ["run", str(c.tmp / "nope.json")], ["nope.json", "does not exist"]),
    ("teacher-missing", lambda c: ["run", _json_file(c, _cfg_dict(c, teacher=str(c.tmp / "gone")))], ["gone"]),
    ("column-missing", lambda c: ["run", _json_file(c, _cfg_dict(c, text_column="review"))], ["'review'"]),
    ("heads-not-dividing", lambda c: ["run", _json_file(c, _cfg_dict(c, student_heads=3))], ["student_heads=3"]),
    ("temperature-zero", lambda c: ["run", _json_file(c, _cfg_dict(c, temperature=0))], ["temperature=0"]),
    ("run-dir-name-too-long", lambda c: ["run", _json_file(c, _cfg_dict(c)), "--run-dir", str(c.tmp / ("r" * 300))],
     ["folder name of 300 characters"]),
    ("run-dir-cannot-be-made", lambda c: ["run", _json_file(c, _cfg_dict(c)), "--run-dir", "/proc/distill-nb-run"],
     ["'/proc/distill-nb-run' cannot be made"]),
    ("run-dir-a-folder-of-other-files", lambda c: ["run", _json_file(c, _cfg_dict(c)), "--run-dir",
                                                   str(c.data)], ["is not a run folder"]),  # the data's folder
]


@pytest.mark.parametrize("name,argv,needles", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ctx, capsys, name, argv, needles):
    assert cli.main(argv(ctx)) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill-nb: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert HINT.search(err), err
    assert not ctx.root.exists() or not any(ctx.root.iterdir())


# --- REST: unknown runs, traversal, and authentication on every route ---------------------------------------------
pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"distill_nb": True}}}


REST_CASES = [
    ("POST", "runs/ghost-run/stop", 404, "'ghost-run'"),
    ("POST", "runs/ghost-run/resume", 404, "'ghost-run'"),
    ("GET", "runs/ghost-run/metrics", 404, "'ghost-run'"),
    ("POST", "runs/..%2F..%2Fescape/stop", 400, "'../../escape'"),
    ("POST", "runs/..%2F..%2Fescape/resume", 400, "'../../escape'"),
]


@pytest.mark.parametrize("method,path,code,needle", REST_CASES, ids=[f"{m} {p}" for m, p, *_ in REST_CASES])
async def test_rest_bad_input(http_server_client, jp_auth_header, jp_base_url, runs_root, method, path, code,
                              needle):
    # raw URL: jp_fetch would re-escape '%2F'; tornado decodes it into the run id
    resp = await http_server_client.fetch(f"{jp_base_url}distill-nb/{path}", method=method,
                                          body=b"" if method == "POST" else None, headers=jp_auth_header,
                                          raise_error=False)
    assert resp.code == code, resp.body
    message = json.loads(resp.body)["message"]
    assert needle in message and HINT.search(message), message
    assert not runs_root.exists() or not any(runs_root.iterdir())
    assert not (runs_root.parent.parent / "escape").exists()


async def test_rest_unauthenticated_metrics_and_resume_are_refused(jp_fetch, runs_root):
    """test_routes covers list/status/stop/template; resume starts a process, so it matters most."""
    path = create_run(DistillConfig(teacher="tiny", max_steps=10), runs_root, "paused")
    write_status(path, state="stopped", step=5, total_steps=10)
    for method, route in [("GET", "runs/paused/metrics"), ("POST", "runs/paused/resume"),
                          ("POST", "runs/paused/stop")]:
        resp = await jp_fetch("distill-nb", route, method=method, body=b"" if method == "POST" else None,
                              headers={"Authorization": ""}, raise_error=False)
        assert resp.code == 403, (method, route)
    status = read_status(path)
    assert status["state"] == "stopped" and status.get("pid") is None  # no worker was started
    assert not (path / "log.txt").exists() and not (path / "STOP").exists()


# --- worker-side checks and odd but valid inputs -----------------------------------------------------------------
def test_worker_records_label_mismatch_as_failed(ctx):
    from distill_nb.train import train

    data = ctx.data_with("three", [("good", 0), ("bad", 1), ("what", 2)])
    with pytest.raises(ValueError, match="predicts 2 labels"):
        train(ctx.cfg(dataset=data), ctx.tmp / "run", log=lambda *_: None)
    status = read_status(ctx.tmp / "run")
    assert status["state"] == "failed" and "has 3" in status["error"] and HINT.search(status["error"])


def test_worker_with_unreadable_config_fails_with_reason(tmp_path):
    from distill_nb.worker import main

    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"teacher": "x", "batchsize": 3}')
    write_status(run, state="queued", step=0)
    assert main(run) == 1
    status = read_status(run)
    assert status["state"] == "failed" and "'batchsize'" in status["error"] and not status.get("stale")


def test_named_labels_follow_the_teacher_order(ctx):
    """String labels are mapped by name onto the teacher's id2label, not by sorted order."""
    from distill_nb.data import TaskData
    from distill_nb.preflight import match_labels

    task = TaskData.from_lists(["good", "bad"], ["positive", "negative"], ["fine"], ["positive"])
    assert task.label_names == ["negative", "positive"] and task.named_labels
    names = match_labels(task.label_names, task.named_labels, ["POSITIVE", "NEGATIVE"], "t")
    moved = task.relabel(names)
    assert moved.label_names == ["POSITIVE", "NEGATIVE"] and moved.train.labels == [0, 1]
    # integer labels are ids: only the count must match; default LABEL_i names accept any names
    assert match_labels(["0", "1"], False, ["neg", "pos"], "t") is None
    assert match_labels(["a", "b"], True, ["LABEL_0", "LABEL_1"], "t") is None
    with pytest.raises(ConfigError, match="'maybe'"):
        match_labels(["maybe", "yes"], True, ["no", "yes"], "t")


def test_named_labels_run_against_a_swapped_teacher(ctx, monkeypatch):
    """Sorted order would call 'negative' 0, but this teacher's output 0 is 'positive': train() relabels."""
    from distill_nb.data import TaskData
    from distill_nb.train import train

    relabeled = []
    real = TaskData.relabel

    def spy(self, names):
        relabeled.append(out := real(self, names))
        return out

    monkeypatch.setattr(TaskData, "relabel", spy)
    rows = [("the movie was good", "positive"), ("the movie was awful", "negative")] * 4
    record = train(ctx.cfg(teacher=str(ctx.zoo["swapped"]), dataset=ctx.data_with("named", rows)), ctx.tmp / "run",
                   log=lambda *_: None)
    assert record["step"] == 3 and len(relabeled) == 1
    task = relabeled[0]
    assert task.label_names == ["positive", "negative"]
    pairs = list(zip(task.train.texts + task.eval.texts, task.train.labels + task.eval.labels))
    assert pairs and all(y == (0 if "good" in t else 1) for t, y in pairs)  # positive -> teacher id 0


def test_absurdly_long_text_is_truncated_and_the_run_completes(ctx):
    from distill_nb.preflight import preflight
    from distill_nb.train import train

    huge = " ".join(["the movie was very very good"] * 6000)  # 170 kB in one CSV cell (csv limit: 128 kB)
    data = ctx.data_with("long", [(huge, 1), ("awful", 0)] * 4, [(huge, 1), ("bad", 0)])
    cfg = ctx.cfg(dataset=data, max_length=32)
    preflight(cfg)
    record = train(cfg, ctx.tmp / "run", log=lambda *_: None)
    assert read_status(ctx.tmp / "run")["state"] == "completed" and record["step"] == 3


def test_preflight_accepts_an_mlm_run_on_unlabelled_text(ctx):
    """objective="mlm": a masked-LM teacher and texts without a label column pass; labels are not read."""
    from distill_nb.preflight import preflight

    data = ctx.tmp / "unlabelled"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text("text\nthe movie was good\nthe film was dull\nwhat a mess\n")
    found = preflight(ctx.cfg(teacher=str(ctx.zoo["mlm"]), dataset=str(data), objective="mlm"))
    assert found["teacher_shape"]["layers"] == 4 and found["rows"] == {"train": 3, "eval": 3}
    assert found["data_labels"] is None and found["teacher_labels"] is None


def test_preflight_is_torch_free_and_accepts_a_good_config(ctx):
    code = ("import sys; from distill_nb.preflight import preflight; from distill_nb.config import DistillConfig;"
            f"f = preflight(DistillConfig.from_json({str(ctx.cfg().to_json())!r}));"
            "print(f['teacher_shape']['layers'], f['rows'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PKG.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "4 {'train': 64, 'eval': 24} False"


def test_launch_stores_absolute_paths_for_the_worker(ctx, monkeypatch):
    """The worker's working directory is the run directory: a relative dataset path would not be found."""
    started = []
    monkeypatch.setattr(runs.worker, "start", lambda path, backend, nproc: started.append(path))
    monkeypatch.chdir(ctx.data.parent)
    run = runs.launch(ctx.cfg(dataset=ctx.data.name, teacher="minilm-l6"), root=ctx.root, run_id="rel",
                      check=False)
    assert started == [run.path]
    saved = run.config
    assert saved.dataset == str(ctx.data) and Path(saved.dataset).is_absolute()
    assert saved.teacher == "minilm-l6" and saved.student_init == "every_k"  # aliases stay aliases


# --- security: weights load safely, no pickle/eval, remote code off unless asked ---------------------------------
def unsafe_calls(source: str) -> list[str]:
    """Calls that can run code from a file: torch.load without weights_only=True, pickle, eval/exec, yaml.load."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in ("pickle", "cloudpickle", "dill", "marshal")]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        if func.endswith("torch.load") or func == "load" and "weights_only" in kwargs:
            safe = "weights_only" in kwargs and isinstance(kwargs["weights_only"], ast.Constant) \
                and kwargs["weights_only"].value is True
            if not safe:
                found.append(ast.unparse(node))
        if func in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(ast.unparse(node))
        if func.endswith("yaml.load") and "Loader" not in kwargs:
            found.append(ast.unparse(node))
        if "trust_remote_code" in kwargs and isinstance(kwargs["trust_remote_code"], ast.Constant) \
                and kwargs["trust_remote_code"].value is True:
            found.append(ast.unparse(node))
    return found


def test_unsafe_call_checker_catches_what_it_should():
    bad = ("import torch, pickle\nfrom dill import loads\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
           "eval('1')\nexec(s)\nM.from_pretrained(p, trust_remote_code=True)\n")
    assert len(unsafe_calls(bad)) == 7
    good = "import torch\nx = torch.load(p, weights_only=True)\nmodel.eval()\nM.from_pretrained(p, trust_remote_code=t)\n"
    assert unsafe_calls(good) == []


def test_package_loads_weights_safely_and_never_unpickles():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 8
    offenders = {str(f.relative_to(PKG)): c for f in files if (c := unsafe_calls(f.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_trust_remote_code_is_off_unless_asked(ctx, monkeypatch):
    import transformers

    from distill_nb import models, train

    assert DistillConfig().trust_remote_code is False
    assert inspect.signature(models.load_teacher).parameters["trust_remote_code"].default is False
    assert inspect.signature(models.make_student).parameters["trust_remote_code"].default is False
    seen: list[tuple[str, Any]] = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "<absent>")))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    models.load_teacher(str(ctx.teacher))
    assert {n for n, _ in seen} == {"AutoConfig", "AutoModelForSequenceClassification", "AutoTokenizer"}
    assert {v for _, v in seen} == {False}
    seen.clear()
    models.load_teacher(str(ctx.teacher), trust_remote_code=True)
    assert {v for _, v in seen} == {True}

    # train() hands the config's value through
    got = {}

    def fake_load_teacher(name, **kwargs):
        got.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(train, "load_teacher", fake_load_teacher)
    for flag in (False, True):
        with pytest.raises(RuntimeError, match="stop here"):
            train.train(ctx.cfg(trust_remote_code=flag), ctx.tmp / f"run-{flag}", log=lambda *_: None)
        assert got["trust_remote_code"] is flag
