"""A study's fixed setting (task, backbone, seed, the shared fine-tuning, step counts, the space) and its
trials as content-keyed mask-training nodes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from srnet_core.stages import STAGE_VERSION

from ..search_spec import SearchSpec
from ..spec import SpecError, SweepSpec
from .nodes import Node, SearchNodes, checkpoint_files
from .space import SPACES


@dataclass
class Setting:
    spec: SweepSpec
    search: SearchSpec
    nodes: SearchNodes
    space: object  # a TimingSpace or ScheduleSpace (space.py): everything the two kinds differ in
    task: str
    backbone: str
    seed: int
    task_options: dict  # the trial nodes' (OOD dev evaluated)
    base_options: dict  # the fine-tuning's and bias model's (unchanged: existing nodes keep their keys)
    task_obj: object
    finetune: Node
    finetune_steps: int
    mask_steps: int
    study_name: str = ""

    @property
    def paradigm(self) -> str:
        return f"{self.space.kind}_search"

    @property
    def candidates(self) -> list[int]:
        """Start steps a trial may propose (a timing search; empty otherwise)."""
        return self.space.candidates

    @property
    def rungs(self) -> list[float]:
        """The shorter runs a trial reports to the pruner before its full run (none without a pruner)."""
        return self.search.pruner.rungs if self.search.pruner.kind != "none" else []

    def rung_steps(self, rung: float | None) -> int:
        return self.mask_steps if rung is None else max(1, int(round(rung * self.mask_steps)))

    def start_file(self, step: int) -> str:
        """The fine-tuning's weights at a candidate start step (its selected weights at the end)."""
        if step >= self.finetune_steps:
            return "weights.safetensors"
        return checkpoint_files(self.finetune, self.finetune_steps)[step]


def build_setting(spec: SweepSpec) -> Setting:
    from srnet_core.tasks import get_task

    s = spec.search
    if s is None:
        raise SpecError(f"spec '{spec.name}': no search section; see docs/search.md")
    if s.task is None and len(spec.grid.tasks) != 1:
        raise SpecError(f"field 'search.task': the grid has tasks {spec.grid.tasks}; name the one to search on")
    task = s.task or spec.grid.tasks[0]
    backbone = s.backbone or spec.grid.backbones[0]
    seed = s.seed if s.seed is not None else spec.grid.seeds[0]
    base = dict(spec.task_options.get(task, {}))
    if base.get("add_ood_train"):
        raise SpecError(f"field 'task_options.{task}.add_ood_train': a search selects on OOD dev data, which "
                        "add_ood_train puts into training; turn it off for the search")
    options = {**base, "eval_ood_dev": True}
    try:
        task_obj = get_task(task, data_dir=spec.resolved_data_dir(), **options)
    except ValueError as err:
        raise SpecError(f"field 'task_options.{task}': {err}") from None
    nodes = SearchNodes(spec)
    ft_total = nodes.total_steps("finetune", task, backbone, seed, base)
    mask_total = nodes.total_steps("mask_train", task, backbone, seed, options, sparsity=0.5)
    ft = nodes.finetune(task, backbone, seed, base)  # the grid's own fine-tune, shared
    space = SPACES[s.kind].build(s, ft, ft_total)
    setting = Setting(spec, s, nodes, space, task, backbone, seed, options, base, task_obj, ft, ft_total, mask_total)
    setting.study_name = study_name(setting)
    return setting


def study_name(setting: Setting) -> str:
    """``<sweep>.<kind>.<key>``: the key hashes the search space and every fixed setting (the fine-tuning's
    key, a trial's base config, the stage code versions), not the trial budget, the storage or the predictors'
    settings, so a relaunch with more trials continues the same study and any change to what a trial means
    starts a new one."""
    s = setting.search
    probe = setting.nodes.base_config(setting.task, setting.backbone, setting.seed, "std", 0.0, setting.task_options)
    # the predictors' settings only read the fine-tuning's outputs after the study: calibrating a threshold
    # (docs/search.md) re-runs the comparison in the same study
    payload = {"search": s.model_dump(exclude={"n_trials", "batch_size", "parallelism", "storage", "enqueue",
                                               "early_bird_threshold", "early_bird_window"}),
               "finetune": setting.finetune.key, "trial_base": {k: v for k, v in probe.items()
                                                                if k not in ("device", "data_dir")},
               "versions": STAGE_VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{setting.spec.name}.{s.kind}.{digest}"


def suggest(trial, setting: Setting) -> dict:
    """The trial's parameters (a resumed trial gets back the values it already had)."""
    return setting.space.suggest(trial)


def suggest_fixed(params: dict) -> dict:
    """A finished trial's stored parameters in the form ``trial_node`` takes."""
    return {k: (int(v) if k in ("start_step", "frequency") else v) for k, v in params.items()}


def trial_node(setting: Setting, params: dict, rung: float | None = None) -> Node:
    """The mask-training node of a parameter set (``rung``: a shorter run of it, for the pruner)."""
    space, nodes = setting.space, setting.nodes
    task, backbone, seed = setting.task, setting.backbone, setting.seed
    cfg = nodes.mask_train_config(task, backbone, seed, space.loss, space.sparsity, setting.task_options)
    if rung is not None:
        cfg["train"]["max_steps"] = setting.rung_steps(rung)
    inputs = nodes.loss_inputs(task, space.loss, setting.finetune, setting.base_options)
    extra = {"finetune_loss": "std"}
    space.configure(setting, params, cfg, inputs, extra, rung)
    # a rung is a shorter run of the same trial: its own method, so curves never average it with the full run
    method = "mask_train" if rung is None else f"mask_train_rung{rung:.2f}"
    return nodes.mask_train(cfg, inputs, nodes.columns(task, backbone, seed, setting.paradigm, space.loss,
                                                       space.sparsity, method=method, **extra))


def trial_cost(setting: Setting, params: dict, mask_steps: int) -> int:
    """Training steps a result costs: fine-tuning up to the start, plus mask training."""
    return setting.space.finetune_cost(params, setting.finetune_steps) + mask_steps


def max_cost(setting: Setting) -> int:
    return setting.finetune_steps + setting.mask_steps
