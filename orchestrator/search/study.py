"""The study driver: the Optuna study (storage, sampler, pruner), the trial loop and the trial rows.

Trials are asked in batches of ``search.batch_size``; a batch runs its rungs (shorter runs the pruner judges)
and then its full mask-training nodes through the runner, and each trial is told its objectives. Trial rows
are published before the trial is told, so a driver killed in between re-finishes the trial from its
(complete) node; trials a killed driver left RUNNING are finished with the parameters they already had.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .. import cluster as clusterlib
from .. import results
from ..spec import SweepSpec
from .nodes import Node
from .objectives import OBJECTIVE_DIRECTIONS, SearchError, dense_id, node_rows, objective_values, scalarize
from . import storage
from .runners import NodeRunner
from .setting import Setting, build_setting, max_cost, suggest, trial_cost, trial_node


# -- storage, sampler, pruner --------------------------------------------------------------------------------
def storage_for(spec: SweepSpec, name: str):
    """The study's Optuna storage (``search.storage``; default: a journal with the sweep's outputs, kept in
    the store for a URI ``output_dir``): see ``orchestrator.search.storage``."""
    return storage.storage_for(spec.output_dir, spec.search.storage, name)


def _optuna():
    import optuna

    return optuna


# search.sampler -> the Optuna sampler; search.pruner.kind -> the Optuna pruner (``setting`` gives step counts)
SAMPLERS: dict[str, Callable] = {
    "tpe": lambda s: _optuna().samplers.TPESampler(seed=s.sampler_seed, n_startup_trials=s.n_startup_trials),
    "nsga2": lambda s: _optuna().samplers.NSGAIISampler(seed=s.sampler_seed,
                                                        population_size=max(2, s.batch_size * 2)),
    "random": lambda s: _optuna().samplers.RandomSampler(seed=s.sampler_seed),
}
PRUNERS: dict[str, Callable] = {
    "none": lambda p, setting: _optuna().pruners.NopPruner(),
    "median": lambda p, setting: _optuna().pruners.MedianPruner(n_startup_trials=p.n_startup_trials),
    "asha": lambda p, setting: _optuna().pruners.SuccessiveHalvingPruner(
        min_resource=setting.rung_steps(p.rungs[0]), reduction_factor=p.reduction_factor),
}


def open_study(setting: Setting, where=None):
    """The study (created, or loaded if it exists) in ``where`` (default: ``storage_for``)."""
    s = setting.search
    kwargs = ({"directions": [OBJECTIVE_DIRECTIONS[o] for o in s.objectives]} if s.mode == "pareto"
              else {"direction": "maximize"})
    return _optuna().create_study(storage=storage_for(setting.spec, setting.study_name) if where is None else where,
                                  sampler=SAMPLERS[s.sampler](s), pruner=PRUNERS[s.pruner.kind](s.pruner, setting),
                                  study_name=setting.study_name, load_if_exists=True, **kwargs)


# -- trial rows in the results dataset ----------------------------------------------------------------------
def trial_frame(setting: Setting, number: int, state: str, params: dict, node: Node | None, values: dict | None,
                cost: float | None, scalar: float | None, constraint: float | None, rung: float | None,
                error: str | None = None) -> pd.DataFrame:
    """One row per objective of a trial: stage "search_trial", status "trial_<state>" (so the curve views,
    which keep status "completed", never mix them with node rows), the study name and trial number."""
    values = values or {}
    base = {**setting.nodes.columns(setting.task, setting.backbone, setting.seed, setting.paradigm,
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
    return pd.DataFrame([{**base, "metric": m, "value": float("nan") if v is None else float(v),
                          "eval_dataset": d, "eval_role": r} for m, v, d, r in rows])


# -- the driver ---------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    study: object
    setting: Setting
    dense_id: float
    trial_nodes: dict[int, str]  # trial number -> full node key (completed trials)


class TrialLoop:
    """Runs batches of trials of one study: their rungs, then their full nodes; tells and publishes each."""

    def __init__(self, setting: Setting, study, runner: NodeRunner, store, root: str, log, dense: float):
        self.setting, self.study, self.runner, self.store, self.root = setting, study, runner, store, root
        self.log, self.dense = log, dense
        self.trial_nodes: dict[int, str] = {}

    def unfinished(self) -> list:
        """Trials a killed driver left RUNNING (their nodes are reused or resume from their checkpoints)."""
        from optuna.trial import Trial, TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [Trial(self.study, ft._trial_id) for ft in running]

    def asked(self) -> int:
        """Trials asked so far (enqueued ones not yet asked do not count)."""
        from optuna.trial import TrialState

        return len([t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING])

    def run_batch(self, trials: list) -> None:
        params = {t.number: suggest(t, self.setting) for t in trials}
        alive = list(trials)
        for rung in self.setting.rungs:
            alive = self._run_rung(alive, params, rung)
        nodes, errors = self._run(alive, params, None)
        for t in alive:
            node, error = nodes[t.number], errors[nodes[t.number].key]
            values = None if error else objective_values(node_rows(self.store, node), self.setting.task_obj,
                                                         self.setting.search.metric)
            self.finish(t, params[t.number], node, "FAIL" if error else "COMPLETE", values, None, error)

    def _run(self, trials: list, params: dict, rung: float | None) -> tuple[dict, dict]:
        nodes = {t.number: trial_node(self.setting, params[t.number], rung) for t in trials}
        return nodes, self.runner.run_nodes(list({n.key: n for n in nodes.values()}.values()))

    def _run_rung(self, alive: list, params: dict, rung: float) -> list:
        """Every trial's rung run and report first, then the pruner's decisions; returns the trials kept."""
        s, steps = self.setting.search, self.setting.rung_steps(rung)
        nodes, errors = self._run(alive, params, rung)
        scored = []
        for t in alive:
            node = nodes[t.number]
            if errors[node.key]:
                self.finish(t, params[t.number], node, "FAIL", None, rung, errors[node.key])
                continue
            values = objective_values(node_rows(self.store, node), self.setting.task_obj, s.metric)
            cost = trial_cost(self.setting, params[t.number], steps)
            t.report(scalarize(s, values, cost, max_cost(self.setting)), steps)
            scored.append((t, node, values))
        kept = []
        for t, node, values in scored:
            if t.should_prune():
                self.finish(t, params[t.number], node, "PRUNED", values, rung)
            else:
                kept.append(t)
        return kept

    def finish(self, t, params: dict, node: Node, state_name: str, values: dict | None, rung: float | None,
               error: str | None = None) -> None:
        from optuna.trial import TrialState

        setting, s = self.setting, self.setting.search
        state = TrialState[state_name]
        cost = trial_cost(setting, params, setting.rung_steps(rung))
        scalar = scalarize(s, values, cost, max_cost(setting)) if values else None
        constraint = None
        if values and s.min_id_ratio is not None:
            constraint = s.min_id_ratio * self.dense - values["id_dev"]  # feasible when <= 0
            t.set_constraint("id_dev_vs_dense", constraint)
        for name, value in self.dashboard_attrs(params, node, values, cost, scalar, rung, error).items():
            t.set_user_attr(name, value)
        # The rows first, then tell: a driver killed in between re-finishes the trial from its (complete) node.
        results.publish(self.root, trial_frame(setting, t.number, state.name.lower(), params, node, values, cost,
                                               scalar, constraint, rung, error))
        if state == TrialState.COMPLETE:
            objective = {"id_dev": values["id_dev"], "ood_dev": values["ood_dev"], "cost": float(cost)}
            tell = [objective[o] for o in s.objectives] if s.mode == "pareto" else scalar
            if s.mode == "scalar":
                t.report(scalar, setting.mask_steps)
            self.study.tell(t.number, tell, skip_if_finished=True)
            self.trial_nodes[t.number] = node.key
        else:
            self.study.tell(t.number, state=state, skip_if_finished=True)
        shown = "" if not values else f" id_dev={values['id_dev']:.4f} ood_dev={values['ood_dev']:.4f} cost={cost}"
        self.log(f"trial {t.number} {state.name.lower()} {params}{shown}{' ' + error if error else ''}")

    def dashboard_attrs(self, params: dict, node: Node, values: dict | None, cost: float, scalar: float | None,
                        rung: float | None, error: str | None) -> dict:
        """A trial's user attributes (optuna-dashboard shows them per trial): its objectives, its node (the
        last one it ran: a rung node when pruned or failed there), every node key it ran, where its node's
        rows are, and its parameters."""
        setting = self.setting
        rungs = [r for r in setting.rungs if rung is None or r <= rung]
        keys = [trial_node(setting, params, r).key for r in rungs] + ([node.key] if rung is None else [])
        attrs = {"node_key": node.key, "node_keys": keys, "finetune_key": setting.finetune.key,
                 "rows": clusterlib.join(self.store.root, node.stage, node.key, "rows.parquet"),
                 "results": self.root, "rung": rung, "params": dict(params)}
        if values:
            attrs.update(id_dev=values["id_dev"], ood_dev=values["ood_dev"], cost=cost, scalar=scalar)
        if error:
            attrs["error"] = error
        return attrs

    def completed_nodes(self) -> dict[int, str]:
        """Trial number -> node key of every completed trial (this driver's and earlier ones')."""
        from optuna.trial import TrialState

        for ft in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self.trial_nodes.setdefault(ft.number, ft.user_attrs.get("node_key", ""))
        return self.trial_nodes


def run_study(spec: SweepSpec, runner: NodeRunner, store, root: str, log: Callable[[str], None] = print,
              n_trials: int | None = None) -> SearchResult:
    """Run (or continue) the spec's study until it holds ``n_trials`` (default ``search.n_trials``) trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setting = build_setting(spec)
    target = n_trials or setting.search.n_trials
    where = storage_for(spec, setting.study_name)
    study = open_study(setting, where)
    location = storage.journal_location(spec.output_dir, spec.search.storage, setting.study_name)
    log(f"study storage: {storage.describe(where, location)}")
    try:
        result = _drive(setting, study, runner, store, root, log, target)
    except BaseException:
        with contextlib.suppress(Exception):  # the driver's own error is the one to report
            storage.flush(where)
        raise
    storage.flush(where)  # attributes written after the last state change (a journal kept in the store)
    return result


def _drive(setting: Setting, study, runner: NodeRunner, store, root: str, log, target: int) -> SearchResult:
    s = setting.search
    for params in s.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    log(f"study {setting.study_name}: {len(study.trials)} trial(s) so far, target {target}")
    if getattr(runner, "ask_tell", False):  # one run; trials join the running scheduler as others end
        from .asktell import AskTell

        loop = TrialLoop(setting, study, runner, store, root, log, float("nan"))  # dense: once fine-tuned
        runner.run_study(setting.finetune, AskTell(loop, target, s.parallelism or s.batch_size, log))
        return SearchResult(study, setting, loop.dense, loop.completed_nodes())
    # The fine-tuning (and its bias model) first: every trial starts from it, and it gives the dense baseline.
    if runner.run_nodes([setting.finetune])[setting.finetune.key]:
        raise SearchError(f"the fine-tuning node {setting.finetune.key} failed; see its error row in the results")
    loop = TrialLoop(setting, study, runner, store, root, log, dense_id(setting, store))
    leftover = loop.unfinished()  # finished with their own parameters: none is lost, none is asked again
    if leftover:
        log(f"resuming {len(leftover)} unfinished trial(s): {[t.number for t in leftover]}")
        loop.run_batch(leftover)
    while (have := loop.asked()) < target:
        loop.run_batch([study.ask() for _ in range(min(s.batch_size, target - have))])
    return SearchResult(study, setting, loop.dense, loop.completed_nodes())
