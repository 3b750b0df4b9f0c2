"""A pruning method added in one place: tests/plugins/toy_method.py declares its options dataclass, its run
function and one ``register(StageKind(...))``; a spec naming it in ``plugins:`` validates, plans and runs end to
end with no edit to orchestrator/ or spec.py. Also: every stage list the code uses is derived from the
registry."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import yaml

from orchestrator.plan import build_plan
from orchestrator.spec import SpecError, parse_spec
from srnet_core.stages import REGISTRY, unregister
from srnet_core.stages.registry import PLUGINS_ENV

PLUGIN = os.path.join(os.path.dirname(__file__), "plugins", "toy_method.py")
SPEC = {
    "name": "toy", "max_length": 40, "plugins": [PLUGIN],
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.3, 0.6], "seeds": [0, 1],
             "methods": ["toy_random", "mask_train"]},
    "task_options": {"synthetic": {"n_train": 128, "n_dev": 64, "n_ood": 64}},
    "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
    "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
    "toy_random_options": {"salt": 3},
    "resources": {"cpus_per_trial": 1, "stages": {"toy_random": {"gpus": 0}}},
}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    yield
    unregister("toy_random")
    sys.modules.pop("srnet_plugin_toy_method", None)


def _spec(**changes):
    d = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return d


def test_a_plugin_method_validates_and_plans(toy, tmp_path):
    spec = parse_spec({**_spec(), "output_dir": str(tmp_path)})
    assert "toy_random" in REGISTRY and os.environ[PLUGINS_ENV] == PLUGIN
    plan = build_plan(spec)
    toy_nodes = [n for n in plan.nodes.values() if n.stage == "toy_random"]
    # one node per (seed, sparsity), from that seed's std fine-tune, with the spec's options in its key
    assert len(toy_nodes) == 2 * 2
    assert sorted((n.stage_config["seed"], n.stage_config["sparsity"]) for n in toy_nodes) == [
        (0, 0.3), (0, 0.6), (1, 0.3), (1, 0.6)]
    for n in toy_nodes:
        assert n.stage_config["toy_random"] == {"salt": 3, "order": "random"}
        assert n.columns["method"] == "toy_random" and n.columns["target_sparsity"] == n.stage_config["sparsity"]
        (init,) = n.inputs.values()
        assert init.node.stage == "finetune" and init.node.stage_config["seed"] == n.stage_config["seed"]
        assert "train" not in n.stage_config and "loss" not in n.stage_config  # it reads neither
    # the other method's nodes are unchanged by the plugin being there
    without = build_plan(parse_spec({**_spec(**{"grid.methods": ["mask_train"]}), "output_dir": str(tmp_path)}))
    assert {k for k, n in plan.nodes.items() if n.stage != "toy_random"} == set(without.nodes)
    # an option changes exactly the toy nodes' keys
    salted = build_plan(parse_spec({**_spec(**{"toy_random_options.salt": 4}), "output_dir": str(tmp_path)}))
    changed = set(plan.nodes) ^ set(salted.nodes)
    assert {plan.nodes.get(k, salted.nodes.get(k)).stage for k in changed} == {"toy_random"} and len(changed) == 8


@pytest.mark.parametrize("path,value,expected", [
    ("toy_random_options.salt", -1, "field 'toy_random_options.salt': must be >= 0"),
    ("toy_random_options.sault", 1, "unknown key 'toy_random_options.sault'"),
    ("toy_random_options.order", "sorted", "toy_random_options.order"),
    ("grid.methods", ["toy_randm"], "unknown method 'toy_randm'"),
    ("resources.stages", {"toy_randm": {"gpus": 0}}, "unknown stage kind 'toy_randm'"),
    ("plugins", ["/nonexistent/toy.py"], "field 'plugins': cannot import"),
])
def test_plugin_mistakes_are_one_line(toy, tmp_path, path, value, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({**_spec(**{path: value}), "output_dir": str(tmp_path)})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_without_the_plugin_the_method_is_unknown(toy, tmp_path):
    d = _spec()
    d.pop("plugins")
    d.pop("toy_random_options")
    with pytest.raises(SpecError, match="unknown method 'toy_random'"):
        parse_spec({**d, "output_dir": str(tmp_path)})


def test_stage_lists_are_derived_from_the_registry():
    """The spec's sections, methods and resources.stages keys, the planner's key fields, the memory classes and
    the published stages all come from the registry (the issue counted ~15 hand-written lists)."""
    from orchestrator.plan import STAGE_FIELDS
    from orchestrator.spec import spec_model
    from srnet_core.stages.registry import method_names, train_sections

    model = spec_model()
    assert train_sections() == ["finetune", "mask_train", "imp", "gmp", "retrain"]
    for section in train_sections():
        assert section in model.model_fields
    for kind in REGISTRY.values():
        assert STAGE_FIELDS[kind.name] == kind.key_fields
        if kind.options is not None:
            assert model.model_fields[kind.options_section].annotation is kind.options
    assert method_names() == ["mask_train", "imp", "gmp", "structured", "super_tickets"]
    assert not REGISTRY["teacher"].publishes and REGISTRY["bias_model"].memory == "cpu"


@pytest.mark.slow
def test_a_plugin_method_runs_end_to_end(toy, ray_env, tmp_path):
    from orchestrator import launch, results

    spec = {**_spec(**{"grid.seeds": [0], "grid.methods": ["toy_random"]}), "output_dir": str(tmp_path / "out")}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert launch.main([str(path)]) == 0
    frame = results.load(str(tmp_path / "out"))
    toy_rows = frame[frame["method"] == "toy_random"]
    assert set(toy_rows["target_sparsity"]) == {0.3, 0.6} and (toy_rows["status"] == "completed").all()
    # exact top-k per matrix: the measured encoder sparsity is the target (floor per matrix, tiny-bert's
    # matrices have 64 * 64, 64 * 256 and 256 * 64 entries, all divisible at 0.3 / 0.6 within one entry)
    for target, measured in toy_rows.groupby("target_sparsity")["measured_sparsity"].first().items():
        assert abs(measured - target) < 1e-3
    assert set(toy_rows["cfg.toy_random.salt"]) == {3}
    assert launch.main([str(path)]) == 0  # relaunch: everything complete, nothing re-run
    assert len(results.load(str(tmp_path / "out"))) == len(frame)
