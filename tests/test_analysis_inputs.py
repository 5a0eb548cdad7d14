"""Analysis after training, probed with awkward inputs: compression, report/evaluation, attribution, widgets.

Each test names the probe finding it pins (C1..C23 of the analysis probe; B13 of the training probe).
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch
from conftest import clear_error
from torch import nn

from distill_nb import compress, evaluation, report
from distill_nb.attribution import Attribution, agreement, align, attribute, compare, faithfulness, sweep
from distill_nb.tables import PAIR_SEP

TEXTS = ["the movie was good", "awful boring film", "it was fine and fun", "the worst acting , a mess"]
LABELS = [1, 0, 1, 0]


@pytest.fixture(scope="module")
def model_tok(tiny_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval(),
            AutoTokenizer.from_pretrained(tiny_teacher))


def _logits(model: nn.Module, tok, texts=TEXTS) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt")).logits


def _nan_model(model: nn.Module) -> nn.Module:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.classifier.bias.fill_(float("nan"))  # every logit row NaN
    return broken


# --- C1/C2: head pruning ---------------------------------------------------------------------------------------
def test_c1_head_pruned_model_saves_and_loads_back(model_and_tok_copy, tmp_path):
    model, tok = model_and_tok_copy
    pruned = compress.prune_heads(model, tok, TEXTS, LABELS, fraction=0.5).model
    counts = compress.heads_per_layer(pruned)
    compress.remove_heads(pruned, {counts.index(max(counts)): [0]})  # a second cut, numbered as the heads are now
    assert compress.pruned_heads(pruned)  # transformers' own field, original numbering
    n = pruned.config.num_attention_heads
    assert all(len(h) < n for h in compress.pruned_heads(pruned).values())
    assert [n - len(compress.pruned_heads(pruned).get(i, [])) for i in range(4)] == compress.heads_per_layer(pruned)
    pruned.save_pretrained(tmp_path)
    loaded = compress.load_pruned(tmp_path)
    assert compress.heads_per_layer(loaded) == compress.heads_per_layer(pruned)
    torch.testing.assert_close(_logits(loaded, tok), _logits(pruned, tok))
    assert not loaded.training


@pytest.fixture()
def model_and_tok_copy(model_tok):
    return copy.deepcopy(model_tok[0]), model_tok[1]


@pytest.mark.parametrize("heads, needle", [({0: [1], 1: [0, 1, 2, 3]}, "keep one"),
                                           ({0: [1], 2: [7]}, "cannot remove [7]"),
                                           ({0: [1], 9: [0]}, "layer 9 does not exist")])
def test_c2_refused_remove_heads_leaves_the_model_as_it_was(model_and_tok_copy, heads, needle):
    model, _ = model_and_tok_copy
    before = copy.deepcopy(model.state_dict())
    clear_error(lambda: compress.remove_heads(model, heads), ValueError, [needle])
    assert compress.heads_per_layer(model) == [4, 4, 4, 4]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not compress.pruned_heads(model)


# --- C3/C4: int8 and bf16 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "input_x_gradient"])
def test_c3_gradient_methods_refuse_an_int8_model_clearly(model_tok, method):
    model, tok = model_tok
    q = compress.quantize_int8(model).model
    clear_error(lambda: attribute(q, tok, TEXTS[:1], method, n_steps=2), ValueError,
                ["quantized", "occlusion", "leave_one_out"])
    clear_error(lambda: compare(model, q, TEXTS[:1], teacher_tokenizer=tok, method=method, n_steps=2),
                ValueError, ["the student is quantized"])
    assert len(attribute(q, tok, TEXTS[:1], "occlusion")) == 1  # the forward-only methods still work


def test_c4_bf16_model_quantizes_to_a_runnable_model_and_prunes_heads(model_tok):
    model, tok = model_tok
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    q = compress.quantize_int8(bf16)
    assert "bfloat16" in q.summary
    assert torch.isfinite(_logits(q.model, tok)).all()
    h = compress.prune_heads(bf16, tok, TEXTS, LABELS, fraction=0.25)
    assert sum(compress.heads_per_layer(h.model)) == 12
    assert next(h.model.parameters()).dtype == torch.bfloat16


# --- C5: non-finite logits -------------------------------------------------------------------------------------
def test_c5_nan_logits_count_as_wrong_in_evaluation(model_tok):
    model, tok = model_tok
    from distill_nb.data import encode

    encoded = encode(tok, TEXTS, 32)
    teacher_logits = _nan_model(model)(**tok(TEXTS, padding=True, return_tensors="pt")).logits.detach()
    record = evaluation.evaluate_classifier(_nan_model(model), encoded, tok.pad_token_id, torch.tensor([0] * 4),
                                            teacher_logits, 0.5, torch.device("cpu"), contextlib.nullcontext, 1)
    # argmax over NaN is 0 and every label is 0: before, this read accuracy 1.0 and agreement 1.0
    assert record["accuracy"] == 0.0 and record["agreement"] == 0.0 and record["retention"] == 0.0
    assert record["nonfinite"] == 4
    pred = evaluation.predictions(torch.tensor([[1.0, 2.0], [math.inf, 0.0], [math.nan, 1.0]]))
    assert pred.tolist() == [1, evaluation.NO_PREDICTION, evaluation.NO_PREDICTION]


def test_c5_nan_student_in_the_report_is_wrong_and_said_so(model_tok):
    model, tok = model_tok
    rep = report.compare({"teacher": (model, tok, None), "nan": (_nan_model(model), tok, None)}, TEXTS,
                         [0, 0, 0, 0], repeats=1)
    assert rep.rows[1].accuracy == 0.0 and rep.retention(rep.rows[1]) in (0.0, None)
    assert any("nan: 4 of 4 eval texts gave NaN/inf logits" in n for n in rep.notes), rep.notes


# --- C6/C10/C11/C13/C15: report.compare inputs -------------------------------------------------------------------
@pytest.mark.parametrize("labels, needle", [([1], "labels has 1 entries for 4 texts"),
                                            ([1, 0], "labels has 2 entries"),
                                            (["pos", "neg", "pos", "neg"], "labels[0]='pos'"),
                                            ([7, 0, 1, 0], "labels[0]=7 is out of range"),
                                            ([1.7, 0, 1, 0], "labels[0]=1.7"),
                                            ([True, 0, 1, 0], "labels[0]=True")])
def test_c6_report_refuses_labels_that_are_not_one_class_id_per_text(model_tok, labels, needle):
    model, tok = model_tok
    clear_error(lambda: report.compare({"t": (model, tok, None)}, TEXTS, labels, repeats=1), ValueError, [needle])


def _float_ids():
    import pandas as pd

    floats = [float(y) for y in LABELS]
    return {"list": floats, "numpy-float64": np.array(floats), "numpy-float32": np.array(floats, dtype=np.float32),
            "numpy-scalars": [np.float64(y) for y in LABELS], "torch-float": torch.tensor(floats),
            "torch-0d": [torch.tensor(y) for y in floats], "pandas-with-nan-elsewhere": pd.Series(
                [*floats, math.nan])[:4], "mixed": [1, 0.0, np.int64(1), -0.0]}


@pytest.mark.parametrize("kind", list(_float_ids()))
def test_whole_float_labels_are_class_ids_for_accuracy_and_head_importance(model_tok, kind):
    """pandas and numpy store ids as floats (1.0) once a column held a NaN: the same ids, the same accuracy."""
    model, tok = model_tok
    labels = _float_ids()[kind]
    assert evaluation.check_labels(labels, 4, 2) == LABELS
    assert report.accuracy(model, tok, TEXTS, labels) == report.accuracy(model, tok, TEXTS, LABELS)
    torch.testing.assert_close(compress.head_importance(model, tok, TEXTS, labels),
                               compress.head_importance(model, tok, TEXTS, LABELS))


@pytest.mark.parametrize("bad", [1.5, -0.5, math.nan, math.inf, -math.inf, np.float64(0.25), torch.tensor(0.5),
                                 "1", "1.0", True, np.True_, None], ids=repr)
def test_labels_that_are_no_whole_number_are_refused_naming_value_and_position(model_tok, bad):
    model, tok = model_tok
    labels = [1, 0, bad, 0]
    shown = f"labels[2]={bad!r}"
    for call in (lambda: report.accuracy(model, tok, TEXTS, labels),
                 lambda: compress.head_importance(model, tok, TEXTS, labels)):
        clear_error(call, ValueError, [shown, "pass one integer class id per text"])


def test_c10_c11_report_keeps_train_mode_and_takes_series_and_arrays(model_tok):
    import pandas as pd

    model, tok = model_tok
    teacher, student = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    frame = pd.DataFrame({"text": TEXTS, "label": LABELS}, index=[10, 11, 12, 13])
    for texts, labels in ((frame["text"], frame["label"]), (np.array(TEXTS), np.array(LABELS))):
        rep = report.compare({"t": (teacher, tok, None), "s": (student, tok, None)}, texts, labels, repeats=1)
        assert rep.rows[0].accuracy is not None
        assert teacher.training and student.training


def test_c13_report_counts_an_int8_models_packed_weights(model_tok):
    model, tok = model_tok
    q = compress.quantize_int8(model)
    rep = report.compare({"fp32": (model, tok, None), "int8": (q.model, tok, None)}, TEXTS, None, repeats=1)
    assert rep.rows[1].params == rep.rows[0].params == q.details["total_params"]


def test_c15_report_checks_positions_and_repeats_before_running(model_tok):
    from transformers import BertConfig, BertForSequenceClassification

    model, tok = model_tok
    small = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=32)).eval()
    clear_error(lambda: report.compare({"t": (model, tok, None), "s": (small, tok, None)}, TEXTS, LABELS,
                                       repeats=1), ValueError, ["max_length=128", "32 positions"])
    for repeats in (0, True, 1.5):
        clear_error(lambda r=repeats: report.compare({"t": (model, tok, None)}, TEXTS, LABELS, repeats=r), ValueError,
                    [f"repeats={repeats!r}"])
    long_texts = ["the movie was good " * 80] * len(TEXTS)  # 320 words: past the 32 positions, even past 128
    for call in (report.accuracy, report.evaluate):
        clear_error(lambda c=call: c(small, tok, long_texts, LABELS, max_length=512), ValueError,
                    ["max_length=512", "32 positions"])
    assert report.accuracy(small, tok, long_texts, LABELS, max_length=32) >= 0  # truncated to what it reads


# --- C7: sweep labels -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, needle", [(["pos", "neg", "pos", "neg"], "labels[0]='pos'"),
                                            ([1.7, 0, 1, 0], "labels[0]=1.7"),
                                            ([math.nan, 0, 1, 0], "labels[0]=nan"),
                                            ([5, 0, 1, 0], "labels[0]=5 is out of range"),
                                            ([-1, 0, 1, 0], "labels[0]=-1 is out of range")])
def test_c7_sweep_checks_labels_before_attributing(model_tok, labels, needle):
    model, tok = model_tok
    calls = []
    clear_error(lambda: sweep(model, model, TEXTS, labels, teacher_tokenizer=tok, method="saliency",
                              faithfulness_steps=None, progress=lambda d, n: calls.append(d)), ValueError, [needle])
    assert calls == []  # refused up front, not after the whole sweep


# --- C8: truncation ---------------------------------------------------------------------------------------------
def _attr(text: str, spans: list[tuple[int, int]], scores: list[float], first_id: int) -> Attribution:
    n = len(spans)
    return Attribution(text=text, tokens=("[CLS]", *(text[s:e] for s, e in spans), "[SEP]"),
                       token_ids=(2, *range(first_id, first_id + n), 3), word_ids=(None, *range(n), None),
                       offsets=((0, 0), *spans, (0, 0)), scores=np.array([0.0, *scores, 0.0]), label=0,
                       probs=np.array([0.5, 0.5]), target=0, delta=None, method="saliency")


def test_c8_word_alignment_leaves_out_what_only_one_model_read():
    text = "movie good great fun"
    teacher = _attr(text, [(0, 5), (6, 10), (11, 16), (17, 20)], [1.0, 2.0, 3.0, 4.0], 100)
    student = _attr(text, [(0, 5), (6, 9)], [1.0, 0.5], 200)  # truncated inside "good"
    alignment, units, t, s = align(teacher, student)
    assert (alignment, units) == ("word", ["movie"])
    from distill_nb.attribution.metrics import unread_units

    assert unread_units(teacher, student) == 3
    assert t.tolist() == [1.0] and s.tolist() == [1.0]


# --- C9: positions of a RoBERTa-style model ----------------------------------------------------------------------
def test_c9_occlusion_and_faithfulness_keep_roberta_positions(model_tok):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    _, tok = model_tok
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=130, num_labels=2, pad_token_id=tok.pad_token_id, type_vocab_size=1)).eval()
    seen = []
    hook = model.roberta.embeddings.position_embeddings.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].clone()))
    try:
        attrs = attribute(model, tok, ["good movie bad awful"], "occlusion")
        faithfulness(model, tok, attrs, top_k=2, steps=4)
    finally:
        hook.remove()
    expected = torch.arange(1, 7) + tok.pad_token_id  # [CLS] 4 words [SEP], numbered after the padding id
    rows = torch.cat([p.reshape(-1, p.shape[-1]) for p in seen])
    assert len(rows) > 10 and (rows == expected).all(), rows


# --- C12/C17: widgets -------------------------------------------------------------------------------------------
def test_c12_error_analysis_takes_array_and_series_labels(model_tok):
    import pandas as pd

    from distill_nb.widgets import AttributionExplorer, ErrorAnalysis

    model, tok = model_tok
    ex = AttributionExplorer(model, model, teacher_tokenizer=tok)
    for labels in (np.array(LABELS), pd.Series(LABELS)):
        ea = ErrorAnalysis(ex, texts=TEXTS, labels=labels, n_steps=2)
        assert [v for _, v in ea.label_filter.options] == [-1, 0, 1]


def test_c17_explorer_mirrors_method_and_says_what_is_missing(model_tok):
    from distill_nb.widgets import AttributionExplorer

    model, tok = model_tok
    ex = AttributionExplorer(model, model, teacher_tokenizer=tok, examples=TEXTS, n_steps=2)
    ex.method = "saliency"
    assert ex.method_dropdown.value == "saliency"
    clear_error(lambda: setattr(ex, "method", "integrated_grads"), ValueError, ["integrated_grads", "choose"])
    ex.explain("\u200b")  # refused inside: the status must not stay at "attributing with …"
    assert ex.error and "attributing" not in ex.status.value
    lone = AttributionExplorer(model, None, teacher_tokenizer=tok, examples=TEXTS)
    assert lone.explain() is None and "no student" in lone.error


# --- C16: texts with nothing to read ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x01", " \u2028 ", "\ufffd"])
def test_c16_a_text_without_tokens_is_refused(model_tok, text):
    model, tok = model_tok
    clear_error(lambda: attribute(model, tok, ["fine", text], "saliency"), ValueError, ["texts[1]", "word"])
    clear_error(lambda: compare(model, model, [text], teacher_tokenizer=tok, method="saliency"), ValueError,
                ["texts[0]"])


# --- C18: class counts ------------------------------------------------------------------------------------------
def test_c18_class_mismatch_named_before_anything_is_attributed(tmp_path, model_tok, monkeypatch):
    from conftest import make_tiny_bert
    from transformers import AutoModelForSequenceClassification

    from distill_nb.attribution import comparison

    three = AutoModelForSequenceClassification.from_pretrained(make_tiny_bert(tmp_path / "t3", labels=3)).eval()
    model, tok = model_tok
    monkeypatch.setattr(comparison, "attribute", lambda *a, **k: pytest.fail("attributed before the check"))
    for target in (None, 2):
        clear_error(lambda t=target: compare(three, model, TEXTS[:2], teacher_tokenizer=tok, target=t), ValueError,
                    ["teacher has 3 classes but the student has 2"])
    clear_error(lambda: compare(model, model, TEXTS[:2], teacher_tokenizer=tok, target=5), ValueError,
                ["target 5 is out of range", "2 classes"])


# --- C19: smaller argument checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", ["0.5", None, torch.tensor(0.5), math.nan, 1.0, True])
def test_c19_prune_amounts_that_are_not_fractions_are_refused(model_tok, amount):
    clear_error(lambda: compress.magnitude_prune(model_tok[0], amount), ValueError, ["amount="])
    clear_error(lambda: compress.prune_heads(model_tok[0], model_tok[1], TEXTS, fraction=amount), ValueError,
                ["fraction="])


def test_c19_attribute_arguments(model_tok):
    import pandas as pd

    model, tok = model_tok
    clear_error(lambda: attribute(model, tok, TEXTS[:1], n_steps=True), ValueError, ["n_steps=True"])
    clear_error(lambda: attribute(model, tok, {"a": "good"}), TypeError, ["dict"])
    for target in (pd.Series([0, 1, None]), pd.Series([0, 1, None], dtype="Int64")):
        got = attribute(model, tok, TEXTS[:3], "saliency", target)
        assert [a.target for a in got[:2]] == [0, 1]
    clear_error(lambda: attribute(model, tok, TEXTS[:2], "saliency", pd.Series([0.5, None])), ValueError,
                ["target[0]=0.5"])
    result = sweep(model, model, TEXTS[:2], teacher_tokenizer=tok, method="saliency", faithfulness_steps=None)
    clear_error(lambda: result.plot(["spearmann"]), ValueError, ["'spearmann'", "spearman"])


def test_c19_head_pruning_other_layouts_says_what_to_use(tmp_path, model_tok):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    _, tok = model_tok
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1,
                                                                 n_heads=2, hidden_dim=32)).eval()
    clear_error(lambda: compress.prune_heads(model, tok, TEXTS), ValueError, ["magnitude_prune", "quantize_int8"])


# --- C20: sizes -------------------------------------------------------------------------------------------------
def test_c20_views_of_one_storage_each_count():
    from safetensors.torch import save

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            big = torch.randn(3, 64, 64)
            self.q, self.k, self.v = (nn.Parameter(big[i]) for i in range(3))

    model = Fused()
    real = len(save({k: v.detach().clone() for k, v in model.state_dict().items()}))
    assert compress.state_size_bytes(model) == (real, "safetensors")
    tied = nn.Module()
    tied.a = nn.Linear(8, 8, bias=False)
    tied.b = nn.Linear(8, 8, bias=False)
    tied.b.weight = tied.a.weight  # tied: stored once
    assert compress.state_size_bytes(tied)[0] < len(save({"a": torch.zeros(8, 8), "b": torch.zeros(8, 8)}))


# --- C22: a vocabulary-trimmed student --------------------------------------------------------------------------
def test_c22_trimmed_student_gets_its_tokenizer_or_a_clear_refusal(model_tok):
    model, tok = model_tok
    trimmed = compress.trim_vocabulary(model, tok, ["the movie was good", "a boring film"])
    texts = ["the a an and or but", "awful plot , great acting"]
    derived = compare(model, trimmed.model, texts, teacher_tokenizer=tok, method="saliency", faithfulness_steps=None)
    own = compare(model, trimmed.model, texts, teacher_tokenizer=tok, student_tokenizer=trimmed.tokenizer,
                  method="saliency", faithfulness_steps=None)
    for a, b in zip(derived, own):
        assert a.student.tokens == b.student.tokens and np.allclose(a.student.probs, b.student.probs)
    assert "an" not in derived[0].student.tokens  # the student reads [UNK] there, not the teacher's ids
    for call in (lambda: attribute(trimmed.model, tok, texts, "saliency"),
                 lambda: compare(model, trimmed.model, texts, teacher_tokenizer=tok, student_tokenizer=tok),
                 lambda: report.compare({"t": (model, tok, None), "s": (trimmed.model, tok, None)}, texts, None,
                                        repeats=1)):
        clear_error(call, ValueError, ["vocabulary-trimmed", "tokenizer"])


# --- C23: text pairs outside attribute() ------------------------------------------------------------------------
def test_c23_head_importance_and_latency_encode_pairs_as_training_does(model_tok):
    from distill_nb.data import encode

    model, tok = model_tok
    texts = ["the movie was good" + PAIR_SEP + "the film was awful", "fine" + PAIR_SEP + "bad"]
    expected = sorted(tuple(ids) for ids in encode(tok, texts, 32))
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                           with_kwargs=True)
    try:
        compress.head_importance(model, tok, texts, [1, 0], max_length=32)
        report.interleaved_latency([(model, tok)], texts, batch_size=2, repeats=1, max_length=32)
    finally:
        hook.remove()
    assert len(seen) >= 2
    for batch in seen:
        rows = sorted(tuple(r[r != tok.pad_token_id].tolist()) for r in batch)
        assert rows == expected, [tok.convert_ids_to_tokens(list(r)) for r in rows]


# --- B13: top-k overlap on short texts --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5])
def test_b13_topk_overlap_is_nan_with_top_k_or_fewer_units(n):
    t = np.arange(n, dtype=float)
    assert math.isnan(agreement(t, t[::-1].copy(), 5)["topk_jaccard"])  # reversed ranking: not "1.0"
    assert math.isnan(agreement(t, t.copy(), 5)["topk_jaccard"])
    assert not math.isnan(agreement(t, t[::-1].copy(), 5)["spearman"])
    assert agreement(np.arange(6.0), np.arange(6.0), 5)["topk_jaccard"] == 1.0
