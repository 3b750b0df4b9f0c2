"""Spec settings of the protocol's schedules: per-loss epochs, sweep-level amp, bias_source, gradual defaults."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from orchestrator.spec import SpecError, parse_spec

BASE = {
    "name": "t", "output_dir": "out",
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
    "finetune": {"epochs": 3, "lr": 5e-5},
}


def test_per_loss_epochs_change_only_the_loss_and_task_they_name():
    d = copy.deepcopy(BASE)
    d["loss_overrides"] = {"mask_train": {"reweight": {"epochs": 3}}}
    d["task_overrides"] = {"synthetic": {"finetune": {"lr": 1e-4},
                                         "by_loss": {"finetune": {"poe": {"epochs": 5}, "conf_reg": {"epochs": 5}},
                                                     "retrain": {"poe": {"epochs": 5}}}}}
    spec = parse_spec(d)
    ft = {loss: spec.train_config("finetune", "synthetic", 0, loss) for loss in ("std", "poe", "conf_reg", "reweight")}
    assert [ft[x]["epochs"] for x in ("std", "poe", "conf_reg", "reweight")] == [3, 5, 5, 3]
    assert all(c["lr"] == 1e-4 for c in ft.values())  # the task's stage override still applies
    assert spec.train_config("mask_train", "synthetic", 0, "reweight")["epochs"] == 3
    assert spec.train_config("mask_train", "synthetic", 0, "poe")["epochs"] == 1.0  # the TrainConfig default
    assert spec.train_config("retrain", "synthetic", 0, "poe")["epochs"] == 5
    assert spec.train_config("retrain", "synthetic", 0, "std")["epochs"] == 1.0
    assert spec.train_config("finetune", "synthetic", 0)["epochs"] == 3  # no loss: no per-loss override
    bad = copy.deepcopy(d)
    bad["loss_overrides"] = {"mask_train": {"reweight": {"epoch": 3}}}
    with pytest.raises(SpecError, match=r"field 'loss_overrides.mask_train.reweight': unknown key 'epoch'"):
        parse_spec(bad)


def test_sweep_level_amp_and_grad_clip_mode():
    spec = parse_spec({**BASE, "amp": "off", "mask_train": {"amp": "bf16", "grad_clip_mode": "per_tensor"}})
    assert {spec.train_config(s, "synthetic", 0)["amp"] for s in ("finetune", "mask_train", "imp", "retrain")} == {"off"}
    assert spec.train_config("mask_train", "synthetic", 0)["grad_clip_mode"] == "per_tensor"
    assert parse_spec(BASE).train_config("finetune", "synthetic", 0)["amp"] == "auto"  # bf16 on a GPU
    with pytest.raises(SpecError, match="field 'amp'"):
        parse_spec({**BASE, "amp": "fp16"})


def test_bias_source_file_needs_an_existing_file_per_task(tmp_path):
    path = tmp_path / "bias.npy"
    np.save(path, np.log(np.full((4, 2), 0.5)))
    spec = parse_spec({**BASE, "bias_source": "file", "bias_files": {"synthetic": str(path)}})
    assert spec.bias_file("synthetic") == str(path)
    assert parse_spec(BASE).bias_file("synthetic") is None
    with pytest.raises(SpecError, match="bias_files.synthetic: bias_source is 'file' but no file"):
        parse_spec({**BASE, "bias_source": "file"})
    with pytest.raises(SpecError, match="does not exist"):
        parse_spec({**BASE, "bias_source": "file", "bias_files": {"synthetic": str(tmp_path / "nope.npy")}})
    with pytest.raises(SpecError, match="bias_files.mnli: task 'mnli' is not in the sweep"):
        parse_spec({**BASE, "bias_files": {"mnli": str(path)}})


def test_gradual_defaults_follow_the_reference():
    spec = parse_spec(BASE)
    assert spec.paradigm_options.gradual.loss == "poe"  # the reference's gradual runs used PoE
    # the reference: --final_sparsity_epoch = the number of epochs (s_f at the end), selection among the evals
    # from 0.7 of training at any sparsity (issue 19 item 2); GMP keeps Sparse*BERT's recovery epoch
    assert spec.paradigm_options.gradual.end is None and spec.paradigm_options.gradual.select == "any"
    assert spec.gmp_options.end == "last_epoch"
    assert parse_spec({**BASE, "paradigm_options": {"full": {"losses": ["reweight", "conf_reg"]}}}
                      ).paradigm_options.full.losses == ["reweight", "conf_reg"]


def test_full_grid_follows_the_protocol():
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    spec = load_spec("sweeps/full_grid.yaml")
    for task in ("mnli", "qqp", "fever"):
        assert spec.train_config("imp", task, 0, "std")["warmup_steps"] == 0  # the reference IMP: no warm-up
    assert spec.train_config("finetune", "mnli", 0, "poe")["epochs"] == 5
    assert spec.train_config("finetune", "mnli", 0, "conf_reg")["epochs"] == 5
    assert spec.train_config("finetune", "mnli", 0, "std")["epochs"] == 3
    assert spec.train_config("mask_train", "mnli", 0, "reweight")["epochs"] == 3
    assert spec.train_config("mask_train", "mnli", 0, "poe")["epochs"] == 5
    assert spec.train_config("retrain", "mnli", 0, "poe")["epochs"] == 5
    assert spec.train_config("mask_train", "qqp", 0, "std")["grad_clip_mode"] == "per_tensor"
    assert spec.train_config("mask_train", "mnli", 0, "std")["grad_clip_mode"] == "global"
    assert spec.paradigm_options.gradual.loss == "poe"
    plan = build_plan(spec)
    ood_tasks = {n.stage_config["task"] for n in plan.nodes.values()
                 if n.stage_config.get("task_options", {}).get("add_ood_train")}
    assert ood_tasks == {"mnli", "qqp", "fever"}  # SUNets on all three tasks
    gradual = [n for n in plan.nodes.values() if n.stage_config.get("gradual")]
    assert gradual and {n.stage_config["loss"] for n in gradual} == {"poe"}
    assert {n.stage_config["gradual"]["end"] for n in gradual} == {None}
    assert {n.stage_config["gradual"]["select"] for n in gradual} == {"any"}
    assert {n.stage_config["train"]["select_from"] for n in gradual} == {0.7}
