"""The timing predictors next to a timing search: Early-Bird and the ID-dev plateau pick a start step from the
fine-tuning alone (no search); each pick is run as one mask training and set against the study's best trial."""
from __future__ import annotations

import json

import pandas as pd

from .objectives import node_rows, objective_values
from .runners import NodeRunner
from .setting import suggest_fixed, trial_cost, trial_node
from .study import SearchResult


def predictor_comparison(result: SearchResult, runner: NodeRunner, store, root: str) -> pd.DataFrame:
    """Early-Bird and ID-dev-plateau picks (no search: computed from the fine-tuning) against the study's best
    trial: start step, objectives, training steps and the wall seconds of the nodes each needed. Empty for a
    space whose parameters are not a start step (``space.compares_predictors``)."""
    setting = result.setting
    if not setting.space.compares_predictors:
        return pd.DataFrame()
    rows = []
    best = _best_trial(result)
    if best is not None:
        nodes = _study_nodes(result)
        rows.append({"method": "search (best trial)", "start_step": int(best.params["start_step"]),
                     "id_dev": best.user_attrs["id_dev"], "ood_dev": best.user_attrs["ood_dev"],
                     "cost_steps": best.user_attrs["cost"], "mask_trainings": len(nodes),
                     "wall_seconds": _wall_seconds(store, nodes), "trial": best.number})
    for name, step in predicted_steps(setting, store).items():
        if step is None:
            rows.append({"method": name, "start_step": None})
            continue
        snapped = min((c for c in setting.candidates if c >= step), default=setting.candidates[-1])
        node = trial_node(setting, {"start_step": snapped})
        if runner.run_nodes([node])[node.key] is None:
            v = objective_values(node_rows(store, node), setting.task_obj, setting.search.metric)
            rows.append({"method": name, "start_step": snapped, "id_dev": v["id_dev"], "ood_dev": v["ood_dev"],
                         "cost_steps": trial_cost(setting, {"start_step": snapped}, setting.mask_steps),
                         "mask_trainings": 1, "wall_seconds": _wall_seconds(store, [node.key])})
    return pd.DataFrame(rows)


def predicted_steps(setting, store) -> dict[str, int | None]:
    """{predictor: start step it picks, or None}, from the fine-tuning's timing.json and ID-dev history."""
    from srnet_core.pruning.timing import pick_early_bird, plateau_step, settled_step

    s = setting.search
    try:
        with open(store.fetch("finetune", setting.finetune.key, "timing.json")) as f:
            timing = json.load(f)
        bird = pick_early_bird(timing, setting.space.sparsity)
        picks = {"early_bird": settled_step(bird["steps"], bird["distances"], s.early_bird_threshold,
                                            s.early_bird_window)}
    except FileNotFoundError:  # a fine-tuning finished before the predictor existed: no timing.json
        picks = {"early_bird": None}
    ft_rows = node_rows(store, setting.finetune)
    hist = ft_rows[(ft_rows["eval_role"] == "id") & (ft_rows["eval_dataset"] == setting.task_obj.id_eval_splits[0])
                   & (ft_rows["metric"] == s.metric)]
    picks["id_plateau"] = plateau_step(list(zip(hist["step"].astype(int), hist["value"].astype(float))))
    return picks


def _best_trial(result: SearchResult):
    """The completed trial with the best scalar among the feasible ones (all completed if none is)."""
    from optuna.trial import TrialState

    s = result.setting.search
    done = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in done if t.user_attrs.get("id_dev", 0) >= (s.min_id_ratio or 0) * result.dense_id]
    pool = feasible or done
    return max(pool, key=lambda t: (t.user_attrs["scalar"], -t.number)) if pool else None


def _study_nodes(result: SearchResult) -> set[str]:
    """Every mask-training node the study ran: the rungs each trial passed, then its full run."""
    from optuna.trial import TrialState

    setting, keys = result.setting, set()
    for t in result.study.trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params:
            p = suggest_fixed(t.params)
            last = t.user_attrs.get("rung")
            for rung in setting.rungs:
                if t.state == TrialState.PRUNED and last is not None and rung > last:
                    break
                keys.add(trial_node(setting, p, rung).key)
            if t.state == TrialState.COMPLETE:
                keys.add(trial_node(setting, p).key)
    return keys


def _wall_seconds(store, keys) -> float:
    """Wall seconds of the mask-training nodes ``keys`` (from their summary.json)."""
    total = 0.0
    for key in keys:
        with open(store.fetch("mask_train", key, "summary.json")) as f:
            total += float(json.load(f).get("wall_seconds", 0.0))
    return total
