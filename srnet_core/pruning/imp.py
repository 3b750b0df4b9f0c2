"""Iterative magnitude pruning (protocol.md section 3): one run yields every sparsity level.

Level k: magnitude-prune |W * m| to s_k (local per matrix, or global), optionally rewind the weights, then
train with a freshly created optimizer and LR schedule for ``level_steps`` steps (a new ``TrainLoop`` that
continues through the data). Each level's result is its last evaluation, with the mask of that level.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Literal

import torch
from torch import nn

from ..data import Encoded
from ..masks import MaskConfig, MaskSet, pack_masks, sparsity_of, unpack_masks
from ..models import get_layout
from ..train import EvalRecord, TrainConfig, TrainLoop, lr_factor
from .common import OptionError, Report, clone_tensors, copy_into, encoder_names, trainable_params


@dataclass
class ImpOptions:
    """What one IMP run does.

    schedule: ``reference`` = every round prunes ``rate`` of the ORIGINAL weights (0.1, 0.2, ... : 1/(10-k)
        of the remaining), until ``final``; ``geometric`` = every round prunes ``rate`` of the REMAINING
        weights (1 - (1 - rate)^k), the last level clamped to ``final``.
    rate / final: see schedule (reference: 0.1 and 0.9, i.e. 9 levels).
    intervals: the run's t_total (TrainConfig.total_steps) is cut into this many intervals, one per level
        (the reference: t_total / 10 steps between prunes). ``level_steps`` overrides the interval length.
    scope: ``local`` (per matrix, the protocol) or ``global`` L1 magnitude.
    rewind: None (no rewinding: IMP from a fine-tuned model); ``start`` (alias ``pretrained``) = after
        every prune, reset the weights to their values when IMP started (imp-rw from the pre-trained model:
        the pre-trained weights); an int k = to their values after k optimizer steps of the first level.
    rewind_exclude: regexes of parameter names never rewound; None = the model family's classifier
        (the reference does not rewind the classifier).
    lr_horizon: ``run`` = the reference: each level re-creates warmup + linear decay over the whole t_total
        (so each level uses only the first part of it); ``level`` = warmup + decay to 0 within each level.
    """

    schedule: Literal["reference", "geometric"] = "reference"
    rate: float = 0.1
    final: float = 0.9
    intervals: int = 10
    level_steps: int | None = None
    scope: Literal["local", "global"] = "local"
    rewind: None | str | int = None
    rewind_exclude: tuple[str, ...] | None = None
    lr_horizon: Literal["run", "level"] = "run"

    def __post_init__(self):
        if self.schedule not in ("reference", "geometric"):
            raise OptionError("schedule", f"must be 'reference' or 'geometric', got {self.schedule!r}")
        if not 0.0 < self.rate < 1.0:
            raise OptionError("rate", f"must be in (0, 1), got {self.rate}")
        if not 0.0 < self.final < 1.0:
            raise OptionError("final", f"(the last sparsity) must be in (0, 1), got {self.final}")
        if self.rewind == "none":  # the planner's spelling of "no rewinding"
            self.rewind = None
        if self.rewind == "pretrained":  # the same thing when IMP starts from the pre-trained model
            self.rewind = "start"
        if not (isinstance(self.intervals, int) and self.intervals >= 1):
            raise OptionError("intervals", f"must be an integer >= 1, got {self.intervals!r}")
        if self.level_steps is not None and not (isinstance(self.level_steps, int) and self.level_steps >= 1):
            raise OptionError("level_steps", f"must be an integer >= 1 or null, got {self.level_steps!r}")
        for pattern in self.rewind_exclude or ():
            try:
                re.compile(pattern)
            except re.error as err:
                raise OptionError("rewind_exclude", f"{pattern!r} is not a regular expression ({err})") from None
        if self.rewind is not None and self.rewind != "start" and not (
                isinstance(self.rewind, int) and not isinstance(self.rewind, bool) and self.rewind >= 0):
            raise OptionError("rewind", f"must be None, 'start' (alias 'pretrained') or a step k >= 0, "
                             f"got {self.rewind!r}")
        if self.lr_horizon not in ("run", "level"):
            raise OptionError("lr_horizon", f"must be 'run' or 'level', got {self.lr_horizon!r}")


def imp_levels(options: ImpOptions) -> list[float]:
    """Target sparsities of the levels, e.g. reference: [0.1, 0.2, ..., 0.9] (exact decimals)."""
    levels = []
    if options.schedule == "reference":
        count = int(math.floor(options.final / options.rate + 1e-9))
        levels = [round(options.rate * k, 12) for k in range(1, count + 1)]
        if not levels or levels[-1] < options.final - 1e-12:
            levels.append(options.final)
    else:
        k = 1
        while True:
            s = 1.0 - (1.0 - options.rate) ** k
            if s >= options.final - 1e-12:
                levels.append(options.final)
                break
            levels.append(round(s, 12))
            k += 1
    return levels


@dataclass
class ImpLevel:
    """One IMP level: the mask after pruning to ``target_sparsity`` and the training of that interval.

    sparsity: ``sparsity_of(masks)`` over all pruned matrices; encoder_sparsity: over the encoder ones.
    final: the level's last evaluation (its result in the reference); history: all its evaluations (steps
    local to the level; ``start_step`` is the level's first global step).
    """

    level: int
    target_sparsity: float
    masks: dict[str, torch.Tensor]
    sparsity: dict
    encoder_sparsity: float
    start_step: int
    steps: int
    history: list[EvalRecord]
    final: EvalRecord
    train_seconds: float
    best_step: int = -1
    best_value: float = -math.inf
    extra: dict = field(default_factory=dict)

    def to_state(self) -> dict:
        return {"level": self.level, "target_sparsity": self.target_sparsity, "masks": pack_masks(self.masks),
                "sparsity": self.sparsity, "encoder_sparsity": self.encoder_sparsity,
                "start_step": self.start_step, "steps": self.steps,
                "history": [asdict(r) for r in self.history], "final": asdict(self.final),
                "train_seconds": self.train_seconds, "best_step": self.best_step, "best_value": self.best_value}

    @classmethod
    def from_state(cls, state: dict) -> "ImpLevel":
        state = dict(state)
        state["masks"] = unpack_masks(state["masks"])
        state["history"] = [EvalRecord(**r) for r in state["history"]]
        state["final"] = EvalRecord(**state["final"])
        return cls(**state)


def _rewind_names(model: nn.Module, params: dict[str, nn.Parameter], exclude) -> list[str]:
    if exclude is None:
        exclude = tuple(get_layout(model).classifier)
        compiled = [re.compile(r"(?:^|.*\.)" + p + r"(?:\.|$)") for p in exclude]
        return [n for n in params if not any(c.match(n) for c in compiled)]
    compiled = [re.compile(p) for p in exclude]
    return [n for n in params if not any(c.search(n) for c in compiled)]


def imp(model: nn.Module, names: list[str], train_data: Encoded, loss_fn, config: TrainConfig, *,
        evaluate, selection, device, options: ImpOptions | None = None,
        on_level: Callable[[ImpLevel, nn.Module], None] | None = None,
        report: Report | None = None, resume_state: dict | None = None) -> list[ImpLevel]:
    """Run IMP over ``names`` and return one ``ImpLevel`` per level (0.1 .. 0.9 by default).

    Every parameter that requires grad is trained during the intervals (freeze some beforehand to keep
    them fixed). ``on_level(level, model)`` runs when a level ends, with the model at that level's final
    state (masks attached), e.g. to save its weights. ``report(record, state_fn)`` sees every evaluation;
    ``state_fn()`` is a checkpoint that ``resume_state`` continues from exactly (finished levels travel in
    it with bit-packed masks; with ``rewind="start"`` the rewind point is not in it: a resumed run is given
    the model as the first run was, and re-reads it from there). The model is left at the last level with
    its masks attached.
    """
    options = options or ImpOptions()
    levels = imp_levels(options)
    n_train = len(train_data)
    t_total = config.total_steps(n_train)
    level_steps = options.level_steps or max(1, t_total // options.intervals)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.0, init="none", scope=options.scope),
                       train_scores=False)
    params = trainable_params(model)
    if not params:
        raise ValueError("imp trains the weights between prunes, but no parameter requires grad")
    rewind_names = _rewind_names(model, params, options.rewind_exclude) if options.rewind is not None else []
    rewind_step = 0 if options.rewind in (None, "start") else int(options.rewind)
    if options.rewind is not None and rewind_step > level_steps:
        raise ValueError(f"imp rewind step {rewind_step} is after the first level ends ({level_steps} steps)")
    encoder = encoder_names(model, names)
    level_config = replace(config, max_steps=level_steps, select_from=0.0,
                           warmup_steps=min(config.warmup_steps, level_steps) if options.lr_horizon == "level"
                           else config.warmup_steps)
    if options.lr_horizon == "run":
        def lr_schedule(step: int) -> float:
            return lr_factor(step, config.warmup_steps, t_total)
    else:
        lr_schedule = None

    done: list[ImpLevel] = []
    rewind_to: dict[str, torch.Tensor] = {}
    # Rewinding to the start: the weights the model holds now, i.e. the pre-trained backbone (or the input
    # weights file) as loaded for this run. Re-read on every run, resumed ones too, and never checkpointed (a
    # BERT-large copy is 1.3 GB of every state upload); a rewind to step k > 0 cannot be re-read: it is.
    rewind_saved = options.rewind is not None and rewind_step > 0
    if options.rewind is not None and rewind_step == 0:
        rewind_to = clone_tensors({n: params[n] for n in rewind_names})
    start_level, loop_state = 0, None
    if resume_state is not None:
        done = [ImpLevel.from_state(s) for s in resume_state["done"]]
        start_level = int(resume_state["level"])
        if rewind_saved:
            rewind_to = dict(resume_state["rewind"])
        mask_set.load_state_dict(resume_state["masks"])
        loop_state = resume_state["loop"]

    for index in range(start_level, len(levels)):
        target = levels[index]
        if loop_state is None:
            mask_set.prune_magnitude(target)
            if rewind_to:
                copy_into(params, rewind_to)

        def after_step(step: int, index=index) -> None:
            if index == 0 and options.rewind is not None and step == rewind_step and not rewind_to:
                rewind_to.update(clone_tensors({n: params[n] for n in rewind_names}))

        loop = TrainLoop(model, params, train_data, loss_fn, level_config, evaluate=evaluate, selection=selection,
                         snapshot=dict, device=device, after_step=after_step,
                         current_sparsity=lambda: mask_set.sparsity_report(encoder or None)["total"],
                         batch_offset=index * level_steps, lr_schedule=lr_schedule)

        def state_fn(loop=loop, index=index) -> dict:
            return {"level": index, "loop": loop.state(), "masks": mask_set.state_dict(),
                    "rewind": dict(rewind_to) if rewind_saved else {}, "done": [d.to_state() for d in done]}

        if loop_state is not None:
            loop.load_state(loop_state)
            loop_state = None
        loop.train(on_eval=(lambda record, lp, fn=state_fn: report(record, fn)) if report else None)
        masks = mask_set.masks()
        report_all = sparsity_of(masks)
        result = ImpLevel(
            level=index, target_sparsity=target, masks=masks, sparsity=report_all,
            encoder_sparsity=sparsity_of({n: masks[n] for n in encoder})["total"] if encoder else report_all["total"],
            start_step=index * level_steps, steps=level_steps, history=list(loop.history), final=loop.history[-1],
            train_seconds=loop.train_seconds, best_step=loop.best_step, best_value=loop.best_value)
        done.append(result)
        if on_level is not None:
            on_level(result, model)
    return done
