"""vocab: the kept ids, identical logits on in-vocabulary text, [UNK] consistently, pipeline round trip, train()."""

from __future__ import annotations

import copy

import pytest
import torch

from distill_nb import ConfigError, DistillConfig, vocab

TRAIN = ["the movie was good", "the film was bad", "a great story", "boring plot and awful music",
         "i loved the acting", "the worst film"]
IN_VOCAB = ["the film was good", "a great movie and the acting was bad", "awful music"]  # only pieces of TRAIN
OOV = ["brilliant city number", "what year is it"]  # words TRAIN never uses


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval(),
            AutoTokenizer.from_pretrained(tiny_teacher))


@torch.no_grad()
def _logits(model, tok, texts):
    return model(**tok(texts, padding=True, return_tensors="pt")).logits


def test_task_vocab_keeps_specials_and_every_training_token(teacher):
    _, tok = teacher
    trim = vocab.choose_vocab(tok, TRAIN, "task")
    used = {i for ids in tok(TRAIN)["input_ids"] for i in ids}
    assert set(trim.kept_ids) == used | set(tok.all_special_ids)
    assert list(trim.kept_ids) == sorted(trim.kept_ids) and trim.source_size == tok.vocab_size
    table = trim.old_to_new()
    assert table[tok.unk_token_id] == trim.kept_ids.index(tok.unk_token_id)
    assert all(table[i] == j for j, i in enumerate(trim.kept_ids))


def test_integer_size_keeps_the_most_frequent_then_tops_up(teacher):
    _, tok = teacher
    small = vocab.choose_vocab(tok, TRAIN, 8)  # 5 specials + the 3 most frequent task tokens
    assert small.size == 8
    the, was = tok.convert_tokens_to_ids(["the", "was"])
    assert {the, was} <= set(small.kept_ids)
    big = vocab.choose_vocab(tok, TRAIN, 60)
    assert big.size == 60 and set(vocab.choose_vocab(tok, TRAIN, "task").kept_ids) < set(big.kept_ids)
    with pytest.raises(ValueError, match="no room beyond the 5 special tokens"):
        vocab.choose_vocab(tok, TRAIN, 5)
    with pytest.raises(ValueError, match="larger than the tokenizer"):
        vocab.choose_vocab(tok, TRAIN, 10**6)
    with pytest.raises(ValueError, match="size='half' is invalid"):
        vocab.choose_vocab(tok, TRAIN, "half")


def test_trimmed_student_gives_identical_logits_on_in_vocabulary_text(teacher):
    model, tok = teacher
    trimmed, ttok, trim = vocab.trim_student(copy.deepcopy(model), tok, TRAIN)
    assert trimmed.get_input_embeddings().num_embeddings == trim.size == trimmed.config.vocab_size
    assert trimmed.config.distill_nb_vocab["kept_ids"] == list(trim.kept_ids)
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in trimmed.parameters())
    assert n_before - n_after == (trim.source_size - trim.size) * model.config.hidden_size
    texts = TRAIN + IN_VOCAB
    assert ttok(texts)["input_ids"] == trim.remap(tok(texts)["input_ids"])  # same split, renumbered
    assert torch.allclose(_logits(trimmed, ttok, texts), _logits(model, tok, texts), atol=1e-5)


def test_out_of_vocabulary_words_become_one_unk_consistently(teacher, tmp_path):
    from transformers import AutoTokenizer

    model, tok = teacher
    _, ttok, trim = vocab.trim_student(copy.deepcopy(model), tok, TRAIN)
    unk = ttok.unk_token_id
    ids = ttok("the brilliant film")["input_ids"]
    assert ids == [ttok.cls_token_id, ttok.convert_tokens_to_ids("the"), unk, ttok.convert_tokens_to_ids("film"),
                   ttok.sep_token_id]
    assert ttok.convert_ids_to_tokens(unk) == "[UNK]"
    ttok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(OOV + IN_VOCAB)["input_ids"] == ttok(OOV + IN_VOCAB)["input_ids"]  # after a save, the same ids
    assert max(i for ids in again(OOV)["input_ids"] for i in ids) < trim.size
    stats = vocab.outside_vocab(tok, trim, ["the brilliant film", "the film"])
    assert stats["tokens"] == 5 and stats["outside"] == 1 and stats["texts_with_outside"] == 1
    assert stats["top_outside"] == ["brilliant"]


def test_pipeline_on_the_saved_trimmed_student_gives_the_training_predictions(tiny_teacher, tiny_dataset, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from distill_nb.data import encode, load_task
    from distill_nb.models import predict_logits
    from distill_nb.train import train

    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, max_steps=3, batch_size=8, eval_every=10, checkpoint_every=2,
                           alpha_ce=0.5, student_vocab="task", student_dropout=0.0)
    run = tmp_path / "run"
    record = train(config, run, log=lambda *_: None)
    student = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    stok = AutoTokenizer.from_pretrained(run / "student")
    assert student.get_input_embeddings().num_embeddings < 100  # the tiny vocab has 118 tokens; the task fewer
    task = load_task(str(tiny_dataset), text_column="text")
    texts = task.eval.texts + OOV  # eval texts plus words training never saw
    clf = pipeline("text-classification", model=str(run / "student"), tokenizer=str(run / "student"))
    label_ids = {v: int(k) for k, v in student.config.id2label.items()}
    piped = [label_ids[o["label"]] for o in clf(texts)]
    trained = predict_logits(student, encode(stok, texts, config.max_length), stok.pad_token_id,
                             torch.device("cpu")).argmax(-1).tolist()
    assert piped == trained
    n_eval = len(task.eval)
    accuracy = sum(p == y for p, y in zip(piped[:n_eval], task.eval.labels)) / n_eval
    assert accuracy == pytest.approx(record["accuracy"], abs=1e-6)  # what training reported, through pipeline()


def rare_piece_data(data):
    """train/validation CSVs where "xqz" is split into x ##q ##z: rare pieces a 16-token vocabulary drops."""
    data.mkdir()
    for split in ("train", "validation"):
        rows = ["text,label", "the film was xqz,0"] + ["the movie was good,1", "the movie was bad,0",
                                                         "a great fun story,1", "an awful dull plot,0"] * 4
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return data


def test_config_and_train_errors(tiny_teacher, tiny_dataset, tmp_path):
    assert DistillConfig(student_vocab=8000).student_vocab == 8000
    with pytest.raises(ConfigError, match="student_vocab='some' is invalid"):
        DistillConfig(student_vocab="some")
    with pytest.raises(ConfigError, match="too small"):
        DistillConfig(student_vocab=3)
    with pytest.raises(ConfigError, match="needs objective='classification'"):
        DistillConfig(student_vocab="task", objective="mlm")
    from distill_nb.train import train

    data = rare_piece_data(tmp_path / "data")
    for loss in ("alpha_hidden", "alpha_attn", "alpha_attr"):  # every loss that pairs teacher and student tokens
        config = DistillConfig(teacher=str(tiny_teacher), dataset=str(data), text_column="text",
                               student_layers=2, max_steps=1, batch_size=8, student_vocab=16, **{loss: 1.0})
        with pytest.raises(ValueError, match="splits some training texts differently"):
            train(config, tmp_path / f"run-{loss}", log=lambda *_: None)


@pytest.mark.parametrize("loss", ["alpha_hidden", "alpha_attn", "alpha_attr"])
def test_preflight_refuses_what_train_would_refuse_before_a_run_exists(tiny_teacher, tmp_path, loss, monkeypatch):
    from distill_nb import launch
    from distill_nb.preflight import preflight

    data = rare_piece_data(tmp_path / "data")
    base = dict(teacher=str(tiny_teacher), dataset=str(data), text_column="text", student_layers=2, max_steps=1,
                batch_size=8)
    monkeypatch.setenv("DISTILL_NB_RUNS", str(tmp_path / "runs"))
    config = DistillConfig(**base, student_vocab=16, **{loss: 1.0})
    with pytest.raises(ConfigError, match=r"student_vocab=16 drops tokens the training texts use \(\d+ distinct\).*"
                                          r"use student_vocab='task'"):
        preflight(config)
    with pytest.raises(ConfigError, match="drops tokens"):
        launch(config)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no failed run left behind
    preflight(DistillConfig(**base, student_vocab=16))  # logits only: trimming is fine
    preflight(DistillConfig(**base, student_vocab=64, **{loss: 1.0}))  # keeps every training token


def test_preflight_refuses_a_vocabulary_with_no_room_beyond_the_specials(tiny_teacher, tiny_dataset, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from distill_nb.preflight import preflight

    teacher = tmp_path / "many-specials"
    shutil.copytree(tiny_teacher, teacher)
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.add_special_tokens({"additional_special_tokens": ["good", "bad", "fun", "dull", "great", "awful", "movie",
                                                          "film", "story", "plot", "acting", "music", "best"]})
    tok.save_pretrained(teacher)
    config = DistillConfig(teacher=str(teacher), dataset=str(tiny_dataset), text_column="text", student_vocab=16)
    with pytest.raises(ConfigError, match=r"student_vocab=16 leaves no room beyond the teacher tokenizer's 18 special"):
        preflight(config)
    preflight(config.replace(student_vocab=24))


def test_masked_lm_models_are_refused(tmp_path):
    from conftest import make_tiny_bert
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = make_tiny_bert(tmp_path / "mlm", mlm=True)
    model, tok = AutoModelForMaskedLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="classifiers only"):
        vocab.trim_student(model, tok, TRAIN)


def test_task_vocabulary_comes_from_the_whole_training_split(tiny_teacher, tmp_path):
    """max_train_examples caps the steps' data, not the vocabulary: the kept rows are the teacher's embeddings,
    so a token of the training split the run never trains on still means what it meant to the teacher."""
    from transformers import AutoTokenizer

    from distill_nb.data import load_task
    from distill_nb.train import train

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [f"the movie was {w},{i % 2}" for i, w in enumerate(["good", "bad"] * 20 + ["great", "awful", "fun",
                                                                                      "dull"])]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "validation.csv").write_text("text,label\nthe movie was great,1\nthe movie was dull,0\n")
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    base = {"teacher": str(tiny_teacher), "dataset": str(folder), "text_column": "text", "student_layers": 2,
            "max_steps": 1, "batch_size": 4, "eval_every": 10, "checkpoint_every": 10, "student_vocab": "task",
            "max_train_examples": 8, "reason_probe": 0}
    from distill_nb.rundata import task_for

    seen = " ".join(task_for(DistillConfig(**base)).train.texts).split()
    assert not {"great", "awful", "fun", "dull"} <= set(seen)  # the run's 8 texts miss some of them
    train(DistillConfig(**base), tmp_path / "run", log=lambda *_: None)
    kept = set(AutoTokenizer.from_pretrained(tmp_path / "run" / "student").get_vocab())
    everything = vocab.choose_vocab(tok, load_task(str(folder), text_column="text").train.texts, "task")
    assert len(kept) == everything.size and {"great", "awful", "fun", "dull"} <= kept
    # explicit texts win
    train(DistillConfig(**base), tmp_path / "run2", vocab_texts=["the movie was good"], log=lambda *_: None)
    assert "great" not in AutoTokenizer.from_pretrained(tmp_path / "run2" / "student").get_vocab()


@pytest.mark.parametrize("change", [{"student_vocab": "task"}, {"student_vocab": 40}, {"reason_probe": 8, "eval_every": 2},
                                    {"checkpoint_every": 1}], ids=["task", "40-tokens", "probe", "checkpoints"])
def test_a_trimmed_run_trains_like_its_untrimmed_twin(tiny_teacher, tiny_dataset, tmp_path, change):
    """Trimming changes the embedding table and nothing else: with the same seed and dropout on, the losses
    step by step and the kept rows of the trained embeddings match the untrimmed run's (up to rounding).
    Building the smaller table used to initialise it randomly before copying the kept rows, which consumed the
    global RNG and shifted every dropout mask after it: the two runs trained differently from step 1. The same
    holds for the other settings that must not change what is learned (reason probe, evaluations, checkpoints)."""
    from transformers import AutoModelForSequenceClassification

    from distill_nb.runs import read_metrics
    from distill_nb.train import train

    base = {"teacher": str(tiny_teacher), "dataset": str(tiny_dataset), "text_column": "text", "student_layers": 2,
            "max_steps": 4, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10, "student_dropout": 0.1,
            "alpha_ce": 0.5, "reason_probe": 0}
    train(DistillConfig(**base), tmp_path / "base", log=lambda *_: None)
    train(DistillConfig(**{**base, **change}), tmp_path / "twin", log=lambda *_: None)
    losses = {n: [m["loss"] for m in read_metrics(tmp_path / n) if m["split"] == "train"] for n in ("base", "twin")}
    assert len(losses["base"]) == 4 and losses["twin"] == pytest.approx(losses["base"], rel=1e-5)
    base_student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base" / "student")
    twin = AutoModelForSequenceClassification.from_pretrained(tmp_path / "twin" / "student")
    trim = vocab.trim_of(twin)
    kept = list(trim.kept_ids) if trim else list(range(base_student.config.vocab_size))
    assert "student_vocab" not in change or len(kept) < base_student.config.vocab_size
    assert torch.allclose(twin.get_input_embeddings().weight, base_student.get_input_embeddings().weight[kept],
                          atol=1e-5)
    for (name, a), b in zip(base_student.named_parameters(), twin.parameters()):
        if "word_embeddings" not in name:
            assert torch.allclose(a, b, atol=1e-5), name
