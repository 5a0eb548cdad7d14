"""Attribution: analytic checks on tiny offline models (completeness, self-agreement, a keyword model)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_nb.attribution import (
    METHODS,
    Attribution,
    agreement,
    align,
    attribute,
    common_segments,
    compare,
    faithfulness,
    sweep,
)
from distill_nb.attribution.methods import check_targets
from distill_nb.config import MIN_MAX_LENGTH

TEXTS = ["the movie was good", "a very boring and dull plot , really", "it's great!",
         "what a wonderful film", "the acting was awful"]


def load(path: Path, sharpen_seed: int | None = 0):
    """Model + fast tokenizer; re-draw weights with std 0.3 so logits are not all ~0 (random init is 0.02)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if sharpen_seed is not None:
        gen = torch.Generator().manual_seed(sharpen_seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return load(tiny_teacher)


class KeywordModel(torch.nn.Module):
    """logit1 - logit0 = 4 * (number of attended ``keyword`` tokens) - 2: the answer hinges on one token."""

    def __init__(self, vocab_size: int, keyword_id: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 1)
        with torch.no_grad():
            self.emb.weight.zero_()
            self.emb.weight[keyword_id] = 4.0

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, input_ids, attention_mask):
        z = (self.emb(input_ids)[..., 0] * attention_mask).sum(1) - 2.0  # (B,)
        return torch.stack([torch.zeros_like(z), z], dim=-1)  # (B, 2)


class FlipOn(torch.nn.Module):
    """``model`` with its two logits swapped for texts containing ``token_id``: a forced disagreement."""

    def __init__(self, model, token_id: int):
        super().__init__()
        self.model, self.token_id = model, token_id

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        flip = ((input_ids == self.token_id) & attention_mask.bool()).any(1, keepdim=True)  # (B, 1)
        return torch.where(flip, logits.flip(-1), logits)


def letters_bert(folder: Path, seed: int = 1):
    """A tiny BERT whose vocabulary has only letters and ##letters: every word splits differently."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "!", "?", "'"] + letters + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return load(folder, sharpen_seed=seed)


def test_self_comparison_agrees_perfectly(teacher):
    model, tok = teacher
    for method in ("integrated_gradients", "leave_one_out"):
        for c in compare(model, model, TEXTS, teacher_tokenizer=tok, method=method, n_steps=8, top_k=3):
            assert c.alignment == "token"
            assert c.metrics["spearman"] == pytest.approx(1.0)
            assert c.metrics["kendall"] == pytest.approx(1.0)
            assert c.metrics["topk_jaccard"] == 1.0
            assert c.metrics["sign_agreement"] == 1.0
            assert c.metrics["l1_distance"] == pytest.approx(0.0, abs=1e-9)
            assert c.metrics["prediction_agree"] == 1.0 and c.metrics["prob_diff"] == 0.0


def test_integrated_gradients_completeness(teacher):
    model, tok = teacher
    attrs = attribute(model, tok, TEXTS, n_steps=64)
    for a in attrs:
        ids = torch.tensor([a.token_ids])
        baseline = torch.where(torch.from_numpy(a.special)[None], ids, torch.full_like(ids, tok.pad_token_id))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            gap = float(model(input_ids=ids, attention_mask=mask).logits[0, a.target]
                        - model(input_ids=baseline, attention_mask=mask).logits[0, a.target])
        assert abs(gap) > 0.05, "the check is only meaningful when the logit moves"
        assert a.scores.sum() == pytest.approx(gap, abs=0.02 * max(1.0, abs(gap)))
        assert abs(a.delta) < 0.02 * max(1.0, abs(gap))
        assert a.scores[a.special].tolist() == [0.0] * int(a.special.sum())


def test_batching_and_padding_do_not_change_scores(teacher):
    model, tok = teacher
    one = attribute(model, tok, TEXTS, n_steps=16, batch_size=1)
    many = attribute(model, tok, TEXTS, n_steps=16, batch_size=8, internal_batch_size=20)
    for a, b in zip(one, many):
        assert a.text == b.text and a.tokens == b.tokens and a.target == b.target
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4 * max(1.0, np.abs(a.scores).max()))


@pytest.mark.parametrize("method", ["input_x_gradient", "saliency"])
def test_gradient_methods_default_to_batches_of_16_on_cpu_with_the_same_scores(teacher, method):
    """One sequence per text: the CPU default batches 16 texts per call (2 left the probe waiting on per-call
    overhead), and the scores are those of one text at a time. IG keeps the small CPU default (n_steps per text)."""
    from distill_nb.attribution.methods import batch_sizes

    cpu = torch.device("cpu")
    assert batch_sizes(cpu, None, None, method)[0] == 16 and batch_sizes(cpu, None, None, "integrated_gradients")[0] == 2
    assert batch_sizes(cpu, 3, None, method)[0] == 3  # a given size wins
    model, tok = teacher
    texts = TEXTS * 4  # more than one default batch
    default = attribute(model, tok, texts, method)
    one = attribute(model, tok, texts, method, batch_size=1)
    for a, b in zip(default, one):
        assert a.tokens == b.tokens and a.target == b.target
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5 * max(1.0, np.abs(b.scores).max()))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_finite_score_per_token(teacher, method):
    model, tok = teacher
    attrs = attribute(model, tok, TEXTS[:3], method, target=1, batch_size=2, n_steps=4)
    for a in attrs:
        assert a.method == method and a.target == 1 and a.scores.shape == (len(a.tokens),)
        assert np.isfinite(a.scores).all() and (a.scores[a.special] == 0).all()
        assert np.isclose(a.probs.sum(), 1.0) and a.label == int(a.probs.argmax())
        assert (a.delta is not None) == (method == "integrated_gradients")
        assert len(a.word_scores) == len(a.words)
    if method == "saliency":
        assert all((a.scores >= 0).all() for a in attrs)


def test_model_left_in_eval_mode_without_parameter_grads(teacher):
    model, tok = teacher
    model.train()
    frozen = model.classifier.bias
    frozen.requires_grad_(False)
    try:
        attribute(model, tok, TEXTS[:2], n_steps=4)
        assert model.training, "the caller's train/eval mode is restored"
        assert all(p.grad is None for p in model.parameters())
        assert not frozen.requires_grad and model.classifier.weight.requires_grad
    finally:
        model.eval()
        frozen.requires_grad_(True)


def test_common_segments_merge_overlapping_words():
    assert common_segments([(0, 2), (2, 3), (3, 4), (5, 7)], [(0, 4), (5, 7)]) == [(0, 4), (5, 7)]
    assert common_segments([(0, 3), (4, 9)], [(0, 3), (4, 6), (6, 9)]) == [(0, 3), (4, 9)]


def test_word_alignment_sums_tokens_across_different_pretokenisers():
    # teacher splits "it's" into it / ' / s, student keeps "it's" as one word of 4 letter tokens
    text = "it's ok"

    def make(tokens, words, offsets, scores):
        return Attribution(text, tuple(tokens), tuple(range(len(tokens))), tuple(words), tuple(offsets),
                           np.array(scores, float), 1, np.array([0.3, 0.7]), 1, None, "integrated_gradients")

    t = make(["[CLS]", "it", "'", "s", "ok", "[SEP]"], [None, 0, 1, 2, 3, None],
             [(0, 0), (0, 2), (2, 3), (3, 4), (5, 7), (0, 0)], [0, 1.0, 0.5, 0.25, -1.0, 0])
    s = make(["[CLS]", "i", "##t", "##'", "##s", "o", "##k", "[SEP]"], [None, 0, 0, 0, 0, 1, 1, None],
             [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (0, 0)], [0, 1, 1, 1, 1, 2, 2, 0])
    s = Attribution(**{**s.__dict__, "token_ids": tuple(range(100, 108))})
    alignment, units, ts, ss = align(t, s)
    assert alignment == "word" and units == ["it's", "ok"]
    np.testing.assert_allclose(ts, [1.75, -1.0])
    np.testing.assert_allclose(ss, [4.0, 4.0])


def test_different_tokenizers_compare_at_word_level(teacher, tmp_path):
    model, tok = teacher
    student, student_tok = letters_bert(tmp_path / "letters")
    comps = compare(model, student, TEXTS, teacher_tokenizer=tok, student_tokenizer=student_tok, n_steps=16)
    for c in comps:
        assert c.alignment == "word"
        assert len(c.student.tokens) > len(c.teacher.tokens)  # letters: more tokens per word
        assert list(c.units) == c.teacher.words == c.student.words
        np.testing.assert_allclose(c.teacher_scores, c.teacher.word_scores, atol=1e-6)
        np.testing.assert_allclose(c.student_scores, c.student.word_scores, atol=1e-6)
        assert c.student.target == c.teacher.target  # default target: the teacher's prediction
        assert -1.0 <= c.metrics["spearman"] <= 1.0
    # the same vocabulary from a second tokenizer object still compares token by token, perfectly
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "letters")
    same = compare(student, student, TEXTS[:2], teacher_tokenizer=student_tok, student_tokenizer=again,
                   n_steps=8, faithfulness_steps=None)
    assert [c.alignment for c in same] == ["token", "token"]
    assert all(c.metrics["spearman"] == pytest.approx(1.0) for c in same)


def test_faithfulness_on_a_model_that_depends_on_one_token(teacher):
    _, tok = teacher
    keyword = tok.convert_tokens_to_ids("good")
    model = KeywordModel(tok.vocab_size, keyword)
    texts = ["the movie was really good fun", "good acting , a dull story and a slow plot"]
    for method in ("integrated_gradients", "input_x_gradient", "occlusion", "leave_one_out"):
        attrs = attribute(model, tok, texts, method, n_steps=16)
        for a in attrs:
            assert a.target == 1 and a.tokens[int(np.argmax(a.scores))] == "good", method
            assert a.scores.sum() == pytest.approx(4.0, abs=1e-4), method  # linear model: exact
    attrs = attribute(model, tok, texts, n_steps=16)
    assert all(abs(a.delta) < 1e-5 for a in attrs)
    p_with, p_without = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))
    for f in faithfulness(model, tok, attrs, top_k=1, steps=5):
        assert f.comprehensiveness == pytest.approx(p_with - p_without, abs=1e-5)  # high: ~0.76
        assert f.sufficiency == pytest.approx(0.0, abs=1e-5)  # keeping "good" alone is enough
        assert f.deletion[0] == pytest.approx(p_with) and f.deletion[-1] == pytest.approx(p_without)
        assert (np.diff(f.deletion) <= 1e-6).all()
        assert f.deletion_auc < p_with


def test_sweep_puts_forced_prediction_disagreement_first(teacher):
    model, tok = teacher
    student = FlipOn(model, tok.convert_tokens_to_ids("awful"))
    labels = [1, 0, 1, 1, 0]
    result = sweep(model, student, TEXTS, labels, teacher_tokenizer=tok, batch_size=2, n_steps=8, top_k=3)
    flipped = TEXTS.index("the acting was awful")
    assert result.order[0] == flipped
    assert result.most_divergent(1)[0].text == TEXTS[flipped]
    frame = result.to_frame()
    assert list(frame["text"]) == TEXTS and len(result) == len(TEXTS)
    assert frame.loc[flipped, "divergence_rank"] == 1 and frame.loc[flipped, "prediction_agree"] == 0.0
    others = frame.drop(index=flipped)
    assert (others["prediction_agree"] == 1.0).all() and np.allclose(others["spearman"], 1.0)
    assert sorted(frame["divergence_rank"]) == list(range(1, len(TEXTS) + 1))
    for column in ("label", "teacher_pred", "student_pred", "teacher_prob", "student_prob", "kendall",
                   "topk_jaccard", "sign_agreement", "l1_distance", "prob_diff", "teacher_comprehensiveness",
                   "student_sufficiency", "teacher_deletion_auc"):
        assert column in frame.columns
    assert 0.0 <= result.summary()["teacher_accuracy"] <= 1.0

    swapped = copy.deepcopy(model)
    with torch.no_grad():
        swapped.classifier.weight.copy_(model.classifier.weight.flip(0))
        swapped.classifier.bias.copy_(model.classifier.bias.flip(0))
    every = sweep(model, swapped, TEXTS[:3], teacher_tokenizer=tok, n_steps=4, faithfulness_steps=None)
    assert all(c.metrics["prediction_agree"] == 0.0 for c in every)


def test_bad_inputs_raise_clear_errors(teacher):
    model, tok = teacher
    with pytest.raises(ValueError, match="texts is empty"):
        attribute(model, tok, [])
    with pytest.raises(ValueError, match="'shap'.*integrated_gradients.*leave_one_out"):
        attribute(model, tok, TEXTS, method="shap")
    with pytest.raises(ValueError, match="'lime'.*occlusion"):
        compare(model, model, TEXTS, teacher_tokenizer=tok, method="lime")
    with pytest.raises(ValueError, match="texts is empty"):
        sweep(model, model, [], teacher_tokenizer=tok)
    with pytest.raises(ValueError, match="labels has 1 entries for 5 texts"):
        sweep(model, model, TEXTS, [1], teacher_tokenizer=tok)
    with pytest.raises(ValueError, match="target 7 is out of range.*2 classes"):
        attribute(model, tok, TEXTS, target=7)
    with pytest.raises(ValueError, match="n_steps=0"):
        attribute(model, tok, TEXTS, n_steps=0)
    keyword = KeywordModel(tok.vocab_size, tok.convert_tokens_to_ids("good"))
    opaque = torch.nn.Module()  # no get_input_embeddings(): only the gradient-free methods apply
    opaque.forward = keyword.forward
    with pytest.raises(ValueError, match="'saliency' needs model.get_input_embeddings.*'leave_one_out'"):
        attribute(opaque, tok, TEXTS, method="saliency")
    assert attribute(opaque, tok, ["the good"], method="leave_one_out")[0].scores.tolist() == [0, 0, 4, 0]
    three = copy.deepcopy(model)
    three.classifier = torch.nn.Linear(model.config.hidden_size, 3)
    with pytest.raises(ValueError, match="teacher has 2 classes but the student has 3"):
        compare(model, three, TEXTS[:1], teacher_tokenizer=tok, n_steps=2)


def test_plots_and_html(teacher):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    model, tok = teacher
    result = sweep(model, model, TEXTS, teacher_tokenizer=tok, n_steps=4)
    c = result[-1]
    fig = c.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # teacher, student, diff + colorbar
    assert isinstance(c.scatter(), Figure) and isinstance(c.teacher.plot(), Figure)
    assert isinstance(result.plot(), Figure) and isinstance(result.scatter(), Figure)
    page = c.to_html()
    assert "<script" not in page
    tricky = dataclasses.replace(c, units=("<b>x</b>",) + c.units[1:]).to_html()
    assert "&lt;b&gt;x&lt;/b&gt;" in tricky and "<b>" not in tricky
    assert page.count("<tr>") == 3 and "spearman" in page
    assert "<script" not in c.teacher.to_html() and c._repr_html_() == page


NAN_WHEN_CONSTANT = ("spearman", "kendall", "topk_jaccard")


@pytest.mark.parametrize("teacher_scores, student_scores", [
    ([0, 0, 0, 0, 0, 1, 2, 3.0], [0.0] * 8),   # a collapsed (all-zero) student, teacher evidence at the end
    ([3, 2, 1, 0, 0, 0, 0, 0.0], [0.0] * 8),   # ... at the start: tie order used to give 1.0 here, 0.0 above
    ([0.0] * 8, [3, 2, 1, 0, 0, 0, 0, 0.0]),   # the teacher flat instead
    ([1.0] * 4, [2.0] * 4),                    # both flat, different constants
    ([0.5, 0.5, 0.5], [0.1, -0.2, 0.9]),       # a constant, non-zero side
    ([2.0], [-1.0]),                           # a single unit ranks nothing
], ids=["zero-student-end", "zero-student-start", "zero-teacher", "two-constants", "constant-teacher", "one-unit"])
def test_agreement_of_a_constant_vector_is_nan_not_its_tie_order(teacher_scores, student_scores):
    t, s = np.array(teacher_scores), np.array(student_scores)
    for top_k in (1, 3):
        m = agreement(t, s, top_k)
        assert all(math.isnan(m[k]) for k in NAN_WHEN_CONSTANT), m
        # sign agreement: NaN only when a side has no signs at all (all zero)
        assert math.isnan(m["sign_agreement"]) == (not t.any() or not s.any()), m
        assert 0.0 <= m["l1_distance"] <= 2.0


def test_agreement_rule_identical_vectors_agree_and_ranked_ones_are_measured():
    flat = np.zeros(5)
    assert agreement(flat, flat.copy(), 3) == {"spearman": 1.0, "kendall": 1.0, "topk_jaccard": 1.0,
                                               "sign_agreement": 1.0, "l1_distance": 0.0}
    m = agreement(np.array([0.0, 0, 1, 2, 3]), np.array([3.0, 2, 1, 0, 0]), 2)
    assert m["topk_jaccard"] == 0.0 and m["spearman"] < 0 and m["sign_agreement"] == pytest.approx(0.2)


def test_agreement_with_no_units_is_nan_everywhere_l1_included():
    m = agreement(np.zeros(0), np.zeros(0), 5)
    assert set(m) == {"spearman", "kendall", "topk_jaccard", "sign_agreement", "l1_distance"}
    assert all(math.isnan(v) for v in m.values()), m


def test_sweep_means_skip_a_text_whose_metrics_are_nan(teacher):
    model, tok = teacher
    student = copy.deepcopy(model)
    with torch.no_grad():
        student.classifier.weight.mul_(0.5)
    # one unit ranks nothing (spearman, kendall and top-k NaN); a text with no tokens at all is now refused
    result = sweep(model, student, ["the movie was good", "fine"], teacher_tokenizer=tok, method="saliency",
                   faithfulness_steps=None, top_k=3)
    assert len(result[1].units) == 1 and math.isnan(result[1].metrics["spearman"])
    summary = result.summary()
    for key in ("spearman", "kendall", "topk_jaccard"):
        assert summary[key] == pytest.approx(result[0].metrics[key]), key


@pytest.mark.parametrize("max_length, needles", [
    (512, ["max_length=512", "can read (128 positions", "max_length <= 128"]),
    (129, ["max_length=129", "max_length <= 128"]),
    (1, ["max_length=1 is too short", f">= {MIN_MAX_LENGTH}"]),
    (2, ["max_length=2 is too short"]),
    (MIN_MAX_LENGTH - 1, [f"max_length={MIN_MAX_LENGTH - 1} is too short"]),
    (0, ["max_length=0"]),
    (16.5, ["max_length=16.5", "give an int"]),
    (True, ["max_length=True"]),
])
@pytest.mark.parametrize("entry", ["attribute", "compare", "sweep"])
def test_max_length_is_checked_against_the_model_positions_and_a_minimum(teacher, max_length, needles, entry):
    from conftest import clear_error

    model, tok = teacher
    run = {"attribute": lambda: attribute(model, tok, ["good " * 300], "saliency", max_length=max_length),
           "compare": lambda: compare(model, model, ["good"], teacher_tokenizer=tok, method="saliency",
                                      max_length=max_length, faithfulness_steps=None),
           "sweep": lambda: sweep(model, model, ["good"], teacher_tokenizer=tok, method="saliency",
                                  max_length=max_length, faithfulness_steps=None)}[entry]
    clear_error(run, ValueError, needles)


@pytest.mark.parametrize("max_length", [MIN_MAX_LENGTH, 128])
def test_max_length_at_the_limits_is_accepted(teacher, max_length):
    model, tok = teacher
    a = attribute(model, tok, ["good " * 300], "saliency", max_length=max_length)[0]
    assert len(a.tokens) == max_length and a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]"


@pytest.mark.parametrize("target, needle", [
    (1.7, "target=1.7 (float)"), (1.0, "target=1.0 (float)"), (np.float64(1.0), "target=np.float64(1.0)"),
    ([1.7], "target[0]=1.7 (float)"), ([0.9], "target[0]=0.9 (float)"), ([0, 1.0], "target[1]=1.0"),
    ("1", "target='1' (str)"), ("10", "target='10' (str)"), (True, "target=True (bool)"),
    ([False], "target[0]=False (bool)"), (torch.tensor(1.0), "target=tensor(1.)"), ({0: 1}, "target={0: 1}"), ({1}, "target={1}"), (np.array(0.5), "target=array(0.5)"),
])
def test_a_target_that_is_not_an_int_is_refused_by_name(teacher, target, needle):
    from conftest import clear_error

    model, tok = teacher
    n = len(target) if isinstance(target, list) else 1
    clear_error(lambda: attribute(model, tok, ["good"] * n, "saliency", target), ValueError,
                [needle, "not a class index"])
    clear_error(lambda: sweep(model, model, ["good"] * n, teacher_tokenizer=tok, method="saliency", target=target,
                              faithfulness_steps=None), ValueError, [needle])


@pytest.mark.parametrize("target, expected", [
    (None, [None, None]), (1, [1, 1]), (np.int64(1), [1, 1]), (torch.tensor(0), [0, 0]),
    ([0, None], [0, None]), ([np.int32(1), 0], [1, 0]), (np.array([1, 0]), [1, 0]), (torch.tensor([0, 1]), [0, 1]),
    ((1, 1), [1, 1]), (np.array(1), [1, 1]), (iter([1, 0]), [1, 0]),
])
def test_integer_targets_of_every_kind_are_accepted(teacher, target, expected):
    checked = check_targets(target, 2)
    assert checked == expected and all(type(t) in (int, type(None)) for t in checked)
    target = checked if isinstance(target, Iterator) else target  # an iterator is used up by one check
    model, tok = teacher
    got = [a.target for a in attribute(model, tok, ["good", "bad"], "saliency", target)]
    assert [e if e is not None else g for e, g in zip(expected, got)] == got


@pytest.mark.parametrize("name", ["fp8", "bf-16", "BF16", "half"])
def test_attribute_refuses_an_unknown_precision(teacher, name):
    model, tok = teacher
    with pytest.raises(ValueError, match=rf"precision='{name}' is not a known precision.*'fp32', 'bf16'"):
        attribute(model, tok, ["good movie"], "saliency", precision=name)


# ---- text pairs: every forward (captum's included) reads the pair with its segment ids --------------------------
@pytest.fixture(scope="module")
def pair_model(pair_teacher, pair_dataset):
    """The segment-sensitive teacher, its tokenizer, and 6 eval pairs as ``text_pair=True`` data holds them."""
    import csv

    from distill_nb.tables import PAIR_SEP

    with open(pair_dataset / "validation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:6]
    model, tok = load(pair_teacher, sharpen_seed=None)
    return model, tok, [r["premise"] + PAIR_SEP + r["hypothesis"] for r in rows]


def _pair_inputs(tok, text):
    from distill_nb.tables import split_pair

    return tok(*split_pair(text), return_tensors="pt")


@pytest.mark.parametrize("method", METHODS)
def test_a_text_pair_is_attributed_with_its_segment_ids(pair_model, segments_seen, method):
    model, tok, texts = pair_model
    attrs = attribute(model, tok, texts, method, n_steps=8, batch_size=4)
    assert segments_seen and all(segments_seen)  # the prediction and every perturbed/interpolated forward
    for a, text in zip(attrs, texts):
        enc = _pair_inputs(tok, text)
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)[0]
        np.testing.assert_allclose(a.probs, probs.numpy(), atol=1e-5)
        assert a.token_type_ids == tuple(enc["token_type_ids"][0].tolist()) and 1 in a.token_type_ids
    one = attribute(model, tok, texts, method, n_steps=8, batch_size=1)  # no padding: segments line up anyway
    for a, b in zip(attrs, one):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_integrated_gradients_completeness_on_a_text_pair(pair_model):
    """captum expands the segment ids with the inputs: the scores add up to the logit change with them."""
    model, tok, texts = pair_model
    for a, text in zip(attribute(model, tok, texts, n_steps=64), texts):
        enc = _pair_inputs(tok, text)
        baseline = torch.where(torch.from_numpy(a.special)[None], enc["input_ids"],
                               torch.full_like(enc["input_ids"], tok.pad_token_id))
        with torch.no_grad():
            gap = float(model(**enc).logits[0, a.target] - model(**{**enc, "input_ids": baseline}).logits[0, a.target])
        assert abs(a.delta) < 0.02 * max(1.0, abs(gap))
        assert a.scores.sum() == pytest.approx(gap, abs=0.02 * max(1.0, abs(gap)))


def test_faithfulness_of_a_text_pair_uses_its_segment_ids(pair_model, segments_seen):
    model, tok, texts = pair_model
    attrs = attribute(model, tok, texts, "saliency")
    segments_seen.clear()
    for f, a, text in zip(faithfulness(model, tok, attrs, top_k=2, steps=4), attrs, texts):
        with torch.no_grad():
            full = model(**_pair_inputs(tok, text)).logits.softmax(-1)[0, a.target].item()
        assert f.deletion[0] == pytest.approx(full, abs=1e-5)  # step 0: the unchanged pair
    assert segments_seen and all(segments_seen)


def test_single_texts_are_attributed_without_segment_ids(pair_model, segments_seen):
    model, tok, _ = pair_model
    attrs = attribute(model, tok, TEXTS, "leave_one_out")
    assert segments_seen and not any(segments_seen) and all(a.token_type_ids is None for a in attrs)


def test_a_model_without_token_type_ids_attributes_a_pair_without_them(pair_model, tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    _, tok, texts = pair_model
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1,
                                                                  n_heads=2, hidden_dim=32)).eval()
    for method in ("integrated_gradients", "leave_one_out"):
        attrs = attribute(distil, tok, texts, method, n_steps=4)
        with torch.no_grad():
            enc = _pair_inputs(tok, texts[0])
            probs = distil(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.softmax(-1)[0]
        np.testing.assert_allclose(attrs[0].probs, probs.numpy(), atol=1e-5)


# --- a model with NaN/inf logits makes no prediction: never class 0, never a perfect agreement ------------------------
BAD_VALUES = [math.nan, math.inf, -math.inf]


class PoisonOn(torch.nn.Module):
    """``model`` whose logit 0 is ``value`` (NaN, +inf, -inf) for texts containing ``token_id`` (None: every text):
    finite and non-finite rows side by side, as a partly broken (overflowing) model gives them."""

    def __init__(self, model, token_id: int | None, value: float):
        super().__init__()
        self.model, self.token_id, self.value = model, token_id, value

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = getattr(out, "logits", out)
        hit = (torch.ones_like(input_ids, dtype=torch.bool) if self.token_id is None
               else (input_ids == self.token_id) & attention_mask.bool()).any(1)  # (B,)
        column = torch.zeros_like(logits, dtype=torch.bool)
        column[:, 0] = True
        return torch.where(hit[:, None] & column, torch.full_like(logits, self.value), logits)


def _awful(tok) -> int:
    return tok.convert_tokens_to_ids("awful")


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "leave_one_out"])
def test_a_nonfinite_logit_row_is_no_prediction_and_has_nan_scores(teacher, value, method):
    model, tok = teacher
    broken = TEXTS.index("the acting was awful")
    clean = attribute(model, tok, TEXTS, method, n_steps=4)
    got = attribute(PoisonOn(model, _awful(tok), value), tok, TEXTS, method, n_steps=4)
    bad = got[broken]
    assert bad.nonfinite and bad.label == -1 and bad.target == -1  # not class 0, which argmax over NaN picks
    assert np.isnan(bad.scores).all() and np.isnan(bad.probs).all()
    assert bad.delta is None or math.isnan(bad.delta)
    for i, (a, c) in enumerate(zip(got, clean)):  # the finite rows of the same batches are untouched
        if i != broken:
            assert not a.nonfinite and a.label == c.label and a.target == c.target
            np.testing.assert_allclose(a.scores, c.scores, rtol=1e-4, atol=1e-6)
    given = attribute(PoisonOn(model, _awful(tok), value), tok, TEXTS[broken], method, target=1, n_steps=4)[0]
    assert given.target == 1 and given.label == -1 and np.isnan(given.scores).all()  # a target: still NaN-marked


@pytest.mark.parametrize("t_value, s_value", [(None, math.nan), (None, math.inf), (None, -math.inf),
                                              (math.nan, None), (math.inf, math.nan), (-math.inf, -math.inf)])
def test_compare_counts_a_nonfinite_model_as_disagreeing_with_nan_metrics(teacher, t_value, s_value):
    model, tok = teacher
    poisoned = lambda value: model if value is None else PoisonOn(model, _awful(tok), value)
    broken = TEXTS.index("the acting was awful")
    comps = compare(poisoned(t_value), poisoned(s_value), TEXTS, teacher_tokenizer=tok, method="saliency", top_k=2,
                    faithfulness_steps=4)
    c = comps[broken]
    expected = tuple(name for name, v in (("teacher", t_value), ("student", s_value)) if v is not None)
    assert c.nonfinite == expected
    assert c.metrics["prediction_agree"] == 0.0  # two NaN models do not "agree" on class 0
    for name in ("spearman", "kendall", "topk_jaccard", "sign_agreement", "l1_distance", "prob_diff"):
        assert math.isnan(c.metrics[name]), (name, c.metrics[name])  # never a perfect 1.0 / 0.0 from NaN
    for who in expected:
        assert all(math.isnan(c.metrics[f"{who}_{m}"]) for m in ("comprehensiveness", "sufficiency", "deletion_auc"))
    for i, other in enumerate(comps):  # the finite texts compare the model with itself: perfect
        if i != broken:
            assert other.nonfinite == () and other.metrics["prediction_agree"] == 1.0
            assert other.metrics["l1_distance"] == pytest.approx(0.0, abs=1e-9)
    assert "no prediction" in c.to_html()
    import matplotlib

    matplotlib.use("Agg")
    c.plot()
    c.teacher.plot()


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("both", [False, True])
def test_sweep_summary_of_an_all_nonfinite_student_is_no_good_verdict(teacher, value, both):
    model, tok = teacher
    texts = TEXTS[:3]
    student = PoisonOn(model, None, value)
    result = sweep(student if both else model, student, texts, [0, 0, 0], teacher_tokenizer=tok, method="saliency",
                   n_steps=2)
    s = result.summary()
    assert s["prediction_agree"] == 0.0 and s["student_accuracy"] == 0.0  # gold 0 is not "predicted" by NaN
    assert s["student_nonfinite"] == 3 and s["teacher_nonfinite"] == (3 if both else 0)
    assert math.isnan(s["l1_distance"]) and math.isnan(s["sign_agreement"]) and math.isnan(s["spearman"])
    frame = result.to_frame()
    assert (frame["student_pred"] == -1).all() and frame["student_prob"].isna().all()
    assert frame["student_nonfinite"].all() and frame["teacher_nonfinite"].all() == both
    if both:
        assert s["teacher_accuracy"] == 0.0 and frame["teacher_prob"].isna().all()


def test_sweep_ranks_examples_with_nonfinite_outputs_first(teacher):
    model, tok = teacher
    broken = TEXTS.index("the acting was awful")
    flipped = TEXTS.index("what a wonderful film")
    student = PoisonOn(FlipOn(model, tok.convert_tokens_to_ids("wonderful")), _awful(tok), math.nan)
    result = sweep(model, student, TEXTS, [1, 0, 1, 1, 0], teacher_tokenizer=tok, method="saliency",
                   faithfulness_steps=None)
    assert result.order[:2] == (broken, flipped)  # no prediction, then a real disagreement
    s = result.summary()
    assert s["student_nonfinite"] == 1 and s["prediction_agree"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("side", ["teacher", "student", "both"])
def test_agreement_of_a_nonfinite_score_vector_is_nan_everywhere(value, side):
    t = np.array([0.5, -0.2, 0.1, 0.9, 0.3, 0.0])
    s = t.copy()
    if side in ("teacher", "both"):
        t[2] = value
    if side in ("student", "both"):
        s[2] = value
    assert all(math.isnan(v) for v in agreement(t, s, 2).values())
    full = np.full(6, value)  # two all-NaN (or all-inf) vectors are not identical explanations
    assert all(math.isnan(v) for v in agreement(full, full, 2).values())


def test_faithfulness_of_a_text_without_prediction_is_nan(teacher):
    model, tok = teacher
    poisoned = PoisonOn(model, _awful(tok), math.nan)
    attrs = attribute(poisoned, tok, ["the acting was awful", "the movie was good"], "saliency")
    bad, good = faithfulness(poisoned, tok, attrs, top_k=2, steps=4)
    assert math.isnan(bad.comprehensiveness) and math.isnan(bad.sufficiency) and np.isnan(bad.deletion).all()
    assert not math.isnan(good.comprehensiveness) and np.isfinite(good.deletion).all()


# --- a student whose vocabulary the teacher's tokenizer does not fit ---------------------------------------------------
def _small_vocab_student(n_words: int = 9):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=n_words, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("call", ["compare", "sweep", "sweep with labels"])
def test_a_student_vocabulary_the_teachers_tokenizer_does_not_fit_is_named_before_any_forward(teacher, call,
                                                                                              monkeypatch):
    from conftest import clear_error

    model, tok = teacher
    student = _small_vocab_student()
    student.forward = lambda *a, **k: pytest.fail("a forward pass ran before the vocabulary check")
    run = {"compare": lambda: compare(model, student, TEXTS, teacher_tokenizer=tok, n_steps=2, max_length=64),
           "sweep": lambda: sweep(model, student, TEXTS, teacher_tokenizer=tok, n_steps=2, max_length=64),
           "sweep with labels": lambda: sweep(model, student, TEXTS, [0, 1, 0, 1, 0], teacher_tokenizer=tok,
                                              n_steps=2, max_length=64)}[call]
    clear_error(run, ValueError, ["9 word embeddings", "no student_tokenizer was given", "student_tokenizer="])
    clear_error(lambda: compare(student, model, TEXTS, teacher_tokenizer=tok, student_tokenizer=tok, n_steps=2,
                                max_length=64), ValueError, ["9 word embeddings", "teacher_tokenizer"])
