"""DistillConfig: defaults are valid, JSON round trip, clear errors."""

from __future__ import annotations

import json

import pytest

from distill_nb.config import ConfigError, DistillConfig


def test_default_round_trips_through_json(tmp_path):
    cfg = DistillConfig(student_layers=4, layer_map=[1, 2, 3, 5], alpha_hidden=0.5)
    cfg.to_json(tmp_path / "c.json")
    assert DistillConfig.from_json(tmp_path / "c.json") == cfg
    assert DistillConfig.from_json(cfg.to_json()) == cfg
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


@pytest.mark.parametrize("changes, needle", [
    ({"temperature": 0}, "temperature=0"),
    ({"alpha_kd": 0.0}, "all loss weights are 0"),
    ({"alpha_ce": -1.0}, "alpha_ce"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"device": "gpu"}, "device='gpu'"),
    ({"precision": "int4"}, "precision='int4'"),
    ({"layer_map": [0, 1]}, "layer_map=[0, 1] has 2 entries"),
    ({"hidden_loss": "l1"}, "hidden_loss='l1'"),
    ({"objective": "pretrain"}, "objective='pretrain'"),
    ({"mlm_probability": 1.0}, "mlm_probability=1.0"),
])
def test_bad_values_are_named(changes, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        DistillConfig().replace(**changes)


def test_unknown_keys_and_wrong_types_in_json():
    with pytest.raises(ConfigError, match="unknown config keys"):
        DistillConfig.from_dict({"teacher": "x", "tempreature": 2})
    with pytest.raises(ConfigError, match="batch_size"):
        DistillConfig.from_json(json.dumps({"batch_size": "32"}))
    with pytest.raises(ConfigError, match="not valid JSON"):
        DistillConfig.from_json('{"teacher": "x",}')


def test_a_config_file_larger_than_a_config_can_be_is_refused_unread(tmp_path):
    from distill_nb.config import MAX_CONFIG_BYTES

    huge = tmp_path / "config.json"
    with open(huge, "wb") as f:  # sparse: the size of a huge file without writing it
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=r"config\.json.* is 4\.0 MB, more than the 4 MB a config may be: give"):
        DistillConfig.from_json(huge)
    at_cap = tmp_path / "at_cap.json"
    at_cap.write_text(DistillConfig().to_json().rstrip("}") + " " * (MAX_CONFIG_BYTES - len(DistillConfig().to_json()))
                      + "}")
    assert at_cap.stat().st_size == MAX_CONFIG_BYTES and DistillConfig.from_json(at_cap) == DistillConfig()


@pytest.mark.parametrize("field", ["teacher", "dataset", "student_init"])
@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_an_empty_name_is_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"{field}=.* is empty: give"):
        DistillConfig(**{field: value})


@pytest.mark.parametrize("value", [-1.0, -1e-9, 1.5])
def test_weight_decay_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=f"weight_decay={value!r} is invalid"):
        DistillConfig(weight_decay=value)


@pytest.mark.parametrize("extra", [{"x": float("nan")}, {"x": [1, float("inf")]}, {"x": {"y": float("-inf")}},
                                   {"x": {1, 2}}, {"x": object()}, {1: "int key"}])
def test_extra_that_config_json_cannot_hold_is_refused(extra):
    with pytest.raises(ConfigError, match="extra="):
        DistillConfig(extra=extra)


def test_extra_of_json_values_round_trips():
    extra = {"note": "x", "n": 3, "f": 0.5, "ok": True, "none": None, "list": [1, "a"], "d": {"k": [0.1]}}
    config = DistillConfig(extra=extra)
    assert DistillConfig.from_json(config.to_json()).extra == extra


def test_to_json_onto_a_folder_says_to_give_a_file_name(tmp_path):
    from distill_nb.config import DistillConfig

    with pytest.raises(IsADirectoryError, match="is a folder: give a file name for the config, e.g.") as info:
        DistillConfig().to_json(tmp_path)
    assert "distill_config.json" in str(info.value) and not list(tmp_path.iterdir())  # no temp file left
