"""Every field a stage reads is in its key, and the planner puts it there (planning only, no training).

A field missing from a stage kind's key fields (``STAGE_FIELDS``, a view of the stage registry) never reaches the stage: it runs at the default, and nodes that should
differ in that field get one key, so the builder silently keeps the first. Three independent checks:

1. for every stage and every field of ``STAGE_FIELDS[stage]``, a spec that differs only in the spec knob
   behind that field re-keys that stage's nodes (and the knob really changes that field of their configs);
2. every planned node with a grid target sparsity (``target_sparsity`` column) reads that sparsity: its
   ``stage_config["sparsity"]`` equals the column, unless its mask comes in as an input (re-training);
3. per pruning method, the plan has as many nodes as a formula over the spec says (losses x sparsities x
   seeds x tasks x backbones), and exactly those cells.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import pytest
import yaml

from orchestrator.plan import STAGE_FIELDS as _ALL_FIELDS
from orchestrator.plan import build_plan
from srnet_core.stages import REGISTRY

# The stage kinds some paradigm plans (srnet_core.stages.registry; `evaluate` is run directly only).
STAGE_FIELDS = {k: v for k, v in _ALL_FIELDS.items() if REGISTRY[k].planned}
from orchestrator.spec import load_spec, parse_spec

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAPER_SMALL = os.path.join(REPO, "sweeps", "paper_small.yaml")

# One small spec that plans every stage of STAGE_FIELDS: bias_model (poe), finetune, teacher (conf_reg dense
# baseline), mask_train / imp / gmp / structured / super_tickets (paradigm a), retrain (super_tickets' re-train).
BASE = {
    "name": "keys", "output_dir": "out", "max_length": 32,
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0],
             "paradigms": ["a"], "losses": ["poe"],
             "methods": ["mask_train", "imp", "gmp", "structured", "super_tickets"]},
    "paradigm_options": {"full": {"losses": ["conf_reg"]}},
    "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
    "finetune": {"epochs": 1, "batch_size": 16}, "mask_train": {"epochs": 1, "batch_size": 16},
    "imp": {"epochs": 1, "batch_size": 16}, "gmp": {"epochs": 1, "batch_size": 16},
    "retrain": {"epochs": 1, "batch_size": 16},
}


def set_path(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = copy.deepcopy(value)


@dataclass
class Knob:
    """The spec change behind one stage-config field: ``path`` goes from ``before`` to ``after``.

    ``setup``: other spec paths set in both variants (e.g. a paradigm that plans the node); ``select``: which
    of the stage's nodes in the ``before`` plan the change must re-key (default: all of them); ``coupled``:
    other config fields the same spec change legitimately changes too (the seed is also ``train.seed``)."""
    path: str
    before: object
    after: object
    setup: dict = field(default_factory=dict)
    select: Callable | None = None
    coupled: tuple = ()


def _bias_files(tmp) -> tuple[str, str]:
    a, b = tmp / "bias_a.json", tmp / "bias_b.json"
    a.write_text('{"0": [0.1, 0.2, 0.7]}')
    b.write_text('{"0": [0.3, 0.3, 0.4]}')
    return str(a), str(b)


def _non_std(node) -> bool:
    return node.columns.get("loss") != "std"


_B_POE = {"grid.paradigms": ["a", "b"], "paradigm_options.b": {"mask_sources": ["mask_train"], "losses": ["poe"]}}


def knobs(bias_a: str, bias_b: str) -> dict:
    """field -> Knob, with (stage, field) -> Knob where a stage reads the field from elsewhere.

    Most knobs leave the stage's inputs alone, so only the field itself can re-key the node. Three cannot:
    teacher.train and super_tickets.train are the std fine-tune's own settings (changing them re-keys that
    input too), and retrain's losses (std/poe) differ in the bias input; those checks only show that the spec
    change reaches the key, and the column checks below are what catch those fields going missing."""
    bias = Knob("bias_files.synthetic", bias_a, bias_b, setup={"bias_source": "file"}, coupled=("bias_file",),
                select=_non_std)
    return {
        # real tasks (no KEYED_DEFAULTS) so that only the task name differs, not the task options too
        "task": Knob("grid.tasks", ["mnli"], ["qqp"], setup={"task_options": {}}),
        "task_options": Knob("task_options.synthetic.n_train", 64, 96),
        "backbone": Knob("grid.backbones", ["tiny-bert"], ["minilm"]),
        "max_length": Knob("max_length", 32, 40),
        "seed": Knob("grid.seeds", [0], [1], coupled=("train",)),  # the seed is train.seed too
        # poe -> reweight: same inputs (the bias model), so only the loss field can tell the nodes apart
        "loss": Knob("grid.losses", ["poe"], ["reweight"]),
        ("finetune", "loss"): Knob("paradigm_options.full.losses", ["poe"], ["reweight"], select=_non_std),
        # re-training's losses are std/poe only (poe adds the bias input): the paradigm b re-train nodes
        ("retrain", "loss"): Knob("paradigm_options.b.losses", ["std"], ["poe"],
                                  setup={"grid.paradigms": ["a", "b"], "paradigm_options.b.mask_sources": ["mask_train"]},
                                  select=lambda n: n.columns.get("paradigm") == "b"),
        "sparsity": Knob("grid.sparsities", [0.5], [0.25]),
        ("finetune", "train"): Knob("finetune.lr", 5e-5, 1e-4),
        ("teacher", "train"): Knob("finetune.eval_batch_size", 256, 128),  # the std fine-tune's settings
        ("mask_train", "train"): Knob("mask_train.lr", 5e-5, 1e-4),
        ("imp", "train"): Knob("imp.lr", 5e-5, 1e-4),
        ("gmp", "train"): Knob("gmp.lr", 5e-5, 1e-4),
        ("structured", "train"): Knob("mask_train.lr", 5e-5, 1e-4),  # structured trains with mask_train's
        ("super_tickets", "train"): Knob("finetune.batch_size", 16, 32),  # its importance pass: the FT's batch
        ("retrain", "train"): Knob("retrain.lr", 5e-5, 1e-4),
        "mask": Knob("mask.scope", "local", "global"),
        ("mask_train", "gradual"): Knob("paradigm_options.gradual.start", 0.0, 0.5,
                                        setup={"grid.paradigms": ["gradual"]},
                                        select=lambda n: n.columns.get("paradigm") == "gradual"),
        ("gmp", "gradual"): Knob("gmp_options.initial", 0.0, 0.1),
        "imp": Knob("imp_options.scope", "local", "global"),
        "structured": Knob("structured_options.rounds", 1, 2),
        "super_tickets": Knob("super_tickets_options.normalize", True, False),
        "bias_sha256": bias,
        ("retrain", "bias_sha256"): Knob("bias_files.synthetic", bias_a, bias_b, setup={"bias_source": "file", **_B_POE},
                                         coupled=("bias_file",), select=_non_std),
    }


# Fields with no spec knob of their own, and why they cannot go missing unnoticed.
EXEMPT = {
    "stage": "the stage's own name (also a separate entry of the key payload); nothing to vary within a stage "
             "(its presence: test_config_agrees_with_descriptive_columns)",
    "data_dir": "where the data lives, not what it is: kept out of the key (_NOT_IN_KEY); its presence: "
                "test_config_agrees_with_descriptive_columns",
    "device": "kept out of the key; launch sets it on every node from resources; the spec rejects a 'device' field",
    "bias_file": "a path, kept out of the key; its content is keyed as bias_sha256 (tested)",
    "save_fractions": "a planner constant (FT_CHECKPOINT_FRACTIONS) for every std fine-tune: no spec knob",
    "save_steps": "the planner's fixed step grid (FT_CHECKPOINT_EVERY below the run's end) for every std fine-tune: no spec knob",
    "mask_classifier": "set by the planner (always True for mask training): no spec knob",
    ("super_tickets", "loss"): "Super Tickets always prune the std fine-tune with the std loss: no spec knob",
}


def plan_of(changes: dict):
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        set_path(d, path, value)
    return build_plan(parse_spec(d, source="keys"))


def _values(plan, stage: str, name: str) -> list[str]:
    return sorted({json.dumps(n.stage_config.get(name), sort_keys=True, default=str)
                   for n in plan.nodes.values() if n.stage == stage})


@pytest.fixture(scope="module")
def knob_table(tmp_path_factory):
    return knobs(*_bias_files(tmp_path_factory.mktemp("bias")))


CASES = [(stage, name) for stage, names in STAGE_FIELDS.items() for name in names
         if (stage, name) not in EXEMPT and name not in EXEMPT]


def test_every_stage_is_planned_by_the_base_spec():
    assert set(plan_of({}).count_by_stage()) == set(STAGE_FIELDS), "extend BASE so that it plans every stage"


def test_exemptions_name_key_fields():
    for entry in EXEMPT:
        if isinstance(entry, tuple):
            assert entry[1] in STAGE_FIELDS.get(entry[0], ()), f"stale exemption {entry}"
        else:
            assert any(entry in names for names in STAGE_FIELDS.values()), f"stale exemption {entry!r}"


@pytest.mark.parametrize("stage,name", CASES, ids=[f"{s}.{f}" for s, f in CASES])
def test_each_key_field_rekeys_its_stage(stage, name, knob_table):
    knob = knob_table.get((stage, name)) or knob_table.get(name)
    assert knob is not None, (f"STAGE_FIELDS['{stage}'] lists '{name}' but this test knows no spec change for it: "
                              "add one to knobs() (or to EXEMPT, with the reason it needs none)")
    before = plan_of({**knob.setup, knob.path: knob.before})
    after = plan_of({**knob.setup, knob.path: knob.after})
    nodes = [n for n in before.nodes.values() if n.stage == stage and (knob.select is None or knob.select(n))]
    assert nodes, f"the spec for {stage}.{name} plans no {stage} node to compare"
    assert any(n.stage == stage for n in after.nodes.values()), f"{knob.path}={knob.after!r} plans no {stage} node"
    # the knob is the right one: it changes this field of the stage's configs, and no other field
    assert _values(before, stage, name) != _values(after, stage, name), \
        f"{knob.path}: {knob.before!r} -> {knob.after!r} does not change {stage}.{name}"
    for other in STAGE_FIELDS[stage]:
        if other != name and other not in knob.coupled:
            assert _values(before, stage, other) == _values(after, stage, other), \
                f"{knob.path} changes {stage}.{other} too, not only {stage}.{name}"
    kept = [n for n in nodes if n.key in after.nodes]
    assert not kept, (f"{stage}.{name} is not in the key: {knob.path} {knob.before!r} -> {knob.after!r} leaves "
                      f"{len(kept)} of {len(nodes)} {stage} node(s) with the same key, e.g. {kept[0].columns}")


# -- the planner's view of sparsity and the grid's size ------------------------------------------------------
def _spec_paper_small():
    return load_spec(PAPER_SMALL)


def _spec_base_two_sparsities():
    d = copy.deepcopy(BASE)
    d["grid"]["sparsities"] = [0.25, 0.5]
    d["grid"]["losses"] = ["std", "poe"]
    d["paradigm_options"]["a"] = {"finetune_losses": ["std", "poe"]}
    return parse_spec(d, source="base")


SPECS = {"paper_small": _spec_paper_small, "base": _spec_base_two_sparsities}


@pytest.mark.parametrize("which", sorted(SPECS))
def test_planned_sparsity_is_the_target_sparsity(which):
    plan = build_plan(SPECS[which]())
    checked = 0
    for node in plan.nodes.values():
        target = node.columns.get("target_sparsity")
        if not isinstance(target, (int, float)) or not math.isfinite(target):
            continue  # IMP: its own series of levels
        if "sparsity" in node.stage_config:
            assert node.stage_config["sparsity"] == pytest.approx(target), (node.stage, node.columns)
            checked += 1
        elif target > 0:
            # a sparse result whose stage does not read a sparsity must take its mask as an input
            assert "mask_file" in node.inputs, (
                f"{node.stage} node at target sparsity {target} has no 'sparsity' in its config (is it missing "
                f"from STAGE_FIELDS['{node.stage}']?) and no mask input: {node.columns}")
    assert checked


# Descriptive columns the planner sets from the same loop variables as the config field of that name.
_COLUMN_FIELDS = {"task": "task", "backbone": "backbone", "seed": "seed", "loss": "loss"}
# (stage, field) pairs whose column describes the node's lineage, not a setting the stage reads.
_LINEAGE_ONLY = {("teacher", "seed"): "a teacher only evaluates its input fine-tune (seed and loss are upstream)",
                 ("teacher", "loss"): "as above"}


@pytest.mark.parametrize("which", sorted(SPECS))
def test_config_agrees_with_descriptive_columns(which):
    """A node planned for a (task, backbone, seed, loss) reads them: a field dropped from its STAGE_FIELDS
    would leave the stage at its default. Every node names its own stage and the data directory; every node
    that runs a model (its columns name a backbone) also reads the spec's max_length, its task options and a
    train section."""
    spec = SPECS[which]()
    plan = build_plan(spec)
    for node in plan.nodes.values():
        cols, cfg = node.columns, node.stage_config
        # run_stage dispatches on the config's stage (default mask_train) and reads data from its data_dir
        assert cfg.get("stage") == node.stage, f"{node.stage} node's config says stage={cfg.get('stage')!r}"
        assert cfg.get("data_dir", "<missing>") == spec.resolved_data_dir(), (node.stage, "data_dir", cols)
        for column, name in _COLUMN_FIELDS.items():
            value = cols.get(column)
            if value in (None, "", -1) or (node.stage, name) in _LINEAGE_ONLY:
                continue  # the bias model has no backbone, seed or loss
            assert name in cfg and cfg[name] == value, (
                f"{node.stage} node planned for {column}={value!r} has {name}={cfg.get(name, '<missing>')!r} in its "
                f"config (is '{name}' missing from STAGE_FIELDS['{node.stage}']?): {cols}")
        if cols.get("backbone"):
            assert cfg.get("max_length") == spec.max_length, (node.stage, "max_length", cols)
            assert "train" in cfg, (node.stage, "train", cols)
        options = spec.task_options.get(cols["task"], {})
        assert options.items() <= cfg.get("task_options", {}).items(), (node.stage, "task_options", cols)
        if cols.get("method") in ("mask_train", "gmp"):  # unstructured masks: the spec's mask settings
            assert "mask" in cfg, (node.stage, "mask", cols)


def test_bias_file_reaches_every_node_that_uses_bias(tmp_path):
    """bias_source fit -> file moves the bias from an input (bias_model node) into the config (path + sha256),
    for exactly the same nodes."""
    bias_a, _ = _bias_files(tmp_path)
    setup = {**_B_POE, "paradigm_options.full.losses": ["reweight", "conf_reg"]}
    fit = plan_of(setup)
    by_file = plan_of({**setup, "bias_source": "file", "bias_files.synthetic": bias_a})

    def ident(node):
        return node.stage, json.dumps(node.columns, sort_keys=True, default=str)
    uses_bias = sorted(ident(n) for n in fit.nodes.values() if "bias_file" in n.inputs)
    keyed = sorted(ident(n) for n in by_file.nodes.values() if "bias_sha256" in n.stage_config)
    assert uses_bias and keyed == uses_bias
    assert all(n.stage_config.get("bias_file") == bias_a for n in by_file.nodes.values()
               if "bias_sha256" in n.stage_config)


def expected_cells(spec) -> dict[str, set]:
    """The paradigm-a cells per pruning method, from the spec alone:
    (task, backbone, seed, finetune loss, pruning loss, sparsity); IMP has no sparsity (one run per series)."""
    g, a = spec.grid, spec.paradigm_options.a
    pairs = [(l1, l2) for l1 in a.finetune_losses for l2 in (g.losses if l1 == "std" else ["poe"])]
    cells = [(t, bb, seed) for t in g.tasks for bb in g.backbones for seed in g.seeds]
    out: dict[str, set] = {}
    if "a" not in g.paradigms:
        return out
    for method in g.methods:
        if method == "imp":
            out[method] = {(*c, l1, l2, None) for c in cells for l1, l2 in pairs}
        elif method == "super_tickets":
            out[method] = {(*c, "std", "std", s) for c in cells for s in g.sparsities}
        else:
            out[method] = {(*c, l1, l2, s) for c in cells for l1, l2 in pairs for s in g.sparsities}
    if "mask_train" in out:  # masks other paradigms take from the std fine-tune are paradigm-a nodes too
        if "b" in g.paradigms and "mask_train" in spec.paradigm_options.b.mask_sources:
            out["mask_train"] |= {(*c, "std", "poe", s) for c in cells for s in g.sparsities}
        if "transfer" in g.paradigms:
            out["mask_train"] |= {(t, bb, seed, "std", "std", s) for t in spec.paradigm_options.transfer.source_tasks
                                  for bb in g.backbones for seed in g.seeds for s in g.sparsities}
    return out


@pytest.mark.parametrize("which", sorted(SPECS))
def test_node_counts_per_method_match_the_grid(which):
    spec = SPECS[which]()
    plan = build_plan(spec)
    expected = expected_cells(spec)
    assert expected
    for method, cells in expected.items():
        nodes = [n for n in plan.nodes.values() if n.columns.get("method") == method and n.columns["paradigm"] == "a"]
        got = {(n.columns["task"], n.columns["backbone"], n.columns["seed"], n.columns["finetune_loss"],
                n.columns["loss"], None if method == "imp" else n.columns["target_sparsity"]) for n in nodes}
        assert len(nodes) == len(cells) and got == cells, (
            f"{which}: {method} has {len(nodes)} nodes, the grid has {len(cells)} cells; "
            f"missing {sorted(cells - got, key=str)}, unexpected {sorted(got - cells, key=str)}")
