"""Sparsity schedules shaped like LR schedulers: ``schedule.step(step)`` sets the target's sparsity.

The target is anything with ``sparsity`` and ``set_sparsity(float)``: a ``MaskSet`` (gradual mask
training: re-projects the scores to the new top-k) or a ``MagnitudePruner`` (GMP: prunes |W| further).
"""
from __future__ import annotations

import math
from typing import Literal, Protocol


class SparsityTarget(Protocol):
    sparsity: float

    def set_sparsity(self, sparsity: float) -> None: ...


def cubic_sparsity(t: float, initial: float, final: float, start: float, end: float) -> float:
    """Zhu & Gupta (2017): s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t_f - t0))^3, clamped to [t0, t_f].

    Before ``start`` it is ``initial``; from ``end`` on it is ``final`` (protocol.md section 4).
    """
    if end <= start:
        return final if t >= start else initial
    progress = min(1.0, max(0.0, (t - start) / (end - start)))
    return final + (initial - final) * (1.0 - progress) ** 3


class CubicSparsitySchedule:
    """Cubic sparsity ramp driven by the optimizer step, like an LR scheduler.

    initial / final: s_i and s_f. start / end: t0 and t_f in ``unit`` (``epoch``: t = step / steps_per_epoch,
        fractional; ``step``: t = step). end=None: the end of training (``total_steps``, required then);
        end="last_epoch": the start of the last epoch when training has 2 epochs or more (the reference's
        t_f = last epoch: the final sparsity holds for a whole epoch, Sparse*BERT's recovery phase), else
        the end of training.
    frequency: the sparsity changes only every ``frequency`` optimizer steps (the reference: every eval
        interval; 1 = a smooth ramp). At step k the value used is s(t(floor(k / frequency) * frequency)),
        except that from t_f's step on it is s_f: t_f is an update point even when it is not a multiple of
        ``frequency`` (MNLI: 61,360 steps, eval every 1,000), so a run always finishes at its final sparsity.
    ``step(step)`` computes the value due at ``step`` (or at the internal counter + 1 when called without an
    argument) and calls ``target.set_sparsity`` when it differs from ``target.sparsity``. It keeps no state
    beyond the counter, so a resumed run (target restored from its checkpoint) continues identically.
    """

    def __init__(self, target: SparsityTarget, initial: float, final: float, *, start: float = 0.0,
                 end: float | None = None, unit: Literal["epoch", "step"] = "epoch",
                 steps_per_epoch: int | None = None, total_steps: int | None = None, frequency: int = 1):
        if unit not in ("epoch", "step"):
            raise ValueError(f"schedule unit must be 'epoch' or 'step', got {unit!r}")
        if unit == "epoch" and not steps_per_epoch:
            raise ValueError("an epoch-based sparsity schedule needs steps_per_epoch (ceil(n_train / batch_size))")
        if int(frequency) < 1:
            raise ValueError(f"schedule frequency must be >= 1 step, got {frequency}")
        for name, value in (("initial", initial), ("final", final)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"schedule {name} sparsity must be in [0, 1], got {value}")
        if end is None or end == "last_epoch":
            if total_steps is None:
                raise ValueError(f"schedule end={end!r} is relative to the end of training: pass total_steps")
            if end == "last_epoch" and unit == "step" and not steps_per_epoch:
                raise ValueError("schedule end='last_epoch' needs steps_per_epoch")
            end_step = total_steps
            if end == "last_epoch" and total_steps >= 2 * steps_per_epoch:
                end_step = total_steps - steps_per_epoch
            end = end_step / steps_per_epoch if unit == "epoch" else end_step
        elif isinstance(end, str):
            raise ValueError(f"schedule end must be a number, None or 'last_epoch', got {end!r}")
        if end < start:
            raise ValueError(f"schedule end ({end}) is before start ({start})")
        self.target = target
        self.initial, self.final = float(initial), float(final)
        self.start, self.end = float(start), float(end)
        self.unit = unit
        self.steps_per_epoch = steps_per_epoch
        self.frequency = int(frequency)
        self.last_step = 0

    def time_of(self, step: int) -> float:
        """t in the schedule's unit at optimizer step ``step`` (after the frequency quantisation; t_f's own
        step is always an update point)."""
        t = step / self.steps_per_epoch if self.unit == "epoch" else float(step)
        if t >= self.end - 1e-12:
            return t
        step = (step // self.frequency) * self.frequency
        return step / self.steps_per_epoch if self.unit == "epoch" else float(step)

    def value(self, step: int) -> float:
        """The target sparsity due at optimizer step ``step``."""
        return cubic_sparsity(self.time_of(step), self.initial, self.final, self.start, self.end)

    def step(self, step: int | None = None) -> bool:
        """Advance to ``step``; returns True when the target's sparsity was changed (and re-applied)."""
        self.last_step = self.last_step + 1 if step is None else int(step)
        due = self.value(self.last_step)
        if math.isclose(due, self.target.sparsity, rel_tol=0.0, abs_tol=1e-12):
            return False
        self.target.set_sparsity(due)
        return True

    def reached_final(self) -> bool:
        return math.isclose(self.value(self.last_step), self.final, rel_tol=0.0, abs_tol=1e-12)

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
