"""The planner: shared stages collapse, inputs order the waves, impossible requests fail before running."""
from __future__ import annotations

import copy

import pytest

from orchestrator.plan import build_plan, estimate_gpu_hours
from orchestrator.spec import SpecError, load_spec, parse_spec

BASE = {
    "name": "p", "output_dir": "out",
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.7, 0.9], "seeds": [0, 1],
             "losses": ["std", "poe"], "paradigms": ["a"]},
    "task_options": {"synthetic": {"n_train": 320}},
    "finetune": {"batch_size": 32, "epochs": 1},
}


def spec_with(**grid):
    d = copy.deepcopy(BASE)
    d["grid"].update(grid)
    return parse_spec(d)


def stages(plan, stage):
    return [n for n in plan.nodes.values() if n.stage == stage]


def test_shared_finetuning_collapses():
    plan = build_plan(spec_with())
    # 2 losses x 3 sparsities x 2 seeds: one fine-tuning per seed feeds all 6 pruning runs of that seed
    assert len(stages(plan, "finetune")) == 2
    assert len(stages(plan, "mask_train")) == 2 * 3 * 2
    assert len(stages(plan, "bias_model")) == 1  # one bias model per task, whatever the seeds
    for node in stages(plan, "mask_train"):
        assert node.inputs["init_weights"].node.stage == "finetune"
        assert node.inputs["init_weights"].node.stage_config["seed"] == node.stage_config["seed"]
        assert ("bias_file" in node.inputs) == (node.stage_config["loss"] == "poe")
    # a naive expansion fine-tunes (and fits the bias model) again for every pruning run
    assert plan.naive_runs == 12 * 2 + 6  # each of the 12 runs + its fine-tune, + a bias fit for the 6 PoE runs


def test_keys_are_content_hashes():
    a, b = build_plan(spec_with()), build_plan(spec_with())
    assert list(a.nodes) == list(b.nodes)
    wider = build_plan(spec_with(sparsities=[0.5, 0.7, 0.9, 0.95]))
    assert set(a.nodes) < set(wider.nodes)  # widening keeps every existing key
    assert len(set(wider.nodes) - set(a.nodes)) == 2 * 2  # the new sparsity x 2 losses x 2 seeds
    d = copy.deepcopy(BASE)
    d["mask_train"] = {"lr": 0.123}
    changed = build_plan(parse_spec(d))
    assert stages(changed, "finetune")[0].key == stages(a, "finetune")[0].key  # unrelated setting: same FT
    assert {n.key for n in stages(changed, "mask_train")}.isdisjoint({n.key for n in stages(a, "mask_train")})


def test_conf_reg_waits_for_teacher():
    plan = build_plan(spec_with(losses=["conf_reg"]))
    waves = plan.waves()
    wave_of = {n.key: i for i, w in enumerate(waves) for n in w}
    for node in stages(plan, "mask_train"):
        teacher = node.inputs["teacher_file"]
        assert teacher.filename == "teacher.parquet"
        assert teacher.node.stage == "finetune" and teacher.node.stage_config["save_teacher"] is True
        assert teacher.node.stage_config["loss"] == "std"
        assert wave_of[node.key] > wave_of[teacher.node.key]
    # without conf_reg no teacher is computed (and the fine-tuning key is different)
    assert all(not n.stage_config["save_teacher"] for n in stages(build_plan(spec_with()), "finetune"))


def test_timing_fails_early_for_unsaved_step():
    d = copy.deepcopy(BASE)
    d["grid"]["paradigms"] = ["timing"]
    d["paradigm_options"] = {"timing": {"steps": [4, 50], "sparsity": 0.7, "loss": "std"}}
    with pytest.raises(SpecError, match=r"timing.steps: step 50 is not saved .* runs 10 steps"):
        build_plan(parse_spec(d))
    d["paradigm_options"]["timing"]["steps"] = [4, 8]
    plan = build_plan(parse_spec(d))
    ft = stages(plan, "finetune")
    assert all(n.stage_config["save_steps"] == [4, 8] for n in ft)
    files = sorted(n.inputs["init_weights"].filename for n in stages(plan, "mask_train") if n.stage_config["seed"] == 0)
    assert files == ["weights.safetensors", "weights_step4.safetensors", "weights_step8.safetensors"]


def test_every_paradigm_composes():
    d = copy.deepcopy(BASE)
    d["grid"].update(paradigms=["a", "b", "c", "ood_upper_bound", "timing", "gradual"], methods=["mask_train", "imp"],
                     seeds=[0], sparsities=[0.5, 0.9])
    d["paradigm_options"] = {"b": {"mask_sources": ["imp_rw", "mask_train"], "losses": ["std", "poe"]},
                             "ood_upper_bound": {"paradigms": ["a", "b", "c"]},
                             "timing": {"steps": [5], "sparsity": 0.7, "loss": "poe"}}
    plan = build_plan(parse_spec(d))
    count = plan.count_by_stage()
    assert count["finetune"] == 1 and count["bias_model"] == 1
    assert count["imp"] == 2 + 1  # (a) with std and poe, + the rewinding series for (b)
    # retrain: (b) 2 sources x 2 sparsities x 2 losses + OOD (b) 2 sparsities
    assert count["retrain"] == 8 + 2
    imp_rw = [n for n in stages(plan, "imp") if n.stage_config["imp"]["rewind"] == "pretrained"]
    assert len(imp_rw) == 1 and "init_weights" not in imp_rw[0].inputs and imp_rw[0].stage_config["loss"] == "poe"
    ood = [n for n in plan.nodes.values() if n.stage_config.get("task_options", {}).get("add_ood_train")]
    # OOD data goes into mask training only (protocol 6): from the FT model (its masks also feed (b)'s
    # re-training, on ID data) and from the PLM
    assert len(ood) == 2 + 2 and all(n.stage == "mask_train" for n in ood)
    gradual = [n for n in stages(plan, "mask_train") if n.stage_config.get("gradual")]
    assert len(gradual) == 1 and gradual[0].stage_config["mask"]["init"] == "magnitude_soft"
    assert all(w for w in plan.waves())


def test_imp_levels_must_contain_paradigm_b_sparsity():
    d = copy.deepcopy(BASE)
    d["grid"].update(paradigms=["b"], sparsities=[0.55])
    d["paradigm_options"] = {"b": {"mask_sources": ["imp_rw"]}}
    with pytest.raises(SpecError, match="0.55 is not an IMP level"):
        build_plan(parse_spec(d))


def test_full_grid_dry_run_plan():
    spec = load_spec("sweeps/full_grid.yaml")
    plan = build_plan(spec)
    count = plan.count_by_stage()
    # 3 tasks x 3 backbones x 4 seeds, fine-tuned with std and PoE
    assert count["finetune"] == 72
    assert count["mask_train"] == 36 * 41 and count["imp"] == 36 * 6 and count["retrain"] == 36 * 20
    assert plan.naive_runs > 2 * len(plan.nodes)
    hours = estimate_gpu_hours(plan)
    assert 1_000 < sum(hours.values()) < 50_000


def test_resources_per_stage_and_no_phantom_gpu():
    from orchestrator.launch import node_resources

    d = copy.deepcopy(BASE)
    d["resources"] = {"cpus_per_trial": 2, "gpus_per_trial": "auto",
                      "stages": {"mask_train": {"gpus": 0.5}, "finetune": {"cpus": 4}}}
    spec = parse_spec(d)
    gpu_cluster = {"CPU": 16, "GPU": 2}
    assert node_resources(spec, "mask_train", 8, gpu_cluster) == {"cpu": 2.0, "gpu": 0.5}
    assert node_resources(spec, "finetune", 8, gpu_cluster) == {"cpu": 4.0, "gpu": 1.0}
    assert node_resources(spec, "bias_model", 8, gpu_cluster) == {"cpu": 2.0, "gpu": 0.0}  # scikit-learn: no GPU
    # a CPU-only cluster: "auto" means CPU; an explicit GPU request fails at once, naming the field
    assert node_resources(parse_spec(BASE), "finetune", 3, {"CPU": 2}) == {"cpu": 1.0, "gpu": 0.0}
    assert node_resources(parse_spec(BASE), "finetune", 1, {"CPU": 2}) == {"cpu": 2.0, "gpu": 0.0}
    with pytest.raises(SpecError, match=r"resources.stages.mask_train.gpus': 0.5 GPUs asked .* none"):
        node_resources(spec, "mask_train", 1, {"CPU": 2})
    d["resources"]["stages"]["mask_train"]["gpus"] = 0.3
    with pytest.raises(SpecError, match="does not divide 1"):
        parse_spec(d)
