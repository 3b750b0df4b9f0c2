"""Optuna searches over when mask training starts and over the gradual schedule (docs/search.md).

    python -m orchestrator.search sweeps/timing_search.yaml [--runner ray|local] [--address ray://...]

Trials are ordinary content-keyed stage nodes built with the planner's node builders: a trial whose
parameters equal an earlier node's reuses that node, and a relaunch after a kill continues the study (the
trials the killed driver left RUNNING are finished with the parameters they already had, never re-asked).
Objectives come from the trial node's rows at its checkpoint selected on ID dev: ID dev (eval_role "id") and
OOD dev (eval_role "ood_dev"); rows with eval_role "ood" (the reported OOD test sets) are never read here.

The driver runs nodes through a ``NodeRunner``: ``run_nodes(nodes) -> {key: error or None}``. Today's
runners are ``LaunchRunner`` (Ray Tune through the launch's dependency-driven scheduler, ``run_plan``) and
``LocalRunner`` (in-process, for tests and debugging). A scheduler that accepts nodes
while it runs can implement the same method.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Protocol

import pandas as pd

from srnet_core.stages import STAGE_VERSION

from . import results
from .plan import Input, Node, NodeFactory as _Builder
from .search_spec import SearchSpec
from .spec import SpecError, SweepSpec, load_spec

OBJECTIVE_DIRECTIONS = {"id_dev": "maximize", "ood_dev": "maximize", "cost": "minimize"}


class SearchError(RuntimeError):
    """The study cannot go on (e.g. the fine-tuning every trial needs failed)."""


# -- where trial start steps come from ---------------------------------------------------------------------
def checkpoint_files(finetune: Node, total: int) -> dict[int, str]:
    """{step: file} of the weights a fine-tuning node saves before its end. The one place that knows how the
    planner records saved checkpoints: ``save_steps`` (``weights_step{N}``) here, or the scheduler's fixed
    grid ``save_fractions`` (``weights_f{F:.1f}`` at step max(1, round(F * total)), issue 9)."""
    cfg = finetune.stage_config
    if "save_fractions" in cfg:
        return {max(1, int(round(f * total))): f"weights_f{f:.1f}.safetensors" for f in cfg["save_fractions"]}
    return {int(s): f"weights_step{int(s)}.safetensors" for s in cfg.get("save_steps", [])}


def saved_steps(finetune: Node, total: int) -> list[int]:
    """The steps whose weights a fine-tuning node saves (below its end)."""
    return sorted(s for s in checkpoint_files(finetune, total) if s < total)


# -- runners -----------------------------------------------------------------------------------------------
class NodeRunner(Protocol):
    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        """Run the nodes (and whatever upstream of them is not complete); {key: error message or None}."""


def closure(nodes: list[Node]) -> list[list[Node]]:
    """The nodes and their upstream, deduplicated by key, grouped by dependency depth (upstream first)."""
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
    waves: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key, node in seen.items():
        waves[depth[key]].append(node)
    return waves


class _RunnerBase:
    def __init__(self, spec: SweepSpec, store, root: str):
        self.spec, self.store, self.root = spec, store, root
        self.ran: list[str] = []  # keys of nodes this runner actually trained (not reused), in order

    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        from .launch import publish_node

        errors: dict[str, str] = {}
        for wave in closure(nodes):
            todo = []
            for node in wave:
                if any(u.key in errors for u in node.upstream):
                    errors[node.key] = "skipped: an upstream node failed"
                elif not self.store.is_complete(node.stage, node.key):
                    todo.append(node)
            if todo:
                self.ran.extend(n.key for n in todo)
                failed = self._run_wave(todo)
                errors.update(failed)
                for node in todo:
                    if node.key in failed:
                        publish_node(node, self.store, self.root, failed[node.key])
        return {n.key: errors.get(n.key) for n in nodes}

    def _run_wave(self, nodes: list[Node]) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError


class LaunchRunner(_RunnerBase):
    """Ray Tune through the launch's dependency-driven scheduler (``orchestrator.launch.run_plan``): a batch of
    trials and whatever they need upstream in one Tune run, rows published as each node completes."""

    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        from . import launch
        from .plan import Plan

        every = [n for wave in closure(nodes) for n in wave]
        complete = {(n.stage, n.key) for n in every if self.store.is_complete(n.stage, n.key)}
        self.ran.extend(n.key for n in every if (n.stage, n.key) not in complete)
        errors = launch.run_plan(self.spec, Plan({n.key: n for n in every}), self.store, self.root, complete)[0]
        return {n.key: errors.get(n.key) for n in nodes}


class LocalRunner(_RunnerBase):
    """Nodes one after another in this process (no Ray): same store, same rows, same resume."""

    def _run_wave(self, nodes: list[Node]) -> dict[str, str]:
        from workers.trainable import run_node

        from .launch import node_payload, publish_node

        errors = {}
        for node in nodes:
            try:
                run_node(node_payload(node, self.store))
                publish_node(node, self.store, self.root)
            except Exception as err:  # a failed node is a failed trial, not a crashed study
                last = str(err).strip().splitlines()[-1][:500] if str(err).strip() else ""
                errors[node.key] = f"{type(err).__name__}: {last}"
        return errors


# -- the fixed setting of a study ---------------------------------------------------------------------------
@dataclass
class Setting:
    spec: SweepSpec
    search: SearchSpec
    builder: _Builder
    task: str
    backbone: str
    seed: int
    task_options: dict  # the trial nodes' (OOD dev evaluated)
    base_options: dict  # the fine-tuning's and bias model's (unchanged: existing nodes keep their keys)
    task_obj: object
    finetune: Node
    finetune_steps: int
    mask_steps: int
    candidates: list[int] = field(default_factory=list)  # start steps a trial may propose (timing)
    study_name: str = ""

    @property
    def paradigm(self) -> str:
        return f"{self.search.kind}_search"

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
    b = _Builder(spec)
    ft_cfg = b.base_config("finetune", task, backbone, seed, "std", 0.0, base)
    ft_total = b.total_steps(ft_cfg)
    mask_total = b.total_steps(b.base_config("mask_train", task, backbone, seed, "std", 0.5, options))
    candidates: list[int] = []
    if s.kind == "timing":
        t = s.timing
        ft = b.finetune(task, backbone, seed, "std", task_options=base)  # the grid's own fine-tune, shared
        candidates = [c for c in saved_steps(ft, ft_total) if c >= t.min_step] + ([ft_total] if t.include_end else [])
        for params in s.enqueue:
            if params.get("start_step") not in candidates:
                raise SpecError(f"field 'search.enqueue': start_step {params.get('start_step')} is not a candidate "
                                f"(the fine-tuning runs {ft_total} steps; candidates: {candidates})")
    else:
        ft = b.finetune(task, backbone, seed, "std", task_options=base)
    setting = Setting(spec, s, b, task, backbone, seed, options, base, task_obj, ft, ft_total, mask_total, candidates)
    setting.study_name = study_name(setting)
    return setting


def study_name(setting: Setting) -> str:
    """``<sweep>.<kind>.<key>``: the key hashes the search space and every fixed setting (the fine-tuning's
    key, a trial's base config, the stage code versions), not the trial budget or the storage, so a relaunch
    with more trials continues the same study and any change to what a trial means starts a new one."""
    s = setting.search
    probe = setting.builder.base_config("mask_train", setting.task, setting.backbone, setting.seed, "std", 0.0,
                                        setting.task_options)
    payload = {"search": s.model_dump(exclude={"n_trials", "batch_size", "storage", "enqueue"}),
               "finetune": setting.finetune.key, "trial_base": {k: v for k, v in probe.items()
                                                                if k not in ("device", "data_dir")},
               "versions": STAGE_VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{setting.spec.name}.{s.kind}.{digest}"


# -- trials as nodes ----------------------------------------------------------------------------------------
def suggest(trial, setting: Setting) -> dict:
    """The trial's parameters (a resumed trial gets back the values it already had)."""
    s = setting.search
    if s.kind == "timing":
        return {"start_step": int(trial.suggest_categorical("start_step", setting.candidates))}
    sc = s.schedule
    start = trial.suggest_float("start", sc.start.low, sc.start.high)
    return {"initial": trial.suggest_float("initial", sc.initial.low, sc.initial.high),
            "start": start,
            "end": trial.suggest_float("end", max(sc.end.low, start), sc.end.high),
            "frequency": trial.suggest_int("frequency", sc.frequency[0], sc.frequency[1], log=True),
            "lr": trial.suggest_float("lr", sc.lr.low, sc.lr.high, log=sc.lr.log)}


def suggest_fixed(params: dict) -> dict:
    """A finished trial's stored parameters in the form ``trial_node`` takes."""
    return {k: (int(v) if k in ("start_step", "frequency") else v) for k, v in params.items()}


def trial_node(setting: Setting, params: dict, rung: float | None = None) -> Node:
    """The mask-training node of a parameter set (``rung``: a shorter run of it, for the pruner)."""
    s, b = setting.search, setting.builder
    task, backbone, seed = setting.task, setting.backbone, setting.seed
    if s.kind == "timing":
        loss, sparsity = s.timing.loss, s.timing.sparsity
    else:
        loss, sparsity = s.schedule.loss, s.schedule.final_sparsity
    cfg = b.base_config("mask_train", task, backbone, seed, loss, sparsity, setting.task_options)
    cfg["train"]["select_from"] = 0.7  # pruning a fine-tuned model (protocol 2), as the planner does
    cfg["mask_classifier"] = True
    steps = setting.mask_steps
    if rung is not None:
        steps = max(1, int(round(rung * setting.mask_steps)))
        cfg["train"]["max_steps"] = steps
    inputs = b.loss_inputs(task, loss, setting.finetune, setting.base_options)
    extra = {"finetune_loss": "std"}
    if s.kind == "timing":
        step = params["start_step"]
        if step not in setting.candidates:  # never start from a checkpoint the fine-tuning does not save
            raise SearchError(f"start step {step} is not saved by the fine-tuning (saved: {setting.candidates})")
        inputs["init_weights"] = Input(setting.finetune, setting.start_file(step))
        extra["start_step"] = step
    else:
        inputs["init_weights"] = Input(setting.finetune, "weights.safetensors")
        cfg["train"]["lr"] = float(params["lr"])
        cfg["mask"]["init"] = "magnitude_soft"
        total, freq = setting.mask_steps, int(params["frequency"])
        start = int(round(params["start"] * total))
        # The target moves every `freq` steps (at multiples of it): the ramp must end on or before the last
        # update, or the final sparsity is never reached and no checkpoint is selectable.
        end = min(max(start + freq, int(round(params["end"] * total))), (total // freq) * freq)
        cfg["gradual"] = {"initial": float(params["initial"]), "unit": "step", "start": start, "end": end,
                          "frequency": freq,
                          # a short rung may never reach the final sparsity: select among what it reached
                          "select": "any" if rung is not None else "final"}
        extra["s_initial"] = float(params["initial"])
    # a rung is a shorter run of the same trial: its own method, so curves never average it with the full run
    method = "mask_train" if rung is None else f"mask_train_rung{rung:.2f}"
    return b.add(Node("mask_train", cfg, inputs, columns=b.columns(
        task, backbone, seed, setting.paradigm, loss, sparsity, method=method, **extra)))


def trial_cost(setting: Setting, params: dict, mask_steps: int) -> int:
    """Training steps a result costs: fine-tuning up to the start, plus mask training."""
    if setting.search.kind == "timing":
        return int(params["start_step"]) + mask_steps
    return setting.finetune_steps + mask_steps


def max_cost(setting: Setting) -> int:
    return setting.finetune_steps + setting.mask_steps


# -- objectives: read ID dev and OOD dev rows only -------------------------------------------------------
def _selected_value(rows: pd.DataFrame, role: str, dataset: str, metric: str) -> tuple[float, int]:
    sel = rows[(rows["eval_role"] == role) & (rows["eval_dataset"] == dataset) & (rows["metric"] == metric)
               & rows["selected"].astype(bool)]
    if len(sel) != 1:
        raise SearchError(f"node {rows['node_key'].iloc[0] if len(rows) else '?'}: expected one selected "
                          f"'{metric}' row on {role} split '{dataset}', found {len(sel)}")
    return float(sel["value"].iloc[0]), int(sel["step"].iloc[0])


def objective_values(rows: pd.DataFrame, task_obj, metric: str) -> dict:
    """ID dev and OOD-dev ``metric`` at the selected checkpoint. Only rows whose eval_role is "id" or
    "ood_dev" are looked at: the OOD test rows (eval_role "ood") cannot change a study."""
    rows = rows[rows["eval_role"].isin(["id", "ood_dev"])]
    id_split, ood_dev_split = task_obj.id_eval_splits[0], task_obj.ood_dev_splits[0]
    id_dev, step = _selected_value(rows, "id", id_split, metric)
    ood_dev, _ = _selected_value(rows, "ood_dev", ood_dev_split, metric)
    return {"id_dev": id_dev, "ood_dev": ood_dev, "selected_step": step, "id_split": id_split,
            "ood_dev_split": ood_dev_split}


def scalarize(search: SearchSpec, values: dict, cost: float, cost_max: float) -> float:
    w = search.weights
    return (w.get("id_dev", 0.0) * values["id_dev"] + w.get("ood_dev", 0.0) * values["ood_dev"]
            - w.get("cost", 0.0) * cost / max(1.0, cost_max))


def node_rows(store, node: Node) -> pd.DataFrame:
    return pd.read_parquet(store.fetch(node.stage, node.key, "rows.parquet"))


def dense_id(setting: Setting, store) -> float:
    rows = node_rows(store, setting.finetune)
    return _selected_value(rows, "id", setting.task_obj.id_eval_splits[0], setting.search.metric)[0]


# -- storage and study --------------------------------------------------------------------------------------
def storage_for(spec: SweepSpec, name: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = spec.search.storage
    if url and "://" in url:
        return url  # an RDB URL: Optuna builds its RDBStorage
    path = url or os.path.join(os.path.abspath(spec.output_dir), "search", f"{name}.journal")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return JournalStorage(JournalFileBackend(os.path.abspath(path)))


def open_study(setting: Setting):
    import optuna

    s = setting.search
    if s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.sampler_seed)
    elif s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.sampler_seed, population_size=max(2, s.batch_size * 2))
    else:
        sampler = optuna.samplers.TPESampler(seed=s.sampler_seed, n_startup_trials=s.n_startup_trials)
    p = s.pruner
    if p.kind == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials)
    elif p.kind == "asha":
        first = max(1, int(round(p.rungs[0] * setting.mask_steps)))
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=p.reduction_factor)
    else:
        pruner = optuna.pruners.NopPruner()
    kwargs = ({"directions": [OBJECTIVE_DIRECTIONS[o] for o in s.objectives]} if s.mode == "pareto"
              else {"direction": "maximize"})
    return optuna.create_study(storage=storage_for(setting.spec, setting.study_name), sampler=sampler,
                               pruner=pruner, study_name=setting.study_name, load_if_exists=True, **kwargs)


# -- trial rows in the results dataset ----------------------------------------------------------------------
def trial_frame(setting: Setting, number: int, state: str, params: dict, node: Node | None, values: dict | None,
                cost: float | None, scalar: float | None, constraint: float | None, rung: float | None,
                error: str | None = None) -> pd.DataFrame:
    """One row per objective of a trial: stage "search_trial", status "trial_<state>" (so the curve views,
    which keep status "completed", never mix them with node rows), the study name and trial number."""
    values = values or {}
    base = {**setting.builder.columns(setting.task, setting.backbone, setting.seed, setting.paradigm,
                                      node.stage_config["loss"] if node else "", node.stage_config["sparsity"]
                                      if node else float("nan"), method="search_trial"),
            "node_key": f"{setting.study_name}.t{number}", "stage": "search_trial", "status": f"trial_{state}",
            "error": error, "study": setting.study_name, "trial": number, "trial_state": state,
            "trial_node_key": node.key if node else "", "rung_fraction": rung if rung is not None else 1.0,
            "constraint": constraint, "feasible": None if constraint is None else bool(constraint <= 0),
            "selected": False, "epoch": float("nan"), "step": int(values.get("selected_step", -1)),
            **{f"param.{k}": v for k, v in params.items()}}
    if "start_step" in params:
        base["start_step"] = int(params["start_step"])
    rows = [("objective.id_dev", values.get("id_dev"), values.get("id_split", ""), "id"),
            ("objective.ood_dev", values.get("ood_dev"), values.get("ood_dev_split", ""), "ood_dev"),
            ("objective.cost", cost, "", ""), ("objective.scalar", scalar, "", "")]
    frame = pd.DataFrame([{**base, "metric": m, "value": float("nan") if v is None else float(v),
                           "eval_dataset": d, "eval_role": r} for m, v, d, r in rows])
    return frame


# -- the driver ---------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    study: object
    setting: Setting
    dense_id: float
    trial_nodes: dict[int, str]  # trial number -> full node key (completed trials)


def run_study(spec: SweepSpec, runner: NodeRunner, store, root: str, log: Callable[[str], None] = print,
              n_trials: int | None = None) -> SearchResult:
    import optuna
    from optuna.trial import Trial, TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setting = build_setting(spec)
    s = setting.search
    target = n_trials or s.n_trials
    study = open_study(setting)
    for params in s.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    log(f"study {setting.study_name}: {len(study.trials)} trial(s) so far, target {target}")
    # The fine-tuning (and its bias model) first: every trial starts from it, and it gives the dense baseline.
    if runner.run_nodes([setting.finetune])[setting.finetune.key]:
        raise SearchError(f"the fine-tuning node {setting.finetune.key} failed; see its error row in the results")
    dense = dense_id(setting, store)
    trial_nodes: dict[int, str] = {}

    def run_batch(trials: list) -> None:
        params = {t.number: suggest(t, setting) for t in trials}
        alive = list(trials)
        for rung in (s.pruner.rungs if s.pruner.kind != "none" else []):
            nodes = {t.number: trial_node(setting, params[t.number], rung) for t in alive}
            errors = runner.run_nodes(list({n.key: n for n in nodes.values()}.values()))
            rung_steps = max(1, int(round(rung * setting.mask_steps)))
            scored = []
            for t in alive:
                node = nodes[t.number]
                if errors[node.key]:
                    finish(t, params[t.number], node, TrialState.FAIL, None, rung, errors[node.key])
                    continue
                values = objective_values(node_rows(store, node), setting.task_obj, s.metric)
                cost = trial_cost(setting, params[t.number], rung_steps)
                t.report(scalarize(s, values, cost, max_cost(setting)), rung_steps)
                scored.append((t, node, values))
            alive = []
            for t, node, values in scored:  # every report of the rung first, then the decisions
                if t.should_prune():
                    finish(t, params[t.number], node, TrialState.PRUNED, values, rung)
                else:
                    alive.append(t)
        nodes = {t.number: trial_node(setting, params[t.number]) for t in alive}
        errors = runner.run_nodes(list({n.key: n for n in nodes.values()}.values()))
        for t in alive:
            node = nodes[t.number]
            if errors[node.key]:
                finish(t, params[t.number], node, TrialState.FAIL, None, None, errors[node.key])
            else:
                finish(t, params[t.number], node, TrialState.COMPLETE,
                       objective_values(node_rows(store, node), setting.task_obj, s.metric), None)

    def finish(t, params, node, state, values, rung, error=None) -> None:
        steps = setting.mask_steps if rung is None else max(1, int(round(rung * setting.mask_steps)))
        cost = trial_cost(setting, params, steps)
        scalar = scalarize(s, values, cost, max_cost(setting)) if values else None
        constraint = None
        if values and s.min_id_ratio is not None:
            constraint = s.min_id_ratio * dense - values["id_dev"]  # feasible when <= 0
            t.set_constraint("id_dev_vs_dense", constraint)
        if values:
            for name in ("id_dev", "ood_dev"):
                t.set_user_attr(name, values[name])
            t.set_user_attr("cost", cost)
            t.set_user_attr("scalar", scalar)
        t.set_user_attr("node_key", node.key)
        t.set_user_attr("rung", rung)
        # The rows first, then tell: a driver killed in between re-finishes the trial from its (complete) node.
        results.publish(root, trial_frame(setting, t.number, state.name.lower(), params, node, values, cost,
                                          scalar, constraint, rung, error))
        if state == TrialState.COMPLETE:
            objective = {"id_dev": values["id_dev"], "ood_dev": values["ood_dev"], "cost": float(cost)}
            tell = [objective[o] for o in s.objectives] if s.mode == "pareto" else scalar
            if s.mode == "scalar":
                t.report(scalar, setting.mask_steps)
            study.tell(t.number, tell, skip_if_finished=True)
            trial_nodes[t.number] = node.key
        else:
            study.tell(t.number, state=state, skip_if_finished=True)
        shown = "" if not values else f" id_dev={values['id_dev']:.4f} ood_dev={values['ood_dev']:.4f} cost={cost}"
        log(f"trial {t.number} {state.name.lower()} {params}{shown}{' ' + error if error else ''}")

    # Trials a killed driver left RUNNING: finished with their own parameters (their nodes are reused or
    # resumed from their checkpoints), so none is lost and none is asked again.
    leftover = [Trial(study, ft._trial_id) for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if leftover:
        log(f"resuming {len(leftover)} unfinished trial(s): {[t.number for t in leftover]}")
        run_batch(leftover)
    while True:
        have = len([t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING])  # enqueued: not yet
        if have >= target:
            break
        run_batch([study.ask() for _ in range(min(s.batch_size, target - have))])
    for ft in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trial_nodes.setdefault(ft.number, ft.user_attrs.get("node_key", ""))
    return SearchResult(study, setting, dense, trial_nodes)


# -- the predictor next to the search -------------------------------------------------------------------------
def predictor_comparison(result: SearchResult, runner: NodeRunner, store, root: str) -> pd.DataFrame:
    """Early-Bird and ID-dev-plateau picks (no search: computed from the fine-tuning) against the study's best
    trial: start step, objectives, training steps and the wall seconds of the nodes each needed."""
    from optuna.trial import TrialState

    from srnet_core.pruning.timing import pick_early_bird, plateau_step, settled_step

    setting, s = result.setting, result.setting.search
    if s.kind != "timing":
        return pd.DataFrame()
    try:
        with open(store.fetch("finetune", setting.finetune.key, "timing.json")) as f:
            timing = json.load(f)
        bird = pick_early_bird(timing, s.timing.sparsity)
        picks = {"early_bird": settled_step(bird["steps"], bird["distances"], s.early_bird_threshold,
                                            s.early_bird_window)}
    except FileNotFoundError:  # a fine-tuning finished before the predictor existed: no timing.json
        picks = {"early_bird": None}
    ft_rows = node_rows(store, setting.finetune)
    hist = ft_rows[(ft_rows["eval_role"] == "id") & (ft_rows["eval_dataset"] == setting.task_obj.id_eval_splits[0])
                   & (ft_rows["metric"] == s.metric)]
    picks["id_plateau"] = plateau_step(list(zip(hist["step"].astype(int), hist["value"].astype(float))))
    done = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in done if t.user_attrs.get("id_dev", 0) >= (s.min_id_ratio or 0) * result.dense_id]
    pool = feasible or done
    best = max(pool, key=lambda t: (t.user_attrs["scalar"], -t.number)) if pool else None
    search_nodes = set()  # every mask-training node the study ran: rungs passed, then the full run
    for t in result.study.trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params:
            p = suggest_fixed(t.params)
            last = t.user_attrs.get("rung")
            for rung in (s.pruner.rungs if s.pruner.kind != "none" else []):
                if t.state == TrialState.PRUNED and last is not None and rung > last:
                    break
                search_nodes.add(trial_node(setting, p, rung).key)
            if t.state == TrialState.COMPLETE:
                search_nodes.add(trial_node(setting, p).key)
    rows = []
    if best is not None:
        rows.append({"method": "search (best trial)", "start_step": int(best.params["start_step"]),
                     "id_dev": best.user_attrs["id_dev"], "ood_dev": best.user_attrs["ood_dev"],
                     "cost_steps": best.user_attrs["cost"], "mask_trainings": len(search_nodes),
                     "wall_seconds": _wall_seconds(store, search_nodes), "trial": best.number})
    for name, step in picks.items():
        if step is None:
            rows.append({"method": name, "start_step": None})
            continue
        snapped = min((c for c in setting.candidates if c >= step), default=setting.candidates[-1])
        node = trial_node(setting, {"start_step": snapped})
        if runner.run_nodes([node])[node.key] is None:
            v = objective_values(node_rows(store, node), setting.task_obj, s.metric)
            rows.append({"method": name, "start_step": snapped, "id_dev": v["id_dev"], "ood_dev": v["ood_dev"],
                         "cost_steps": trial_cost(setting, {"start_step": snapped}, setting.mask_steps),
                         "mask_trainings": 1, "wall_seconds": _wall_seconds(store, [node.key])})
    return pd.DataFrame(rows)


def _wall_seconds(store, keys) -> float:
    """Wall seconds of the mask-training nodes ``keys`` (from their summary.json)."""
    total = 0.0
    for key in keys:
        with open(store.fetch("mask_train", key, "summary.json")) as f:
            total += float(json.load(f).get("wall_seconds", 0.0))
    return total


# -- command line -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep YAML with a search: section (see sweeps/timing_search.yaml)")
    parser.add_argument("--runner", choices=["ray", "local"], default="ray",
                        help="ray: Ray Tune waves (default); local: nodes in this process, no Ray")
    parser.add_argument("--address", help="Ray cluster address; default: an embedded local Ray")
    parser.add_argument("--n-trials", type=int, help="override search.n_trials (the study's total)")
    parser.add_argument("--no-report", action="store_true", help="skip the figures and tables")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if spec.search is None:
            raise SpecError(f"{args.spec}: no 'search' section; see sweeps/timing_search.yaml and docs/search.md")
        build_setting(spec)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    started_ray = False
    if args.runner == "ray":
        import ray
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(address=args.address, include_dashboard=False, logging_level="WARNING") if args.address \
                else ray.init(include_dashboard=False, logging_level="WARNING")
        runner: NodeRunner = LaunchRunner(spec, store, root)
    else:
        runner = LocalRunner(spec, store, root)
    try:
        result = run_study(spec, runner, store, root, n_trials=args.n_trials)
        table = predictor_comparison(result, runner, store, root) if not args.no_report else pd.DataFrame()
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    if not args.no_report:
        from .search_report import write_search_report
        path = write_search_report(result, table, root, os.path.abspath(spec.output_dir))
        print(f"search report: {path}")
    print(f"study {result.setting.study_name}: {len(result.study.trials)} trial(s); results: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
