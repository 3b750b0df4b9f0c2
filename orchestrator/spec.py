"""The sweep spec: YAML -> a validated ``SweepSpec``. Mistakes fail with one line naming the field."""
from __future__ import annotations

import os
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srnet_core.masks import MaskConfig
from srnet_core.tasks import TASKS
from srnet_core.train import TrainConfig

from .search_spec import SearchSpec

# Unknown keys inside the srnet_core dataclasses are errors too (pydantic reads this attribute).
TrainConfig.__pydantic_config__ = ConfigDict(extra="forbid")
MaskConfig.__pydantic_config__ = ConfigDict(extra="forbid")


class SpecError(ValueError):
    """A user mistake in a spec; ``str()`` is one line naming the field or file and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


LossName = Literal["std", "poe", "reweight", "conf_reg"]
Paradigm = Literal["a", "b", "c", "ood_upper_bound", "timing", "gradual", "transfer"]
Method = Literal["mask_train", "imp", "gmp", "structured"]


class Grid(_Strict):
    """The axes whose product is the sweep (protocol.md section 6). The dense fine-tuned model is always in."""

    tasks: list[str] = Field(min_length=1)
    backbones: list[str] = Field(min_length=1)
    sparsities: list[float] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    # a: prune a fine-tuned model; b: prune, then re-train the subnetwork in isolation; c: mask-train the
    # pre-trained model; ood_upper_bound, timing, gradual, transfer: see paradigm_options.
    paradigms: list[Paradigm] = ["a"]
    # Pruning losses: L2 in (a) from the std fine-tuned model, L in (c). conf_reg and poe/reweight get their
    # teacher probabilities and bias log-probs planned automatically.
    losses: list[LossName] = ["std"]
    # How (a) prunes: mask training, IMP (one run gives the 0.1..0.9 series), gradual magnitude pruning
    # (weights trained), structured (heads and FFN neurons, Super Tickets).
    methods: list[Method] = ["mask_train"]

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks):
        for t in tasks:
            if t not in TASKS:
                raise ValueError(f"unknown task '{t}'; known: {sorted(TASKS)}")
        return tasks

    @field_validator("sparsities")
    @classmethod
    def _sparsity_range(cls, values):
        for s in values:
            if not 0.0 < s < 1.0:
                raise ValueError(f"sparsity {s} is outside (0, 1); the dense model is always included")
        return sorted(set(values))


class ParadigmA(_Strict):
    # L1: losses of the full-model fine-tuning. From a PoE fine-tuned model only L2 = poe is pruned (protocol).
    finetune_losses: list[Literal["std", "poe"]] = ["std"]


class ParadigmB(_Strict):
    # Where the masks come from: imp_rw (IMP with rewinding to the pre-trained weights, PoE loss) or
    # mask_train (PoE mask training on the std fine-tuned model).
    mask_sources: list[Literal["imp_rw", "mask_train"]] = ["mask_train"]
    losses: list[Literal["std", "poe"]] = ["std"]  # L1 of the isolated re-training


class ParadigmC(_Strict):
    losses: list[LossName] | None = None  # None: grid.losses (the protocol uses std and poe here)


class OODUpperBound(_Strict):
    paradigms: list[Literal["a", "b", "c"]] = ["a"]  # mask training with OOD training data added (CE loss)


class Timing(_Strict):
    steps: list[int] = Field(min_length=1)  # fine-tuning steps to start mask training from; the end is added
    sparsity: float = Field(0.7, gt=0, lt=1)
    loss: LossName = "poe"


class Gradual(_Strict):
    s_initial: float = Field(0.7, gt=0, lt=1)
    s_final: float = Field(0.9, gt=0, lt=1)
    loss: LossName = "std"
    unit: Literal["epoch", "step"] = "epoch"
    start: float = 0.0  # t0, in `unit`
    end: float | None = None  # t_f, in `unit`; None = the last epoch (or step)
    frequency: int | None = None  # update the target every N steps; None = every eval interval (the reference)

    @model_validator(mode="after")
    def _increasing(self):
        if self.s_final <= self.s_initial:
            raise ValueError("s_final must be above s_initial")
        return self


class Transfer(_Strict):
    source_tasks: list[str] = Field(min_length=1)  # masks found here (mask training on the std fine-tuned model)
    target_tasks: list[str] = Field(min_length=1)  # ...are re-trained here with the mask fixed (Sparse*BERT)


class ParadigmOptions(_Strict):
    a: ParadigmA = ParadigmA()
    b: ParadigmB = ParadigmB()
    c: ParadigmC = ParadigmC()
    ood_upper_bound: OODUpperBound = OODUpperBound()
    timing: Timing | None = None
    gradual: Gradual = Gradual()
    transfer: Transfer | None = None


class IMPOptions(_Strict):
    """srnet_core.pruning.imp.ImpOptions: reference = each round prunes `rate` of the ORIGINAL weights up to
    `final` (0.1 .. 0.9), geometric = `rate` of the remaining; `intervals` training intervals per run."""

    schedule: Literal["reference", "geometric"] = "reference"
    rate: float = Field(0.1, gt=0, lt=1)
    final: float = Field(0.9, gt=0, lt=1)
    intervals: int = Field(10, ge=1)
    scope: Literal["local", "global"] = "local"
    lr_horizon: Literal["run", "level"] = "run"


class GMPOptions(_Strict):
    """Gradual magnitude pruning 0 -> the grid sparsity on a cubic schedule (srnet_core.pruning.gradual)."""

    initial: float = Field(0.0, ge=0, lt=1)
    unit: Literal["epoch", "step"] = "epoch"
    start: float = 0.0
    end: float | None = None  # None: the end of training
    frequency: int | None = None  # steps between updates; None: every eval interval
    # "final": only checkpoints at the final sparsity can be selected (a result at s is a model at s);
    # "any": the best ID-dev eval at whatever sparsity the schedule had then.
    select: Literal["final", "any"] = "final"


class StructuredOptions(_Strict):
    """srnet_core.pruning.structured.StructuredOptions; fractions default to the grid sparsity."""

    head_sparsity: float | None = Field(None, ge=0, lt=1)
    neuron_sparsity: float | None = Field(None, ge=0, lt=1)
    rounds: int = Field(1, ge=1)
    importance_batches: int = Field(16, ge=1)
    ranking: Literal["global", "layer"] = "global"


class StageOverrides(_Strict):
    finetune: dict = {}
    mask_train: dict = {}
    imp: dict = {}
    gmp: dict = {}
    retrain: dict = {}


class StageResources(_Strict):
    cpus: float | Literal["auto"] | None = None  # None: resources.cpus_per_trial
    gpus: float | Literal["auto"] | None = None  # None: resources.gpus_per_trial

    @field_validator("gpus")
    @classmethod
    def _divides_one(cls, value):
        return _check_gpu_fraction(value)


def _check_gpu_fraction(value):
    if value not in (None, "auto") and 0 < value < 1 and abs(round(1 / value) - 1 / value) > 1e-9:
        raise ValueError(f"{value} does not divide 1: Ray packs such fractions unevenly; use 1/n")
    return value


class Resources(_Strict):
    # "auto": the cluster's CPUs shared among a wave's trials (a lone fine-tuning run gets them all).
    cpus_per_trial: float | Literal["auto"] = "auto"
    # "auto": one GPU per trial when the cluster has GPUs, else CPU. A fraction must divide 1 (0.5, 0.25...).
    gpus_per_trial: float | Literal["auto"] = "auto"
    max_concurrent_trials: int | None = Field(None, ge=1)
    # Per stage kind, e.g. {bias_model: {gpus: 0}, mask_train: {gpus: 0.5}}: what differs from the above.
    # bias_model (scikit-learn) asks for no GPU unless given one here.
    stages: dict[Literal["bias_model", "finetune", "mask_train", "imp", "gmp", "structured", "retrain", "evaluate"],
                 StageResources] = {}

    @field_validator("gpus_per_trial")
    @classmethod
    def _divides_one(cls, value):
        return _check_gpu_fraction(value)


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str  # relative paths are relative to the working directory of `launch`
    # Where stage artifacts live: a directory or a pyarrow URI (s3://, gs://, file:///nfs/...). Sweeps that
    # share a store share their work: a node finished by one sweep is reused by any other. Default:
    # <output_dir>/artifacts.
    artifact_store: str | None = None
    data_dir: str | None = None  # real task data; defaults to $SRNET_DATA_DIR
    max_length: int = Field(128, ge=8, le=512)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    grid: Grid
    task_options: dict[str, dict] = {}
    paradigm_options: ParadigmOptions = ParadigmOptions()
    # Training settings per stage kind (every field of srnet_core.train.TrainConfig) ...
    finetune: TrainConfig = TrainConfig()
    mask_train: TrainConfig = TrainConfig()
    imp: TrainConfig = TrainConfig()
    gmp: TrainConfig = TrainConfig()
    retrain: TrainConfig = TrainConfig()
    # ... and per task on top of them (the protocol's lr/epochs/warmup differ per task).
    task_overrides: dict[str, StageOverrides] = {}
    mask: MaskConfig = MaskConfig()
    imp_options: IMPOptions = IMPOptions()
    gmp_options: GMPOptions = GMPOptions()
    structured_options: StructuredOptions = StructuredOptions()
    resources: Resources = Resources()
    search: SearchSpec | None = None  # an Optuna study (python -m orchestrator.search; docs/search.md)

    @field_validator("data_dir")
    @classmethod
    def _data_dir_exists(cls, value):
        if value is not None and not os.path.isdir(os.path.expanduser(value)):
            raise ValueError(f"directory '{value}' does not exist; point it at a data directory (see README)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self):
        tasks = set(self.grid.tasks)
        transfer = self.paradigm_options.transfer
        if "transfer" in self.grid.paradigms:
            if transfer is None:
                raise ValueError("paradigm_options.transfer: grid.paradigms has 'transfer' but no source/target tasks")
            tasks |= set(transfer.source_tasks) | set(transfer.target_tasks)
            for t in transfer.source_tasks + transfer.target_tasks:
                if t not in TASKS:
                    raise ValueError(f"paradigm_options.transfer: unknown task '{t}'; known: {sorted(TASKS)}")
        if "timing" in self.grid.paradigms and self.paradigm_options.timing is None:
            raise ValueError("paradigm_options.timing: grid.paradigms has 'timing' but no steps are given")
        for section, names in (("task_options", self.task_options), ("task_overrides", self.task_overrides)):
            for task in names:
                if task not in tasks:
                    raise ValueError(f"{section}.{task}: task '{task}' is not in the sweep's tasks")
        for task, overrides in self.task_overrides.items():
            for stage in ("finetune", "mask_train", "imp", "gmp", "retrain"):
                for key in getattr(overrides, stage):
                    if key not in TrainConfig.__dataclass_fields__:
                        raise ValueError(f"task_overrides.{task}.{stage}: unknown key '{key}'")
        for backbone in self.grid.backbones:
            if backbone.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(backbone)):
                raise ValueError(f"grid.backbones: model directory '{backbone}' does not exist")
        return self

    def train_config(self, stage: str, task: str, seed: int) -> dict:
        """The TrainConfig of a stage kind for a task: the stage section, then the task's overrides."""
        from dataclasses import asdict

        cfg = asdict(getattr(self, stage))
        overrides = self.task_overrides.get(task)
        if overrides is not None:
            cfg.update(getattr(overrides, stage))
        cfg["seed"] = seed
        return cfg

    def artifact_root(self) -> str:
        if self.artifact_store:
            return self.artifact_store if "://" in self.artifact_store else os.path.abspath(self.artifact_store)
        return os.path.join(os.path.abspath(self.output_dir), "artifacts")

    def resolved_data_dir(self) -> str | None:
        return self.data_dir or os.environ.get("SRNET_DATA_DIR")


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # the latter: dataclass fields
        return f"{source}: unknown key '{field}': remove it or fix its spelling"
    if e["type"] == "missing":
        return f"{source}: missing required field '{field}'"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"{source}: field '{field}': {msg}{shown}"


def parse_spec(data: dict, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping of fields, not {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_one_line(err, source)) from None


def load_spec(path: str) -> SweepSpec:
    if not os.path.isfile(path):
        raise SpecError(f"spec file '{path}' does not exist; see sweeps/ for examples")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
    return parse_spec(data, source=path)
