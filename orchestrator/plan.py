"""Expand a sweep spec into a DAG of stage nodes; identical nodes collapse by content key.

A node's key hashes exactly what changes its outputs: the fields its stage reads (``STAGE_FIELDS``; fields a
stage ignores never enter its config), its inputs (upstream key + file) and the stage's code version
(``STAGE_VERSION``). So one fine-tuning run per (task, backbone, loss, seed) feeds every pruning run that needs
it, a bias model is fitted once per task, and widening a sweep (a seed, a sparsity, a loss, a timing fraction,
a backbone) adds only the new nodes:

- teacher probabilities (conf_reg) are their own ``teacher`` node downstream of the std fine-tune, so adding
  conf_reg never re-keys the fine-tune;
- every std fine-tune saves its weights on a fixed fraction grid (``FT_CHECKPOINT_FRACTIONS``: 10%, 20%, ...,
  90% of its steps) whether or not the sweep has the timing paradigm; timing fractions must lie on that grid,
  so adding one never re-keys the fine-tune;
- fields the planner sets itself (``<stage>.seed``, ``<stage>.select_from``, ``mask.sparsity``, ``device``) are
  rejected in the spec instead of being silently replaced.

Paradigms are a registry (``PARADIGMS``): one small function per paradigm adds its nodes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from srnet_core.stages import STAGE_VERSION
from srnet_core.tasks import TASKS

from .spec import SpecError, SweepSpec

# Fields that do not change a stage's result, so they stay out of its key.
_NOT_IN_KEY = {"device", "data_dir", "bias_file"}  # bias_file: its bias_sha256 is keyed
# Training settings that change speed, not results (torch.compile is checked equal to eager in the tests).
_TRAIN_NOT_IN_KEY = {"compile"}
BIAS_LOSSES = {"poe", "reweight", "conf_reg"}
TEACHER_LOSSES = {"conf_reg", "kd"}  # need the std fine-tuned model's class probabilities
# The std fine-tune's saved checkpoints: timing fractions must be among them (see the module docstring).
FT_CHECKPOINT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
_COMMON = ("stage", "task", "task_options", "data_dir", "backbone", "max_length", "device")
# The StageConfig fields each stage reads; everything else is kept out of its config (and so of its key).
STAGE_FIELDS = {
    "bias_model": ("stage", "task", "task_options", "data_dir"),
    "finetune": _COMMON + ("seed", "loss", "train", "save_fractions"),
    "teacher": _COMMON + ("train",),
    "mask_train": _COMMON + ("seed", "loss", "sparsity", "train", "mask", "mask_classifier", "gradual"),
    "imp": _COMMON + ("seed", "loss", "train", "imp"),
    "gmp": _COMMON + ("seed", "loss", "sparsity", "train", "mask", "gradual"),
    "structured": _COMMON + ("seed", "loss", "sparsity", "train", "structured"),
    "super_tickets": _COMMON + ("seed", "loss", "sparsity", "train", "super_tickets"),
    "retrain": _COMMON + ("seed", "loss", "train"),
}
_BIAS_FROM_FILE = ("bias_file", "bias_sha256")  # bias_source: file (the path and its content in the key)
for _stage in ("finetune", "mask_train", "imp", "gmp", "structured", "retrain"):
    STAGE_FIELDS[_stage] += _BIAS_FROM_FILE
# Spec fields the planner sets itself: giving them is a mistake, reported instead of silently overwritten.
_PLANNER_TRAIN_FIELDS = {"seed": "grid.seeds", "select_from": "the paradigm (0.7 when pruning a fine-tuned model)"}


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
        allowed = STAGE_FIELDS.get(self.stage)
        if allowed is not None:
            extra = set(self.stage_config) - set(allowed)
            if extra:  # a planner bug, not a user mistake: such a field would re-key the node for no effect
                raise ValueError(f"stage '{self.stage}' does not read {sorted(extra)}")
        self.key = node_key(self.stage, self.stage_config, self.inputs)

    @property
    def upstream(self) -> list["Node"]:
        return [i.node for i in self.inputs.values()]


def _keyed(field: str, value):
    if field == "train" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _TRAIN_NOT_IN_KEY}
    return value


def keyed_task_options(task: str, options: dict) -> dict:
    """A node's task options: the spec's, plus the task's ``KEYED_DEFAULTS`` (defaults that change the data, such
    as the synthetic generator's template version), so a new default re-keys the nodes whose data it changes."""
    return {**getattr(TASKS.get(task), "KEYED_DEFAULTS", {}), **options}


def node_key(stage: str, stage_config: dict, inputs: dict[str, Input], version: str | None = None) -> str:
    payload = {
        "stage": stage,
        "version": STAGE_VERSION[stage] if version is None else version,
        "config": {k: _keyed(k, v) for k, v in stage_config.items() if k not in _NOT_IN_KEY},
        "inputs": {name: [i.node.key, i.filename] for name, i in sorted(inputs.items())},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Plan:
    nodes: dict[str, Node]  # key -> node, in insertion (topological) order

    def waves(self) -> list[list[Node]]:
        depth: dict[str, int] = {}
        for key, node in self.nodes.items():
            depth[key] = 1 + max((depth[u.key] for u in node.upstream), default=-1)
        out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for key, node in self.nodes.items():
            out[depth[key]].append(node)
        return out

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


# ---------------------------------------------------------------------------------------------------------
def check_planner_fields(spec: SweepSpec) -> None:
    """Reject spec fields the planner overrides (one line naming the field and the fix)."""
    from srnet_core.train import TrainConfig

    defaults = TrainConfig()
    for stage in ("finetune", "mask_train", "imp", "gmp", "retrain"):
        section = getattr(spec, stage)
        for name, source in _PLANNER_TRAIN_FIELDS.items():
            if getattr(section, name) != getattr(defaults, name):
                raise SpecError(f"field '{stage}.{name}': set by the planner from {source}; remove it")
        for task, overrides in spec.task_overrides.items():
            for name, source in _PLANNER_TRAIN_FIELDS.items():
                if name in getattr(overrides, stage):
                    raise SpecError(f"field 'task_overrides.{task}.{stage}.{name}': set by the planner from "
                                    f"{source}; remove it")
    from srnet_core.masks import MaskConfig

    if spec.mask.sparsity != MaskConfig().sparsity:
        raise SpecError("field 'mask.sparsity': set by the planner from grid.sparsities (and the paradigms' "
                        "options); remove it")
    if spec.device != "auto":
        raise SpecError(f"field 'device': set per node from resources (gpus_per_trial / resources.stages); "
                        f"remove 'device: {spec.device}'")


class _Builder:
    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.nodes: dict[str, Node] = {}
        self.ft_std: dict[tuple, Node] = {}  # (task, backbone, seed) -> the std fine-tuning everything shares
        self._bias_digests: dict[str, str] = {}
        self.shapes: dict[str, object] = {}  # backbone -> ModelShape | None (plan-time checks)

    def add(self, node: Node) -> Node:
        existing = self.nodes.get(node.key)
        if existing is None:
            self.nodes[node.key] = node
            return node
        return existing  # identical work: one node, whoever asked first names it

    def base_config(self, stage: str, task: str, backbone: str, seed: int, loss: str, sparsity: float,
                    task_options: dict | None = None, train_stage: str | None = None) -> dict:
        """The fields of a stage's config that it reads (STAGE_FIELDS), from the spec."""
        spec = self.spec
        cfg = {
            "stage": stage, "task": task,
            "task_options": keyed_task_options(task, task_options if task_options is not None
                                               else spec.task_options.get(task, {})),
            "data_dir": spec.resolved_data_dir(), "backbone": backbone, "seed": seed, "loss": loss,
            "sparsity": sparsity, "max_length": spec.max_length, "device": spec.device,
            "train": spec.train_config(train_stage or stage, task, seed, loss),  # per-loss overrides too
            # the stage sets the mask's sparsity from its own `sparsity`: keep the spec's out of the key
            "mask": {k: v for k, v in asdict(spec.mask).items() if k != "sparsity"},
        }
        if stage != "bias_model":
            self.bias_from_file(cfg, task, loss)
        return {k: v for k, v in cfg.items() if k in STAGE_FIELDS[stage]}

    def columns(self, task, backbone, seed, paradigm, loss, sparsity, **extra) -> dict:
        return {"sweep": self.spec.name, "task": task, "backbone": backbone, "seed": seed, "paradigm": paradigm,
                "loss": loss, "target_sparsity": sparsity, **extra}

    # -- shared upstream nodes ------------------------------------------------------------------------
    def bias(self, task: str, task_options: dict | None = None) -> Node:
        cfg = {"stage": "bias_model", "task": task, "data_dir": self.spec.resolved_data_dir(),
               "task_options": keyed_task_options(task, task_options if task_options is not None
                                                  else self.spec.task_options.get(task, {}))}
        return self.add(Node("bias_model", cfg, columns=self.columns(task, "", -1, "bias_model", "", 0.0)))

    def teacher(self, ft: Node) -> Node:
        """conf_reg's teacher: class probabilities of a std fine-tuned model over the training set."""
        c = ft.stage_config
        cfg = {k: c[k] for k in ("stage", "task", "task_options", "data_dir", "backbone", "max_length", "device")}
        cfg["stage"] = "teacher"
        cfg["train"] = {"eval_batch_size": c["train"]["eval_batch_size"], "amp": c["train"]["amp"]}
        return self.add(Node("teacher", cfg, {"init_weights": Input(ft, "weights.safetensors")},
                             columns=self.columns(c["task"], c["backbone"], c["seed"], "full", "std", 0.0,
                                                  method="teacher", finetune_loss="std")))

    def loss_inputs(self, task: str, loss: str, teacher_from: Node | None, task_options: dict | None = None
                    ) -> dict[str, Input]:
        inputs = {}
        if loss in BIAS_LOSSES and self.spec.bias_source == "fit":
            inputs["bias_file"] = Input(self.bias(task, task_options), "bias_train.parquet")
        if loss in TEACHER_LOSSES:
            if teacher_from is None:
                raise SpecError(f"{loss} needs a std fine-tuned model of the same task and seed as its teacher")
            inputs["teacher_file"] = Input(self.teacher(teacher_from), "teacher.parquet")
        return inputs

    def bias_from_file(self, cfg: dict, task: str, loss: str) -> dict:
        """bias_source: file: the reference's per-example bias file goes straight into the config, with its
        sha256 (a changed file re-keys the node; the stage checks it when it reads the file)."""
        if loss in BIAS_LOSSES and self.spec.bias_source == "file":
            from srnet_core.io import sha256_file

            path = self.spec.bias_file(task)
            if path not in self._bias_digests:
                self._bias_digests[path] = sha256_file(path)
            cfg["bias_file"], cfg["bias_sha256"] = path, self._bias_digests[path]
        return cfg

    def finetune(self, task: str, backbone: str, seed: int, loss: str, *, task_options: dict | None = None,
                 paradigm: str = "full", teacher_from: Node | None = None) -> Node:
        cfg = self.base_config("finetune", task, backbone, seed, loss, 0.0, task_options)
        if loss == "std":  # timing starts from these; always saved, so adding timing never re-keys the fine-tune
            cfg["save_fractions"] = list(FT_CHECKPOINT_FRACTIONS)
        inputs = self.loss_inputs(task, loss, teacher_from, task_options)
        return self.add(Node("finetune", cfg, inputs,
                             columns=self.columns(task, backbone, seed, paradigm, loss, 0.0, finetune_loss=loss)))

    def mask_train(self, cell: "Cell", init: Node | None, loss: str, sparsity: float, paradigm: str, *,
                   task_options=None, gradual: dict | None = None, init_file: str = "weights.safetensors",
                   extra_cols=None) -> Node:
        task, backbone, seed = cell.task, cell.backbone, cell.seed
        cfg = self.base_config("mask_train", task, backbone, seed, loss, sparsity, task_options)
        # Pruning a fine-tuned model: only evals from 70% of training on may be selected (protocol 2).
        cfg["train"]["select_from"] = 0.7 if init is not None else 0.0
        cfg["mask_classifier"] = True
        if gradual:
            cfg["gradual"] = gradual
            cfg["mask"]["init"] = "magnitude_soft"
        inputs = self.loss_inputs(task, loss, cell.ft_std, task_options)
        if init is not None:
            inputs["init_weights"] = Input(init, init_file)
        return self.add(Node("mask_train", cfg, inputs, columns=self.columns(
            task, backbone, seed, paradigm, loss, sparsity, method="mask_train", **(extra_cols or {}))))

    def retrain(self, cell: "Cell", source: Node, mask_file: str, loss: str, sparsity: float, paradigm: str, *,
                retrain_task=None, extra_cols=None) -> Node:
        t = retrain_task or cell.task
        cfg = self.base_config("retrain", t, cell.backbone, cell.seed, loss, sparsity)
        inputs = self.loss_inputs(t, loss, None)
        inputs["mask_file"] = Input(source, mask_file)
        return self.add(Node("retrain", cfg, inputs, columns=self.columns(
            t, cell.backbone, cell.seed, paradigm, loss, sparsity, method="retrain", **(extra_cols or {}))))

    def total_steps(self, node_cfg: dict) -> int:
        from srnet_core.train import TrainConfig

        return TrainConfig(**node_cfg["train"]).total_steps(train_size(node_cfg["task"], node_cfg["task_options"]))


@dataclass
class Cell:
    """One (task, backbone, seed) of the grid and its shared std fine-tune."""
    task: str
    backbone: str
    seed: int
    ft_std: Node


# -- paradigms: one function each; PARADIGMS maps the spec's name to it ---------------------------------------
PARADIGMS: dict[str, Callable] = {}
SWEEP_PARADIGMS: dict[str, Callable] = {}  # paradigms that span tasks (run once per sweep, after the cells)


def paradigm(name: str, per_sweep: bool = False):
    def register(fn):
        (SWEEP_PARADIGMS if per_sweep else PARADIGMS)[name] = fn
        return fn
    return register


def build_plan(spec: SweepSpec) -> Plan:
    check_planner_fields(spec)
    b = _Builder(spec)
    g = spec.grid
    for task in g.tasks:
        for backbone in g.backbones:
            for seed in g.seeds:
                ft_std = b.finetune(task, backbone, seed, "std")
                b.ft_std[(task, backbone, seed)] = ft_std
                cell = Cell(task, backbone, seed, ft_std)
                for loss in spec.paradigm_options.full.losses:  # dense baselines (std is always planned)
                    if loss != "std":
                        b.finetune(task, backbone, seed, loss, teacher_from=ft_std)
                for name in g.paradigms:
                    if name in PARADIGMS:
                        PARADIGMS[name](b, cell)
    for name in g.paradigms:
        if name in SWEEP_PARADIGMS:
            SWEEP_PARADIGMS[name](b)
    return Plan(b.nodes)


@paradigm("a")
def _paradigm_a(b: _Builder, cell: Cell) -> None:
    """(a) prune a fine-tuned model: mask training / IMP / GMP / structured from each fine-tuning loss; Super
    Tickets (std only) from the std fine-tune, each ticket re-fine-tuned from the pre-trained weights."""
    spec, g = b.spec, b.spec.grid
    task, backbone, seed = cell.task, cell.backbone, cell.seed
    for l1 in spec.paradigm_options.a.finetune_losses:
        ft = cell.ft_std if l1 == "std" else b.finetune(task, backbone, seed, l1)
        l2s = g.losses if l1 == "std" else ["poe"]
        for l2 in l2s:
            extra = {"finetune_loss": l1}
            for method in g.methods:
                if method == "super_tickets":
                    continue  # once per cell (std only), below
                if method == "mask_train":
                    for s in g.sparsities:
                        b.mask_train(cell, ft, l2, s, "a", extra_cols={**extra})
                elif method == "imp":
                    _imp_node(b, spec, task, backbone, seed, l2, ft, "a", cell.ft_std, extra)
                else:  # gmp, structured: one node per sparsity, from the fine-tuned weights
                    for s in g.sparsities:
                        cfg = b.base_config(method, task, backbone, seed, l2, s,
                                            train_stage="gmp" if method == "gmp" else "mask_train")
                        if method == "structured":
                            cfg["structured"] = spec.structured_options.model_dump()
                        else:
                            cfg["gradual"] = spec.gmp_options.model_dump()
                        inputs = {**b.loss_inputs(task, l2, cell.ft_std),
                                  "init_weights": Input(ft, "weights.safetensors")}
                        b.add(Node(method, cfg, inputs, columns=b.columns(task, backbone, seed, "a", l2, s,
                                                                          method=method, **extra)))
    if "super_tickets" in g.methods:
        _super_tickets(b, cell)


# The train settings the super_tickets stage reads: its importance pass runs at the fine-tuning's batch size.
_SUPER_TICKETS_TRAIN = ("batch_size", "eval_batch_size", "amp")


def _super_tickets(b: _Builder, cell: Cell) -> None:
    """Super Tickets (Liang et al. 2021): per grid sparsity s, one super_tickets node pruning heads and FFN
    sublayers of the std fine-tuned model (std loss), and one retrain node re-fine-tuning that ticket from the
    pre-trained weights with its masks fixed (selected on ID dev). Result rows: the retrain node's, with
    method ``retrain`` and mask_source ``super_tickets`` (the super_tickets node's own rows are the pruned
    fine-tuned model before re-training, method ``super_tickets``)."""
    spec = b.spec
    options = spec.super_tickets_options.model_dump()
    extra = {"finetune_loss": "std"}
    for s in spec.grid.sparsities:
        _check_super_ticket_heads(b, cell.backbone, options, s)
        cfg = b.base_config("super_tickets", cell.task, cell.backbone, cell.seed, "std", s, train_stage="finetune")
        cfg["train"] = {k: cfg["train"][k] for k in _SUPER_TICKETS_TRAIN}  # the std fine-tune's
        cfg["super_tickets"] = options
        ticket = b.add(Node("super_tickets", cfg, {"init_weights": Input(cell.ft_std, "weights.safetensors")},
                            columns=b.columns(cell.task, cell.backbone, cell.seed, "a", "std", s,
                                              method="super_tickets", **extra)))
        b.retrain(cell, ticket, "masks.safetensors", "std", s, "a",
                  extra_cols={**extra, "mask_source": "super_tickets"})


def _check_super_ticket_heads(b: _Builder, backbone: str, options: dict, s: float) -> None:
    """Refuse, before anything runs, a head fraction that would take a layer below min_heads_per_layer, when
    the backbone's head count is known without the network (tiny-bert, minilm, a local model directory)."""
    if backbone not in ("tiny-bert", "minilm") and not os.path.isfile(os.path.join(backbone, "config.json")):
        return  # a hub name: the stage checks it (same one-line message)
    if backbone not in b.shapes:
        from .packing import backbone_shape

        b.shapes[backbone] = backbone_shape(backbone)
    shape = b.shapes[backbone]
    if shape is None:
        return
    from srnet_core.pruning.super_tickets import check_head_budget

    explicit = options.get("head_sparsity") is not None
    head_sparsity = options["head_sparsity"] if explicit else s
    try:
        check_head_budget(shape.layers, shape.heads, head_sparsity, options["min_heads_per_layer"],
                          field="super_tickets_options.head_sparsity" if explicit else "grid.sparsities")
    except ValueError as err:
        raise SpecError(f"{err} for backbone '{backbone}' (method super_tickets)") from None


@paradigm("b")
def _paradigm_b(b: _Builder, cell: Cell) -> None:
    """(b) prune, then re-train the subnetwork in isolation from the pre-trained weights."""
    spec = b.spec
    po = spec.paradigm_options.b
    for source in po.mask_sources:
        if source == "imp_rw":
            imp = _imp_node(b, spec, cell.task, cell.backbone, cell.seed, "poe", None, "b", cell.ft_std, {},
                            rewind="pretrained")
        for s in spec.grid.sparsities:
            if source == "imp_rw":
                src, mask_file = imp, imp_mask_file(s)
                _check_imp_level(spec, s)
            else:
                src, mask_file = b.mask_train(cell, cell.ft_std, "poe", s, "a", extra_cols={"finetune_loss": "std"}), \
                    "masks.safetensors"
            for l1 in po.losses:
                b.retrain(cell, src, mask_file, l1, s, "b", extra_cols={"mask_source": source})


@paradigm("c")
def _paradigm_c(b: _Builder, cell: Cell) -> None:
    """(c) mask training on the pre-trained model, no weight fine-tuning."""
    for loss in b.spec.paradigm_options.c.losses or b.spec.grid.losses:
        for s in b.spec.grid.sparsities:
            b.mask_train(cell, None, loss, s, "c")


@paradigm("ood_upper_bound")
def _paradigm_ood(b: _Builder, cell: Cell) -> None:
    """OOD upper bound: OOD training data added to mask training, CE loss, still selected on ID dev."""
    spec = b.spec
    ood_options = {**spec.task_options.get(cell.task, {}), "add_ood_train": True}
    for base in spec.paradigm_options.ood_upper_bound.paradigms:
        for s in spec.grid.sparsities:
            if base == "c":
                b.mask_train(cell, None, "std", s, "ood_upper_bound", task_options=ood_options,
                             extra_cols={"base_paradigm": "c"})
                continue
            node = b.mask_train(cell, cell.ft_std, "std", s, "ood_upper_bound", task_options=ood_options,
                                extra_cols={"base_paradigm": "a"})
            if base == "b":
                b.retrain(cell, node, "masks.safetensors", "std", s, "ood_upper_bound",
                          extra_cols={"base_paradigm": "b"})


def timing_file(fraction: float) -> str:
    return f"weights_f{fraction:.1f}.safetensors"


@paradigm("timing")
def _paradigm_timing(b: _Builder, cell: Cell) -> None:
    """Timing: mask training from the std fine-tune's checkpoints at the given fractions, and from the end."""
    t = b.spec.paradigm_options.timing
    total = b.total_steps(cell.ft_std.stage_config)
    for f in sorted(set(t.fractions)):
        if not any(abs(f - g) < 1e-9 for g in FT_CHECKPOINT_FRACTIONS):
            raise SpecError(f"paradigm_options.timing.fractions: {f} is not a saved fine-tuning checkpoint; use "
                            f"fractions among {list(FT_CHECKPOINT_FRACTIONS)}")
        b.mask_train(cell, cell.ft_std, t.loss, t.sparsity, "timing", init_file=timing_file(f),
                     extra_cols={"start_step": checkpoint_step(f, total), "finetune_loss": "std"})
    b.mask_train(cell, cell.ft_std, t.loss, t.sparsity, "timing",
                 extra_cols={"start_step": total, "finetune_loss": "std"})


def checkpoint_step(fraction: float, total: int) -> int:
    """The step a fraction-grid checkpoint is saved at (srnet_core.stages.finetune uses the same rule)."""
    return max(1, int(round(fraction * total)))


@paradigm("gradual")
def _paradigm_gradual(b: _Builder, cell: Cell) -> None:
    """Gradual: cubic schedule s_initial -> s_final during mask training of the std fine-tuned model."""
    gr = b.spec.paradigm_options.gradual
    schedule = {"initial": gr.s_initial, "start": gr.start, "end": gr.end, "unit": gr.unit, "frequency": gr.frequency}
    b.mask_train(cell, cell.ft_std, gr.loss, gr.s_final, "gradual", gradual=schedule,
                 extra_cols={"finetune_loss": "std", "s_initial": gr.s_initial})


def imp_mask_file(sparsity: float) -> str:
    return f"masks_s{sparsity:.2f}.safetensors"


def imp_levels(spec: SweepSpec) -> list[float]:
    from srnet_core.pruning.imp import ImpOptions, imp_levels as levels_of

    o = spec.imp_options
    return levels_of(ImpOptions(schedule=o.schedule, rate=o.rate, final=o.final, intervals=o.intervals))


def _check_imp_level(spec: SweepSpec, s: float) -> None:
    if not any(abs(s - level) < 1e-6 for level in imp_levels(spec)):
        raise SpecError(f"grid.sparsities: {s} is not an IMP level ({imp_levels(spec)}); paradigm b with "
                        "mask_sources: [imp_rw] takes its masks from the IMP series")


def _imp_node(b: _Builder, spec: SweepSpec, task, backbone, seed, loss, init: Node | None, paradigm, ft_std,
              extra, rewind: str = "none") -> Node:
    cfg = b.base_config("imp", task, backbone, seed, loss, max(imp_levels(spec)))  # IMP runs its own levels
    cfg["imp"] = {**spec.imp_options.model_dump(), "rewind": rewind}
    inputs = b.loss_inputs(task, loss, ft_std)
    if init is not None:
        inputs["init_weights"] = Input(init, "weights.safetensors")
    method = "imp" if rewind == "none" else "imp_rw"
    return b.add(Node("imp", cfg, inputs, columns=b.columns(task, backbone, seed, paradigm, loss, float("nan"),
                                                            method=method, **extra)))


@paradigm("transfer", per_sweep=True)
def _paradigm_transfer(b: _Builder) -> None:
    """Sparse*BERT: a mask found on a source task (mask training of its std fine-tuned model) is re-trained from
    the pre-trained weights on each target task, with the mask fixed."""
    spec = b.spec
    tr = spec.paradigm_options.transfer
    for source in tr.source_tasks:
        for backbone in spec.grid.backbones:
            for seed in spec.grid.seeds:
                ft = b.ft_std.get((source, backbone, seed)) or b.finetune(source, backbone, seed, "std")
                cell = Cell(source, backbone, seed, ft)
                for s in spec.grid.sparsities:
                    src = b.mask_train(cell, ft, "std", s, "a", extra_cols={"finetune_loss": "std"})
                    for target in tr.target_tasks:
                        if target != source:
                            b.retrain(cell, src, "masks.safetensors", "std", s, "transfer", retrain_task=target,
                                      extra_cols={"source_task": source})


# ---------------------------------------------------------------------------------------------------------
# Sizes for plan-time checks and estimates (no data is loaded): the official training-set sizes.
TRAIN_SIZES = {"mnli": 392_702, "qqp": 363_846, "fever": 242_911}
EVAL_SIZES = {"mnli": 9_815 + 9_832 + 30_000, "qqp": 40_430 + 677 + 8_000, "fever": 19_998 + 717 + 712}


def train_size(task: str, options: dict) -> int:
    from srnet_core.tasks import TASKS

    hint = getattr(TASKS.get(task), "size_hint", None)
    if hint is not None:
        size = hint("train", **options)
        if size:
            return int(size)
    size = options.get("train_size", 8_000) if options.get("train_source") == "dev_matched" else \
        TRAIN_SIZES.get(task, 100_000)
    return min(size, options.get("max_train_rows") or size)


def eval_size(task: str, options: dict) -> int:
    from srnet_core.tasks import TASKS

    hint = getattr(TASKS.get(task), "size_hint", None)
    if hint is not None:
        size = hint("eval", **options)
        if size:
            return int(size)
    size = EVAL_SIZES.get(task, 20_000)
    cap = options.get("max_eval_rows")
    return min(size, 3 * cap) if cap else size  # a task has about three eval sets


# Rough single-GPU throughput (A100/H100 class, bf16, batch 32 x 128): training steps/s and eval examples/s.
# Estimates for planning, not measurements; bench/ has the measured numbers.
THROUGHPUT = {"tiny-bert": (200.0, 50_000.0), "minilm": (40.0, 12_000.0), "bert-base-uncased": (12.0, 3_500.0),
              "roberta-base": (12.0, 3_500.0), "bert-large-uncased": (4.0, 1_200.0)}


def node_seconds(node: Node) -> float:
    """Planning estimate of one node's run time on one GPU (THROUGHPUT; bias models: CPU, about
    2 s per 10k training examples). The scheduler orders ready nodes by it and the progress view's ETA uses it."""
    from srnet_core.train import TrainConfig

    cfg = node.stage_config
    if node.stage == "bias_model":
        return 10.0 + train_size(cfg["task"], cfg["task_options"]) / 5_000
    steps_per_s, eval_per_s = THROUGHPUT.get(cfg["backbone"], THROUGHPUT["bert-base-uncased"])
    n_train = train_size(cfg["task"], cfg["task_options"])
    if node.stage == "teacher":
        return 30.0 + n_train / eval_per_s  # model load + one pass over the training set
    if node.stage == "super_tickets":  # one forward+backward pass over the training set, one evaluation
        batches = math.ceil(n_train / max(1, int(cfg["train"].get("batch_size", 32))))
        return 30.0 + batches / steps_per_s + eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
    train = TrainConfig(**cfg["train"])
    steps = train.total_steps(n_train)
    evals = math.ceil(steps / max(1, train.eval_every)) + 1
    return 30.0 + steps / steps_per_s + evals * eval_size(cfg["task"], cfg["task_options"]) / eval_per_s


def estimate_gpu_hours(plan: Plan) -> dict[str, float]:
    """Estimated GPU-hours per stage (bias models run on CPU and count 0)."""
    out: dict[str, float] = {}
    for node in plan.nodes.values():
        if node.stage != "bias_model":
            out[node.stage] = out.get(node.stage, 0.0) + node_seconds(node) / 3600
    return out
