"""Expand a sweep spec into a DAG of stage nodes; identical nodes collapse by content key.

A node's key hashes exactly what changes its outputs: the fields its stage reads (its kind's ``key_fields``
in srnet_core.stages.registry), its inputs (upstream key + file) and the stage's code version. So one
fine-tuning run per (task, backbone, loss, seed) feeds every pruning run that needs it, a bias model is
fitted once per task, and widening a sweep (a seed, a sparsity, a loss, a timing fraction, a backbone) adds
only the new nodes:

- teacher probabilities (conf_reg) are their own ``teacher`` node downstream of the std fine-tune, so adding
  conf_reg never re-keys the fine-tune;
- every std fine-tune saves its weights on a fixed fraction grid (``FT_CHECKPOINT_FRACTIONS``: 10%, 20%, ...,
  90% of its steps) whether or not the sweep has the timing paradigm; timing fractions must lie on that grid,
  so adding one never re-keys the fine-tune;
- fields the planner sets itself (``<section>.seed``, ``<section>.select_from``, ``mask.sparsity``,
  ``device``, ``imp_options.rewind``) are rejected in the spec instead of being silently replaced.

Modules: ``graph`` (Input, Node, node_key, Plan), ``factory`` (NodeFactory: every node recipe once, used by the
paradigms and the searches), ``paradigms`` (one function per paradigm; build_plan), ``estimates`` (sizes and
per-node run time).
"""
from __future__ import annotations

from srnet_core.stages import REGISTRY, checkpoint_step

from .estimates import (EVAL_SIZES, FALLBACK_THROUGHPUT, TRAIN_SIZES, calibration, calibration_label,
                        estimate_gpu_hours, eval_size, node_cost, node_seconds, train_size, use_calibration)
from .factory import (BIAS_LOSSES, FT_CHECKPOINT_FRACTIONS, SELECT_FROM_FINETUNED, TEACHER_LOSSES, Cell,
                      NodeFactory, keyed_task_options)
from .graph import Input, Node, Plan, depth_groups, node_key
from .paradigms import CELL_METHODS, METHODS, PARADIGMS, SWEEP_PARADIGMS, build_plan, check_planner_fields, paradigm

__all__ = ["BIAS_LOSSES", "CELL_METHODS", "Cell", "EVAL_SIZES", "FT_CHECKPOINT_FRACTIONS", "Input", "METHODS",
           "Node", "NodeFactory", "PARADIGMS", "Plan", "SELECT_FROM_FINETUNED", "STAGE_FIELDS", "SWEEP_PARADIGMS",
           "TEACHER_LOSSES", "FALLBACK_THROUGHPUT", "TRAIN_SIZES", "calibration", "calibration_label", "build_plan",
           "check_planner_fields", "checkpoint_step",
           "depth_groups", "estimate_gpu_hours", "eval_size", "keyed_task_options", "node_key",
           "node_cost", "node_seconds", "paradigm", "train_size", "use_calibration"]

def __getattr__(name: str):
    if name == "STAGE_FIELDS":  # a view of the registry: {stage: the config fields its key reads}
        return {k.name: k.key_fields for k in REGISTRY.values()}
    raise AttributeError(name)
