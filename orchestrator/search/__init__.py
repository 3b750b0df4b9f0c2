"""Optuna searches over when mask training starts and over the gradual schedule (docs/search.md).

    python -m orchestrator.search sweeps/timing_search.yaml [--runner ray|ray-batches|local] [--address ray://...]

Trials are ordinary content-keyed stage nodes built with the planner's node builders: a trial whose
parameters equal an earlier node's reuses that node, and a relaunch after a kill continues the study (the
trials the killed driver left RUNNING are finished with the parameters they already had, never re-asked),
on this machine or another: the study lives with the sweep's outputs (``storage``).
Objectives come from the trial node's rows at its checkpoint selected on ID dev: ID dev (eval_role "id") and
OOD dev (eval_role "ood_dev"); rows with eval_role "ood" (the reported OOD test sets) are never read here.

The driver runs nodes through a ``NodeRunner`` (``run_nodes(nodes) -> {key: error or None}``):
``SchedulerRunner`` (``--runner ray``, the default) makes the whole study ONE Ray Tune run of the launch's
dependency-driven scheduler (``orchestrator.launch.run_plan``), trials added to it as others end (``asktell``);
``LaunchRunner`` (``--runner ray-batches``) makes each batch of trials, and each rung, a Tune run of its own;
``LocalRunner`` runs them in this process, for tests and debugging.

Modules, one job each:

* ``nodes``: the one contact with the planner's node recipes (its private ``_Builder``, saved checkpoints);
* ``space``: what a timing and a schedule search differ in (``SPACES[kind]``: parameters, node shape, cost);
* ``setting``: the study's fixed setting, its name, and trials as mask-training nodes;
* ``objectives``: ID dev / OOD dev at the selected checkpoint, the scalarised objective;
* ``runners``: ``SchedulerRunner`` (the default), ``LaunchRunner``, ``LocalRunner``;
* ``asktell``: trials as nodes added to the one running scheduler as others end (``SchedulerRunner``);
* ``storage``: where the study lives (an Optuna journal with the sweep's outputs, kept in the store for a URI
  ``output_dir``: pulled at start, pushed after each trial change), or an RDB URL;
* ``study``: storage, sampler and pruner factories, the trial loop (``run_study``), trial rows;
* ``predictor``: Early-Bird and ID-dev-plateau picks against the study's best trial (timing searches);
* ``cli``: the command line (``python -m orchestrator.search``).
"""
from .cli import main
from .nodes import checkpoint_files, saved_steps
from .objectives import (OBJECTIVE_DIRECTIONS, SearchError, dense_id, node_rows, objective_values,
                         scalarize)
from .predictor import predictor_comparison
from .asktell import AskTell
from .runners import LaunchRunner, LocalRunner, NodeRunner, SchedulerRunner, closure
from .setting import (Setting, build_setting, max_cost, study_name, suggest, suggest_fixed, trial_cost,
                      trial_node)
from .space import SPACES, ScheduleSpace, TimingSpace
from .study import PRUNERS, SAMPLERS, SearchResult, TrialLoop, open_study, run_study, storage_for, trial_frame

__all__ = ["OBJECTIVE_DIRECTIONS", "PRUNERS", "SAMPLERS", "SPACES", "AskTell", "LaunchRunner", "LocalRunner",
           "NodeRunner", "SchedulerRunner",
           "ScheduleSpace", "SearchError", "SearchResult", "Setting", "TimingSpace", "TrialLoop", "build_setting",
           "checkpoint_files", "closure", "dense_id", "main", "max_cost", "node_rows", "objective_values",
           "open_study", "predictor_comparison", "run_study", "saved_steps", "scalarize", "storage_for",
           "study_name", "suggest", "suggest_fixed", "trial_cost", "trial_frame", "trial_node"]
