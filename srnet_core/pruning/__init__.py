"""Pruning methods beyond fixed-sparsity mask training, each a stage-ready function on TrainLoop.

- ``imp``: iterative magnitude pruning, one run -> every level (protocol.md section 3).
- ``gmp`` / ``gradual_mask_train``: cubic-schedule gradual pruning (section 4).
- ``structured_prune``: attention heads and FFN neurons by gate importance (a neuron-level relative of Super
  Tickets, not Super Tickets itself: see its module docstring).
- ``CubicSparsitySchedule``: the LR-scheduler-shaped schedule that drives a MaskSet (mask_train stage).
"""
from .gradual import (GradualOptions, GradualResult, MagnitudePruner, gmp, gradual_mask_hook, gradual_mask_train,
                      make_schedule)
from .imp import ImpLevel, ImpOptions, imp, imp_levels
from .schedules import CubicSparsitySchedule, cubic_sparsity
from .structured import (StructuredOptions, StructuredRound, compute_importance, normalize_per_layer,
                         select_alive, shrink_model, structured_prune, structured_weight_masks)

__all__ = [
    "CubicSparsitySchedule", "GradualOptions", "GradualResult", "ImpLevel", "ImpOptions", "MagnitudePruner",
    "StructuredOptions", "StructuredRound", "compute_importance", "cubic_sparsity", "gmp", "gradual_mask_hook",
    "gradual_mask_train", "imp", "imp_levels", "make_schedule", "normalize_per_layer", "select_alive",
    "shrink_model", "structured_prune", "structured_weight_masks",
]
