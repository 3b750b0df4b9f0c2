"""Expand a sweep spec into a DAG of stage nodes; identical nodes collapse by content key.

A node's key hashes the config fields it depends on, its inputs (upstream key + file) and the stage's code
version, so one fine-tuning run per (task, backbone, loss, seed) feeds every pruning run that needs it, a bias
model is fitted once per task, and widening a sweep adds only the new nodes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from srnet_core.stages import STAGE_VERSION

from .spec import SpecError, SweepSpec

# Fields that do not change a stage's result, so they stay out of its key.
_NOT_IN_KEY = {"device", "data_dir"}
BIAS_LOSSES = {"poe", "reweight", "conf_reg"}


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
        payload = {
            "stage": self.stage,
            "version": STAGE_VERSION[self.stage],
            "config": {k: v for k, v in self.stage_config.items() if k not in _NOT_IN_KEY},
            "inputs": {name: [i.node.key, i.filename] for name, i in sorted(self.inputs.items())},
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:16]

    @property
    def upstream(self) -> list["Node"]:
        return [i.node for i in self.inputs.values()]


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
class _Builder:
    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.nodes: dict[str, Node] = {}
        self.ft_std: dict[tuple, Node] = {}  # (task, backbone, seed) -> the std fine-tuning everything shares

    def add(self, node: Node) -> Node:
        existing = self.nodes.get(node.key)
        if existing is None:
            self.nodes[node.key] = node
            return node
        return existing  # identical work: one node, whoever asked first names it

    def base_config(self, stage: str, task: str, backbone: str, seed: int, loss: str, sparsity: float,
                    task_options: dict | None = None, train_stage: str | None = None) -> dict:
        spec = self.spec
        cfg = {
            "stage": stage, "task": task,
            "task_options": dict(task_options if task_options is not None else spec.task_options.get(task, {})),
            "data_dir": spec.resolved_data_dir(), "backbone": backbone, "seed": seed, "loss": loss,
            "sparsity": sparsity, "max_length": spec.max_length, "device": spec.device,
        }
        if stage != "bias_model":
            cfg["train"] = spec.train_config(train_stage or stage, task, seed)
        if stage in ("mask_train", "imp", "gmp", "structured", "retrain"):
            cfg["mask"] = asdict(spec.mask)
        return cfg

    # -- shared upstream nodes ------------------------------------------------------------------------
    def bias(self, task: str, task_options: dict | None = None) -> Node:
        cfg = {"stage": "bias_model", "task": task, "data_dir": self.spec.resolved_data_dir(),
               "task_options": dict(task_options if task_options is not None
                                    else self.spec.task_options.get(task, {}))}
        return self.add(Node("bias_model", cfg, columns=self.columns(task, "", -1, "bias_model", "", 0.0)))

    def columns(self, task, backbone, seed, paradigm, loss, sparsity, **extra) -> dict:
        return {"sweep": self.spec.name, "task": task, "backbone": backbone, "seed": seed, "paradigm": paradigm,
                "loss": loss, "target_sparsity": sparsity, **extra}

    def loss_inputs(self, task: str, loss: str, teacher_from: Node | None, task_options: dict | None = None
                    ) -> dict[str, Input]:
        inputs = {}
        if loss in BIAS_LOSSES:
            inputs["bias_file"] = Input(self.bias(task, task_options), "bias_train.parquet")
        if loss == "conf_reg":
            if teacher_from is None:
                raise SpecError("conf_reg needs a std fine-tuned model of the same task and seed as its teacher")
            inputs["teacher_file"] = Input(teacher_from, "teacher.parquet")
        return inputs

    def finetune(self, task: str, backbone: str, seed: int, loss: str, *, save_steps=(), save_teacher=False,
                 task_options: dict | None = None, paradigm: str = "full") -> Node:
        cfg = self.base_config("finetune", task, backbone, seed, loss, 0.0, task_options)
        cfg["save_steps"] = sorted(set(save_steps))
        cfg["save_teacher"] = bool(save_teacher)
        inputs = self.loss_inputs(task, loss, None, task_options)
        return self.add(Node("finetune", cfg, inputs,
                             columns=self.columns(task, backbone, seed, paradigm, loss, 0.0, finetune_loss=loss)))

    def total_steps(self, node_cfg: dict) -> int:
        from srnet_core.train import TrainConfig

        return TrainConfig(**node_cfg["train"]).total_steps(train_size(node_cfg["task"], node_cfg["task_options"]))


def build_plan(spec: SweepSpec) -> Plan:
    b = _Builder(spec)
    g, po = spec.grid, spec.paradigm_options
    timing_steps = sorted(set(po.timing.steps)) if po.timing and "timing" in g.paradigms else []
    used_losses = set(g.losses) | set(po.c.losses or []) | {po.gradual.loss} | ({po.timing.loss} if po.timing else set())
    wants_teacher = "conf_reg" in used_losses

    for task in g.tasks:
        for backbone in g.backbones:
            for seed in g.seeds:
                _task_nodes(b, spec, task, backbone, seed, timing_steps, wants_teacher)
    if "transfer" in g.paradigms:
        _transfer_nodes(b, spec)
    return Plan(b.nodes)


def _task_nodes(b: _Builder, spec: SweepSpec, task: str, backbone: str, seed: int, timing_steps, wants_teacher):
    g, po = spec.grid, spec.paradigm_options
    col = b.columns
    ft_std = b.finetune(task, backbone, seed, "std", save_steps=timing_steps, save_teacher=wants_teacher)
    b.ft_std[(task, backbone, seed)] = ft_std

    def mask_train(init: Node | None, loss: str, sparsity: float, paradigm: str, *, task_options=None,
                   gradual: dict | None = None, init_file: str = "weights.safetensors", extra_cols=None) -> Node:
        cfg = b.base_config("mask_train", task, backbone, seed, loss, sparsity, task_options)
        # Pruning a fine-tuned model: only evals from 70% of training on may be selected (protocol 2).
        cfg["train"]["select_from"] = 0.7 if init is not None else 0.0
        cfg["mask_classifier"] = True
        if gradual:
            cfg["gradual"] = gradual
            cfg["mask"]["init"] = "magnitude_soft"
        inputs = b.loss_inputs(task, loss, ft_std, task_options)
        if init is not None:
            inputs["init_weights"] = Input(init, init_file)
        return b.add(Node("mask_train", cfg, inputs, columns=col(task, backbone, seed, paradigm, loss, sparsity,
                                                                 method="mask_train", **(extra_cols or {}))))

    def retrain(source: Node, mask_file: str, loss: str, sparsity: float, paradigm: str, *, retrain_task=None,
                extra_cols=None) -> Node:
        t = retrain_task or task
        cfg = b.base_config("retrain", t, backbone, seed, loss, sparsity)
        inputs = b.loss_inputs(t, loss, None)
        inputs["mask_file"] = Input(source, mask_file)
        return b.add(Node("retrain", cfg, inputs, columns=col(t, backbone, seed, paradigm, loss, sparsity,
                                                              method="retrain", **(extra_cols or {}))))

    # (a) prune a fine-tuned model
    if "a" in g.paradigms:
        for l1 in po.a.finetune_losses:
            ft = ft_std if l1 == "std" else b.finetune(task, backbone, seed, l1)
            l2s = g.losses if l1 == "std" else ["poe"]
            for l2 in l2s:
                extra = {"finetune_loss": l1}
                for method in g.methods:
                    if method == "mask_train":
                        for s in g.sparsities:
                            mask_train(ft, l2, s, "a", extra_cols={**extra})
                    elif method == "imp":
                        _imp_node(b, spec, task, backbone, seed, l2, ft, "a", ft_std, extra)
                    else:  # gmp, structured: one node per sparsity, from the fine-tuned weights
                        for s in g.sparsities:
                            cfg = b.base_config(method, task, backbone, seed, l2, s,
                                                train_stage="gmp" if method == "gmp" else "mask_train")
                            if method == "structured":
                                cfg["structured"] = spec.structured_options.model_dump()
                            else:
                                cfg["gradual"] = spec.gmp_options.model_dump()
                            inputs = {**b.loss_inputs(task, l2, ft_std), "init_weights": Input(ft, "weights.safetensors")}
                            b.add(Node(method, cfg, inputs, columns=col(task, backbone, seed, "a", l2, s,
                                                                         method=method, **extra)))

    # (b) prune, then re-train the subnetwork in isolation from the pre-trained weights
    if "b" in g.paradigms:
        for source in po.b.mask_sources:
            if source == "imp_rw":
                imp = _imp_node(b, spec, task, backbone, seed, "poe", None, "b", ft_std, {}, rewind="pretrained")
            for s in g.sparsities:
                if source == "imp_rw":
                    src, mask_file = imp, imp_mask_file(s)
                    _check_imp_level(spec, s)
                else:
                    src, mask_file = mask_train(ft_std, "poe", s, "a", extra_cols={"finetune_loss": "std"}), \
                        "masks.safetensors"
                for l1 in po.b.losses:
                    retrain(src, mask_file, l1, s, "b", extra_cols={"mask_source": source})

    # (c) mask training on the pre-trained model, no weight fine-tuning
    if "c" in g.paradigms:
        for loss in po.c.losses or g.losses:
            for s in g.sparsities:
                mask_train(None, loss, s, "c")

    # OOD upper bound: OOD training data added to mask training, CE loss, still selected on ID dev
    if "ood_upper_bound" in g.paradigms:
        ood_options = {**spec.task_options.get(task, {}), "add_ood_train": True}
        for paradigm in po.ood_upper_bound.paradigms:
            for s in g.sparsities:
                if paradigm == "c":
                    mask_train(None, "std", s, "ood_upper_bound", task_options=ood_options,
                               extra_cols={"base_paradigm": "c"})
                    continue
                node = mask_train(ft_std, "std", s, "ood_upper_bound", task_options=ood_options,
                                  extra_cols={"base_paradigm": "a"})
                if paradigm == "b":
                    retrain(node, "masks.safetensors", "std", s, "ood_upper_bound",
                            extra_cols={"base_paradigm": "b"})

    # Timing: mask training from fine-tuning checkpoints at the given steps, and from the end
    if "timing" in g.paradigms:
        t = po.timing
        total = b.total_steps(ft_std.stage_config)
        for step in timing_steps:
            if step >= total:
                raise SpecError(
                    f"paradigm_options.timing.steps: step {step} is not saved by the fine-tuning of {task}/{backbone}"
                    f", which runs {total} steps in all; use steps below {total}")
        for step in timing_steps + [total]:
            init_file = f"weights_step{step}.safetensors" if step < total else "weights.safetensors"
            mask_train(ft_std, t.loss, t.sparsity, "timing", init_file=init_file,
                       extra_cols={"start_step": step, "finetune_loss": "std"})

    # Gradual: cubic schedule s_initial -> s_final during mask training of the std fine-tuned model
    if "gradual" in g.paradigms:
        gr = po.gradual
        schedule = {"initial": gr.s_initial, "start": gr.start, "end": gr.end, "unit": gr.unit,
                    "frequency": gr.frequency}
        mask_train(ft_std, gr.loss, gr.s_final, "gradual", gradual=schedule,
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
    cfg = b.base_config("imp", task, backbone, seed, loss, max(imp_levels(spec)))
    cfg["imp"] = {**spec.imp_options.model_dump(), "rewind": rewind}
    inputs = b.loss_inputs(task, loss, ft_std)
    if init is not None:
        inputs["init_weights"] = Input(init, "weights.safetensors")
    method = "imp" if rewind == "none" else "imp_rw"
    return b.add(Node("imp", cfg, inputs, columns=b.columns(task, backbone, seed, paradigm, loss, float("nan"),
                                                            method=method, **extra)))


def _transfer_nodes(b: _Builder, spec: SweepSpec) -> None:
    """Sparse*BERT: a mask found on a source task (mask training of its std fine-tuned model) is re-trained from
    the pre-trained weights on each target task, with the mask fixed."""
    tr = spec.paradigm_options.transfer
    for source in tr.source_tasks:
        for backbone in spec.grid.backbones:
            for seed in spec.grid.seeds:
                ft = b.ft_std.get((source, backbone, seed)) or b.finetune(source, backbone, seed, "std")
                for s in spec.grid.sparsities:
                    cfg = b.base_config("mask_train", source, backbone, seed, "std", s)
                    cfg["train"]["select_from"] = 0.7
                    cfg["mask_classifier"] = True
                    src = b.add(Node("mask_train", cfg, {"init_weights": Input(ft, "weights.safetensors")},
                                     columns=b.columns(source, backbone, seed, "a", "std", s, method="mask_train",
                                                       finetune_loss="std")))
                    for target in tr.target_tasks:
                        if target == source:
                            continue
                        rcfg = b.base_config("retrain", target, backbone, seed, "std", s)
                        b.add(Node("retrain", rcfg, {"mask_file": Input(src, "masks.safetensors")},
                                   columns=b.columns(target, backbone, seed, "transfer", "std", s, method="retrain",
                                                     source_task=source)))


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


def estimate_gpu_hours(plan: Plan) -> dict[str, float]:
    from srnet_core.train import TrainConfig

    out: dict[str, float] = {}
    for node in plan.nodes.values():
        cfg = node.stage_config
        if node.stage == "bias_model":
            continue
        steps_per_s, eval_per_s = THROUGHPUT.get(cfg["backbone"], THROUGHPUT["bert-base-uncased"])
        train = TrainConfig(**cfg["train"])
        n_train = train_size(cfg["task"], cfg["task_options"])
        steps = train.total_steps(n_train)
        evals = math.ceil(steps / max(1, train.eval_every)) + 1
        seconds = steps / steps_per_s + evals * eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
        if cfg.get("save_teacher"):
            seconds += n_train / eval_per_s
        out[node.stage] = out.get(node.stage, 0.0) + seconds / 3600
    return out
