"""sweeps/full_grid.yaml, item by item against the reference scripts (issue 19; the whole table is checked by
tests/test_reference_conformance.py). Each test failed on the full_grid before the issue."""
from __future__ import annotations

import os

import pytest

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec, parse_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_GRID = os.path.join(REPO, "sweeps", "full_grid.yaml")


@pytest.fixture(scope="module")
def plan():
    spec = load_spec(FULL_GRID)
    return spec, build_plan(spec)


def nodes(plan, **where):
    out = []
    for n in plan.nodes.values():
        c = {**n.columns, "stage": n.stage}
        if c.get("backbone") != "bert-base-uncased" or c.get("seed") != 0:
            continue
        if all(c.get(k) == v for k, v in where.items()):
            out.append(n)
    assert out, where
    return out


def train(node):
    return node.stage_config["train"]


def test_ood_upper_bound_has_its_own_training_settings(plan):
    """Item 3: MNLI 3 epochs at lr 2e-5 (7 at 0.9 from the fine-tuned model); QQP 3 epochs without warm-up
    from the pre-trained model, 5 from the fine-tuned one at 0.7/0.9; FEVER 3 epochs (5 at 0.9 from the
    fine-tuned model). Re-training of its masks: the task's retrain settings."""
    _, p = plan
    expect = {  # (task, base paradigm, sparsity) -> (epochs, lr, warmup)
        **{("mnli", b, s): (3, 2e-5, 3600) for b in "ac" for s in (0.2, 0.5, 0.7, 0.9)},
        ("mnli", "a", 0.9): (7, 2e-5, 3600),
        **{("qqp", b, s): (3, 2e-5, 0) for b in "ac" for s in (0.2, 0.5, 0.7, 0.9)},
        ("qqp", "a", 0.7): (5, 2e-5, 0), ("qqp", "a", 0.9): (5, 2e-5, 0),
        **{("fever", b, s): (3, 2e-5, 0) for b in "ac" for s in (0.2, 0.5, 0.7, 0.9)},
        ("fever", "a", 0.9): (5, 2e-5, 0),
    }
    for (task, base, s), (epochs, lr, warmup) in expect.items():
        (n,) = nodes(p, stage="mask_train", paradigm="ood_upper_bound", task=task, base_paradigm=base,
                     target_sparsity=s)
        t = train(n)
        assert (t["epochs"], t["lr"], t["warmup_steps"]) == (epochs, lr, warmup), (task, base, s)
    for task, (epochs, lr, warmup) in {"mnli": (3, 5e-5, 3600), "qqp": (3, 2e-5, 3400), "fever": (3, 2e-5, 0)}.items():
        for n in nodes(p, stage="retrain", paradigm="ood_upper_bound", task=task):
            t = train(n)
            assert (t["epochs"], t["lr"], t["warmup_steps"]) == (epochs, lr, warmup), task


def test_qqp_clips_per_tensor_except_imp(plan):
    """Item 4: --global_grad_clip false in QQP fine-tuning (all four losses), mask training and every
    re-training; QQP IMP clips globally."""
    _, p = plan
    for stage in ("finetune", "mask_train", "retrain"):
        for n in nodes(p, stage=stage, task="qqp"):
            assert train(n)["grad_clip_mode"] == "per_tensor", (stage, n.columns)
    assert {train(n)["grad_clip_mode"] for n in nodes(p, stage="finetune", task="qqp")} == {"per_tensor"}
    assert len({n.columns["loss"] for n in nodes(p, stage="finetune", task="qqp")}) == 4
    for n in nodes(p, stage="imp", task="qqp"):
        assert train(n)["grad_clip_mode"] == "global"
    for n in nodes(p, stage="finetune", task="mnli") + nodes(p, stage="retrain", task="fever"):
        assert train(n)["grad_clip_mode"] == "global"


def test_fever_finetuning_evaluates_every_500_steps(plan):
    """Item 5: FEVER fine-tuning (all four losses) evaluates every 500 steps (--logging_steps 500)."""
    _, p = plan
    fts = nodes(p, stage="finetune", task="fever")
    assert len(fts) == 4 and {train(n)["eval_every"] for n in fts} == {500}
    assert {train(n)["eval_every"] for n in nodes(p, stage="finetune", task="mnli")} == {1000}


def test_retraining_depends_on_what_is_retrained(plan):
    """Item 6: on MNLI the rewound-IMP masks are re-trained 5 epochs with std and PoE; the mask-training
    masks 3 epochs with std, 5 with PoE; QQP and FEVER 3 epochs everywhere."""
    _, p = plan
    for s in (0.2, 0.5, 0.7, 0.9):
        for loss, source, epochs in (("std", "imp_rw", 5), ("poe", "imp_rw", 5), ("std", "mask_train", 3),
                                     ("poe", "mask_train", 5)):
            (n,) = nodes(p, stage="retrain", paradigm="b", task="mnli", loss=loss, mask_source=source,
                         target_sparsity=s)
            assert train(n)["epochs"] == epochs, (loss, source, s)
    for task in ("qqp", "fever"):
        assert {train(n)["epochs"] for n in nodes(p, stage="retrain", paradigm="b", task=task)} == {3}


def test_full_grid_trains_and_evaluates_in_fp32(plan):
    """Item 7: the reference runs fp32 (no --fp16 anywhere): every training node of full_grid has amp off."""
    spec, p = plan
    assert spec.amp == "off"
    assert {n.stage_config["train"]["amp"] for n in p.nodes.values() if "train" in n.stage_config} == {"off"}


BASE = {"name": "t", "output_dir": "/tmp/srnet-test-out",
        "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.7], "seeds": [0],
                 "paradigms": ["a", "b", "ood_upper_bound"]},
        "paradigm_options": {"b": {"mask_sources": ["imp_rw", "mask_train"]}, "ood_upper_bound": {"paradigms": ["a", "b", "c"]}}}


def test_by_source_and_by_sparsity_select_nodes():
    spec = parse_spec({**BASE, "paradigm_overrides": {
        "ood_upper_bound": {"mask_train": {"epochs": 3},
                            "by_source": {"a": {"mask_train": {"lr": 1e-4}, "by_sparsity": {0.7: {"mask_train": {"epochs": 7}}}}}},
        "b": {"by_source": {"imp_rw": {"retrain": {"epochs": 5}}}}}})
    assert spec.train_config("mask_train", "synthetic", 0, "std", "ood_upper_bound", "c", 0.7)["epochs"] == 3
    a7 = spec.train_config("mask_train", "synthetic", 0, "std", "ood_upper_bound", "a", 0.7)
    assert a7["epochs"] == 7 and a7["lr"] == 1e-4
    assert spec.train_config("mask_train", "synthetic", 0, "std", "ood_upper_bound", "a", 0.5)["epochs"] == 3
    assert spec.train_config("retrain", "synthetic", 0, "std", "b", "imp_rw", 0.5)["epochs"] == 5
    assert spec.train_config("retrain", "synthetic", 0, "std", "b", "mask_train", 0.5)["epochs"] == 1.0


def test_by_source_rekeys_only_the_nodes_it_touches():
    before = build_plan(parse_spec(BASE))
    after = build_plan(parse_spec({**BASE, "paradigm_overrides": {
        "b": {"by_source": {"imp_rw": {"retrain": {"epochs": 5}}}},
        "ood_upper_bound": {"by_source": {"a": {"by_sparsity": {0.7: {"mask_train": {"epochs": 7}}}}}}}}))
    gone = {k: n for k, n in before.nodes.items() if k not in after.nodes}
    assert gone and all(
        (n.stage == "retrain" and n.columns.get("mask_source") == "imp_rw")
        or (n.columns.get("paradigm") == "ood_upper_bound" and n.columns.get("target_sparsity") == 0.7
            and n.columns.get("base_paradigm") in ("a", "b"))
        for n in gone.values()), [(n.stage, n.columns) for n in gone.values()]
    assert len(after.nodes) == len(before.nodes)


def test_override_errors_name_the_nested_field():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match=r"ood_upper_bound\.mask_train \(task synthetic, source a, sparsity 0\.7\)\.epochs"):
        parse_spec({**BASE, "paradigm_overrides": {"ood_upper_bound": {"by_source": {"a": {"by_sparsity": {
            0.7: {"mask_train": {"epochs": -1}}}}}}}})


def test_projection_follows_each_tasks_evaluation_cadence(plan):
    """Item 8: the reference re-thresholds the masks at each evaluation (strict >): every 1,000 steps on MNLI
    and QQP, 500 on FEVER; full_grid's `reproject_every: eval` plans exactly that per node."""
    _, p = plan
    for task, every in (("mnli", 1000), ("qqp", 1000), ("fever", 500)):
        ns = nodes(p, stage="mask_train", task=task)
        assert {n.stage_config["mask"]["reproject_every"] for n in ns} == {every}, task
        assert all(n.stage_config["mask"]["reproject_every"] == train(n)["eval_every"] for n in ns)


def test_reproject_every_eval_is_resolved_by_the_planner():
    from srnet_core.masks import MaskConfig

    spec = parse_spec({**BASE, "mask": {"reproject_every": "eval"}, "mask_train": {"eval_every": 7}})
    p = build_plan(spec)
    assert {n.stage_config["mask"]["reproject_every"] for n in p.nodes.values() if n.stage == "mask_train"} == {7}
    MaskConfig(reproject_every="eval")  # valid in a spec...
    import torch
    with pytest.raises(ValueError, match="planner resolves"):  # ...never in a stage
        from srnet_core.masks import MaskSet
        MaskSet(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"], MaskConfig(reproject_every="eval"))


def test_timing_starts_at_the_reference_steps(plan):
    """Item 9: mask training (0.7, PoE) from the std fine-tune's weights at steps 5,000, 10,000, 15,000 and
    20,000 on every task (and from the end); each fine-tune saves every 5,000 steps below its end."""
    _, p = plan
    for task in ("mnli", "qqp", "fever"):
        (ft,) = nodes(p, stage="finetune", task=task, loss="std")
        saved = ft.stage_config["save_steps"]
        assert saved[:4] == [5000, 10000, 15000, 20000] and all(s % 5000 == 0 for s in saved)
        starts = {n.columns["start_step"]: n.inputs["init_weights"].filename
                  for n in nodes(p, stage="mask_train", paradigm="timing", task=task)}
        for step in (5000, 10000, 15000, 20000):
            assert starts[step] == f"weights_step{step}.safetensors", (task, step)


def test_timing_steps_must_be_saved():
    from orchestrator.spec import SpecError

    d = {**BASE, "grid": {**BASE["grid"], "paradigms": ["timing"]},
         "paradigm_options": {"timing": {"steps": [5000], "sparsity": 0.7, "loss": "std"}}}
    with pytest.raises(SpecError, match=r"timing.steps: 5000 is not a saved checkpoint of the synthetic"):
        build_plan(parse_spec(d))


def test_gradual_and_fixed_across_mask_training_epochs(plan):
    """Item 11: gradual 0.7 -> 0.9 and fixed 0.9 (PoE, from the std fine-tuned model) at 1, 3, 5 and 7 epochs;
    the fixed run at the task's own epochs is paradigm (a)'s PoE 0.9 node."""
    _, p = plan
    for task, own in (("mnli", 5), ("qqp", 7), ("fever", 7)):
        grad = nodes(p, stage="mask_train", paradigm="gradual", task=task, schedule="gradual")
        assert sorted(train(n)["epochs"] for n in grad) == [1, 3, 5, 7]
        assert all(n.columns["mask_epochs"] == train(n)["epochs"] and n.stage_config["gradual"] for n in grad)
        fixed = nodes(p, stage="mask_train", paradigm="gradual", task=task, schedule="fixed")
        assert sorted(train(n)["epochs"] for n in fixed) == sorted({1, 3, 5, 7} - {own})
        assert all(not n.stage_config.get("gradual") and n.stage_config["mask"]["init"] == "magnitude"
                   and n.stage_config["sparsity"] == 0.9 and n.stage_config["loss"] == "poe" for n in fixed)
        (a,) = nodes(p, stage="mask_train", paradigm="a", task=task, loss="poe", finetune_loss="std",
                     target_sparsity=0.9)
        assert train(a)["epochs"] == own


def test_gradual_epochs_axis_rekeys_nothing():
    d = {**BASE, "grid": {**BASE["grid"], "paradigms": ["a", "gradual"], "losses": ["poe"]}}
    before = build_plan(parse_spec(d))
    d2 = {**d, "paradigm_options": {**BASE["paradigm_options"],
                                    "gradual": {"epochs": [1.0, 2.0], "fixed_baseline": True}}}
    after = build_plan(parse_spec(d2))
    assert set(before.nodes) <= set(after.nodes) and len(after.nodes) == len(before.nodes) + 3  # 2x1 + 1 fixed
