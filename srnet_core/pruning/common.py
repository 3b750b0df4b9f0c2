"""Small pieces shared by the pruning methods: trainable parameters, snapshots, eligibility, state."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..masks import MaskSet
from ..models import prunable_linear_names

Report = Callable  # report(record, state_fn): called after every evaluation; state_fn() -> checkpoint dict
# (record None: a checkpoint without an evaluation before the loop raises Preempted, srnet_core.train)


class OptionError(ValueError):
    """A bad value of one field of a pruning method's options dataclass; the spec names it as
    ``<kind>_options.<field>``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps per epoch, as TrainLoop counts them."""
    return max(1, math.ceil(n_train / batch_size))


def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that requires grad, by name (parametrized weights appear as ``...weight.original``)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def encoder_names(model: nn.Module, names: list[str]) -> list[str]:
    """The subset of ``names`` that are encoder matrices: protocol.md's sparsity denominator."""
    encoder = set(prunable_linear_names(model, include_pooler=False, include_classifier=False))
    return [n for n in names if n in encoder]


def clone_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


@torch.no_grad()
def copy_into(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        params[name].copy_(value.to(params[name].device))


def mask_snapshot(mask_set: MaskSet) -> dict[str, torch.Tensor]:
    return {f"mask:{n}": m for n, m in mask_set.masks().items()}


def masks_from_snapshot(snapshot: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("mask:"): v.bool() for k, v in snapshot.items() if k.startswith("mask:")}


def weights_from_snapshot(snapshot: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("weight:"): v for k, v in snapshot.items() if k.startswith("weight:")}


def only_when(selection: Callable[[dict], float], eligible: Callable[[], bool]) -> Callable[[dict], float]:
    """A selection function that returns -inf (never best) while ``eligible()`` is False."""
    def select(metrics: dict) -> float:
        return selection(metrics) if eligible() else -math.inf
    return select
