"""Pruning methods beyond fixed-sparsity mask training, each a stage-ready function on TrainLoop.

- ``imp``: iterative magnitude pruning, one run -> every level (protocol.md section 3).
- ``gmp`` / ``gradual_mask_train``: cubic-schedule gradual pruning (section 4).
- ``structured_prune``: attention heads and FFN neurons by gate importance (a neuron-level relative of Super
  Tickets, not Super Tickets itself: see its module docstring).
- ``super_ticket``: Super Tickets (Liang et al. 2021): heads and whole FFN sublayers by gate importance over
  the whole training set, one shot; the ``retrain`` stage re-fine-tunes the ticket from the pre-trained weights.
- ``CubicSparsitySchedule``: the LR-scheduler-shaped schedule that drives a MaskSet (mask_train stage).
"""
from .gradual import (GradualOptions, GradualResult, MagnitudePruner, gmp, gradual_mask_hook, gradual_mask_train,
                      make_schedule)
from .imp import ImpLevel, ImpOptions, imp, imp_levels
from .schedules import CubicSparsitySchedule, cubic_sparsity
from .structured import (StructuredOptions, StructuredRound, compute_importance, normalize_per_layer,
                         select_alive, shrink_model, structured_prune, structured_weight_masks)
from .super_tickets import SuperTicket, SuperTicketOptions, gate_importance, super_ticket

__all__ = [
    "CubicSparsitySchedule", "GradualOptions", "GradualResult", "ImpLevel", "ImpOptions", "MagnitudePruner",
    "StructuredOptions", "StructuredRound", "SuperTicket", "SuperTicketOptions", "compute_importance",
    "cubic_sparsity", "gate_importance", "gmp", "gradual_mask_hook", "gradual_mask_train", "imp", "imp_levels", "make_schedule", "normalize_per_layer", "select_alive",
    "shrink_model", "structured_prune", "structured_weight_masks", "super_ticket",
]
