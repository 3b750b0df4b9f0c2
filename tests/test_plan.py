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
    assert len(stages(plan, "teacher")) == 2  # one per (task, backbone, seed)
    for node in stages(plan, "mask_train"):
        teacher = node.inputs["teacher_file"]
        assert teacher.filename == "teacher.parquet" and teacher.node.stage == "teacher"
        ft = teacher.node.inputs["init_weights"].node
        assert ft.stage == "finetune" and ft.stage_config["loss"] == "std"
        assert ft.stage_config["seed"] == node.stage_config["seed"]
        assert wave_of[node.key] > wave_of[teacher.node.key] > wave_of[ft.key]
    # the teacher is its own node: the fine-tune is the same with or without conf_reg
    assert {n.key for n in stages(plan, "finetune")} == {n.key for n in stages(build_plan(spec_with()), "finetune")}


def test_timing_fractions_on_the_checkpoint_grid():
    d = copy.deepcopy(BASE)
    d["grid"]["paradigms"] = ["timing"]
    d["paradigm_options"] = {"timing": {"fractions": [0.4, 0.45], "sparsity": 0.7, "loss": "std"}}
    with pytest.raises(SpecError, match=r"timing.fractions: 0.45 is not a saved fine-tuning checkpoint"):
        build_plan(parse_spec(d))
    d["paradigm_options"]["timing"]["fractions"] = [0.4, 0.8]
    plan = build_plan(parse_spec(d))
    ft = stages(plan, "finetune")
    assert all(n.stage_config["save_fractions"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] for n in ft)
    timing = [n for n in stages(plan, "mask_train") if n.stage_config["seed"] == 0]
    files = sorted(n.inputs["init_weights"].filename for n in timing)
    assert files == ["weights.safetensors", "weights_f0.4.safetensors", "weights_f0.8.safetensors"]
    # 320 examples / 32 = 10 steps: the checkpoints are at steps 4 and 8
    assert sorted(n.columns["start_step"] for n in timing) == [4, 8, 10]


def test_planner_owned_fields_are_rejected():
    for section, value, match in (("finetune", {"seed": 3}, r"field 'finetune.seed': set by the planner"),
                                  ("mask_train", {"select_from": 0.5}, r"field 'mask_train.select_from'")):
        d = copy.deepcopy(BASE)
        d[section] = value
        with pytest.raises(SpecError, match=match):
            build_plan(parse_spec(d))
    d = copy.deepcopy(BASE)
    d["task_overrides"] = {"synthetic": {"retrain": {"seed": 1}}}
    with pytest.raises(SpecError, match=r"task_overrides.synthetic.retrain.seed"):
        build_plan(parse_spec(d))
    d = copy.deepcopy(BASE)
    d["mask"] = {"sparsity": 0.3}
    with pytest.raises(SpecError, match=r"field 'mask.sparsity': set by the planner from grid.sparsities"):
        build_plan(parse_spec(d))
    d = copy.deepcopy(BASE)
    d["device"] = "cpu"
    with pytest.raises(SpecError, match=r"field 'device': set per node from resources"):
        build_plan(parse_spec(d))


def test_stages_get_only_the_fields_they_read():
    d = copy.deepcopy(BASE)
    d["grid"].update(paradigms=["a", "b"], methods=["mask_train", "imp"], seeds=[0])
    d["paradigm_options"] = {"b": {"mask_sources": ["mask_train"], "losses": ["std"]}}
    plan = build_plan(parse_spec(d))
    for node in plan.nodes.values():
        assert ("sparsity" in node.stage_config) == (node.stage == "mask_train"), node.stage
        assert ("mask" in node.stage_config) == (node.stage == "mask_train"), node.stage
        assert "sparsity" not in node.stage_config.get("mask", {})  # the node's own sparsity is the one used


def test_every_paradigm_composes():
    d = copy.deepcopy(BASE)
    d["grid"].update(paradigms=["a", "b", "c", "ood_upper_bound", "timing", "gradual"], methods=["mask_train", "imp"],
                     seeds=[0], sparsities=[0.5, 0.9])
    d["paradigm_options"] = {"b": {"mask_sources": ["imp_rw", "mask_train"], "losses": ["std", "poe"]},
                             "ood_upper_bound": {"paradigms": ["a", "b", "c"]},
                             "timing": {"fractions": [0.5], "sparsity": 0.7, "loss": "poe"}}
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
    assert count["finetune"] == 36 * 4  # std, poe (paradigm a) and the dense reweight / conf_reg baselines
    # mask_train: 41, + 3 gradual and 3 fixed-0.9 runs of the epochs axis (issue 19 item 11)
    assert count["mask_train"] == 36 * 47 and count["imp"] == 36 * 6 and count["retrain"] == 36 * 20
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


def test_docs_list_the_paradigm_registry():
    import re
    import typing

    from orchestrator.plan import PARADIGMS, SWEEP_PARADIGMS
    from orchestrator.spec import Paradigm

    with open("docs/spec.md") as f:
        text = f.read()
    section = text.split("## Paradigms and the stages they plan")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    assert documented == set(PARADIGMS) | set(SWEEP_PARADIGMS) == set(typing.get_args(Paradigm))


def test_paradigm_c_sparsities_narrow_the_c_arm_only():
    full = build_plan(spec_with(paradigms=["a", "c"]))
    d = copy.deepcopy(BASE)
    d["grid"].update(paradigms=["a", "c"])
    d["paradigm_options"] = {"c": {"sparsities": [0.5]}}
    narrow = build_plan(parse_spec(d))

    def c_nodes(plan):
        return {n.key: n.stage_config["sparsity"] for n in stages(plan, "mask_train") if "init_weights" not in n.inputs}
    assert sorted(c_nodes(full).values()) == [0.5] * 4 + [0.7] * 4 + [0.9] * 4  # 2 losses x 2 seeds each
    assert sorted(c_nodes(narrow).values()) == [0.5] * 4
    assert set(c_nodes(narrow)) < set(c_nodes(full))  # the same nodes, same keys, fewer of them
    assert len(stages(narrow, "mask_train")) == len(stages(full, "mask_train")) - 8  # (a) untouched
    d["paradigm_options"] = {"c": {"sparsities": [1.5]}}
    with pytest.raises(SpecError, match="outside"):
        parse_spec(d)
