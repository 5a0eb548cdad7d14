"""Every input gets a clear answer up front (issue 13): a matrix of bad and unusual inputs.

Each refused case goes through ``runs.launch`` (config -> preflight) or ``distill-nb run`` or the Launcher's
Start, and asserts: the error names the field or file and the value, says how to fix it, and no run directory
exists afterwards. Each accepted case checks what the reader made of the input (ids, names, texts).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import HINT, clear_error, make_tiny_bert

from distill_nb import cli, runs
from distill_nb.config import ConfigError, DistillConfig
from distill_nb.data import load_task

NAN, INF = float("nan"), float("inf")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- tiny models and files ----------------------------------------------------------------------------------------
def _fake_model(folder: Path, config: dict[str, Any], tokenizer_files: tuple[str, ...]) -> Path:
    """A folder that looks like a saved model to the torch-free checks (config.json, weights, tokenizer)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    for name in tokenizer_files:
        (folder / name).write_text("{}")
    return folder


def _relabel(folder: Path, id2label: dict[int, str]) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(id2label={str(i): n for i, n in id2label.items()}, label2id={n: i for i, n in id2label.items()},
               num_labels=len(id2label))
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_teacher) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("input-models")
    no_tok = base / "no-tokenizer-teacher"
    shutil.copytree(tiny_teacher, no_tok)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / f).unlink(missing_ok=True)
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32, "n_head": 4}
    return {
        "no_tok": no_tok,
        "gpt2": _fake_model(base / "gpt2-teacher", gpt2, ("vocab.json", "merges.txt")),
        "gpt2_cls": _fake_model(base / "gpt2-classifier", {**gpt2, "architectures": ["GPT2ForSequenceClassification"]},
                                ("vocab.json", "merges.txt")),
        "llama": _fake_model(base / "llama-teacher", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
                             ("tokenizer.json",)),
        "t5": _fake_model(base / "t5-teacher", {"model_type": "t5", "is_encoder_decoder": True,
                                                "architectures": ["T5ForConditionalGeneration"]}, ("spiece.model",)),
        "bart": _fake_model(base / "bart-teacher", {"model_type": "bart", "is_encoder_decoder": True,
                                                    "architectures": ["BartForSequenceClassification"]},
                            ("vocab.json", "merges.txt")),
        "mlm": make_tiny_bert(base / "mlm-teacher", mlm=True),
        "named3": _relabel(make_tiny_bert(base / "named3-teacher", labels=3), {0: "pos", 1: "neg", 2: "neutral"}),
    }


def csv_folder(root: Path, name: str, train: str, validation: str | None = None, ext: str = "csv") -> str:
    folder = root / name
    folder.mkdir()
    (folder / f"train.{ext}").write_text(train, encoding="utf-8")
    (folder / f"validation.{ext}").write_text(validation if validation is not None else train, encoding="utf-8")
    return str(folder)


def one_file(root: Path, name: str, content: str | bytes) -> str:
    path = root / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def rows(pairs: list[tuple[str, Any]], header: str = "text,label") -> str:
    return "\n".join([header] + [f"{t},{y}" for t, y in pairs]) + "\n"


GOOD = [("the movie was good", 1), ("the movie was awful", 0)] * 6


class Case:
    """Everything a case needs: tmp folder, runs root, the tiny teacher and data, a base config."""

    def __init__(self, tmp: Path, root: Path, teacher: Path, data: Path, models: dict[str, Path]):
        self.tmp, self.root, self.teacher, self.data, self.models = tmp, root, teacher, data, models

    def base(self) -> dict[str, Any]:
        return dict(teacher=str(self.teacher), dataset=str(self.data), text_column="text", student_layers=2,
                    max_steps=3, batch_size=8, eval_every=2, checkpoint_every=2, device="cpu")

    def launch(self, **kw: Any) -> None:
        """runs.launch for real (the config built from a dict, as from JSON); accepted means a worker started."""
        run = runs.launch(DistillConfig.from_dict({**self.base(), **kw}), backend="subprocess", root=self.root)
        run.kill()
        raise AssertionError(f"launch() accepted the config and started {run.path}")

    def folder(self, name: str, train: str, validation: str | None = None, ext: str = "csv") -> str:
        return csv_folder(self.tmp, name, train, validation, ext)

    def file(self, name: str, content: str | bytes) -> str:
        return one_file(self.tmp, name, content)


@pytest.fixture
def case(tmp_path, runs_root, tiny_teacher, tiny_dataset, models) -> Case:
    return Case(tmp_path, runs_root, tiny_teacher, tiny_dataset, models)


def _no_run_left(case: Case) -> None:
    left = sorted(p.name for p in case.root.iterdir()) if case.root.exists() else []
    assert left == [], f"run directories left behind: {left}"


# --- 1. config values (API): (id, fields, exception, needles: the field and value named) ------------------------
FLOAT_FIELDS = ["temperature", "learning_rate", "alpha_kd", "alpha_ce", "alpha_hidden", "alpha_attn",
                "weight_decay", "warmup_ratio", "epochs", "mlm_probability", "student_dropout"]
CONFIG_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    *[(f"{f}-nan", {f: NAN}, [f"{f}=nan", "finite"]) for f in FLOAT_FIELDS],
    *[(f"{f}-inf", {f: INF}, [f"{f}=inf", "finite"]) for f in ("temperature", "learning_rate", "epochs", "alpha_kd")],
    ("alpha-ce-minus-inf", {"alpha_ce": -INF}, ["alpha_ce=-inf", "finite"]),
    ("seed-2**70", {"seed": 2**70}, ["seed=", str(2**70), "2**63"]),
    ("seed-negative", {"seed": -1}, ["seed=-1", "[0, 2**63)"]),
    ("max-steps-2**70", {"max_steps": 2**70}, ["max_steps=", "2**63"]),
    ("batch-size-2**64", {"batch_size": 2**64}, ["batch_size=", "2**63"]),
    ("epochs-1e9", {"epochs": 1e9}, ["epochs=1000000000.0", "max_steps"]),
    ("temperature-1e-9", {"temperature": 1e-9}, ["temperature=1e-09", "too small", "learns nothing"]),
    ("temperature-0.05", {"temperature": 0.05}, ["temperature=0.05", "1-4"]),
    ("temperature-1e4", {"temperature": 1e4}, ["temperature=10000.0", "too large"]),
    ("max-length-1", {"max_length": 1}, ["max_length=1", ">= 8"]),
    ("max-length-0", {"max_length": 0}, ["max_length=0", ">= 8"]),
    ("max-length-4", {"max_length": 4}, ["max_length=4", "[CLS]"]),
    ("learning-rate-10", {"learning_rate": 10.0}, ["learning_rate=10.0", "too large"]),
    ("max-train-examples-1", {"max_train_examples": 1}, ["max_train_examples=1", "None"]),
    ("max-train-examples-0", {"max_train_examples": 0}, ["max_train_examples=0", "positive integer"]),
    ("student-layers-0", {"student_layers": 0}, ["student_layers=0", ">= 1"]),
    ("label-names-one", {"label_names": ["only"]}, ["label_names=['only']", "at least 2"]),
    ("label-names-duplicate", {"label_names": ["a", "a"]}, ["label_names=['a', 'a']", "distinct"]),
    ("label-names-blank", {"label_names": ["", "b"]}, ["label_names=['', 'b']", "non-empty"]),
    ("label-names-not-strings", {"label_names": [0, 1]}, ["label_names=[0, 1]", "list[str]"]),
    ("text-column-empty-list", {"text_column": []}, ["text_column=[]", "column name"]),
    ("text-column-duplicate", {"text_column": ["text", "text"]}, ["text_column=['text', 'text']", "distinct"]),
    ("text-column-includes-label", {"text_column": ["text", "label"]}, ["'label'", "read the answer"]),
    ("text-pair-one-column", {"text_pair": True}, ["text_pair=True", "exactly 2", "text_pair=False"]),
    ("text-pair-three-columns", {"text_column": ["a", "b", "c"], "text_pair": True}, ["['a', 'b', 'c']", "exactly 2"]),
    ("text-pair-not-bool", {"text_pair": "yes"}, ["text_pair='yes'", "bool"]),
    ("layer-map-float", {"layer_map": [0.5, 1.0]}, ["layer_map=[0.5, 1.0]", "list[int]"]),
]


@pytest.mark.parametrize("name,fields,needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value_refused_before_a_run_exists(case, name, fields, needles):
    clear_error(lambda: case.launch(**fields), ConfigError, needles)
    _no_run_left(case)


# --- 2. config files: the JSON literals NaN/Infinity, a list, a folder, empty; through the CLI --------------------
def _config_file(case: Case, text: str, name: str = "cfg.json") -> str:
    return case.file(name, text)


def _valid(case: Case, **kw: Any) -> str:
    return json.dumps({**case.base(), **kw})


CLI_CASES: list[tuple[str, Callable[[Case], list[str]], list[str]]] = [
    ("json-NaN-literal", lambda c: ["run", _config_file(c, _valid(c)[:-1] + ', "temperature": NaN}')],
     ["cfg.json", "NaN", "finite number"]),
    ("json-Infinity-literal", lambda c: ["run", _config_file(c, _valid(c)[:-1] + ', "epochs": Infinity}')],
     ["cfg.json", "Infinity"]),
    ("json-minus-Infinity", lambda c: ["run", _config_file(c, _valid(c)[:-1] + ', "alpha_ce": -Infinity}')],
     ["cfg.json", "-Infinity"]),
    ("json-list", lambda c: ["run", _config_file(c, "[" + _valid(c) + "]")], ["cfg.json", "JSON list", "one JSON object"]),
    ("json-string", lambda c: ["run", _config_file(c, '"teacher"')], ["cfg.json", "JSON string"]),
    ("json-null", lambda c: ["run", _config_file(c, "null")], ["cfg.json", "JSON null"]),
    ("json-empty-file", lambda c: ["run", _config_file(c, "")], ["cfg.json", "is empty"]),
    ("config-is-a-folder", lambda c: ["run", str(c.tmp)], ["is a folder", "config.json"]),
    ("config-missing", lambda c: ["run", str(c.tmp / "nope.json")], ["nope.json", "does not exist"]),
    ("seed-too-big", lambda c: ["run", _config_file(c, _valid(c, seed=2**70))], ["seed=", "2**63"]),
    ("temperature-tiny", lambda c: ["run", _config_file(c, _valid(c, temperature=1e-9))], ["temperature=1e-09"]),
    ("no-tokenizer", lambda c: ["run", _config_file(c, _valid(c, teacher=str(c.models["no_tok"])))],
     ["no-tokenizer-teacher", "tokenizer.save_pretrained"]),
    ("causal-lm", lambda c: ["run", _config_file(c, _valid(c, teacher=str(c.models["gpt2"])))],
     ["gpt2-teacher", "distils encoders"]),
    ("empty-data-file", lambda c: ["run", _config_file(c, _valid(c, dataset=c.file("zero.csv", b"")))],
     ["zero.csv", "0 bytes"]),
    ("one-class", lambda c: ["run", _config_file(c, _valid(c, dataset=c.folder("one-class", rows(
        [("good", 1)] * 6), rows(GOOD))))], ["one-class", "one class"]),
    ("hidden-test-labels", lambda c: ["run", _config_file(c, _valid(c, dataset=c.folder("hidden", rows(GOOD), rows(
        [("good", -1)] * 4))))], ["[-1]", "eval_split='validation'"]),
]


@pytest.mark.parametrize("name,argv,needles", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_without_traceback(case, capsys, name, argv, needles):
    assert cli.main(argv(case)) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill-nb: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert HINT.search(err), err
    _no_run_left(case)


def test_cli_in_a_fresh_process_prints_one_line(case):
    path = _config_file(case, "[1, 2]")
    out = subprocess.run([sys.executable, "-m", "distill_nb.cli", "run", path], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "JSON list" in out.stderr


def test_config_file_with_bom_is_read(case):
    path = case.file("bom.json", b"\xef\xbb\xbf" + _valid(case, temperature=3.0).encode())
    assert DistillConfig.from_json(path).temperature == 3.0


# --- 3. teachers, devices, data files (preflight through launch) -------------------------------------------------
PREFLIGHT_CASES: list[tuple[str, Callable[[Case], Any], type[BaseException], list[str]]] = [
    ("teacher-without-tokenizer", lambda c: c.launch(teacher=str(c.models["no_tok"])), FileNotFoundError,
     ["no-tokenizer-teacher", "no tokenizer files", "save_pretrained"]),
    ("student-init-without-tokenizer", lambda c: c.launch(student_init=str(c.models["no_tok"])), FileNotFoundError,
     ["student_init", "no-tokenizer-teacher", "no tokenizer files"]),
    ("teacher-gpt2-causal-lm", lambda c: c.launch(teacher=str(c.models["gpt2"])), ConfigError,
     ["gpt2-teacher", "causal language model", "BERT, RoBERTa, MPNet, DeBERTa"]),
    ("teacher-gpt2-classifier", lambda c: c.launch(teacher=str(c.models["gpt2_cls"])), ConfigError,
     ["gpt2-classifier", "causal language model", "distils encoders"]),
    ("teacher-llama", lambda c: c.launch(teacher=str(c.models["llama"])), ConfigError,
     ["llama-teacher", "LlamaForCausalLM", "distils encoders"]),
    ("teacher-t5-seq2seq", lambda c: c.launch(teacher=str(c.models["t5"])), ConfigError,
     ["t5-teacher", "sequence-to-sequence", "distils encoders"]),
    ("teacher-bart-classifier", lambda c: c.launch(teacher=str(c.models["bart"])), ConfigError,
     ["bart-teacher", "sequence-to-sequence"]),
    ("precision-bf16-on-cpu", lambda c: c.launch(precision="bf16"), ConfigError,
     ["precision='bf16'", "device='cpu'", "'fp32'"]),
    ("precision-fp16-on-cpu", lambda c: c.launch(precision="fp16"), ConfigError, ["precision='fp16'", "'auto'"]),
    ("data-zero-bytes", lambda c: c.launch(dataset=c.file("zero.csv", b"")), ValueError, ["zero.csv", "0 bytes"]),
    ("data-header-only", lambda c: c.launch(dataset=c.folder("header-only", "text,label\n", rows(GOOD))), ValueError,
     ["header-only", "train.csv", "no rows"]),
    ("data-no-header", lambda c: c.launch(dataset=c.file("blank.csv", "\n\n")), ConfigError,
     ["blank.csv", "no columns"]),
    ("single-file-one-row", lambda c: c.launch(dataset=c.file("one.csv", rows([("good", 1)]))), ValueError,
     ["one.csv", "1 row", "at least 10"]),
    ("single-file-five-rows", lambda c: c.launch(dataset=c.file("five.csv", rows(GOOD[:5]))), ValueError,
     ["five.csv", "5 row", "hold-out"]),
    ("train-split-one-row", lambda c: c.launch(dataset=c.folder("tiny-train", rows([("good", 1)]), rows(GOOD))),
     ValueError, ["tiny-train", "1 example", "at least 2"]),
    ("one-class-train", lambda c: c.launch(dataset=c.folder("mono", rows([("good", 1)] * 8), rows(GOOD))), ValueError,
     ["mono", "one class", "label_column"]),
    ("eval-all-minus-one", lambda c: c.launch(dataset=c.folder("glue-test", rows(GOOD), rows([("x", -1)] * 3))),
     ValueError, ["glue-test", "[-1]", "hidden test split", "eval_split='validation'"]),
    ("eval-minus-two", lambda c: c.launch(dataset=c.folder("neg-eval", rows(GOOD), rows([("x", -2), ("y", 0)]))),
     ValueError, ["neg-eval", "[-2]", "validation split"]),
    ("labels-missing-cells", lambda c: c.launch(dataset=c.folder("holes", rows(GOOD + [("meh", "")]))), ValueError,
     ["holes", "missing", "label_column"]),
    ("label-names-count-wrong", lambda c: c.launch(label_names=["a", "b", "c"],
                                                   dataset=c.folder("ints", rows([("g", 1), ("b", 5)] * 5))),
     ValueError, ["label_names=['a', 'b', 'c']", "[1, 5]", "one name per class"]),
    ("string-label-not-in-label-names", lambda c: c.launch(label_names=["neg", "pos"], dataset=c.folder(
        "strs", rows([("g", "pos"), ("b", "neg"), ("m", "meh")] * 4))), ValueError, ["'meh'", "label_names"]),
    ("labels-vs-teacher-names", lambda c: c.launch(teacher=str(c.models["named3"]), dataset=c.folder(
        "wrong-names", rows([("g", "good"), ("b", "bad"), ("m", "neutral")] * 4))), ConfigError,
     ["'bad'", "'good'", "named3-teacher", "teacher_prep_steps > 0"]),
    ("labels-1-5-vs-3-label-teacher", lambda c: c.launch(teacher=str(c.models["named3"]), dataset=c.folder(
        "one-five", rows([("g", 1), ("b", 5)] * 5))), ConfigError, ["predicts 3 labels", "has 2"]),
    ("json-wrapped-odd-layout", lambda c: c.launch(dataset=c.folder("odd-json", json.dumps(
        {"meta": {"v": 1}, "rows": [{"text": "x", "label": 0}], "more": [{"text": "y", "label": 1}]}), ext="json")),
     ValueError, ["odd-json", "train.json", "layouts"]),
    ("json-scalar", lambda c: c.launch(dataset=c.folder("scalar-json", "42", ext="json")), ValueError,
     ["scalar-json", "JSON int", "layouts"]),
    ("json-columns-unequal", lambda c: c.launch(dataset=c.folder("ragged", json.dumps(
        {"text": ["a", "b", "c"], "label": [0, 1]}), ext="json")), ValueError, ["ragged", "different lengths"]),
    ("json-invalid", lambda c: c.launch(dataset=c.folder("broken-json", '{"text": "a",\n', ext="json")), ValueError,
     ["broken-json", "not valid JSON"]),
    ("jsonl-missing-label", lambda c: c.launch(dataset=c.folder("no-label", '{"text": "a"}\n{"text": "b"}\n',
                                                              ext="jsonl")), ConfigError,
     ["no-label", "['label']", "label_column"]),
    ("unknown-extension", lambda c: c.launch(dataset=c.file("data.xlsx", "x")), ValueError,
     ["data.xlsx", "'.xlsx'", "convert"]),
    ("latin1-file", lambda c: c.launch(dataset=c.file("latin.csv", rows(GOOD + [("très bien", 1)]).encode("latin-1"))),
     ValueError, ["latin.csv", "not UTF-8", "re-save"]),
    ("offline-hub-dataset", lambda c: c.launch(dataset="glue:mnli"), FileNotFoundError,
     ["glue:mnli", "offline", "local CSV"]),
    ("offline-hub-dataset-org", lambda c: c.launch(dataset="someone/reviews"), FileNotFoundError,
     ["someone/reviews", "offline"]),
    ("second-text-column-missing", lambda c: c.launch(text_column=["text", "title"]), ConfigError,
     ["['title']", "text_column", "columns are"]),
    ("pair-column-missing", lambda c: c.launch(text_column=["premise", "hypothesis"], text_pair=True), ConfigError,
     ["'premise'", "text_column"]),
    ("folder-without-train", lambda c: c.launch(dataset=str(c.tmp)), FileNotFoundError,
     ["data folder", "train.<csv", "train_split"]),
    ("layers-from-past-teacher", lambda c: c.launch(student_layers=2, student_layers_from=[0, 9]), ConfigError,
     ["student_layers_from=[0, 9]", "0..3"]),
    ("student-vocab-past-tokenizer", lambda c: c.launch(student_vocab=10 ** 6), ConfigError,
     ["student_vocab=1000000", "at most", "'task'"]),
    ("weight-decay-negative", lambda c: c.launch(weight_decay=-1.0), ConfigError, ["weight_decay=-1.0", "[0, 1]"]),
    ("extra-nan", lambda c: c.launch(extra={"note": float("nan")}), ConfigError, ["extra=", "JSON values"]),
    ("extra-set", lambda c: c.launch(extra={"tags": {"a"}}), ConfigError, ["extra=", "JSON values"]),
    ("extra-object", lambda c: c.launch(extra={"when": object()}), ConfigError, ["extra=", "JSON values"]),
    ("extra-deep-inf", lambda c: c.launch(extra={"a": [{"b": float("inf")}]}), ConfigError, ["extra=", "JSON values"]),
    ("text-column-blank-everywhere", lambda c: c.launch(dataset=c.folder("blank-col", "text,title,label\n" + "".join(
        f"good {i},,{i % 2}\n" for i in range(20))), text_column="title"), ValueError,
     ["every text of the", "blank", "text_column"]),
    ("mlm-header-only", lambda c: c.launch(objective="mlm", teacher=str(c.models["mlm"]),
                                           dataset=c.folder("mlm-empty", "text\n", "text\nx\n")), ValueError,
     ["mlm-empty", "no rows"]),
]


@pytest.mark.parametrize("name,call,exc,needles", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight_refuses_before_a_run_exists(case, name, call, exc, needles):
    clear_error(lambda: call(case), exc, needles)
    _no_run_left(case)


@pytest.mark.skipif("_has_cuda()", reason="this host has a GPU: device='cuda' is valid here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_host_without_gpu_is_refused(case, device):
    with pytest.raises(ConfigError) as info:
        case.launch(device=device)
    assert f"device={device!r}" in str(info.value) and "'cpu'" in str(info.value)
    _no_run_left(case)


@pytest.mark.skipif("_has_cuda()", reason="this host has a GPU")
def test_auto_device_with_fp16_is_refused_on_cpu_host(case):
    with pytest.raises(ConfigError, match="precision='fp16' needs a CUDA GPU and this host has none"):
        case.launch(device="auto", precision="fp16")
    _no_run_left(case)


# --- 4. unusual but valid shapes: accepted, and read the way the user meant ---------------------------------------
def _preflight(case: Case, **kw: Any) -> dict[str, Any]:
    from distill_nb.preflight import preflight

    return preflight(DistillConfig.from_dict({**case.base(), **kw}))


def _task(case: Case, **kw: Any):
    from distill_nb.rundata import task_for

    return task_for(DistillConfig.from_dict({**case.base(), **kw}))


def test_excel_bom_csv_is_accepted_by_preflight_and_worker(case):
    data = case.folder("excel", "\ufeff" + rows(GOOD))
    assert _preflight(case, dataset=data)["rows"] == {"train": 12, "eval": 12}
    task = _task(case, dataset=data)
    assert task.train.texts[0] == "the movie was good" and task.label_names == ["0", "1"]


def test_integer_labels_1_and_5_are_two_classes(case):
    data = case.folder("one-five", rows([("good", 5), ("bad", 1)] * 5))
    assert _preflight(case, dataset=data)["data_labels"] == ["1", "5"]
    task = _task(case, dataset=data)
    assert task.label_values == (1, 5) and task.train.labels[:2] == [1, 0]


def test_labels_starting_at_1_with_label_names(case):
    data = case.folder("from-one", rows([("good", 2), ("bad", 1)] * 5))
    task = _task(case, dataset=data, label_names=["negative", "positive"])
    assert task.label_names == ["negative", "positive"] and task.train.labels[:2] == [1, 0]
    assert _preflight(case, dataset=data, label_names=["negative", "positive"])["data_labels"] == task.label_names


def test_zero_based_ints_with_label_names_keep_their_ids(case):
    task = _task(case, label_names=["neg", "pos"])
    assert task.label_names == ["neg", "pos"]
    assert all(y == (1 if any(w in t for w in ("good", "great", "fun", "loved", "wonderful")) else 0)
               for t, y in zip(task.train.texts, task.train.labels))


def test_label_names_meet_a_teacher(case):
    """Integer ids stay ids: a named teacher's names win (counts must match); a LABEL_i teacher takes label_names."""
    from distill_nb.rundata import align_labels

    task = _task(case, label_names=["neg", "pos"])
    assert align_labels(task, ["NEGATIVE", "POSITIVE"], "t").label_names == ["NEGATIVE", "POSITIVE"]
    assert align_labels(task, ["LABEL_0", "LABEL_1"], "t").label_names == ["neg", "pos"]
    assert align_labels(task, ["LABEL_0", "LABEL_1"], "t").train.labels == task.train.labels
    with pytest.raises(ConfigError, match="predicts 3 labels"):
        align_labels(task, ["a", "b", "c"], "t")


def test_jsonl_round_trip_keeps_ids_with_label_names(case):
    from distill_nb.data import TaskData

    task = TaskData.from_lists(["good", "bad"] * 3, [0, 1] * 3, ["fine"], [0], label_names=["pos", "neg"])
    folder = task.write_jsonl(case.tmp / "jsonl")
    back = load_task(str(folder), text_column="text", label_names=task.label_names)
    assert back.label_names == ["pos", "neg"] and back.train.labels == task.train.labels


def test_minus_one_zero_one_sentiment_is_three_classes(case):
    task = load_task(case.folder("tri", rows([("bad", -1), ("meh", 0), ("good", 1)] * 4)), text_column="text")
    assert task.label_names == ["-1", "0", "1"] and task.train.labels[:3] == [0, 1, 2]


def test_float_and_bool_labels(case):
    floats = load_task(case.folder("floats", rows([("good", "1.0"), ("bad", "0.0")] * 3)), text_column="text")
    assert floats.label_names == ["0", "1"] and floats.train.labels[:2] == [1, 0]
    bools = load_task(case.folder("bools", json.dumps([{"text": "a", "label": True}, {"text": "b", "label": False}] * 3),
                                ext="json"), text_column="text")
    assert bools.label_names == ["false", "true"] and bools.train.labels[:2] == [1, 0]


def test_wrapped_json_and_dict_of_columns_are_read(case):
    wrapped = case.folder("wrapped", json.dumps({"data": [{"text": t, "label": y} for t, y in GOOD]}), ext="json")
    assert _preflight(case, dataset=wrapped)["rows"] == {"train": 12, "eval": 12}
    assert _task(case, dataset=wrapped).train.texts[:2] == ["the movie was good", "the movie was awful"]
    columns = case.folder("columns", json.dumps({"text": [t for t, _ in GOOD], "label": [y for _, y in GOOD]}), ext="json")
    assert _task(case, dataset=columns).train.labels[:2] == [1, 0]


def test_two_text_columns_joined_or_paired(case):
    from transformers import AutoTokenizer

    from distill_nb.data import encode

    data_rows = [("great plot,the movie", 1), ("dull,the film", 0)] * 4
    data = case.folder("two-cols", rows(data_rows, "title,body,label"))
    joined = _task(case, dataset=data, text_column=["title", "body"])
    assert joined.train.texts[0] == "great plot\nthe movie"
    paired = _task(case, dataset=data, text_column=["title", "body"], text_pair=True)
    tok = AutoTokenizer.from_pretrained(case.teacher)
    ids = encode(tok, paired.train.texts[:1], 32)[0]
    assert ids.count(tok.sep_token_id) == 2 and ids == tok("great plot", "the movie")["input_ids"]
    assert encode(tok, joined.train.texts[:1], 32)[0].count(tok.sep_token_id) == 1
    assert _preflight(case, dataset=data, text_column=["title", "body"], text_pair=True)["rows"]["train"] == 8


def test_csv_quirks_spaces_in_header_and_quoted_newlines(case):
    data = case.folder("quirks", 'text, label\n"first line\nsecond line",1\n"a, b",0\n' * 3)
    task = _task(case, dataset=data)
    assert task.train.texts[:2] == ["first line\nsecond line", "a, b"] and task.train.labels[:2] == [1, 0]


def test_single_file_hold_out_is_stated(case):
    path = case.file("all.csv", rows(GOOD * 2))
    task = _task(case, dataset=path)
    assert (len(task.train), len(task.eval)) == (22, 2)
    assert "random 10%" in task.note and "all.csv" in task.note and "2 of 24" in task.note
    assert _task(case).note == ""  # a folder names its eval split: nothing to state


def test_default_layer_map_for_a_deeper_random_student(case):
    from distill_nb.models import default_layer_map

    assert default_layer_map(4, 8) == [0, 0, 1, 1, 1, 2, 3, 3]
    assert default_layer_map(2, 5) == [0, 0, 0, 1, 1] and default_layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    for t in range(1, 7):
        for s in range(1, 13):
            m = default_layer_map(t, s)
            assert min(m) >= 0 and max(m) == t - 1 and m == sorted(m), (t, s, m)
    found = _preflight(case, student_init="random", student_layers=6, alpha_hidden=1.0)  # deeper than 4 layers
    assert found["teacher_shape"]["layers"] == 4


# --- preflight and the worker read with the same code: they accept and refuse the same files -------------------
SAME_READER: list[tuple[str, Callable[[Case], str]]] = [
    ("bom", lambda c: c.folder("bom", "\ufeff" + rows(GOOD))),
    ("wrapped-json", lambda c: c.folder("wrapped", json.dumps({"rows": [{"text": t, "label": y} for t, y in GOOD]}),
                                        ext="json")),
    ("jsonl", lambda c: c.folder("jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in GOOD),
                                 ext="jsonl")),
    ("single-file", lambda c: c.file("single.csv", rows(GOOD))),
    ("zero-bytes", lambda c: c.file("zero.csv", b"")),
    ("one-class", lambda c: c.folder("mono", rows([("good", 1)] * 4), rows(GOOD))),
    ("hidden-eval", lambda c: c.folder("hidden", rows(GOOD), rows([("x", -1)] * 2))),
    ("small-single-file", lambda c: c.file("small.csv", rows(GOOD[:4]))),
    ("odd-json", lambda c: c.folder("odd", json.dumps({"a": 1, "b": [{"text": "x", "label": 0}], "c": [1]}),
                                    ext="json")),
    ("missing-labels", lambda c: c.folder("holes", rows(GOOD + [("meh", "")]))),
]


@pytest.mark.parametrize("name,make", SAME_READER, ids=[c[0] for c in SAME_READER])
def test_preflight_and_worker_agree(case, name, make):
    dataset = make(case)

    def outcome(call: Callable[[], Any]) -> str:
        try:
            call()
        except (ValueError, KeyError, FileNotFoundError) as e:
            return str(e.args[0] if isinstance(e, KeyError) else e)
        return "accepted"

    before = outcome(lambda: _preflight(case, dataset=dataset))
    worker = outcome(lambda: _task(case, dataset=dataset))
    assert before == worker
    assert (before == "accepted") == (name in ("bom", "wrapped-json", "jsonl", "single-file")), before


@pytest.mark.parametrize("name", ["one-class", "hidden-eval", "zero-bytes"])
def test_the_worker_fails_with_the_preflight_message(case, name):
    """launch(check=False) leaves the checks to the worker: train() refuses with the same words, status says so."""
    from distill_nb.rundir import read_status
    from distill_nb.train import train

    dataset = dict(SAME_READER)[name](case)
    config = DistillConfig.from_dict({**case.base(), "dataset": dataset})
    with pytest.raises(ValueError) as before:
        _preflight(case, dataset=dataset)
    with pytest.raises(ValueError) as worker:
        train(config, case.tmp / "run", log=lambda *_: None)
    assert str(worker.value) == str(before.value)
    status = read_status(case.tmp / "run")
    assert status["state"] == "failed" and str(before.value) in status["error"], status


# --- labels written as numbers: whole ones are ids everywhere; the rest refused by preflight and worker alike ------
LABEL_FILES: list[tuple[str, Callable[[Case], str], list[str] | None]] = [
    ("csv-1.0", lambda c: c.folder("floats", rows([(t, f"{y}.0") for t, y in GOOD])), None),
    ("jsonl-1.0", lambda c: c.folder("floats-jsonl", "".join(
        json.dumps({"text": t, "label": float(y)}) + "\n" for t, y in GOOD), ext="jsonl"), None),
    ("single-file-1.0", lambda c: c.file("floats.csv", rows([(t, f"{y}.0") for t, y in GOOD])), None),
    ("csv-0.5", lambda c: c.folder("half", rows(GOOD[:5] + [("meh", "0.5")] + GOOD[5:])),
     ["half", "row 6 of data file", "train.csv", "'0.5'", "fraction"]),
    ("jsonl-2.5", lambda c: c.folder("half-jsonl", "".join(
        json.dumps({"text": t, "label": y}) + "\n" for t, y in [*GOOD[:3], ("meh", 2.5), *GOOD[3:]]), ext="jsonl"),
     ["row 4 of data file", "train.jsonl", "2.5", "fraction"]),
    ("single-file-0.5", lambda c: c.file("half.csv", rows(GOOD + [("meh", "0.5")])),
     ["row 13 of data file", "half.csv", "'0.5'"]),
    ("jsonl-NaN", lambda c: c.folder("nan-jsonl", "".join(
        json.dumps({"text": t, "label": y}) + "\n" for t, y in [*GOOD[:8], ("meh", NAN), *GOOD[8:]]), ext="jsonl"),
     ["nan-jsonl", "missing", "row 9 of train.jsonl"]),
    ("csv-minus-inf", lambda c: c.folder("inf-csv", rows(GOOD), rows([("meh", "-inf"), *GOOD])),
     ["inf-csv", "missing", "row 1 of validation.csv"]),
    ("single-file-inf", lambda c: c.file("inf.csv", rows([*GOOD[:2], ("meh", "Infinity"), *GOOD[2:]])),
     ["inf.csv", "missing", "row 3 of inf.csv"]),  # the file's row, not its place after the hold-out shuffle
]


@pytest.mark.parametrize("name,make,needles", LABEL_FILES, ids=[c[0] for c in LABEL_FILES])
def test_number_labels_preflight_and_worker_agree(case, name, make, needles):
    dataset = make(case)
    if needles is None:
        assert _preflight(case, dataset=dataset)["data_labels"] == ["0", "1"]
        task = _task(case, dataset=dataset)
        assert task.label_names == ["0", "1"] and not task.named_labels and task.label_values == (0, 1)
        assert sorted(set(task.train.labels)) == [0, 1]
        return
    before = clear_error(lambda: case.launch(dataset=dataset), ValueError, needles)
    _no_run_left(case)
    assert clear_error(lambda: _task(case, dataset=dataset), ValueError, needles) == before


# --- 5. the Launcher widget path: Start shows the error, nothing is created ---------------------------------------
LAUNCHER_CASES: list[tuple[str, Callable[[Case], dict[str, Any]], list[str]]] = [
    ("zero-byte-data", lambda c: {"dataset": c.file("zero.csv", b"")}, ["zero.csv", "0 bytes"]),
    ("one-class-data", lambda c: {"dataset": c.folder("mono", rows([("good", 1)] * 8), rows(GOOD))}, ["one class"]),
    ("hidden-test-split", lambda c: {"dataset": c.folder("test-split", rows(GOOD), rows([("x", -1)] * 3))},
     ["[-1]", "eval_split='validation'"]),
    ("offline-hub-name", lambda c: {"dataset": "glue:qqp"}, ["glue:qqp", "offline"]),
    ("single-row-file", lambda c: {"dataset": c.file("one.csv", rows([("good", 1)]))}, ["one.csv", "at least 10"]),
    ("device-cuda", lambda c: {"device": "cuda"} if not _has_cuda() else {"dataset": c.file("z.csv", b"")},
     ["cuda" if not _has_cuda() else "z.csv"]),
]


@pytest.mark.parametrize("name,fields,needles", LAUNCHER_CASES, ids=[c[0] for c in LAUNCHER_CASES])
def test_launcher_start_shows_the_error(case, name, fields, needles):
    from distill_nb.widgets import Launcher

    launcher = Launcher(DistillConfig(**case.base()), backend="subprocess", root=str(case.root))
    for key, value in fields(case).items():
        launcher.fields[key].value = value
    assert launcher.start() is None
    for needle in needles:
        assert needle in launcher.error, (needle, launcher.error)
    assert HINT.search(launcher.error), launcher.error
    assert launcher.run_id == ""
    _no_run_left(case)


@pytest.mark.parametrize("name,teacher_key", [("teacher-no-tokenizer", "no_tok"), ("teacher-causal-lm", "llama")])
def test_launcher_with_a_bad_teacher(case, name, teacher_key):
    from distill_nb.widgets import Launcher

    launcher = Launcher(DistillConfig(**{**case.base(), "teacher": str(case.models[teacher_key])}),
                        backend="subprocess", root=str(case.root))
    launcher.start()
    assert Path(case.models[teacher_key]).name in launcher.error and HINT.search(launcher.error)
    _no_run_left(case)


def test_matrix_size():
    """The issue asks for >= 80 cases; count them so a deleted block shows."""
    n = (len(CONFIG_CASES) + len(CLI_CASES) + len(PREFLIGHT_CASES) + 3 + 1 + len(LAUNCHER_CASES) + 2
         + len(SAME_READER) + 3 + 1
         + 14)  # cuda x3, auto+fp16, launcher teachers, accepted-shape tests in section 4 (and the BOM config)
    assert n >= 80, n
