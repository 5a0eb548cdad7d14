"""layer_search: successive halving over layer sets with real train() runs, scored on held-out training texts."""

from __future__ import annotations

import pytest

from distill_nb import DistillConfig, layer_search
from distill_nb.data import load_task

CANDIDATES = [[0, 2], [0, 1], [1, 3], [2, 3]]


@pytest.fixture()
def config(tiny_teacher, tiny_dataset):
    return DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text", student_layers=2,
                         batch_size=8, alpha_ce=0.5, reason_probe=0)


def test_halving_rounds_and_the_eval_split_is_never_used(config, tiny_dataset, monkeypatch, tmp_path):
    import distill_nb.train

    real_train, seen = distill_nb.train.train, []

    def spy(cfg, run_dir, *, data=None, **kw):
        seen.append((cfg, data))
        return real_train(cfg, run_dir, data=data, **kw)

    monkeypatch.setattr(distill_nb.train, "train", spy)
    task = load_task(str(tiny_dataset), text_column="text")
    work = tmp_path / "proxy"
    ranking = distill_nb.rank_by_proxy_runs(config, CANDIDATES + [[0, 2]], data=task, steps=2, holdout=16,
                                            workdir=work, log=lambda *_: None)
    # 4 candidates (the duplicate once) -> 2, each round twice the steps; the last round's leader wins
    assert [steps for steps, _ in ranking.rounds] == [2, 4]
    assert [len(scores) for _, scores in ranking.rounds] == [4, 2]
    assert ranking.chosen == ranking.rounds[-1][1][0][0] and list(ranking.chosen) in CANDIDATES
    survivors = {k for k, _, _ in ranking.rounds[1][1]}
    assert survivors == {k for k, _, _ in ranking.rounds[0][1][:2]}  # the better half went on
    assert len(seen) == 6 and {c.max_steps for c, _ in seen} == {2, 4}
    for cfg, data in seen:  # scored on held-out *training* texts: the eval split is never looked at
        # (the toy data repeats texts: compare as multisets) the training split, cut in two
        assert sorted(data.train.texts + data.eval.texts) == sorted(task.train.texts)
        assert sorted(data.train.labels + data.eval.labels) == sorted(task.train.labels)
        assert len(data.eval) == 16 and cfg.student_layers_from in CANDIDATES and cfg.reason_probe == 0
    assert "chosen" in str(ranking) and not any(work.glob("*/student"))  # students are not kept


def test_stop_between_runs_keeps_the_last_complete_round(config, tiny_dataset, tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5  # round 1 (4 runs) completes, round 2 is cut after its first run

    ranking = layer_search.rank_by_proxy_runs(config, CANDIDATES, steps=1, holdout=16, should_stop=should_stop,
                                              log=lambda *_: None)
    assert ranking.stopped and len(ranking.rounds) == 1 and ranking.chosen == ranking.rounds[0][1][0][0]
    stopped_at_once = layer_search.rank_by_proxy_runs(config, CANDIDATES, steps=1, holdout=16,
                                                      should_stop=lambda: True, log=lambda *_: None)
    assert stopped_at_once.chosen is None and "no round completed" in str(stopped_at_once)


@pytest.mark.parametrize("candidates, kwargs, match", [
    ([], {}, "at least one candidate"),
    ([[0, 1, 2]], {}, r"candidate \[0, 1, 2\] is invalid for a 2-layer student"),
    ([[2, 1]], {}, "strictly increasing"),
    ([[1, 1]], {}, "strictly increasing"),
    ([[-1, 2]], {}, "invalid"),
    ([[0, 2], [0, 7]], {}, r"candidate \[0, 7\] copies a layer the 4-layer teacher does not have"),
    ([[0, 2]], {"holdout": 0}, "holdout=0 is invalid"),
    ([[0, 2]], {"holdout": 10_000}, "holdout=10000 is invalid"),
    ([[0, 2]], {"steps": 0}, "steps=0"),
    ([[0, 2]], {"keep": 1.0}, "keep=1.0"),
    ([[0.9, 2.7]], {}, r"candidate \[0.9, 2.7\] is invalid: each candidate is a list of integer"),
    (["03"], {}, "candidate '03' is invalid"),
    ([[0, True]], {}, "is invalid"),
])
def test_bad_input_says_what_was_given(config, candidates, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_search.rank_by_proxy_runs(config, candidates, log=lambda *_: None, **kwargs)


def test_a_bare_encoder_needs_its_prepared_teacher(tmp_path, tiny_dataset, monkeypatch):
    from conftest import make_tiny_bert
    from transformers import BertModel

    folder = make_tiny_bert(tmp_path / "enc")
    BertModel.from_pretrained(folder).save_pretrained(tmp_path / "bare")  # an encoder without a classifier
    (tmp_path / "bare" / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    monkeypatch.setenv("DISTILL_NB_CACHE", str(tmp_path / "cache"))
    config = DistillConfig(teacher=str(tmp_path / "bare"), dataset=str(tiny_dataset), text_column="text",
                           student_layers=2)
    with pytest.raises(ValueError, match="bare encoder with no teacher prepared"):
        layer_search.rank_by_proxy_runs(config, [[0, 2]], log=lambda *_: None)


def test_a_diverging_candidate_ranks_last_and_the_search_goes_on(config, monkeypatch):
    import distill_nb.train
    from distill_nb.checkpoint import Diverged

    real_train = distill_nb.train.train

    def train(cfg, run_dir, **kw):
        if cfg.student_layers_from == [0, 1]:
            raise Diverged("diverged at step 1: the loss is not finite")
        return real_train(cfg, run_dir, **kw)

    monkeypatch.setattr(distill_nb.train, "train", train)
    logs = []
    ranking = layer_search.rank_by_proxy_runs(config, [[0, 1], [0, 2], [1, 3]], steps=1, holdout=16, log=logs.append)
    first = ranking.rounds[0][1]
    assert first[-1][0] == (0, 1) and first[-1][1] == float("-inf") and ranking.chosen != (0, 1)
    assert any("[0, 1] diverged" in m for m in logs)


def test_the_config_must_be_a_distill_config(config):
    with pytest.raises(TypeError, match="candidates must be a list of layer lists"):
        layer_search.rank_by_proxy_runs(config, "0,2", log=lambda *_: None)
    with pytest.raises(TypeError, match="takes a DistillConfig, got dict"):
        layer_search.rank_by_proxy_runs(config.to_dict(), [[0, 2]], log=lambda *_: None)


def test_a_config_whose_only_loss_is_alpha_attr_gets_a_clear_answer(config):
    from distill_nb.config import ConfigError

    attr_only = config.replace(alpha_kd=0.0, alpha_ce=0.0, alpha_attr=0.5)
    with pytest.raises(ConfigError, match=r"alpha_attr=0.5 is this config's only loss: give the search a config "
                                          r"with alpha_kd or alpha_ce > 0"):
        layer_search.rank_by_proxy_runs(attr_only, [[0, 2]], log=lambda *_: None)
