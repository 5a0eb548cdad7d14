"""compress: int8 keeps predictions and shrinks the state; pruning zeros / removes what it says; models still run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import clear_error
from torch import nn

from distill_nb import compress


@pytest.fixture(scope="module")
def model_and_tok(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval(),
            AutoTokenizer.from_pretrained(tiny_teacher))


TEXTS = ["the movie was good", "awful boring film", "it was fine and fun", "the worst acting , a mess",
         "a wonderful story with great music", "not good , not bad", "i hated the slow plot",
         "really brilliant actors"] * 4
LABELS = [1, 0, 1, 0, 1, 0, 0, 1] * 4


@torch.inference_mode()
def _logits(model: nn.Module, tok, texts=TEXTS) -> torch.Tensor:
    return model(**tok(texts, padding=True, return_tensors="pt")).logits


def test_int8_same_predictions_and_smaller(model_and_tok):
    model, tok = model_and_tok
    before = copy.deepcopy(model.state_dict())
    q = compress.quantize_int8(model)
    assert q.method == "int8-dynamic"
    assert not any(type(m) is nn.Linear for m in q.model.modules())  # every Linear was swapped
    agree = (_logits(model, tok).argmax(-1) == _logits(q.model, tok).argmax(-1)).float().mean().item()
    assert agree >= 0.9
    fp32_bytes, fmt = compress.state_size_bytes(model)
    int8_bytes, qfmt = compress.state_size_bytes(q.model)
    assert (fmt, qfmt) == ("safetensors", "torch.save")
    assert int8_bytes < fp32_bytes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the source is untouched


def test_state_size_matches_save_pretrained(model_and_tok, tmp_path):
    model, _ = model_and_tok
    model.save_pretrained(tmp_path)
    on_disk = (tmp_path / "model.safetensors").stat().st_size
    assert abs(compress.state_size_bytes(model)[0] - on_disk) / on_disk < 0.02  # only the header differs


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_prune_zeros_the_requested_fraction(model_and_tok, scope):
    model, tok = model_and_tok
    p = compress.magnitude_prune(model, 0.6, scope=scope)
    targets = compress.encoder_linears(p.model)
    assert len(targets) == 4 * 6  # q, k, v, attention output, intermediate, output per layer
    assert p.details["encoder_sparsity"] == pytest.approx(0.6, abs=0.01)
    if scope == "layer":
        for m in targets:
            assert (m.weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)
    state = p.model.state_dict()
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in state)  # made permanent
    assert not any(hasattr(m, "weight_mask") for m in p.model.modules())
    assert compress.sparsity(model, only=compress.encoder_linears(model)) < 0.01  # source untouched
    # only the encoder's Linears: embeddings and classifier are as they were
    assert torch.equal(p.model.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert torch.equal(p.model.classifier.weight, model.classifier.weight)
    assert torch.isfinite(_logits(p.model, tok)).all()
    # dense storage: zeros do not shrink the file
    assert compress.state_size_bytes(p.model)[0] == compress.state_size_bytes(model)[0]


def test_magnitude_prune_rejects_bad_amount(model_and_tok):
    with pytest.raises(ValueError, match="amount"):
        compress.magnitude_prune(model_and_tok[0], 1.5)


def test_prune_heads_removes_heads_and_runs(model_and_tok):
    model, tok = model_and_tok
    h = compress.prune_heads(model, tok, TEXTS, LABELS, fraction=0.5)
    after = compress.heads_per_layer(h.model)
    assert sum(after) == 8 and h.details["removed"] == 8
    assert min(after) >= 1
    assert compress.heads_per_layer(model) == [4, 4, 4, 4]  # source untouched
    d = 32 // 4
    for layer, n in zip(h.model.bert.encoder.layer, after):
        assert layer.attention.self.query.weight.shape == (n * d, 32)
        assert layer.attention.output.dense.weight.shape == (32, n * d)
    assert h.details["params_after"] < h.details["params_before"]
    assert compress.state_size_bytes(h.model)[0] < compress.state_size_bytes(model)[0]
    assert _logits(h.model, tok).shape == (len(TEXTS), 2)


def test_removing_a_head_equals_silencing_it(model_and_tok):
    model, tok = model_and_tok
    silenced = copy.deepcopy(model)
    with torch.no_grad():  # head 1 of layer 2 contributes nothing when its output-projection columns are 0
        silenced.bert.encoder.layer[2].attention.output.dense.weight[:, 8:16] = 0
    removed = compress.remove_heads(copy.deepcopy(model), {2: [1]})
    assert compress.heads_per_layer(removed) == [4, 4, 3, 4]
    torch.testing.assert_close(_logits(removed, tok), _logits(silenced, tok), atol=1e-5, rtol=1e-4)


def test_head_importance_is_zero_for_a_silent_head(model_and_tok):
    model, tok = model_and_tok
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.bert.encoder.layer[0].attention.output.dense.weight[:, 0:8] = 0
    scores = compress.head_importance(silenced, tok, TEXTS, LABELS, batch_size=5)
    assert scores.shape == (4, 4)
    assert scores[0, 0] == 0
    assert (scores[0, 1:] > 0).all()
    torch.testing.assert_close(scores.norm(dim=1), torch.ones(4))  # normalised per layer


def test_remove_all_heads_of_a_layer_is_refused(model_and_tok):
    with pytest.raises(ValueError, match="keep one"):
        compress.remove_heads(copy.deepcopy(model_and_tok[0]), {0: [0, 1, 2, 3]})


def test_trim_vocabulary_sits_with_the_other_compressions(model_and_tok):
    model, tok = model_and_tok
    before = copy.deepcopy(model.state_dict())
    train_texts, eval_texts = TEXTS[:6], ["the movie was brilliant", "a dull film"]
    v = compress.trim_vocabulary(model, tok, train_texts, eval_texts=eval_texts)
    assert v.method == "vocab" and v.tokenizer is not None
    assert v.details["params_after"] < v.details["params_before"]
    assert compress.state_size_bytes(v.model)[0] < compress.state_size_bytes(model)[0]
    assert v.details["eval_outside"]["outside"] == 2  # "brilliant" and "dull" are not in the six texts
    assert "fall outside and read as [UNK]" in v.summary
    assert torch.allclose(_logits(v.model, v.tokenizer, train_texts), _logits(model, tok, train_texts), atol=1e-5)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())  # the source is untouched


@pytest.fixture(scope="module")
def int8_model(model_and_tok):
    return compress.quantize_int8(model_and_tok[0]).model


@pytest.mark.parametrize("call", ["head_importance", "prune_heads", "trim_vocabulary"])
@pytest.mark.parametrize("texts", [[], ()])
def test_no_texts_is_refused_not_nan(model_and_tok, call, texts):
    model, tok = model_and_tok
    run = {"head_importance": lambda: compress.head_importance(model, tok, texts),
           "prune_heads": lambda: compress.prune_heads(model, tok, texts, fraction=0.5),
           "trim_vocabulary": lambda: compress.trim_vocabulary(model, tok, texts)}[call]
    purpose = "vocabulary trimming" if call == "trim_vocabulary" else "head importance"
    clear_error(run, ValueError, [f"texts is empty: {purpose} needs example texts"])


def test_head_importance_labels_must_match_texts(model_and_tok):
    model, tok = model_and_tok
    clear_error(lambda: compress.head_importance(model, tok, TEXTS[:3], [0, 1]), ValueError,
                ["labels has 2 entries for 3 texts"])


@pytest.mark.parametrize("call, needle", [
    (lambda q, tok: compress.magnitude_prune(q, 0.5), "prune before quantize_int8"),
    (lambda q, tok: compress.magnitude_prune(q, 0.5, scope="layer"), "prune before quantize_int8"),
    (lambda q, tok: compress.prune_heads(q, tok, TEXTS[:4]), "prune heads before quantize_int8"),
    (lambda q, tok: compress.head_importance(q, tok, TEXTS[:4]), "prune heads before quantize_int8"),
    (lambda q, tok: compress.remove_heads(q, {0: [0]}), "prune heads before quantize_int8"),
    (lambda q, tok: compress.quantize_int8(q), "pass the float model to quantize_int8"),
], ids=["magnitude-global", "magnitude-layer", "prune-heads", "head-importance", "remove-heads", "quantize-twice"])
def test_an_int8_model_is_refused_with_the_order_to_use(model_and_tok, int8_model, call, needle):
    assert compress.is_quantized(int8_model) and not compress.is_quantized(model_and_tok[0])
    clear_error(lambda: call(int8_model, model_and_tok[1]), ValueError,
                ["the model is already quantized (int8)", needle])


@pytest.mark.parametrize("layer", [99, 4, -1, "0", 1.0])
def test_remove_heads_names_a_missing_layer(model_and_tok, layer):
    model = copy.deepcopy(model_and_tok[0])
    clear_error(lambda: compress.remove_heads(model, {layer: [0]}), ValueError,
                [f"layer {layer!r} does not exist (layers 0..3)"])
    assert compress.heads_per_layer(model) == [4, 4, 4, 4]  # nothing was removed before the error


def test_head_importance_and_latency_batches_read_a_pair_with_its_segment_ids(pair_teacher, monkeypatch):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )
    from transformers.models.bert.modeling_bert import BertModel

    from distill_nb.tables import PAIR_SEP

    model, tok = (AutoModelForSequenceClassification.from_pretrained(pair_teacher).eval(),
                  AutoTokenizer.from_pretrained(pair_teacher))
    first, second = ["the movie was good", "bad"], ["it is fun", "the plot was very dull"]
    pairs = [a + PAIR_SEP + b for a, b in zip(first, second)]
    batch = compress.texts_batch(tok, pairs, 32, torch.device("cpu"), model)
    assert batch["token_type_ids"].tolist() == tok(first, second, padding=True)["token_type_ids"]
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1,
                                                                  n_heads=2, hidden_dim=32))
    assert "token_type_ids" not in compress.texts_batch(tok, pairs, 32, torch.device("cpu"), distil)
    assert "token_type_ids" not in compress.texts_batch(tok, first, 32, torch.device("cpu"), model)  # single texts
    seen = []
    real = BertModel.forward
    monkeypatch.setattr(BertModel, "forward", lambda self, *a, **k: seen.append(k.get("token_type_ids") is not None)
                        or real(self, *a, **k))
    compress.head_importance(model, tok, pairs, [0, 1])
    assert seen and all(seen)


# --- head pruning only on importance it measured ---------------------------------------------------------------
@pytest.mark.parametrize("call", ["head_importance", "prune_heads"])
@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4", None])
def test_a_batch_size_that_measures_nothing_is_refused(model_and_tok, call, batch_size):
    model, tok = model_and_tok
    fn = getattr(compress, call)
    clear_error(lambda: fn(model, tok, TEXTS[:4], batch_size=batch_size), ValueError, [f"batch_size={batch_size!r}"])


@pytest.mark.parametrize("call", ["head_importance", "prune_heads"])
@pytest.mark.parametrize("max_length", [0, 7, -3, 10**6, 8.0, "64"])
def test_a_max_length_the_model_cannot_read_is_refused(model_and_tok, call, max_length):
    model, tok = model_and_tok
    fn = getattr(compress, call)
    clear_error(lambda: fn(model, tok, TEXTS[:4], max_length=max_length), ValueError, ["max_length"])


def _poisoned(model: nn.Module, value: float, rows: str) -> nn.Module:
    """A copy whose classifier outputs ``value`` at logit 0 on every row, or on the first row of each batch."""
    bad = copy.deepcopy(model)

    def hook(module, args, out):
        out = out.clone()
        out[:, 0] = torch.where(torch.arange(len(out)) == 0, value, out[:, 0]) if rows == "some" else value
        return out
    bad.classifier.register_forward_hook(hook)
    return bad


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rows", ["all", "some"])
@pytest.mark.parametrize("call", ["head_importance", "prune_heads"])
def test_nonfinite_importance_is_refused_not_pruned_on(model_and_tok, value, rows, call):
    model, tok = model_and_tok
    bad = _poisoned(model, value, rows)
    before = compress.heads_per_layer(bad)
    fn = getattr(compress, call)
    message = clear_error(lambda: fn(bad, tok, TEXTS[:8], batch_size=4), ValueError,
                          ["not finite", "NaN/inf", "No head was removed"])
    assert "of 8 texts" in message
    assert compress.heads_per_layer(bad) == before and not compress.pruned_heads(bad)


def test_nan_weights_are_refused_by_prune_heads(model_and_tok):
    model, tok = model_and_tok
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.classifier.weight.fill_(math.nan)
    clear_error(lambda: compress.prune_heads(bad, tok, TEXTS[:4], fraction=0.5), ValueError, ["not finite"])


def test_all_zero_importance_prunes_nothing(model_and_tok, monkeypatch):
    model, tok = model_and_tok
    monkeypatch.setattr(compress, "head_importance", lambda m, *a, **k: torch.zeros(4, 4))
    clear_error(lambda: compress.prune_heads(model, tok, TEXTS[:4], fraction=0.5), ValueError,
                ["importance is 0", "no head was removed"])


# --- a pruned_heads in config.json is checked before anything is built ---------------------------------------------
@pytest.mark.parametrize("value, needle", [
    ({"7": [0]}, "layer '7'"), ({"4": [0]}, "layer '4'"), ({"-1": [0]}, "layer '-1'"), ({"a": [1]}, "layer 'a'"),
    ({"": [1]}, "layer ''"), ({"1.0": [1]}, "layer '1.0'"), ({"0": ["x"]}, "['x']"), ({"0": [99]}, "[99]"),
    ({"0": [-1]}, "[-1]"), ({"0": [4]}, "[4]"), ({"0": [True]}, "[True]"), ({"0": [1.5]}, "[1.5]"),
    ({"0": [None]}, "[None]"), ({"0": 1}, "=1"), ({"0": "1"}, "='1'"), ({"0": None}, "=None"),
    ({"0": [0, 1, 2, 3]}, "all 4 heads"), ({"1": [3, 2, 1, 0, 0]}, "all 4 heads"), ([1, 2], "[1, 2] (list)"),
    ("x", "'x' (str)"), (5, "5 (int)"), (True, "True (bool)"),
])
def test_load_pruned_names_a_bad_pruned_heads_in_config_json(model_and_tok, tmp_path, value, needle):
    import json

    model, _ = model_and_tok
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pruned_heads"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = clear_error(lambda: compress.load_pruned(tmp_path), ValueError,
                          ["pruned_heads", str(tmp_path / "config.json"), needle])
    assert "{layer: [head, ...]}" in message


@pytest.mark.parametrize("value, expected", [({}, {}), ({"0": []}, {}), ({"1": [2, 0, 2]}, {1: [0, 2]}),
                                             ({0: [1], "0": [3]}, {0: [1, 3]})])
def test_pruned_heads_reads_what_remove_heads_and_json_write(model_and_tok, value, expected):
    model, _ = model_and_tok
    config = copy.deepcopy(model.config)
    config.pruned_heads = value
    assert compress.pruned_heads(config) == expected
