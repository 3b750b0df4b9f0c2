"""A node is committed only with every output its stage kind declares (srnet_core.stages.registry): the marker
lists them all, and a node missing one is refused, names it, and completes when re-run."""
from __future__ import annotations

import dataclasses
import os

import pandas as pd
import pytest

from orchestrator.launch import node_payload
from orchestrator.plan import build_plan
from orchestrator.spec import parse_spec
from srnet_core.stages import REGISTRY, get_kind
from workers.store import ArtifactStore, MissingOutputError
from workers.trainable import run_node

SPEC = {"name": "outputs", "max_length": 32,
        "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
        "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 2}}


@pytest.fixture
def finetune_node(tmp_path):
    spec = parse_spec({**SPEC, "output_dir": str(tmp_path / "out")})
    (node,) = [n for n in build_plan(spec).nodes.values() if n.stage == "finetune"]
    node.stage_config["device"] = "cpu"
    store = ArtifactStore(str(tmp_path / "store"))
    return node, store, node_payload(node, store)


def test_the_marker_lists_every_declared_output(finetune_node):
    node, store, payload = finetune_node
    declared = get_kind("finetune").declared_outputs(node.stage_config)
    # the std fine-tune's 10%..90% checkpoint grid, timing.json, the selected weights and summary
    assert len([f for f in declared if f.startswith("weights_f")]) == 9 and "timing.json" in declared
    run_node(payload)
    assert set(declared) | {"rows.parquet"} <= set(store.marker("finetune", node.key)["files"])


def test_a_node_missing_a_declared_output_is_not_committed(finetune_node, monkeypatch):
    node, store, payload = finetune_node
    kind = REGISTRY["finetune"]

    def forgetful(ctx, out_dir, report, resume_state):  # a stage that loses one checkpoint file
        rows = kind.run(ctx, out_dir, report, resume_state)
        os.unlink(os.path.join(out_dir, "weights_f0.5.safetensors"))
        return rows
    monkeypatch.setitem(REGISTRY, "finetune", dataclasses.replace(kind, run=forgetful))
    with pytest.raises(MissingOutputError, match=r"lacks its declared output\(s\) weights_f0.5.safetensors"):
        run_node(payload)
    assert not store.is_complete("finetune", node.key)
    monkeypatch.setitem(REGISTRY, "finetune", kind)
    run_node(payload)  # the retry writes it and commits
    assert "weights_f0.5.safetensors" in store.marker("finetune", node.key)["files"]
    rows = pd.read_parquet(store.fetch("finetune", node.key, "rows.parquet"))
    assert set(rows["attempt"]) == {2}  # the rows say it took two runs


def test_a_first_run_is_attempt_one(finetune_node):
    node, store, payload = finetune_node
    run_node(payload)
    assert set(pd.read_parquet(store.fetch("finetune", node.key, "rows.parquet"))["attempt"]) == {1}
    assert not os.path.exists(os.path.join(store.node_dir("finetune", node.key), "_ATTEMPTS.json"))  # removed
