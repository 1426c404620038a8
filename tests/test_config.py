"""Config: typed overrides, clear errors, complete YAML round trips."""

import pytest

from autoperi.config import Config, parse_overrides


def test_overrides_are_parsed_by_field_type():
    c = Config().override({"model.hidden_dim": "256", "model.lattice_aware": "false",
                           "train.lr": "3e-4", "data.properties": "band_gap, heat_ref"})
    assert c.model.hidden_dim == 256 and c.model.lattice_aware is False
    assert c.train.lr == pytest.approx(3e-4)
    assert c.data.properties == ("band_gap", "heat_ref")
    assert Config().model.hidden_dim == 128  # the original is untouched (frozen)


@pytest.mark.parametrize("key,value,message", [
    ("model.hidden", "3", "model has"),
    ("nosection.x", "1", "unknown config key"),
    ("model.hidden_dim", "wide", "cannot read"),
    ("model.lattice_aware", "maybe", "cannot read"),
])
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        Config().override({key: value})


def test_yaml_round_trip_is_complete(tmp_path):
    c = Config().override({"flow.lambda_symmetry": "0.3", "data.dataset": "mp-20"})
    c.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == c
    text = (tmp_path / "c.yaml").read_text()
    assert "lambda_symmetry: 0.3" in text and "hidden_dim: 128" in text  # every field


def test_parse_overrides_both_spellings():
    assert parse_overrides(["--model.hidden_dim=64", "--train.steps", "10"]) == {
        "model.hidden_dim": "64", "train.steps": "10"}
    with pytest.raises(ValueError, match="overrides look like"):
        parse_overrides(["--verbose"])
    with pytest.raises(ValueError, match="needs a value"):
        parse_overrides(["--train.steps"])


def test_configs_of_earlier_versions_still_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  hidden_dim: 32\nsample:\n  steps: 50\n")  # retired section
    assert Config.load(path).model.hidden_dim == 32
    path.write_text("modle:\n  hidden_dim: 32\n")  # a typo is still an error
    with pytest.raises(ValueError, match="unknown config"):
        Config.load(path)
