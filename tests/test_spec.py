"""Spec mistakes fail with one line naming the field or file; nothing runs."""
from __future__ import annotations

import copy

import pytest
import yaml

from orchestrator import launch
from orchestrator.spec import SpecError, load_spec, parse_spec

BASE = {
    "name": "t", "output_dir": "out",
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
}


def _with(path, value):
    spec = copy.deepcopy(BASE)
    node = spec
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


def test_valid_spec_parses_and_sorts_sparsities():
    spec = parse_spec(_with("grid.sparsities", [0.9, 0.5, 0.5]))
    assert spec.grid.sparsities == [0.5, 0.9]
    assert spec.mask.init == "magnitude" and spec.mask.reproject_every == 1


@pytest.mark.parametrize("path,value,expect", [
    ("grid.sparsitys", [0.5], "unknown key 'grid.sparsitys'"),
    ("mask_train.lrr", 1e-3, "unknown key 'mask_train.lrr'"),
    ("mask.initt", "magnitude", "unknown key 'mask.initt'"),
    ("grid.seeds", "zero", "field 'grid.seeds'"),
    ("mask_train.lr", "fast", "field 'mask_train.lr'"),
    ("grid.sparsities", [1.5], "field 'grid.sparsities'"),
    ("grid.tasks", ["mnlii"], "unknown task 'mnlii'"),
    ("resources.gpus_per_trial", 0.15, "does not divide 1"),
    ("data_dir", "/no/such/dir", "field 'data_dir': directory '/no/such/dir' does not exist"),
    ("grid.backbones", ["/no/such/model"], "model directory '/no/such/model' does not exist"),
])
def test_bad_spec_one_line_naming_the_field(path, value, expect):
    with pytest.raises(SpecError) as err:
        parse_spec(_with(path, value), source="s.yaml")
    message = str(err.value)
    assert expect in message
    assert message.startswith("s.yaml")
    assert "\n" not in message


def test_missing_field_and_missing_file(tmp_path):
    spec = copy.deepcopy(BASE)
    del spec["grid"]["seeds"]
    with pytest.raises(SpecError, match="missing required field 'grid.seeds'"):
        parse_spec(spec)
    with pytest.raises(SpecError, match="spec file '.*nope.yaml' does not exist"):
        load_spec(str(tmp_path / "nope.yaml"))


def test_launch_prints_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("grid.sparsitys", [0.5])))
    assert launch.main([str(path)]) == 2
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert text.count("\n") == 0, text
    assert "unknown key 'grid.sparsitys'" in text and "Traceback" not in text


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: line"):
        load_spec(str(path))
