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
PER_CELL = 78  # nodes per (task, backbone, seed) in full_grid, bias models aside (asserted below)


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
    def without(d):  # conf_reg nowhere: neither a pruning loss nor a dense baseline
        d["grid"]["losses"].remove("conf_reg")
        d["paradigm_options"]["full"]["losses"].remove("conf_reg")
    smaller = plan_of(without)
    new = _new(smaller, plan_of())
    assert {n.stage for n in new} == {"teacher", "finetune", "mask_train", "imp"}
    assert all(n.stage == "teacher" or n.stage_config["loss"] == "conf_reg" for n in new)
    assert sum(n.stage == "teacher" for n in new) == 36 and sum(n.stage == "finetune" for n in new) == 36
    _report("conf_reg loss", new, capsys)


def test_adding_a_timing_fraction(base, capsys):
    new = _new(base, plan_of(lambda d: d["paradigm_options"]["timing"].setdefault("fractions", []).append(0.2)))
    assert len(new) == 36 and all(n.columns["paradigm"] == "timing" for n in new)
    assert {n.inputs["init_weights"].filename for n in new} == {"weights_f0.2.safetensors"}
    _report("timing fraction", new, capsys)


def test_adding_a_backbone(base, capsys):
    new = _new(base, plan_of(lambda d: d["grid"]["backbones"].append("minilm")))
    assert len(new) == 3 * 4 * PER_CELL and {n.columns["backbone"] for n in new} == {"minilm"}
    _report("backbone", new, capsys)


def test_adding_super_tickets(base, capsys):
    new = _new(base, plan_of(lambda d: d["grid"]["methods"].append("super_tickets")))
    # per (task, backbone, seed) and grid sparsity: one ticket from the std fine-tune and its re-training
    assert sorted({n.stage for n in new}) == ["retrain", "super_tickets"]
    assert sum(n.stage == "super_tickets" for n in new) == sum(n.stage == "retrain" for n in new) == 36 * 4
    assert all(n.stage == "super_tickets" or n.inputs["mask_file"].node.stage == "super_tickets" for n in new)
    _report("super_tickets", new, capsys)


def _descendants(plan, roots: set[str]) -> set[str]:
    out = set(roots)
    for key, node in plan.nodes.items():  # insertion order is topological
        if any(u.key in out for u in node.upstream):
            out.add(key)
    return out


@pytest.mark.parametrize("stage", ["bias_model", "finetune", "teacher", "mask_train", "imp", "retrain"])
def test_stage_version_rekeys_exactly_that_stage_and_descendants(base, monkeypatch, stage):
    import dataclasses

    from srnet_core.stages import REGISTRY

    monkeypatch.setitem(REGISTRY, stage, dataclasses.replace(REGISTRY[stage], version=REGISTRY[stage].version + "-next"))
    after = plan_of()
    roots = {k for k, n in base.nodes.items() if n.stage == stage}
    expected_changed = _descendants(base, roots)
    assert roots and len(after.nodes) == len(base.nodes)
    unchanged = set(base.nodes) & set(after.nodes)
    assert unchanged == set(base.nodes) - expected_changed


def test_teacher_stage_equals_in_training_teacher(tmp_path):
    """The teacher node gives bit-identical probabilities to the fine-tuned model's own, computed here with the
    fine-tune's evaluation settings; and the fraction grid's checkpoints land on the planned steps."""
    from srnet_core.stages import run_stage

    cfg = {"task": "synthetic", "task_options": {"n_train": 96, "n_dev": 32, "n_ood": 32}, "backbone": "tiny-bert",
           "seed": 1, "max_length": 32, "device": "cpu",
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 3}}
    ft = str(tmp_path / "ft")
    # 96 examples / 16 = 6 steps: 0.1 and 0.2 both fall on step 1, 0.5 on step 3
    run_stage({**cfg, "stage": "finetune", "save_fractions": [0.1, 0.2, 0.5]}, ft)
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
    import torch

    from srnet_core.stages import StageConfig, prepare
    from srnet_core.train import predict_logits

    ctx = prepare(StageConfig.from_dict({**cfg, "stage": "finetune", "init_weights": f"{ft}/weights.safetensors"}))
    logits = predict_logits(ctx.model, ctx.train_enc, 64, ctx.device, "auto")
    a = {"id": list(ctx.train_enc.ids), "probs": list(torch.softmax(torch.from_numpy(logits), -1).numpy())}
    b = pq.read_table(f"{out}/teacher.parquet").to_pandas()
    assert list(a["id"]) == list(b["id"])
    assert np.array_equal(np.stack(a["probs"]), np.stack(b["probs"].to_numpy()))
    assert len(rows) == 1 and rows[0]["eval_role"] == "train" and not rows[0]["selected"]
    probs = np.stack(b["probs"].to_numpy())
    assert 0.0 <= rows[0]["value"] <= 1.0 and probs.shape == (96, 2)


def test_compile_switch_keeps_every_key(base):
    """torch.compile changes speed, not results (tests/test_train_speed.py checks equality): no re-keying."""
    def compiled(d):
        for stage in ("finetune", "mask_train", "imp", "retrain"):
            d[stage]["compile"] = True
    assert set(plan_of(compiled).nodes) == set(base.nodes)


def _descendants(plan, roots: set[str]) -> set[str]:
    out, changed = set(roots), True
    while changed:
        changed = False
        for key, node in plan.nodes.items():
            if key not in out and any(u.key in out for u in node.upstream):
                out.add(key)
                changed = True
    return out


def test_a_per_loss_override_rekeys_exactly_its_nodes(base):
    """task_overrides.mnli.by_loss.retrain.std (protocol 6's per-loss schedules): only MNLI's std re-training
    nodes (and what depends on them) change; every other key stays."""
    def longer(d):
        d["task_overrides"]["mnli"]["by_loss"].setdefault("retrain", {})["std"] = {"epochs": 4}
    changed = plan_of(longer)
    gone = set(base.nodes) - set(changed.nodes)
    # (the rewound-IMP masks' re-training has its own epochs, by_paradigm.b.by_source.imp_rw, which win)
    concerned = {k for k, n in base.nodes.items() if n.stage == "retrain" and n.columns["task"] == "mnli"
                 and n.stage_config["loss"] == "std" and n.columns.get("mask_source") != "imp_rw"}
    assert concerned and gone == _descendants(base, concerned)
    assert len(changed.nodes) == len(base.nodes)
    assert all(n.stage_config["train"]["epochs"] == 4 for k, n in changed.nodes.items()
               if k not in base.nodes and n.stage == "retrain")


def test_protocol_per_loss_epochs_in_full_grid(base):
    """MNLI: PoE and conf_reg fine-tuning 5 epochs, std 3 (protocol 6); the spec's by_loss reaches the nodes."""
    epochs = {(n.columns["task"], n.stage_config["loss"]): n.stage_config["train"]["epochs"]
              for n in base.nodes.values() if n.stage == "finetune"}
    assert epochs[("mnli", "std")] == 3 and epochs[("mnli", "poe")] == 5 and epochs[("mnli", "conf_reg")] == 5


def test_bias_from_file_replaces_bias_model_nodes_and_keys_its_content(tmp_path):
    """bias_source: file: no bias_model node; bias-loss nodes carry the file's sha256 (a changed file re-keys
    them, a moved one does not); std nodes are untouched."""
    import numpy as np

    files = {}
    for task in ("mnli", "qqp", "fever"):
        files[task] = str(tmp_path / f"{task}.npy")
        np.save(files[task], np.zeros((4, 3), dtype=np.float32))

    def from_file(d):
        d["bias_source"] = "file"
        d["bias_files"] = dict(files)
    planned = plan_of(from_file)
    assert "bias_model" not in planned.count_by_stage()
    std_keys = {k for k, n in base_plan_std_keys(planned)}
    assert std_keys and std_keys <= set(plan_of().nodes)  # std nodes (no bias) keep their keys
    poe = [n for n in planned.nodes.values() if n.stage_config.get("loss") == "poe"]
    assert poe and all(n.stage_config["bias_sha256"] and "bias_file" not in n.inputs for n in poe)
    np.save(files["mnli"], np.ones((4, 3), dtype=np.float32))  # new content: MNLI's bias nodes re-key
    changed = plan_of(from_file)
    gone = set(planned.nodes) - set(changed.nodes)
    assert gone and all(planned.nodes[k].columns["task"] == "mnli" for k in gone)
    moved = str(tmp_path / "elsewhere.npy")
    os.replace(files["mnli"], moved)
    files["mnli"] = moved  # same content, another path: the same keys
    assert set(plan_of(from_file).nodes) == set(changed.nodes)


def base_plan_std_keys(plan):
    return [(k, n) for k, n in plan.nodes.items()
            if n.stage in ("finetune", "mask_train") and n.stage_config.get("loss") == "std" and not n.inputs.get("bias_file")
            and n.columns.get("paradigm") in ("full", "c")]


def test_kd_loss_gets_the_std_teacher():
    """kd (Sparse*BERT distillation) as a pruning loss: its nodes read the std fine-tune's teacher node."""
    p = plan_of(lambda d: d["grid"]["losses"].append("kd"))
    kd = [n for n in p.nodes.values() if n.stage_config.get("loss") == "kd"]
    assert kd and all(n.inputs["teacher_file"].node.stage == "teacher" and "bias_file" not in n.inputs for n in kd)


def test_paradigm_overrides_rekey_only_that_paradigms_nodes(base):
    """paradigm_overrides.ood_upper_bound.mask_train (protocol 7: the OOD upper bound trains its masks with
    other epochs and learning rate than paradigm (a)) re-keys exactly the upper bound's mask-training nodes and
    what depends on them; by_paradigm under one task re-keys that task's only."""
    def change(d):  # a field the tasks' own by_paradigm (which apply after) leave alone
        d["paradigm_overrides"] = {"ood_upper_bound": {"mask_train": {"weight_decay": 0.01}}}
    after = plan_of(change)
    roots = {k for k, n in base.nodes.items() if n.stage == "mask_train" and n.columns["paradigm"] == "ood_upper_bound"}
    assert roots and set(base.nodes) & set(after.nodes) == set(base.nodes) - _descendants(base, roots)
    moved = [n for k, n in after.nodes.items() if k not in base.nodes and n.stage == "mask_train"]
    assert len(moved) == len(roots) and all(n.stage_config["train"]["weight_decay"] == 0.01 for n in moved)

    def per_task(d):
        by_paradigm = d.setdefault("task_overrides", {}).setdefault("qqp", {}).setdefault("by_paradigm", {})
        by_paradigm.setdefault("ood_upper_bound", {}).setdefault("mask_train", {})["weight_decay"] = 0.01
    qqp = plan_of(per_task)
    changed = {k for k in base.nodes if k not in qqp.nodes}
    assert changed == _descendants(base, {k for k in roots if base.nodes[k].columns["task"] == "qqp"})
