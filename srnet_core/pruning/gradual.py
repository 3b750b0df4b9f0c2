"""Gradual pruning on a cubic schedule (protocol.md section 4): GMP with trained weights (Sparse*BERT style)
and gradual mask training (scores trained, weights frozen), both on ``srnet_core.train.TrainLoop``.

The selected ("best") mask is the live mask at the selected evaluation, so its sparsity is the schedule's
target at that step. (The reference re-thresholded a new best at s_i before saving it, so its "best" mask
was 70% sparse whatever the target; that bug is not copied.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from ..data import Encoded
from ..masks import PHI, MaskConfig, MaskSet, sparsity_of
from ..train import EvalRecord, TrainConfig, TrainLoop
from .common import (OptionError, Report, copy_into, encoder_names, mask_snapshot, masks_from_snapshot,
                     only_when, steps_per_epoch, trainable_params, weights_from_snapshot)
from .schedules import CubicSparsitySchedule


@dataclass
class GradualOptions:
    """The cubic schedule and selection of a gradual run.

    initial / final: s_i and s_f (GMP usually 0 -> s_f; the reference's gradual mask training 0.7 -> 0.9).
    start / end: t0 and t_f in ``unit``; end=None = the end of training; ``"last_epoch"`` = the start of the
        last epoch when there are >= 2 (the reference's t_f = last epoch; Sparse*BERT's recovery phase).
    unit: ``epoch`` (fractional epochs) or ``step`` (optimizer steps).
    frequency: optimizer steps between sparsity updates (1 = every step; the reference: the eval interval).
    scope: ``local`` (per matrix) or ``global`` (one threshold over all pruned matrices).
    select: ``any`` = the best eval (TrainConfig.select_from applies), at whatever sparsity the schedule had
        then; ``final`` = the best ID-dev eval among those at which the schedule has reached ``final`` (every
        eval from t_f on; the run's last eval always is one, since t_f <= the end of training).
    reproject_every: gradual mask training only: exact top-k every step (1) or the reference cadence (N).
    score_scale / phi: gradual mask training only: the ``magnitude_soft`` init's scale (``raw``: S = |W|, the
        reference's; ``normalized``: mean 2*phi) and the binarizer threshold (srnet_core.masks.MaskConfig).
    """

    initial: float = 0.7
    final: float = 0.9
    start: float = 0.0
    end: float | str | None = None
    unit: Literal["epoch", "step"] = "epoch"
    frequency: int = 1
    scope: Literal["local", "global"] = "local"
    select: Literal["any", "final"] = "any"
    reproject_every: int = 1
    score_scale: Literal["normalized", "raw"] = "normalized"
    phi: float = PHI

    def __post_init__(self):
        if self.select not in ("any", "final"):
            raise ValueError(f"gradual select must be 'any' or 'final', got {self.select!r}")


@dataclass
class GMPOptions:
    """The spec's ``gmp_options``: gradual magnitude pruning 0 -> the grid sparsity on a cubic schedule (the
    stage builds a GradualOptions from it, the node's sparsity and the mask section). The one place its
    defaults live.

    initial: s_i. unit: ``epoch`` or ``step``. start: t0, in ``unit``. end: t_f in ``unit``; ``"last_epoch"``
    = s_f from the start of the last epoch (Sparse*BERT's recovery phase; the end of training when there is
    one epoch); None = the end of training. frequency: steps between updates; None = every eval interval.
    select: ``final`` = only checkpoints at the final sparsity can be selected (a result at s is a model at
    s); ``any`` = the best ID-dev eval at whatever sparsity the schedule had then.
    """

    initial: float = 0.0
    unit: Literal["epoch", "step"] = "epoch"
    start: float = 0.0
    end: float | Literal["last_epoch"] | None = "last_epoch"
    frequency: int | None = None
    select: Literal["final", "any"] = "final"

    def __post_init__(self):
        if not (isinstance(self.initial, (int, float)) and 0.0 <= self.initial < 1.0):
            raise OptionError("initial", f"must be in [0, 1), not {self.initial!r}")
        check_schedule(self)


def check_schedule(options) -> None:
    """start / end / frequency of a gradual schedule (GMPOptions, the gradual paradigm's options)."""
    if not (isinstance(options.start, (int, float)) and math.isfinite(options.start) and options.start >= 0):
        raise OptionError("start", f"must be >= 0, not {options.start!r}")
    end = options.end
    if end is not None and end != "last_epoch" and (not math.isfinite(end) or end <= options.start):
        raise OptionError("end", f"must be above start ({options.start}), not {options.end!r}")
    if options.frequency is not None and options.frequency < 1:
        raise OptionError("frequency", f"must be an integer >= 1 (steps between updates), not {options.frequency!r}")


@dataclass
class GradualResult:
    """The selected checkpoint of a gradual run.

    masks: the selected masks (bool, per matrix). target_sparsity: the schedule's value at ``best_step``.
    sparsity: ``sparsity_of(masks)`` over all masked matrices; encoder_sparsity: over the encoder matrices only.
    weights: the selected trained weights by parameter name (GMP; None for mask training).
    final_sparsity_reached: whether the schedule had reached ``final`` by the end of the run.
    mask_set: the MaskSet left on the model (at the selected masks): ``mask_set.bake()`` gives a plain model.
    """

    masks: dict[str, torch.Tensor]
    target_sparsity: float
    sparsity: dict
    encoder_sparsity: float
    best_step: int
    best_value: float
    history: list[EvalRecord]
    total_steps: int
    train_seconds: float
    weights: dict[str, torch.Tensor] | None = None
    final_sparsity_reached: bool = True
    mask_set: MaskSet | None = field(default=None, repr=False)  # still attached to the model


class MagnitudePruner:
    """``set_sparsity(s)`` = magnitude-prune the effective weights |W * m| to ``s`` (a schedule target)."""

    def __init__(self, mask_set: MaskSet):
        self.mask_set = mask_set

    @property
    def sparsity(self) -> float:
        return self.mask_set.sparsity

    def set_sparsity(self, sparsity: float) -> None:
        self.mask_set.prune_magnitude(sparsity)


def make_schedule(target, options: GradualOptions, n_train: int, config: TrainConfig) -> CubicSparsitySchedule:
    """The cubic schedule of ``options`` for a TrainLoop over ``n_train`` examples with ``config``."""
    return CubicSparsitySchedule(
        target, options.initial, options.final, start=options.start, end=options.end, unit=options.unit,
        steps_per_epoch=steps_per_epoch(n_train, config.batch_size), total_steps=config.total_steps(n_train),
        frequency=options.frequency)


def gradual_mask_hook(mask_set: MaskSet, schedule: CubicSparsitySchedule) -> Callable[[int], None]:
    """TrainLoop ``after_step`` for gradual mask training: move the target, then project the scores.

    ``schedule.step`` re-projects when the target changes; otherwise the usual per-step ``project`` runs.
    """
    def after_step(step: int) -> None:
        if not schedule.step(step):
            mask_set.project(step)
    return after_step


def _run(model, mask_set, schedule, params, snapshot, after_step, train_data, loss_fn, config, evaluate,
         selection, device, options, report, resume_state, with_weights) -> GradualResult:
    names = mask_set.names
    encoder = encoder_names(model, names)
    eligible = only_when(selection, schedule.reached_final) if options.select == "final" else selection

    def extra_get() -> dict:
        return {"masks": mask_set.state_dict(), "schedule": schedule.state_dict()}

    def extra_set(state: dict) -> None:
        mask_set.load_state_dict(state["masks"])
        schedule.load_state_dict(state["schedule"])

    loop = TrainLoop(model, params, train_data, loss_fn, config, evaluate=evaluate, selection=eligible,
                     snapshot=snapshot, device=device, after_step=after_step,
                     current_sparsity=lambda: mask_set.sparsity_report(encoder or None)["total"],
                     extra_state=(extra_get, extra_set))
    if resume_state is not None:
        loop.load_state(resume_state)
    loop.train(on_eval=(lambda record, lp: report(record, lp.state)) if report else None)
    if loop.best is None:
        raise RuntimeError("no evaluation was eligible for selection: with select='final' the schedule must "
                           "reach its final sparsity before the last evaluation (check end / epochs)")
    masks = masks_from_snapshot(loop.best)
    weights = weights_from_snapshot(loop.best) if with_weights else None
    # leave the model at the selected checkpoint: its masks (and weights when they were trained)
    mask_set.load_masks(masks)
    if weights:
        copy_into(params, weights)
    report_all = sparsity_of(masks)
    return GradualResult(
        masks=masks, target_sparsity=schedule.value(loop.best_step), sparsity=report_all,
        encoder_sparsity=sparsity_of({n: masks[n] for n in encoder})["total"] if encoder else report_all["total"],
        best_step=loop.best_step, best_value=loop.best_value, history=loop.history, total_steps=loop.total_steps,
        train_seconds=loop.train_seconds, weights=weights, final_sparsity_reached=schedule.reached_final(),
        mask_set=mask_set)


def gmp(model: nn.Module, names: list[str], train_data: Encoded, loss_fn, config: TrainConfig, *,
        evaluate, selection, device, options: GradualOptions | None = None, report: Report | None = None,
        resume_state: dict | None = None) -> GradualResult:
    """Gradual magnitude pruning with trained weights (Zhu & Gupta; Sparse*BERT without distillation).

    Every parameter that requires grad is trained (freeze some beforehand to keep them fixed); the matrices
    in ``names`` are magnitude-pruned (|W * m|, monotone) to s(t) at every schedule update. Default options:
    0 -> ``options.final``. Returns the selected masks and weights; the model is left at that checkpoint
    with the masks attached (``result.mask_set.bake()`` turns it into a plain model with real zeros).
    """
    options = options or GradualOptions(initial=0.0)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.0, init="none", scope=options.scope),
                       train_scores=False)
    pruner = MagnitudePruner(mask_set)
    schedule = make_schedule(pruner, options, len(train_data), config)
    schedule.step(0)  # the pruning due at step 0 (s_i), before any training
    params = trainable_params(model)
    if not params:
        raise ValueError("gmp trains the weights, but no parameter requires grad")

    def snapshot() -> dict[str, torch.Tensor]:
        return {**mask_snapshot(mask_set), **{f"weight:{n}": p for n, p in params.items()}}

    return _run(model, mask_set, schedule, params, snapshot, schedule.step, train_data, loss_fn, config,
                evaluate, selection, device, options, report, resume_state, with_weights=True)


def gradual_mask_train(model: nn.Module, names: list[str], train_data: Encoded, loss_fn, config: TrainConfig, *,
                       evaluate, selection, device, options: GradualOptions | None = None,
                       report: Report | None = None, resume_state: dict | None = None) -> GradualResult:
    """Mask training whose target sparsity follows the cubic schedule (protocol.md sections 2 and 4).

    All weights are frozen; scores start as |W| (``magnitude_soft``) at s_i and are re-projected to exact
    top-k every step (or at the reference cadence). Default options: the reference's 0.7 -> 0.9.
    """
    options = options or GradualOptions()
    for p in model.parameters():
        p.requires_grad_(False)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=options.initial, init="magnitude_soft",
                                                scope=options.scope, reproject_every=options.reproject_every,
                                                score_scale=options.score_scale, phi=options.phi))
    schedule = make_schedule(mask_set, options, len(train_data), config)
    schedule.step(0)
    params = {f"scores:{n}": mask_set.parametrization(n).scores for n in names}
    return _run(model, mask_set, schedule, params, lambda: mask_snapshot(mask_set),
                gradual_mask_hook(mask_set, schedule), train_data, loss_fn, config, evaluate, selection,
                device, options, report, resume_state, with_weights=False)

