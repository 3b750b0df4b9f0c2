"""What a timing search and a schedule search differ in, as one object each: the parameters a trial proposes,
how they shape its mask-training node, and what they cost. The driver, the trial nodes and the rows are one
code path for both (orchestrator.search.setting / .study); ``SPACES[kind]`` picks the space."""
from __future__ import annotations

from ..spec import SpecError
from .nodes import Input, saved_steps
from .objectives import SearchError


class TimingSpace:
    """When mask training starts: a start step among the fine-tuning's saved checkpoints (and its end)."""

    kind = "timing"
    compares_predictors = True  # Early-Bird and the ID-dev plateau predict a start step (predictor.py)

    def __init__(self, search, candidates: list[int]):
        self.loss, self.sparsity = search.timing.loss, search.timing.sparsity
        self.candidates = candidates

    @classmethod
    def build(cls, search, finetune, finetune_steps: int) -> "TimingSpace":
        t = search.timing
        candidates = ([c for c in saved_steps(finetune, finetune_steps) if c >= t.min_step]
                      + ([finetune_steps] if t.include_end else []))
        for params in search.enqueue:
            if params.get("start_step") not in candidates:
                raise SpecError(f"field 'search.enqueue': start_step {params.get('start_step')} is not a candidate "
                                f"(the fine-tuning runs {finetune_steps} steps; candidates: {candidates})")
        return cls(search, candidates)

    def suggest(self, trial) -> dict:
        return {"start_step": int(trial.suggest_categorical("start_step", self.candidates))}

    def finetune_cost(self, params: dict, finetune_steps: int) -> int:
        """Fine-tuning steps a trial needs before its mask training: up to its start."""
        return int(params["start_step"])

    def configure(self, setting, params: dict, cfg: dict, inputs: dict, extra: dict, rung: float | None) -> None:
        step = params["start_step"]
        if step not in self.candidates:  # never start from a checkpoint the fine-tuning does not save
            raise SearchError(f"start step {step} is not saved by the fine-tuning (saved: {self.candidates})")
        inputs["init_weights"] = Input(setting.finetune, setting.start_file(step))
        extra["start_step"] = step


class ScheduleSpace:
    """The gradual sparsity schedule (initial sparsity, ramp start/end, update frequency, mask lr) of mask
    training from the fine-tuning's selected weights."""

    kind = "schedule"
    compares_predictors = False
    candidates: list[int] = []

    def __init__(self, search):
        self.space = search.schedule
        self.loss, self.sparsity = self.space.loss, self.space.final_sparsity

    @classmethod
    def build(cls, search, finetune, finetune_steps: int) -> "ScheduleSpace":
        return cls(search)

    def suggest(self, trial) -> dict:
        sc = self.space
        start = trial.suggest_float("start", sc.start.low, sc.start.high)
        return {"initial": trial.suggest_float("initial", sc.initial.low, sc.initial.high),
                "start": start,
                "end": trial.suggest_float("end", max(sc.end.low, start), sc.end.high),
                "frequency": trial.suggest_int("frequency", sc.frequency[0], sc.frequency[1], log=True),
                "lr": trial.suggest_float("lr", sc.lr.low, sc.lr.high, log=sc.lr.log)}

    def finetune_cost(self, params: dict, finetune_steps: int) -> int:
        return finetune_steps  # every trial starts from the finished fine-tuning

    def configure(self, setting, params: dict, cfg: dict, inputs: dict, extra: dict, rung: float | None) -> None:
        inputs["init_weights"] = Input(setting.finetune, "weights.safetensors")
        cfg["train"]["lr"] = float(params["lr"])
        cfg["mask"]["init"] = "magnitude_soft"
        total, freq = setting.mask_steps, int(params["frequency"])
        start = int(round(params["start"] * total))
        # The target moves every `freq` steps (at multiples of it): the ramp must end on or before the last
        # update, or the final sparsity is never reached and no checkpoint is selectable.
        end = min(max(start + freq, int(round(params["end"] * total))), (total // freq) * freq)
        cfg["gradual"] = {"initial": float(params["initial"]), "unit": "step", "start": start, "end": end,
                          "frequency": freq,
                          # a short rung may never reach the final sparsity: select among what it reached
                          "select": "any" if rung is not None else "final"}
        extra["s_initial"] = float(params["initial"])


SPACES = {"timing": TimingSpace, "schedule": ScheduleSpace}
