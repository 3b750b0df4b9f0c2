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


def test_duplicate_keys_and_non_utf8_rejected(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\noutput_dir: o\ngrid: {tasks: [synthetic], seeds: [0], seeds: [1]}\n")
    with pytest.raises(SpecError, match=r"dup.yaml: line 3 is not valid YAML: duplicate key 'seeds'"):
        load_spec(str(dup))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin.yaml: byte 9 is not UTF-8"):
        load_spec(str(latin))


@pytest.mark.parametrize("path,value,expect", [
    ("task_options", {"synthetic": {"n_trian": 5}},
     "field 'task_options.synthetic': unknown option 'n_trian'; valid options of 'synthetic': ['add_ood_train',"),
    ("finetune", {"batch_size": 0}, "field 'finetune.batch_size': must be an integer >= 1, not 0"),
    ("mask_train", {"lr": -1.0}, "field 'mask_train.lr': must be a number > 0"),
    ("finetune", {"epochs": -1}, "field 'finetune.epochs': must be > 0"),
    ("resources", {"gpus_per_trial": -1}, "field 'resources.gpus_per_trial': GPUs per trial must be >= 0"),
    ("resources", {"cpus_per_trial": 0}, "field 'resources.cpus_per_trial': CPUs per trial must be > 0"),
    ("artifact_store", "foo://b/p", "URI scheme 'foo' is not supported by pyarrow here"),
])
def test_ranges_and_options_name_the_field(path, value, expect):
    with pytest.raises(SpecError) as err:
        parse_spec(_with(path, value), source="s.yaml")
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_preflight_refuses_unwritable_locations_and_oversized_trials(tmp_path):
    from orchestrator.spec import preflight

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for field, value in (("output_dir", str(blocker / "out")), ("artifact_store", str(blocker / "store")),
                         ("artifact_store", f"file://{blocker}/store")):
        with pytest.raises(SpecError, match=f"field '{field}': '{blocker}' is a file, not a directory"):
            preflight(parse_spec(_with(field, value)), "s.yaml")
    spec = parse_spec(_with("resources", {"cpus_per_trial": 10 ** 6}))
    with pytest.raises(SpecError, match="CPUs per trial but this machine has"):
        preflight(spec, "s.yaml")
    preflight(spec, "s.yaml", local_ray=False)  # a remote cluster's size is checked once it is reached
    preflight(parse_spec(_with("output_dir", str(tmp_path / "new" / "dir"))), "s.yaml")
    assert not (tmp_path / "new").exists()  # checking creates nothing
