"""A node's key depends only on what changes its outputs: widening full_grid keeps every existing key, and a
stage's code version re-keys exactly that stage and what depends on it. No training: plans only (plus one
tiny teacher-stage equivalence check)."""
from __future__ import annotations

import copy
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file

from orchestrator import plan as plan_mod
from orchestrator.plan import build_plan, estimate_gpu_hours
from orchestrator.spec import parse_spec

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
with open(os.path.join(REPO, "sweeps", "full_grid.yaml")) as f:
    FULL = yaml.safe_load(f)
PER_CELL = 70  # nodes per (task, backbone, seed) in full_grid, bias models aside (asserted below)


def plan_of(change=None):
    d = copy.deepcopy(FULL)
    if change:
        change(d)
    return build_plan(parse_spec(d, source="full_grid"))


@pytest.fixture(scope="module")
def base():
    return plan_of()


def _new(base_plan, wider):
    assert set(base_plan.nodes) <= set(wider.nodes), "an existing node was re-keyed"
    return [wider.nodes[k] for k in wider.nodes if k not in base_plan.nodes]


def test_full_grid_dedupe(base, capsys):
    count = base.count_by_stage()
    assert count["bias_model"] == 3 and len(base.nodes) == 3 + 36 * PER_CELL
    hours = sum(estimate_gpu_hours(base).values())
    with capsys.disabled():
        print(f"\nfull_grid: {len(base.nodes)} nodes vs {base.naive_runs} naive runs "
              f"({base.naive_runs / len(base.nodes):.2f}x), {hours:,.0f} GPU-hours estimated")
    assert base.naive_runs > 2 * len(base.nodes)


def _report(name, new, capsys):
    hours = sum(plan_mod.node_seconds(n) for n in new) / 3600
    with capsys.disabled():
        print(f"  + {name}: {len(new)} new nodes ({hours:,.0f} GPU-hours), 0 re-keyed")


def test_adding_a_seed(base, capsys):
    new = _new(base, plan_of(lambda d: d["grid"]["seeds"].append(4)))
    assert len(new) == 9 * PER_CELL and {n.columns["seed"] for n in new} == {4}
    _report("seed", new, capsys)


def test_adding_a_sparsity(base, capsys):
    new = _new(base, plan_of(lambda d: d["grid"]["sparsities"].append(0.8)))
    # mask training, re-training (b, OOD) per cell; IMP series and fine-tunes are untouched
    assert new and {n.columns["target_sparsity"] for n in new} == {0.8}
    assert {n.stage for n in new} == {"mask_train", "retrain"}
    _report("sparsity", new, capsys)


def test_adding_the_conf_reg_loss(capsys):
    def without(d):
        d["grid"]["losses"].remove("conf_reg")
    smaller = plan_of(without)
    new = _new(smaller, plan_of())
    assert {n.stage for n in new} == {"teacher", "mask_train", "imp"}
    assert all(n.stage == "teacher" or n.stage_config["loss"] == "conf_reg" for n in new)
    assert sum(n.stage == "teacher" for n in new) == 36
    _report("conf_reg loss", new, capsys)


def test_adding_a_timing_fraction(base, capsys):
    new = _new(base, plan_of(lambda d: d["paradigm_options"]["timing"]["fractions"].append(0.2)))
    assert len(new) == 36 and all(n.columns["paradigm"] == "timing" for n in new)
    assert {n.inputs["init_weights"].filename for n in new} == {"weights_f0.2.safetensors"}
    _report("timing fraction", new, capsys)


def test_adding_a_backbone(base, capsys):
    new = _new(base, plan_of(lambda d: d["grid"]["backbones"].append("minilm")))
    assert len(new) == 3 * 4 * PER_CELL and {n.columns["backbone"] for n in new} == {"minilm"}
    _report("backbone", new, capsys)


def _descendants(plan, roots: set[str]) -> set[str]:
    out = set(roots)
    for key, node in plan.nodes.items():  # insertion order is topological
        if any(u.key in out for u in node.upstream):
            out.add(key)
    return out


@pytest.mark.parametrize("stage", ["bias_model", "finetune", "teacher", "mask_train", "imp", "retrain"])
def test_stage_version_rekeys_exactly_that_stage_and_descendants(base, monkeypatch, stage):
    bumped = dict(plan_mod.STAGE_VERSION, **{stage: plan_mod.STAGE_VERSION[stage] + "-next"})
    monkeypatch.setattr(plan_mod, "STAGE_VERSION", bumped)
    after = plan_of()
    roots = {k for k, n in base.nodes.items() if n.stage == stage}
    expected_changed = _descendants(base, roots)
    assert roots and len(after.nodes) == len(base.nodes)
    unchanged = set(base.nodes) & set(after.nodes)
    assert unchanged == set(base.nodes) - expected_changed


def test_teacher_stage_equals_in_training_teacher(tmp_path):
    """The split-out teacher gives bit-identical probabilities to the fine-tune's own (save_teacher)."""
    from srnet_core.stages import run_stage

    cfg = {"task": "synthetic", "task_options": {"n_train": 96, "n_dev": 32, "n_ood": 32}, "backbone": "tiny-bert",
           "seed": 1, "max_length": 32, "device": "cpu",
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 3}}
    ft = str(tmp_path / "ft")
    # 96 examples / 16 = 6 steps: 0.1 and 0.2 both fall on step 1, 0.5 on step 3
    run_stage({**cfg, "stage": "finetune", "save_teacher": True, "save_fractions": [0.1, 0.2, 0.5]}, ft)
    assert sorted(f for f in os.listdir(ft) if f.startswith("weights")) == [
        "weights.safetensors", "weights_f0.1.safetensors", "weights_f0.2.safetensors", "weights_f0.5.safetensors"]
    first, second = load_file(f"{ft}/weights_f0.1.safetensors"), load_file(f"{ft}/weights_f0.2.safetensors")
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    half = load_file(f"{ft}/weights_f0.5.safetensors")
    assert any(not np.array_equal(half[k].numpy(), first[k].numpy()) for k in half)
    final = load_file(f"{ft}/weights.safetensors")
    assert any(not np.array_equal(half[k].numpy(), final[k].numpy()) for k in half)
    out = str(tmp_path / "teacher")
    rows = run_stage({k: v for k, v in cfg.items() if k not in ("seed", "train")} |
                     {"stage": "teacher", "init_weights": f"{ft}/weights.safetensors",
                      "train": {"eval_batch_size": 64, "amp": "auto"}}, out)
    a = pq.read_table(f"{ft}/teacher.parquet").to_pandas()
    b = pq.read_table(f"{out}/teacher.parquet").to_pandas()
    assert list(a["id"]) == list(b["id"])
    assert np.array_equal(np.stack(a["probs"].to_numpy()), np.stack(b["probs"].to_numpy()))
    assert len(rows) == 1 and rows[0]["eval_role"] == "train" and not rows[0]["selected"]
    probs = np.stack(b["probs"].to_numpy())
    assert 0.0 <= rows[0]["value"] <= 1.0 and probs.shape == (96, 2)


def test_compile_switch_keeps_every_key(base):
    """torch.compile changes speed, not results (tests/test_train_speed.py checks equality): no re-keying."""
    def compiled(d):
        for stage in ("finetune", "mask_train", "imp", "retrain"):
            d[stage]["compile"] = True
    assert set(plan_of(compiled).nodes) == set(base.nodes)
