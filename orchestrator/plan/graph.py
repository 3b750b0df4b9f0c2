"""The plan's graph: nodes (a stage kind, the config it reads, its inputs), their content keys, the plan.

A node's key hashes exactly what changes its outputs: the fields its stage reads (the stage kind's
``key_fields`` in srnet_core.stages.registry; fields a stage ignores never enter its config), its inputs
(upstream key + file) and the stage's code version.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from srnet_core.stages import REGISTRY, get_kind

# Fields that do not change a stage's result, so they stay out of its key.
_NOT_IN_KEY = {"device", "data_dir", "bias_file"}  # bias_file: its bias_sha256 is keyed
# Training settings that change speed, not results (torch.compile is checked equal to eager in the tests).
_TRAIN_NOT_IN_KEY = {"compile"}
# Training settings added after keys were first published: keyed only when set, so every existing node keeps
# its key (and its results) while a sweep that sets one re-keys exactly the nodes it changes.
_TRAIN_KEYED_IF_SET = {"ood_eval_every": None, "group_by_length": False}


@dataclass
class Input:
    node: "Node"
    filename: str


@dataclass
class Node:
    stage: str
    stage_config: dict
    inputs: dict[str, Input] = field(default_factory=dict)  # stage-config field -> (producing node, file)
    columns: dict = field(default_factory=dict)  # descriptive columns for result rows
    key: str = ""

    def __post_init__(self):
        kind = REGISTRY.get(self.stage)
        if kind is not None:
            extra = set(self.stage_config) - set(kind.key_fields)
            if extra:  # a planner bug, not a user mistake: such a field would re-key the node for no effect
                raise ValueError(f"stage '{self.stage}' does not read {sorted(extra)}")
        self.key = node_key(self.stage, self.stage_config, self.inputs)

    @property
    def upstream(self) -> list["Node"]:
        return [i.node for i in self.inputs.values()]


def _keyed(name: str, value):
    if name == "train" and isinstance(value, dict):
        return {k: v for k, v in value.items()
                if k not in _TRAIN_NOT_IN_KEY and not (k in _TRAIN_KEYED_IF_SET and v == _TRAIN_KEYED_IF_SET[k])}
    return value


def node_key(stage: str, stage_config: dict, inputs: dict[str, Input], version: str | None = None) -> str:
    payload = {
        "stage": stage,
        "version": get_kind(stage).version if version is None else version,
        "config": {k: _keyed(k, v) for k, v in stage_config.items() if k not in _NOT_IN_KEY},
        "inputs": {name: [i.node.key, i.filename] for name, i in sorted(inputs.items())},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def depth_groups(nodes) -> list[list[Node]]:
    """The nodes and everything upstream of them, deduplicated by key, grouped by dependency depth (upstream
    first): the plan's waves, and what a search must run for a trial."""
    seen: dict[str, Node] = {}

    def visit(node: Node) -> None:
        if node.key not in seen:
            for up in node.upstream:
                visit(up)
            seen[node.key] = node
    for node in nodes:
        visit(node)
    depth: dict[str, int] = {}
    for key, node in seen.items():
        depth[key] = 1 + max((depth[u.key] for u in node.upstream), default=-1)
    out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key, node in seen.items():
        out[depth[key]].append(node)
    return out


@dataclass
class Plan:
    nodes: dict[str, Node]  # key -> node, in insertion (topological) order

    def waves(self) -> list[list[Node]]:
        return depth_groups(self.nodes.values())

    def count_by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            counts[node.stage] = counts.get(node.stage, 0) + 1
        return counts

    @property
    def naive_runs(self) -> int:
        """Stage runs a per-trial expansion would do: each result-producing trial re-runs its whole chain."""
        used = {u.key for n in self.nodes.values() for u in n.upstream}
        sinks = [n for k, n in self.nodes.items() if k not in used]

        def closure(node: Node, seen: set) -> set:
            if node.key not in seen:
                seen.add(node.key)
                for u in node.upstream:
                    closure(u, seen)
            return seen
        return sum(len(closure(s, set())) for s in sinks)
