"""The node factory: every recipe for a node, written once. Paradigms (paradigms.py) and searches
(orchestrator/search) build their nodes through it; identical nodes collapse by key (the first asker names
them). A stage kind's config holds exactly its ``key_fields`` (srnet_core.stages.registry)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from srnet_core.stages import checkpoint_file, checkpoint_step, get_kind, step_file
from srnet_core.tasks import TASKS
from srnet_core.train import TrainConfig

from ..spec import SpecError, SweepSpec
from .estimates import train_size
from .graph import Input, Node

BIAS_LOSSES = {"poe", "reweight", "conf_reg"}
TEACHER_LOSSES = {"conf_reg", "kd"}  # need the std fine-tuned model's class probabilities
# The std fine-tune's saved checkpoints: 10%, 20%, ..., 90% of its steps, whether or not the sweep has the
# timing paradigm, so adding timing (or a search over start steps) never re-keys the fine-tune.
FT_CHECKPOINT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
# ...and on a fixed grid of absolute steps, every FT_CHECKPOINT_EVERY steps below its end (per task, since the
# run lengths differ): the reference's timing runs start from steps 5,000, 10,000, 15,000 and 20,000 on every
# task. Fixed too, so adding timing steps never re-keys the fine-tune.
FT_CHECKPOINT_EVERY = 5000
# Pruning a fine-tuned model: only evaluations from 70% of the run on may be selected (protocol 2).
SELECT_FROM_FINETUNED = 0.7


def keyed_task_options(task: str, options: dict) -> dict:
    """A node's task options: the spec's, plus the task's ``KEYED_DEFAULTS`` (defaults that change the data, such
    as the synthetic generator's template version), so a new default re-keys the nodes whose data it changes."""
    return {**getattr(TASKS.get(task), "KEYED_DEFAULTS", {}), **options}


@dataclass
class Cell:
    """One (task, backbone, seed) of the grid and its shared std fine-tune."""
    task: str
    backbone: str
    seed: int
    ft_std: Node


class NodeFactory:
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
                    task_options: dict | None = None, paradigm: str | None = None, source: str | None = None
                    ) -> dict:
        """The fields of a stage's config that it reads (its kind's key_fields), from the spec: its training
        section (with the per-loss, per-task and per-paradigm overrides; ``source`` and the sparsity select a
        paradigm's by_source / by_sparsity overrides), its options section."""
        spec, kind = self.spec, get_kind(stage)
        cfg = {
            "stage": stage, "task": task,
            "task_options": keyed_task_options(task, task_options if task_options is not None
                                               else spec.task_options.get(task, {})),
            "data_dir": spec.resolved_data_dir(), "backbone": backbone, "seed": seed, "loss": loss,
            "sparsity": sparsity, "max_length": spec.max_length, "device": spec.device,
            # the stage sets the mask's sparsity from its own `sparsity`: keep the spec's out of the key
            "mask": {k: v for k, v in asdict(spec.mask).items() if k != "sparsity"},
        }
        if kind.train_section is not None:
            train = spec.train_config(kind.train_section, task, seed, loss, paradigm, source,
                                      sparsity if stage != "imp" and sparsity > 0 else None)
            cfg["train"] = train if kind.train_fields is None else {k: train[k] for k in kind.train_fields}
        if cfg["mask"]["reproject_every"] == "eval":  # the reference's cadence: re-threshold at each evaluation
            cfg["mask"]["reproject_every"] = int(cfg.get("train", {}).get("eval_every", 1))
        if kind.options is not None:
            cfg[kind.options_key] = spec.options_of(stage)
        if kind.loss_inputs:
            self.bias_from_file(cfg, task, loss)
        return {k: v for k, v in cfg.items() if k in kind.key_fields}

    def columns(self, task, backbone, seed, paradigm, loss, sparsity, **extra) -> dict:
        return {"sweep": self.spec.name, "task": task, "backbone": backbone, "seed": seed, "paradigm": paradigm,
                "loss": loss, "target_sparsity": sparsity, **extra}

    def total_steps(self, node_cfg: dict) -> int:
        return TrainConfig(**node_cfg["train"]).total_steps(train_size(node_cfg["task"], node_cfg["task_options"]))

    # -- shared upstream nodes ------------------------------------------------------------------------
    def bias(self, task: str, task_options: dict | None = None) -> Node:
        cfg = self.base_config("bias_model", task, "", -1, "", 0.0, task_options)
        return self.add(Node("bias_model", cfg, columns=self.columns(task, "", -1, "bias_model", "", 0.0)))

    def teacher(self, ft: Node) -> Node:
        """conf_reg's teacher: class probabilities of a std fine-tuned model over the training set."""
        c, kind = ft.stage_config, get_kind("teacher")
        cfg = {k: c[k] for k in kind.key_fields if k in c and k != "train"}
        cfg["stage"] = "teacher"
        cfg["train"] = {k: c["train"][k] for k in kind.train_fields}
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

    # -- training nodes -------------------------------------------------------------------------------
    def finetune(self, task: str, backbone: str, seed: int, loss: str, *, task_options: dict | None = None,
                 paradigm: str = "full", teacher_from: Node | None = None) -> Node:
        cfg = self.base_config("finetune", task, backbone, seed, loss, 0.0, task_options, paradigm)
        if loss == "std":  # timing starts from these; always saved, so adding timing never re-keys the fine-tune
            cfg["save_fractions"] = list(FT_CHECKPOINT_FRACTIONS)
            steps = self.checkpoint_steps(cfg)
            if steps:  # (absent when the run is shorter than one grid step: small sweeps keep their keys)
                cfg["save_steps"] = steps
        inputs = self.loss_inputs(task, loss, teacher_from, task_options)
        return self.add(Node("finetune", cfg, inputs,
                             columns=self.columns(task, backbone, seed, paradigm, loss, 0.0, finetune_loss=loss)))

    def mask_train(self, cell: Cell, init: Node | None, loss: str, sparsity: float, paradigm: str, *,
                   task_options=None, gradual: dict | None = None, init_file: str = "weights.safetensors",
                   train: dict | None = None, method: str = "mask_train", extra_cols=None,
                   by_source: str | None = None) -> Node:
        """Mask training of ``init`` (None: the pre-trained model) at ``sparsity``; ``gradual``: a cubic
        schedule to it (scores start from |W|); ``train``: settings that differ from the spec's (a search's)."""
        task, backbone, seed = cell.task, cell.backbone, cell.seed
        cfg = self.mask_train_config(task, backbone, seed, loss, sparsity, init is not None, task_options, paradigm,
                                     gradual, by_source)
        cfg["train"].update(train or {})
        inputs = self.loss_inputs(task, loss, cell.ft_std, task_options)
        if init is not None:
            inputs["init_weights"] = Input(init, init_file)
        return self.add(Node("mask_train", cfg, inputs, columns=self.columns(
            task, backbone, seed, paradigm, loss, sparsity, method=method, **(extra_cols or {}))))

    def mask_train_config(self, task: str, backbone: str, seed: int, loss: str, sparsity: float,
                          from_finetuned: bool, task_options=None, paradigm: str | None = None,
                          gradual: dict | None = None, by_source: str | None = None) -> dict:
        """The config of a mask-training node: from a fine-tuned model only evaluations from 70% of the run on
        may be selected (protocol 2); the classifier is masked; a gradual schedule starts scores from |W|."""
        cfg = self.base_config("mask_train", task, backbone, seed, loss, sparsity, task_options, paradigm, by_source)
        cfg["train"]["select_from"] = SELECT_FROM_FINETUNED if from_finetuned else 0.0
        cfg["mask_classifier"] = True
        if gradual:
            cfg["gradual"] = gradual
            cfg["mask"]["init"] = "magnitude_soft"
        return cfg

    def prune(self, method: str, cell: Cell, init: Node, loss: str, sparsity: float, paradigm: str,
              extra_cols=None) -> Node:
        """The generic pruning node: one ``method`` run at ``sparsity`` from ``init``'s weights, configured by
        its kind's training section and ``<method>_options`` (gmp, structured, any registered method)."""
        cfg = self.base_config(method, cell.task, cell.backbone, cell.seed, loss, sparsity, paradigm=paradigm)
        inputs = {"init_weights": Input(init, "weights.safetensors")}
        if get_kind(method).loss_inputs:
            inputs.update(self.loss_inputs(cell.task, loss, cell.ft_std))
        return self.add(Node(method, cfg, inputs, columns=self.columns(
            cell.task, cell.backbone, cell.seed, paradigm, loss, sparsity, method=method, **(extra_cols or {}))))

    def imp(self, cell: Cell, loss: str, init: Node | None, paradigm: str, extra_cols=None,
            rewind: str = "none", by_source: str | None = None) -> Node:
        """One IMP run: every level of the series (imp_levels), from ``init`` (None: the pre-trained model)."""
        cfg = self.base_config("imp", cell.task, cell.backbone, cell.seed, loss, max(self.imp_levels()),
                               paradigm=paradigm, source=by_source)
        cfg["imp"]["rewind"] = rewind
        inputs = self.loss_inputs(cell.task, loss, cell.ft_std)
        if init is not None:
            inputs["init_weights"] = Input(init, "weights.safetensors")
        method = "imp" if rewind == "none" else "imp_rw"
        return self.add(Node("imp", cfg, inputs, columns=self.columns(
            cell.task, cell.backbone, cell.seed, paradigm, loss, float("nan"), method=method, **(extra_cols or {}))))

    def imp_levels(self) -> list[float]:
        from srnet_core.pruning.imp import imp_levels

        return imp_levels(get_kind("imp").make_options(self.spec.options_of("imp")))

    def retrain(self, cell: Cell, source: Node, mask_file: str, loss: str, sparsity: float, paradigm: str, *,
                retrain_task=None, extra_cols=None, by_source: str | None = None) -> Node:
        """Re-training of ``source``'s mask; ``by_source`` (the training overrides' by_source key): what is
        retrained, e.g. (b)'s mask source imp_rw / mask_train (the reference's MNLI runs differ)."""
        t = retrain_task or cell.task
        cfg = self.base_config("retrain", t, cell.backbone, cell.seed, loss, sparsity, paradigm=paradigm,
                               source=by_source)
        inputs = self.loss_inputs(t, loss, None)
        inputs["mask_file"] = Input(source, mask_file)
        return self.add(Node("retrain", cfg, inputs, columns=self.columns(
            t, cell.backbone, cell.seed, paradigm, loss, sparsity, method="retrain", **(extra_cols or {}))))

    # -- the fine-tune's checkpoint grid --------------------------------------------------------------
    @staticmethod
    def checkpoint(fraction: float, total: int) -> tuple[int, str]:
        """(step, file) of a fraction-grid checkpoint of a fine-tune of ``total`` steps."""
        return checkpoint_step(fraction, total), checkpoint_file(fraction)

    def checkpoint_steps(self, ft_cfg: dict) -> list[int]:
        """The absolute steps a std fine-tune of config ``ft_cfg`` saves (the step grid below its end)."""
        total = self.total_steps(ft_cfg)
        return list(range(FT_CHECKPOINT_EVERY, total, FT_CHECKPOINT_EVERY))

    @staticmethod
    def step_checkpoint(step: int) -> tuple[int, str]:
        return int(step), step_file(step)
