"""The ``search:`` section of a sweep spec: an Optuna study over when mask training starts (``timing``) or
over the gradual sparsity schedule (``schedule``). Documented in docs/spec.md and docs/search.md."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Objective = Literal["id_dev", "ood_dev", "cost"]
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql")  # Optuna's RDBStorage URLs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimingSpace(_Strict):
    # Candidate start steps: the std fine-tune's checkpoint grid (it always saves 10%, 20%, ..., 90% of its
    # steps: orchestrator/plan.py FT_CHECKPOINT_FRACTIONS) from `min_step` on, plus the end when include_end.
    min_step: int = Field(0, ge=0)
    include_end: bool = True
    sparsity: float = Field(0.7, gt=0, lt=1)
    loss: Literal["std", "poe", "reweight"] = "std"


class Range(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class ScheduleSpace(_Strict):
    """Gradual mask training to ``final_sparsity`` from the std fine-tuned model; ramp start/end are fractions
    of the mask-training steps (the ramp ends at least one update interval after it starts)."""

    final_sparsity: float = Field(0.9, gt=0, lt=1)
    initial: Range = Range(low=0.5, high=0.85)
    start: Range = Range(low=0.0, high=0.4)
    end: Range = Range(low=0.5, high=1.0)
    frequency: tuple[int, int] = (1, 8)  # steps between target updates, integer range (log-uniform)
    lr: Range = Range(low=1e-4, high=1e-2, log=True)
    loss: Literal["std", "poe", "reweight"] = "std"

    @model_validator(mode="after")
    def _consistent(self):
        if self.initial.high >= self.final_sparsity:
            raise ValueError(f"initial.high ({self.initial.high}) must be below final_sparsity "
                             f"({self.final_sparsity})")
        if not (0 <= self.start.low and self.end.high <= 1):
            raise ValueError("start and end are fractions of the mask-training steps, within [0, 1]")
        if self.start.high > self.end.low:
            raise ValueError("start.high must not exceed end.low: the ramp must end after it starts")
        if not 1 <= self.frequency[0] <= self.frequency[1]:
            raise ValueError("frequency is [low, high] with 1 <= low <= high")
        return self


class Pruner(_Strict):
    # median: stop a trial whose rung value is below the median of earlier trials at that rung; asha:
    # Optuna's SuccessiveHalvingPruner (asynchronous successive halving). A rung is a shorter mask-training
    # node (`rungs`: fractions of the full length), content-keyed like every node.
    kind: Literal["none", "median", "asha"] = "none"
    rungs: list[float] = [0.34]
    reduction_factor: int = Field(3, ge=2)
    n_startup_trials: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _fractions(self):
        if self.kind != "none" and (not self.rungs or any(not 0 < r < 1 for r in self.rungs)
                                    or self.rungs != sorted(set(self.rungs))):
            raise ValueError("rungs must be increasing fractions in (0, 1)")
        return self


class SearchSpec(_Strict):
    kind: Literal["timing", "schedule"]
    # The fixed setting the study runs in; null = the grid's only task / first backbone / first seed.
    task: str | None = None
    backbone: str | None = None
    seed: int | None = None
    n_trials: int = Field(ge=1)  # in the study in all, past trials included: a relaunch tops it up
    batch_size: int = Field(1, ge=1)  # trials asked together and run as one batch of nodes (batch runners)
    # --runner ray (ask/tell on the running scheduler): at most this many trials in flight; null = batch_size
    parallelism: int | None = Field(None, ge=1)
    mode: Literal["pareto", "scalar"] = "pareto"
    objectives: list[Objective] = ["id_dev", "ood_dev", "cost"]  # pareto: maximise accuracies, minimise cost
    # scalar: maximise w_id * id_dev + w_ood * ood_dev - w_cost * cost / max_cost
    weights: dict[Objective, float] = {"id_dev": 1.0, "ood_dev": 1.0, "cost": 0.1}
    metric: str = "accuracy"  # read on the ID dev split and the OOD-dev split of the selected checkpoint
    # Feasible when ID dev >= min_id_ratio x the dense fine-tuned model's ID dev (an Optuna constraint).
    min_id_ratio: float | None = Field(0.95, gt=0, le=1)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    sampler_seed: int = 0
    n_startup_trials: int = Field(4, ge=0)  # TPE: random trials first
    # Optuna storage: null = a journal <output_dir>/search/<study>.journal (for a URI output_dir kept in the
    # store: pulled at start, pushed after each trial change); a path or URI ending .journal = that journal;
    # an RDB URL (sqlite:///..., postgresql://...). orchestrator/search/storage.py
    storage: str | None = None
    pruner: Pruner = Pruner()
    enqueue: list[dict] = []  # parameter sets tried first (once per study), e.g. [{start_step: 8}]
    timing: TimingSpace | None = None
    schedule: ScheduleSpace = ScheduleSpace()
    # The Early-Bird predictor's settings (srnet_core.pruning.timing), read from the fine-tuning's timing.json
    early_bird_threshold: float = Field(0.1, gt=0, lt=1)
    early_bird_window: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "timing" and self.timing is None:
            raise ValueError("search.kind is 'timing' but search.timing (min_step, include_end, sparsity, loss) "
                             "is missing")
        if self.mode == "pareto" and len(set(self.objectives)) != len(self.objectives):
            raise ValueError("objectives must not repeat")
        if self.storage and "://" in self.storage and not self.storage.endswith(".journal") and \
                self.storage.split("://", 1)[0].split("+", 1)[0].lower() not in RDB_SCHEMES:
            raise ValueError(f"storage '{self.storage}' is neither an RDB URL ({', '.join(RDB_SCHEMES)}) nor a "
                             "journal ending .journal (e.g. s3://bucket/sweep/search/study.journal); or leave it "
                             "null for <output_dir>/search/<study>.journal")
        if self.mode == "pareto" and self.pruner.kind != "none":
            raise ValueError("a pruner needs mode: scalar (Optuna does not prune multi-objective studies)")
        return self
