"""Reason fidelity: the probe tracker in a 3-step run, the teacher-attribution cache, the alignment loss in train()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from distill_nb import fidelity
from distill_nb.config import ConfigError, DistillConfig
from distill_nb.runs import read_metrics, read_status
from distill_nb.train import train

REASON_KEYS = {"reason_spearman", "reason_topk", "reason_sign"}


def tiny_config(teacher, data, **kw) -> DistillConfig:
    base = {"teacher": str(teacher), "dataset": str(data), "text_column": "text", "student_layers": 2,
            "max_steps": 3, "batch_size": 8, "eval_every": 2, "checkpoint_every": 100, "seed": 0,
            "student_dropout": 0.0, "reason_probe": 8, "reason_n_steps": 4}
    return DistillConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))


def _evals(run):
    return [m for m in read_metrics(run) if m["split"] == "eval"]


def test_probe_tracking_writes_reason_keys_and_the_probe_set(tiny_teacher, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_teacher, tiny_dataset), run, log=lambda *_: None)
    evals = _evals(run)
    assert [m["step"] for m in evals] == [2, 3]
    for m in evals:
        assert REASON_KEYS <= set(m) and m["reason_s"] >= 0
        assert -1 <= m["reason_spearman"] <= 1 and 0 <= m["reason_topk"] <= 1 and 0 <= m["reason_sign"] <= 1
    probe = json.loads((run / "probe.json").read_text())
    assert len(probe["texts"]) == 8 and probe["indices"] == sorted(probe["indices"])
    assert probe["method"] == "input_x_gradient"  # the default: one backward per probe text


def test_switched_off_writes_no_reason_keys(tiny_teacher, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_teacher, tiny_dataset, reason_probe=0), run, log=lambda *_: None)
    assert all(not (REASON_KEYS & set(m)) for m in _evals(run))
    assert not (run / "probe.json").exists()


def test_student_equal_to_teacher_agrees_fully(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    tracker = fidelity.ReasonTracker(tiny_teacher.parent / "probe-run", model, tok, tok,
                                     ["a good movie", "the plot was boring and slow", "great fun"], size=3, seed=0,
                                     method="input_x_gradient", n_steps=1, top_k=2, max_length=32,
                                     device=torch.device("cpu"), log=lambda *_: None)
    got = tracker.measure(model)
    assert got["reason_spearman"] == pytest.approx(1.0) and got["reason_topk"] == 1.0 and got["reason_sign"] == 1.0


def test_teacher_attribution_cache_is_reused_across_runs(tiny_teacher, tiny_dataset, tmp_path):
    logs: list[str] = []
    cfg = tiny_config(tiny_teacher, tiny_dataset, alpha_attr=1.0, max_steps=2)
    train(cfg, tmp_path / "a", log=logs.append)
    computed = [m for m in logs if m.startswith("teacher attributions")]
    assert len(computed) == 2  # the training set (alignment) and the probe, once each
    files = sorted((tmp_path / "cache" / "attributions").glob("*.safetensors"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    logs.clear()
    train(cfg.replace(seed=1), tmp_path / "b", log=logs.append)  # another run, same teacher and texts
    assert not [m for m in logs if m.startswith("teacher attributions")]
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_alignment_loss_is_logged_and_trains(tiny_teacher, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_teacher, tiny_dataset, alpha_attr=1.0, attr_top_k=3), run, log=lambda *_: None)
    rows = [m for m in read_metrics(run) if m["split"] == "train"]
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert all(0 <= m["attr"] <= 4 and torch.isfinite(torch.tensor(m["loss"])) for m in rows)
    assert read_status(run)["state"] == "completed"


def test_alignment_only_is_a_valid_objective_and_integrated_gradients_targets_work(tiny_teacher, tiny_dataset,
                                                                                   tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_teacher, tiny_dataset, alpha_kd=0.0, alpha_attr=1.0, attr_method="integrated_gradients",
                      attr_n_steps=4, reason_probe=0, max_steps=2), run, log=lambda *_: None)
    assert [m["loss"] == m["attr"] for m in read_metrics(run) if m["split"] == "train"] == [True, True]


def test_aligner_gradient_reaches_the_student_and_identical_models_give_zero(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.data import collate, encode

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    texts = ["a good movie", "the plot was boring and slow", "great fun", "bad"]
    enc = encode(tok, texts, 32)
    aligner = fidelity.Aligner(teacher, tok, texts, enc, method="input_x_gradient", n_steps=1, top_k=None,
                               examples=None, max_length=32, device=torch.device("cpu"), save=False,
                               log=lambda *_: None)
    batch = collate(enc, [0, 1, 2, 3], tok.pad_token_id)
    student = AutoModelForSequenceClassification.from_pretrained(  # a copy of the teacher; SDPA has no double backward
        tiny_teacher, attn_implementation="eager").eval()
    assert aligner.loss(student, batch, [0, 1, 2, 3]).item() == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        for p in student.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = aligner.loss(student, batch, [0, 1, 2, 3])
    loss.backward()
    assert loss.item() > 0
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert grads["bert.encoder.layer.0.attention.self.query.weight"].abs().sum() > 0
    assert grads["bert.embeddings.word_embeddings.weight"].abs().sum() > 0
    aligner.examples = 2  # a sub-batch: only the first two rows count
    sub = aligner.loss(student, batch, [0, 1, 2, 3])
    assert sub.item() == pytest.approx(aligner.loss(student, {k: v[:2] for k, v in batch.items()}, [0, 1]).item())


def test_config_checks_for_the_reason_fields():
    with pytest.raises(ConfigError, match="alpha_attr=nan"):
        DistillConfig(alpha_attr=float("nan"))
    with pytest.raises(ConfigError, match="attr_method"):
        DistillConfig(attr_method="occlusion")
    with pytest.raises(ConfigError, match="reason_method"):
        DistillConfig(reason_method="shap")
    with pytest.raises(ConfigError, match="attr_top_k"):
        DistillConfig(attr_top_k=0)
    with pytest.raises(ConfigError, match="objective='classification'"):
        DistillConfig(alpha_attr=1.0, objective="mlm")
    assert DistillConfig(alpha_kd=0.0, alpha_attr=1.0).alpha_attr == 1.0


def test_alignment_needs_a_shared_tokenizer(tiny_teacher, tmp_path):
    from conftest import make_tiny_bert

    from distill_nb.preflight import check_shared_vocab

    other = make_tiny_bert(tmp_path / "other")
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nmovie\n")
    (other / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="attribution losses need shared tokens"):
        check_shared_vocab(str(tiny_teacher), str(other))


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on linux only")
def test_alignment_under_ddp_two_processes(tiny_teacher, tiny_dataset, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with alpha_attr: the double backward under DDP matches one process."""
    from safetensors.torch import load_file

    cfg = tiny_config(tiny_teacher, tiny_dataset, alpha_attr=1.0, max_steps=3, eval_every=100, reason_probe=0)
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(cfg, single, log=lambda *_: None)
    cfg.to_json(multi / "config.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "distill_nb.train", str(multi)], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    a, b = load_file(single / "student" / "model.safetensors"), load_file(multi / "student" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_alignment_explains_the_student_without_dropout_and_leaves_its_mode(tiny_teacher):
    """A training student (dropout on) is explained as at inference: a copy of the teacher has loss 0 and two
    calls agree; the student is left in the mode it was in; ``dropout=True`` keeps the noisy training-mode one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.data import collate, encode

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    texts = ["a good movie", "the plot was boring and slow", "great fun", "bad"]
    enc = encode(tok, texts, 32)
    batch = collate(enc, [0, 1, 2, 3], tok.pad_token_id)
    student = AutoModelForSequenceClassification.from_pretrained(
        tiny_teacher, attn_implementation="eager", hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    kwargs = {"method": "input_x_gradient", "n_steps": 1, "top_k": None, "examples": None, "max_length": 32,
              "device": torch.device("cpu"), "save": False, "log": lambda *_: None}
    aligner = fidelity.Aligner(teacher, tok, texts, enc, **kwargs)
    student.train()
    assert aligner.loss(student, batch, [0, 1, 2, 3]).item() == pytest.approx(0.0, abs=1e-8)
    assert student.training
    student.eval()
    aligner.loss(student, batch, [0, 1, 2, 3])
    assert not student.training
    noisy = fidelity.Aligner(teacher, tok, texts, enc, dropout=True, **kwargs)
    student.train()
    torch.manual_seed(0)
    assert noisy.loss(student, batch, [0, 1, 2, 3]).item() > 1e-3  # dropout changes the explanation


@pytest.mark.parametrize("precision", ["fp32", "auto", "bf16"])
def test_the_probe_explains_the_student_in_the_runs_precision(tiny_teacher, tiny_dataset, tmp_path, monkeypatch,
                                                             precision):
    """The student's probe attributions follow the run's precision (bf16 where training runs bf16: cheaper);
    the teacher's are computed once in fp32."""
    import torch

    from distill_nb import fidelity
    from distill_nb.precision import amp_dtype, cpu_bf16_supported
    from distill_nb.train import train

    if precision == "bf16" and not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    seen = []
    real = fidelity.attribute

    def spy(model, *args, **kwargs):
        seen.append(kwargs.get("precision", "fp32"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fidelity, "attribute", spy)
    train(tiny_config(tiny_teacher, tiny_dataset, max_steps=2, eval_every=1, reason_probe=8, precision=precision),
          tmp_path / "run", log=lambda *_: None)
    ran_bf16 = amp_dtype(precision, torch.device("cpu")) == torch.bfloat16
    expected = "bf16" if ran_bf16 else "fp32"
    assert seen[0] == "fp32" and seen[1:] and set(seen[1:]) == {expected}  # teacher once, student per eval


def test_a_blank_eval_text_is_left_out_of_the_reason_probe(tiny_teacher, tmp_path):
    """One empty text cell in the eval file: the run completes and the probe never picks the blank text."""
    from distill_nb.train import train

    data = tmp_path / "data"
    data.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    rows = "".join(f"the film was {words[i % 6]},{i % 2}\n" for i in range(24))
    (data / "train.csv").write_text("text,label\n" + rows)
    (data / "validation.csv").write_text("text,label\n" + "".join(rows.splitlines(True)[:8]) + ",1\n   ,0\n")
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(data), text_column="text", student_layers=2,
                           max_steps=2, batch_size=8, reason_probe=64)
    train(config, tmp_path / "run", log=lambda *_: None)
    probe = json.loads((tmp_path / "run" / fidelity.PROBE_FILE).read_text())
    assert probe["texts"] and all(t.strip() for t in probe["texts"])


# --- compare_students, text pairs, the attribution cache and probe.json under damage -------------------------------
def _teacher_with_labels(src, dst, names):
    """A copy of ``src`` whose id2label is ``names`` (not sorted: the label order the data must follow)."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
    cfg["label2id"] = {n: i for i, n in enumerate(names)}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("seed", [0, 3])
def test_compare_students_scores_each_run_on_its_own_eval_split_and_label_ids(tiny_teacher, tmp_path, seed):
    """A single file (a seeded 10 % hold-out) with named labels and a teacher whose classes are not sorted: the
    Compare tab's numbers are the run's own final accuracy and teacher accuracy."""
    import random

    rng = random.Random(1)
    words = {"pos": ["good", "great", "fun", "loved"], "neg": ["bad", "awful", "dull", "boring"]}
    rows = [f"the movie was {rng.choice(words[y])} {rng.choice(['', 'very', 'really'])},{y}"  # 85 % pos: a label
            for y in [rng.choice(["pos"] * 17 + ["neg"] * 3) for _ in range(120)]]  # flip moves the accuracy
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    teacher = _teacher_with_labels(tiny_teacher, tmp_path / "teacher", ["pos", "neg"])
    run = tmp_path / "run"
    final = train(DistillConfig(teacher=str(teacher), dataset=str(data), text_column="text", student_layers=2,
                                max_steps=2, batch_size=8, seed=seed, reason_probe=0), run, log=lambda *_: None)
    table = fidelity.compare_students([run], max_eval=None, n_steps=2)
    row = table.loc["run"]
    assert row["accuracy"] == pytest.approx(final["accuracy"]) and row["examples"] == 12
    assert row["teacher_accuracy"] == pytest.approx(final["teacher_accuracy"])


def test_text_pairs_are_attributed_as_training_encodes_them(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from distill_nb.attribution.methods import encode as attr_encode
    from distill_nb.data import encode
    from distill_nb.tables import PAIR_SEP

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = [f"the movie was good{PAIR_SEP}it was fun", f"a dull plot{PAIR_SEP}bad", "no pair here"]
    items = attr_encode(tok, texts, 32)
    assert [e.ids for e in items] == encode(tok, texts, 32)  # [CLS] a [SEP] b [SEP], as train() feeds it
    for e, text in zip(items, texts):
        surface = [text[a:b] for (a, b), w in zip(e.offsets, e.word_ids) if w is not None]
        assert surface == [t.removeprefix("##") for t, w in zip(tok.convert_ids_to_tokens(e.ids), e.word_ids)
                           if w is not None]  # offsets point into the joined text, second text included
        words = [w for w in e.word_ids if w is not None]
        assert words == sorted(words)  # the second text's words continue after the first's, never repeat
    assert len(set(w for w in items[0].word_ids if w is not None)) == 7
    data = tmp_path / "pairs"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text("premise,hypothesis,label\n" + "".join(
            f"the movie was {w},it was {w},{i % 2}\n" for i, w in enumerate(["good", "bad", "fun", "dull"] * 4)))
    run = tmp_path / "run"
    train(DistillConfig(teacher=str(tiny_teacher), dataset=str(data), text_column=["premise", "hypothesis"],
                        text_pair=True, student_layers=2, max_steps=2, batch_size=8, alpha_attr=1.0, reason_probe=4,
                        eval_every=2), run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed"


def test_the_alignment_loss_skips_the_students_special_tokens_not_the_teachers(tiny_teacher, monkeypatch):
    """A trimmed vocabulary renumbers the specials; the batch holds student ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb import losses
    from distill_nb.data import collate, encode

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher, attn_implementation="eager").eval()
    texts = ["a good movie", "great fun"]
    enc = encode(tok, texts, 32)

    class Renumbered:  # the student's tokenizer: its specials sit where the teacher has words
        all_special_ids = [enc[0][1], enc[0][2], tok.pad_token_id]

    aligner = fidelity.Aligner(teacher, tok, texts, enc, method="input_x_gradient", n_steps=1, top_k=None,
                               examples=None, max_length=32, device=torch.device("cpu"), save=False,
                               log=lambda *_: None, student_tokenizer=Renumbered())
    seen = {}
    real = losses.attribution_loss
    monkeypatch.setattr(losses, "attribution_loss", lambda s, t, counted, k: seen.setdefault("c", counted) is None
                        or real(s, t, counted, k))
    aligner.loss(teacher, collate(enc, [0, 1], tok.pad_token_id), [0, 1])
    ids = torch.tensor(enc[0])
    assert seen["c"][0].tolist() == [i not in Renumbered.all_special_ids for i in ids.tolist()]


def _attributions(teacher, tok, texts, logs=None):
    return fidelity.teacher_attributions(teacher, tok, texts, method="input_x_gradient", n_steps=1, max_length=32,
                                         device=torch.device("cpu"), log=(logs.append if logs is not None else
                                                                          (lambda *_: None)))


def test_the_attribution_cache_is_keyed_by_the_tokenizer(tiny_teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    lower = AutoTokenizer.from_pretrained(tiny_teacher)
    cased = AutoTokenizer.from_pretrained(tiny_teacher, do_lower_case=False)
    texts = ["The Movie was Good", "a dull plot"]
    assert _attributions(teacher, lower, texts)[3] is False
    assert _attributions(teacher, lower, texts)[3] is True
    scores, lengths, _, cached = _attributions(teacher, cased, texts)  # the same weights, other tokens
    assert cached is False and lengths.tolist() == [len(ids) for ids in cased(texts)["input_ids"]]


DAMAGE = {
    "nan scores": lambda d: {**d, "scores": d["scores"].masked_fill(d["scores"] != 0, float("nan"))},
    "inf score": lambda d: {**d, "scores": d["scores"].index_fill(1, torch.tensor([1]), float("inf"))},
    "too few rows": lambda d: {k: v[:1] for k, v in d.items()},
    "too many rows": lambda d: {k: torch.cat([v, v]) for k, v in d.items()},
    "wrong lengths": lambda d: {**d, "lengths": d["lengths"] + 1},
    "short rows": lambda d: {**d, "scores": d["scores"][:, :2]},
    "target past the classes": lambda d: {**d, "targets": d["targets"] + 7},
    "negative target": lambda d: {**d, "targets": d["targets"] - 5},
    "float targets": lambda d: {**d, "targets": d["targets"].float()},
    "1-d scores": lambda d: {**d, "scores": d["scores"].flatten()},
    "int scores": lambda d: {**d, "scores": d["scores"].long()},
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_attribution_cache_is_computed_again(tiny_teacher, tmp_path, damage):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = ["the movie was good", "a dull plot", "great fun"]
    fresh = _attributions(teacher, tok, texts)
    (path,) = (tmp_path / "cache" / "attributions").glob("*.safetensors")
    save_file({k: v.contiguous() for k, v in DAMAGE[damage](load_file(path)).items()}, path)
    logs: list[str] = []
    again = _attributions(teacher, tok, texts, logs)
    assert again[3] is False and any("recomputing" in m for m in logs)
    for a, b in zip(fresh[:3], again[:3]):
        assert torch.equal(a, b)
    assert _attributions(teacher, tok, texts)[3] is True  # the good file was written back


PROBE_DAMAGE = {
    "int texts": lambda p: {**p, "texts": [1, 2]},
    "nested texts": lambda p: {**p, "texts": [p["texts"]]},
    "blank texts": lambda p: {**p, "texts": ["  "] * len(p["texts"])},
    "foreign texts": lambda p: {**p, "texts": ["not an eval text at all"] * len(p["texts"])},
    "index past the eval set": lambda p: {**p, "indices": [99] * len(p["indices"])},
    "repeated index": lambda p: {**p, "indices": [p["indices"][0]] * len(p["indices"]),
                                 "texts": [p["texts"][0]] * len(p["texts"])},
    "bool index": lambda p: {**p, "indices": [True] + p["indices"][1:]},
    "fewer indices": lambda p: {**p, "indices": p["indices"][:1]},
    "no indices": lambda p: {k: v for k, v in p.items() if k != "indices"},
    "a list": lambda p: [p],
    "null": lambda p: None,
}


@pytest.mark.parametrize("damage", [*PROBE_DAMAGE, "not json", "deep nesting"])
def test_a_damaged_or_edited_probe_file_is_built_again(tiny_teacher, tmp_path, damage):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    evals = ["a good movie", "the plot was boring and slow", "great fun", "bad acting", "fine music"]

    def tracker():
        return fidelity.ReasonTracker(tmp_path / "run", model, tok, tok, evals, size=3, seed=0,
                                      method="input_x_gradient", n_steps=1, top_k=2, max_length=32,
                                      device=torch.device("cpu"), log=lambda *_: None)

    (tmp_path / "run").mkdir()
    first = tracker()
    path = tmp_path / "run" / fidelity.PROBE_FILE
    good = json.loads(path.read_text())
    path.write_text({"not json": "{texts: [", "deep nesting": "[" * 100_000 + "]" * 100_000}.get(damage) or
                    json.dumps(PROBE_DAMAGE[damage](dict(good))))
    again = tracker()
    assert again.texts == first.texts == [evals[i] for i in good["indices"]]
    assert json.loads(path.read_text()) == good
    assert again.measure(model)["reason_sign"] == pytest.approx(first.measure(model)["reason_sign"])


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_probe_file_that_is_a_folder_or_a_link(tiny_teacher, tmp_path, kind):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"indices": [0], "texts": ["a good movie"], "method": "input_x_gradient",
                                   "n_steps": 1}))
    path = run / fidelity.PROBE_FILE
    path.mkdir() if kind == "folder" else path.symlink_to(outside)

    def tracker():
        return fidelity.ReasonTracker(run, model, tok, tok, ["a good movie", "great fun", "bad"], size=2, seed=0,
                                      method="input_x_gradient", n_steps=1, top_k=2, max_length=32,
                                      device=torch.device("cpu"), log=lambda *_: None)

    if kind == "folder":
        with pytest.raises(ValueError, match="is a folder.*move it away"):
            tracker()
    else:  # never read through the link, never written through it
        assert len(tracker().texts) == 2 and not path.is_symlink()
        assert json.loads(outside.read_text())["texts"] == ["a good movie"]


def test_stop_is_heard_while_the_teachers_attributions_are_computed(tiny_teacher, tiny_dataset, tmp_path,
                                                                   monkeypatch):
    from distill_nb.rundir import clear_stop, request_stop

    run = tmp_path / "run"
    phases = []
    real = fidelity.attribute

    def slow_first_chunk(model, tok, texts, *args, **kwargs):  # the user clicks Stop during the first chunk
        phases.append(read_status(run).get("phase"))
        if len(phases) == 1:
            request_stop(run)
        return real(model, tok, texts, *args, **kwargs)

    monkeypatch.setattr(fidelity, "ATTRIBUTION_CHUNK", 16)
    monkeypatch.setattr(fidelity, "attribute", slow_first_chunk)
    config = tiny_config(tiny_teacher, tiny_dataset, alpha_attr=1.0, reason_probe=0)
    assert train(config, run, log=lambda *_: None) == {}
    status = read_status(run)
    assert status["state"] == "stopped" and "attributions" in status["message"] and status["step"] == 0
    assert phases == ["caching_attributions"]  # stopped after the first of 4 chunks
    assert not list((tmp_path / "cache" / "attributions").glob("*.safetensors"))  # nothing half-done cached
    clear_stop(run)
    monkeypatch.setattr(fidelity, "attribute", real)
    train(config, run, log=lambda *_: None)
    assert read_status(run)["state"] == "completed"


def test_an_attribution_cache_that_cannot_be_written_is_only_logged(tiny_teacher, tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    def full_disk(tensors, path, *args, **kwargs):
        open(path, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    logs: list[str] = []
    scores, lengths, targets, cached = _attributions(teacher, tok, ["the movie was good", "a dull plot"], logs)
    assert not cached and scores.shape[0] == 2 and lengths.tolist() == [6, 5]
    assert any("goes on without this cache" in m and "DISTILL_NB_CACHE" in m for m in logs), logs
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half-written file left


# --- eval texts a probe cannot explain; a teacher without predictions ------------------------------------------------
def _tracker(tiny_teacher, run, evals, teacher=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = teacher or AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    run.mkdir(exist_ok=True)
    return fidelity.ReasonTracker(run, model, tok, tok, evals, size=4, seed=0, method="saliency", n_steps=1,
                                  top_k=2, max_length=32, device=torch.device("cpu"), log=lambda *_: None)


@pytest.mark.parametrize("evals", [[""], ["", "  ", "\n"], ["\u200b\u200b"], ["\x00\x01", "\ufeff"],
                                   ["", "\u200b", " \t", "\u2028"], [None, 5]])
def test_eval_texts_that_no_probe_can_explain_are_refused_clearly(tiny_teacher, tmp_path, evals):
    from conftest import clear_error

    clear_error(lambda: _tracker(tiny_teacher, tmp_path / "run", evals), ValueError,
                ["no eval text can be probed", f"all {len(evals)}", "reason_probe=0"])
    assert not (tmp_path / "run" / fidelity.PROBE_FILE).exists()


def test_zero_width_and_control_texts_are_left_out_of_the_probe(tiny_teacher, tmp_path):
    evals = ["\u200b", "the movie was good", "\x00", "bad film", "\ufeff\u200b", "great fun"]
    tracker = _tracker(tiny_teacher, tmp_path / "run", evals)
    assert tracker.texts == ["the movie was good", "bad film", "great fun"]
    probe = json.loads((tmp_path / "run" / fidelity.PROBE_FILE).read_text())
    assert probe["indices"] == [1, 3, 5]
    probe["indices"], probe["texts"] = [0, 1], ["\u200b", "the movie was good"]  # an edited probe with a blank
    (tmp_path / "run" / fidelity.PROBE_FILE).write_text(json.dumps(probe))
    assert _tracker(tiny_teacher, tmp_path / "run", evals).texts == ["the movie was good", "bad film", "great fun"]


def test_a_run_whose_eval_texts_are_all_zero_width_fails_with_the_probe_message(tiny_teacher, tmp_path):
    """train() reaches the probe with such data (the loader's blank check strips spaces only): a clear failure."""
    data = tmp_path / "data"
    data.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    (data / "train.csv").write_text("text,label\n" + "".join(f"the film was {words[i % 6]},{i % 2}\n" for i in range(24)))
    (data / "validation.csv").write_text("text,label\n" + "".join(f"\u200b\u200b,{i % 2}\n" for i in range(6)))
    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(data), text_column="text", student_layers=2,
                           max_steps=2, batch_size=8, reason_probe=4)
    with pytest.raises(ValueError, match="no eval text can be probed.*reason_probe=0"):
        train(config, tmp_path / "run", log=lambda *_: None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("rows", ["all", "one"])
def test_teacher_attributions_refuse_a_teacher_without_predictions(tiny_teacher, tmp_path, value, rows):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill_nb.evaluation import BrokenTeacher

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    bad_id = tok.convert_tokens_to_ids("awful")

    def hook(module, args, out):  # logit 0 := value on every row, or on rows of texts with "awful"
        hit = torch.ones(len(out), dtype=torch.bool) if rows == "all" else (module.ids == bad_id).any(1)
        return torch.where(hit[:, None] & (torch.arange(out.shape[1]) == 0), torch.full_like(out, value), out)
    teacher.classifier.register_forward_hook(hook)
    teacher.register_forward_pre_hook(lambda m, a, kw: setattr(teacher.classifier, "ids", kw["input_ids"]),
                                      with_kwargs=True)
    texts = ["the movie was good", "the acting was awful"]
    with pytest.raises(BrokenTeacher, match="not finite.*fp32"):
        fidelity.teacher_attributions(teacher, tok, texts, method="saliency", n_steps=1, max_length=32,
                                      device=torch.device("cpu"), log=lambda *_: None)
    with pytest.raises(BrokenTeacher):  # nothing was cached: it is refused again
        _tracker(tiny_teacher, tmp_path / "run", texts, teacher=teacher)
