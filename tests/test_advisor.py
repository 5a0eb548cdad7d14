"""advisor: CKA analytics, skipping layers = copying the others, the proposal is the best scored candidate."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from distill_nb import DistillConfig, advisor, models

TEXTS = ["the movie was good", "awful boring film", "it was fine and fun", "the worst acting , a mess",
         "a wonderful story with great music", "not good , not bad", "i hated the slow plot",
         "really brilliant actors"] * 4
LABELS = [1, 0, 1, 0, 1, 0, 0, 1] * 4


@pytest.fixture(scope="module")
def teacher_and_tok(tmp_path_factory):
    from conftest import make_tiny_bert

    folder = make_tiny_bert(tmp_path_factory.mktemp("adv_teacher"), layers=4, seed=3)
    model, tok = models.load_teacher(str(folder))
    with torch.no_grad():  # larger weights than BERT's 0.02 init, so that layers really differ from each other
        for p in models.layer_list(model).parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model, tok


@torch.no_grad()
def _logits(model, tok, texts=TEXTS):
    return model(**tok(texts, padding=True, return_tensors="pt")).logits


def test_linear_cka_analytic_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    assert advisor.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert advisor.linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    y = torch.randn(200, 16, generator=g)
    assert advisor.linear_cka(x, y) < 0.2  # independent representations
    assert advisor.linear_cka(x, y) == pytest.approx(advisor.linear_cka(y, x), abs=1e-12)


def test_kl_of_identical_logits_is_zero():
    z = torch.randn(5, 3)
    assert advisor.kl_to(z, z) == pytest.approx(0.0, abs=1e-7)
    assert advisor.kl_to(z, -z) > 0


def test_skipping_layers_equals_a_student_that_copied_the_others(teacher_and_tok):
    teacher, tok = teacher_and_tok
    full = _logits(teacher, tok)
    with advisor.only_layers(teacher, [0, 1, 2, 3]):
        assert torch.allclose(_logits(teacher, tok), full, atol=1e-6)
    student = models.make_student(teacher, n_layers=2, layers_from=[1, 3]).eval()
    assert student.config.distill_nb_init == {"init": "layers_from", "teacher_layers": [1, 3]}
    with advisor.only_layers(teacher, [1, 3]):
        assert torch.allclose(_logits(teacher, tok), _logits(student, tok), atol=1e-5)
    assert torch.allclose(_logits(teacher, tok), full, atol=1e-6)  # restored on exit
    assert len(models.layer_list(teacher)) == 4


def test_suggest_layers_picks_the_candidate_closest_to_the_teacher(teacher_and_tok):
    teacher, tok = teacher_and_tok
    adv = advisor.suggest_layers(teacher, tok, TEXTS, LABELS, n_layers=2, max_examples=24, keep_first=False)
    assert adv.search == "exhaustive" and len(adv.candidates) == math.comb(4, 2)
    assert adv.n_examples == 24 and adv.seconds > 0 and len(adv.skip_kl) == 4 and all(k >= 0 for k in adv.skip_kl)
    assert all(adv.cka[i][i] == pytest.approx(1.0, abs=1e-9) for i in range(5))
    assert adv.probe_accuracy is not None and len(adv.probe_accuracy) == 4
    # the chosen layers really are the closest: KL of each student-at-init to the teacher, recomputed here
    texts = [TEXTS[i] for i in range(24)]  # the sample is 24 of the 32 texts; recompute on all for the ranking
    full = _logits(teacher, tok, texts)
    kls = {layers: advisor.kl_to(full, _logits(models.make_student(teacher, n_layers=2, layers_from=layers).eval(),
                                               tok, texts))
           for layers, _, _ in adv.candidates}
    assert adv.chosen == adv.candidates[0][0]
    assert [c[1] for c in adv.candidates] == sorted(c[1] for c in adv.candidates)
    assert set(adv.baselines) == {"every_k", "first_k"} and adv.baselines["every_k"][0] == (0, 2)
    assert adv.candidates[0][1] <= min(kl for _, kl in adv.baselines.values())
    assert len(kls) == 6
    assert adv.layer_map == tuple(models.copied_layer_map(adv.chosen, 4))
    fields = adv.config_fields()
    cfg = DistillConfig(**fields)
    assert cfg.student_layers_from == list(adv.chosen) and cfg.layer_map == list(adv.layer_map)
    assert "suggest_layers: 4 -> 2" in str(adv) and "copy teacher layers" in adv.to_html()


def test_keep_first_ranks_only_students_that_copy_layer_0(teacher_and_tok):
    teacher, tok = teacher_and_tok
    adv = advisor.suggest_layers(teacher, tok, TEXTS, LABELS, n_layers=2, max_examples=24)
    assert adv.search == "exhaustive, layer 0 kept" and adv.chosen[0] == 0
    assert sorted(c[0] for c in adv.candidates) == [(0, 1), (0, 2), (0, 3)]
    free = advisor.suggest_layers(teacher, tok, TEXTS, LABELS, n_layers=2, max_examples=24, keep_first=False)
    assert {c[0]: c[1] for c in free.candidates}[adv.chosen] == pytest.approx(adv.candidates[0][1])
    greedy = advisor.suggest_layers(teacher, tok, TEXTS, None, n_layers=2, max_examples=16, max_candidates=1)
    assert greedy.search == "greedy, layer 0 kept" and greedy.chosen[0] == 0


def test_greedy_search_without_labels(teacher_and_tok):
    teacher, tok = teacher_and_tok
    adv = advisor.suggest_layers(teacher, tok, TEXTS, None, n_layers=2, max_examples=16, max_candidates=1,
                                 keep_first=False)
    assert adv.search == "greedy" and adv.probe_accuracy is None
    assert len(adv.chosen) == 2 and list(adv.chosen) == sorted(adv.chosen)
    assert all(acc is None for _, _, acc in adv.candidates)


def test_plot_draws_bars_over_teacher_layers(teacher_and_tok):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    teacher, tok = teacher_and_tok
    fig = advisor.suggest_layers(teacher, tok, TEXTS, LABELS, n_layers=1, max_examples=16).plot()
    assert len(fig.axes) == 3 and all(len(ax.patches) == 4 for ax in fig.axes)


def test_errors_say_what_to_do(teacher_and_tok):
    teacher, tok = teacher_and_tok
    with pytest.raises(ValueError, match="n_layers=5 is invalid for a 4-layer teacher"):
        advisor.suggest_layers(teacher, tok, TEXTS, n_layers=5)
    with pytest.raises(ValueError, match="one label per text"):
        advisor.suggest_layers(teacher, tok, TEXTS, LABELS[:3], n_layers=2)
    with pytest.raises(ValueError, match="strictly increasing"):
        models.make_student(teacher, n_layers=2, layers_from=[2, 1])
    with pytest.raises(ValueError, match="outside the teacher's layers 0..3"):
        models.make_student(teacher, n_layers=2, layers_from=[0, 4])
    with pytest.raises(ValueError, match="names 1 teacher layers but the student has 2"):
        models.make_student(teacher, n_layers=2, layers_from=[0])
    with pytest.raises(ValueError, match="needs init='every_k'"):
        models.make_student(teacher, n_layers=2, init="random", layers_from=[0, 1])


def test_copied_layer_map_generalises_the_default():
    for t, s in [(6, 3), (12, 6), (4, 2), (6, 1)]:
        assert models.copied_layer_map(models.every_k_layers(t, s), t) == models.default_layer_map(t, s)
    assert models.copied_layer_map([0, 1, 5], 6) == [0, 4, 5]


def test_config_validates_student_layers_from():
    from distill_nb import ConfigError

    assert DistillConfig(student_layers_from=[0, 1, 5]).student_layers_from == [0, 1, 5]
    with pytest.raises(ConfigError, match="strictly increasing"):
        DistillConfig(student_layers_from=[0, 0, 5])
    with pytest.raises(ConfigError, match="has 2 entries but the student has 3"):
        DistillConfig(student_layers_from=[0, 1])
    with pytest.raises(ConfigError, match="needs student_init='every_k'"):
        DistillConfig(student_init="random", student_layers_from=[0, 1, 2])


def test_train_copies_the_chosen_layers(tiny_teacher, tiny_dataset, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from distill_nb.train import train

    config = DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2, student_layers_from=[1, 3], max_steps=2, batch_size=8, eval_every=10,
                           checkpoint_every=10, alpha_hidden=1.0)
    train(config, tmp_path / "run", log=lambda *_: None)
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert saved.config.distill_nb_init["teacher_layers"] == [1, 3]


def test_designer_suggest_button_shows_the_advice_and_uses_it(teacher_and_tok):
    from distill_nb.data import TaskData
    from distill_nb.vocab import choose_vocab
    from distill_nb.widgets.student import StudentDesigner

    teacher, tok = teacher_and_tok
    task = TaskData.from_lists(TEXTS, LABELS, TEXTS[:4], LABELS[:4], ["negative", "positive"])
    d = StudentDesigner(teacher.config, layers=2)
    full_params = d.estimates["params"]
    d.suggest_button.click()  # without task data: says what is missing, changes nothing
    assert "use_task" in d.advice_box.value and d.layers_from == []
    d.use_task(task, teacher, tok)
    assert d.task_vocab_size == choose_vocab(tok, TEXTS, "task", max_length=128).size
    d.suggest_button.click()
    assert d.advice is not None and d.layers_from == list(d.advice.chosen)
    assert "suggested: copy teacher layers" in d.advice_box.value
    assert d.config_fields()["student_layers_from"] == list(d.advice.chosen)
    assert d.layer_map == models.copied_layer_map(d.advice.chosen, 4)
    d.vocab_dropdown.value = "task"
    assert d.config_fields()["student_vocab"] == "task"
    hidden = teacher.config.hidden_size
    assert full_params - d.estimates["params"] == (teacher.config.vocab_size - d.task_vocab_size) * hidden
    DistillConfig(**d.config_fields())  # a valid config
    d.layers_slider.value = 3  # advice was for 2 layers: back to every k-th
    assert d.layers_from == [] and d.config_fields()["student_layers_from"] is None


def test_designer_ranks_candidates_by_short_runs_in_the_background(teacher_and_tok, tiny_teacher, tiny_dataset):
    """"rank by short runs": the advisor's best candidates and every-k, successive halving in a thread, the winner
    used; a second click joins the running search; stop ends it between runs and changes nothing."""
    from distill_nb.data import TaskData
    from distill_nb.widgets.student import StudentDesigner

    teacher, tok = teacher_and_tok
    d = StudentDesigner(teacher.config, layers=2)
    assert d.rank_button.disabled and d.rank() is None and "suggest layers first" in d.rank_box.value
    d.use_task(TaskData.from_lists(TEXTS, LABELS, TEXTS[:4], LABELS[:4], ["negative", "positive"]), teacher, tok)
    d.suggest()
    assert not d.rank_button.disabled and d.rank() is None and "config_source" in d.rank_box.value
    d.config_source = lambda: DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                                            student_layers=2, batch_size=8, reason_probe=0)
    thread = d.rank(candidates=2, steps=1, holdout=16)
    assert d.rank(candidates=2, steps=1, holdout=16) is thread  # a second click while it runs: the same search
    assert d.rank_button.disabled and d.rank_stop.layout.display == ""
    thread.join(300)
    assert not thread.is_alive() and d.error == "", d.error
    ranking = d.ranking
    assert ranking.chosen is not None and d.layers_from == list(ranking.chosen) and not ranking.stopped
    shortlist = d.advice.shortlist(2)  # the 2 best by KL plus every-k, each once
    assert shortlist[:2] == [tuple(c[0]) for c in d.advice.candidates[:2]] or len(shortlist) == 2
    assert tuple(models.every_k_layers(4, 2)) in shortlist and len(set(shortlist)) == len(shortlist) <= 3
    first_round = {k for k, _, _ in ranking.rounds[0][1]}
    assert tuple(models.every_k_layers(4, 2)) in first_round and len(first_round) >= 2
    assert "chosen" in d.rank_box.value and not d.rank_button.disabled and d.rank_stop.layout.display == "none"
    before = list(d.layers_from)
    thread = d.rank(candidates=4, steps=1, holdout=16)  # all 3 candidates: stopped long before round 1 is done
    d.rank_stop.click()
    thread.join(300)
    assert d.ranking.stopped and d.ranking.chosen is None and d.layers_from == before
    assert "no round completed" in d.rank_box.value and not d.rank_button.disabled
    d.layers_slider.value = 3  # the advice was for 2 layers: ranking it now would rank another student
    assert d.rank() is None and "suggest layers again" in d.rank_box.value


def test_app_suggest_layers_uses_the_train_tabs_data_and_the_runs_teacher(tiny_dataset, tmp_path, monkeypatch):
    """In DistillApp no use_task call is needed: the Train tab's data and the teacher a run would use (for a bare
    encoder, the prepared one from the cache; a clear error while there is none)."""
    from conftest import make_tiny_bert
    from transformers import BertModel

    from distill_nb.rundata import full_task_for
    from distill_nb.teacher_cache import cached_teacher, prepare_teacher
    from distill_nb.widgets.app import DistillApp

    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    classifier = make_tiny_bert(tmp_path / "clf", layers=4, seed=1)
    bare = make_tiny_bert(tmp_path / "bare", layers=4, seed=2)
    BertModel.from_pretrained(bare).save_pretrained(bare)

    def app_for(teacher):
        config = DistillConfig(teacher=str(teacher), dataset=str(tiny_dataset), text_column="text", student_layers=2)
        app = DistillApp(config, root=str(tmp_path / "runs"))
        app.auto_estimate = False
        return app, config

    app, _ = app_for(classifier)
    app.designer.suggest_button.click()
    assert app.designer.error == "" and app.designer.advice is not None, app.designer.error
    assert app.designer.layers_from == list(app.designer.advice.chosen) and len(app.designer.layers_from) == 2
    assert app.designer.config_source == app.launcher.build_config  # "rank by short runs" trains with it
    assert app.designer.task_vocab_size > 0  # the task's vocabulary was counted too
    assert app.advice_inputs() is app.advice_inputs()  # loaded once while teacher and data stay

    app, config = app_for(bare)
    app.designer.suggest_button.click()
    assert app.designer.advice is None and app.designer.layers_from == []
    assert "bare encoder" in app.designer.error and "prepare" in app.designer.error, app.designer.error
    prepared = prepare_teacher(str(bare), full_task_for(config), max_steps=2, log=lambda *_: None)
    assert cached_teacher(str(bare), full_task_for(config)) == prepared
    app.designer.suggest_button.click()  # the run's teacher is in the cache now
    assert app.designer.error == "" and app.designer.advice is not None, app.designer.error
    assert app.advice_inputs()[1].name_or_path == str(prepared)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"n_layers": True}, ValueError, "n_layers=True is invalid"),
    ({"n_layers": 2.0}, ValueError, "n_layers=2.0 is invalid"),
    ({"max_examples": 0}, ValueError, "max_examples=0"),
    ({"batch_size": 0}, ValueError, "batch_size=0"),
    ({"max_length": 4}, ValueError, "max_length=4"),
    ({"max_length": 10_000}, ValueError, "longer than the teacher can read"),
    ({"texts": "the movie was good"}, TypeError, "list of strings"),
    ({"texts": ["fine", 3]}, TypeError, r"texts\[1\] is int"),
    ({"labels": [-1, 0, 1, 0]}, ValueError, r"labels\[0\]=-1 is invalid"),
    ({"labels": ["pos", "neg", "pos", "neg"]}, ValueError, r"labels\[0\]='pos' is invalid"),
    ({"labels": [0, 1, 7, 0]}, ValueError, r"labels\[2\]=7 is invalid"),
    ({"labels": [0.0, 1.0, 0.0, 1.0]}, ValueError, r"labels\[0\]=0.0 is invalid"),
    ({"device": "tpu"}, ValueError, "device='tpu' is not a torch device"),
    ({"device": "cuda"}, ValueError, "teacher's weights are on cpu: move the teacher first"),
    ({"device": "cuda:3"}, ValueError, "teacher's weights are on cpu"),
    ({"device": "meta"}, ValueError, "teacher's weights are on cpu"),
])
def test_suggest_layers_bad_arguments_say_what_was_given(teacher_and_tok, kwargs, exc, match):
    from distill_nb.advisor import suggest_layers

    model, tok = teacher_and_tok
    args = {"texts": ["a good film", "a bad film", "great fun", "dull"], "labels": [1, 0, 1, 0], "n_layers": 2,
            **kwargs}
    with pytest.raises(exc, match=match):
        suggest_layers(model, tok, args.pop("texts"), args.pop("labels"), **args)


def test_suggest_layers_failure_keeps_the_teachers_mode(teacher_and_tok):
    from distill_nb.advisor import suggest_layers

    model, tok = teacher_and_tok
    model.train()
    try:
        with pytest.raises(ValueError):
            suggest_layers(model, tok, ["a good film", "dull"], n_layers=2, device="cuda")
        assert model.training
    finally:
        model.eval()
    assert suggest_layers(model, tok, ["a good film", "dull"], n_layers=2, device="cpu:0").device == "cpu"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_kl_and_cka_never_turn_non_finite_values_into_a_perfect_score(bad):
    z = torch.randn(6, 3)
    broken = z.clone()
    broken[2, 1] = bad
    assert advisor.kl_to(z, broken) == math.inf  # a candidate with broken logits ranks last, never first
    assert math.isnan(advisor.kl_to(broken, z))  # no reference, no measurement
    assert math.isnan(advisor.linear_cka(z, broken))
    assert math.isnan(advisor.linear_cka(broken, z))


@pytest.mark.parametrize("where", ["embeddings", "layer", "classifier"])
def test_suggest_layers_refuses_a_teacher_that_computes_nan(teacher_and_tok, where):
    import copy

    from distill_nb.advisor import suggest_layers

    model, tok = teacher_and_tok
    broken = copy.deepcopy(model)
    target = {"embeddings": broken.bert.embeddings.word_embeddings.weight,
              "layer": broken.bert.encoder.layer[1].output.dense.weight,
              "classifier": broken.classifier.weight}[where]
    with torch.no_grad():
        target.fill_(math.nan)
    with pytest.raises(ValueError, match="NaN/inf values") as info:
        suggest_layers(broken, tok, ["a good film", "a bad film", "great fun", "dull"], [1, 0, 1, 0], n_layers=2)
    assert {"embeddings": "its embeddings", "layer": "layer 1", "classifier": "its logits"}[where] in str(info.value)


def test_suggest_layers_reads_a_text_pair_as_training_does(pair_teacher, pair_dataset):
    """A pair is the tokenizer's pair ([CLS] a [SEP] b [SEP]) with its segment ids, as train() encodes it, not
    the joined string with its separator character read as one text."""
    from distill_nb.data import load_task
    from distill_nb.models import load_teacher

    task = load_task(str(pair_dataset), text_column=["premise", "hypothesis"], text_pair=True)
    teacher, tok = load_teacher(str(pair_teacher))
    seen, real = [], teacher.forward

    @functools.wraps(real)  # the same signature: the advisor asks it whether token_type_ids is taken
    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    teacher.forward = spy
    advisor.suggest_layers(teacher, tok, task.train.texts, task.train.labels, n_layers=2, max_examples=16)
    first = seen[0]
    assert (first["input_ids"] == tok.sep_token_id).sum(1).tolist() == [2] * len(first["input_ids"])
    assert first["token_type_ids"].max() == 1
