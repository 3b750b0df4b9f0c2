"""The sweep spec: YAML -> a validated ``SweepSpec``. Mistakes fail with one line naming the field."""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import fields as dataclass_fields
from typing import Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator,
                      model_validator)

from srnet_core.masks import MaskConfig
from srnet_core.pruning.common import OptionError
from srnet_core.pruning.gradual import check_schedule
from srnet_core.stages import REGISTRY, get_kind
from srnet_core.stages.registry import load_plugins, method_names, option_kinds, stage_names, train_sections
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


class FieldError(ValueError):
    """A validator's error about a nested field, e.g. ``finetune.lr`` or ``task_options.mnli.paths``: the
    one-line message names that field rather than the section pydantic was validating."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


# Ranges of srnet_core.train.TrainConfig fields (the dataclass has types only). Each entry: a predicate and
# the fix to print. Non-finite numbers fail every check (NaN compares false).
_TRAIN_RANGES = {
    "lr": (lambda v: v > 0 and math.isfinite(v), "must be a number > 0 (e.g. 2e-5)"),
    "epochs": (lambda v: v > 0 and math.isfinite(v), "must be > 0 (or set max_steps)"),
    "max_steps": (lambda v: v is None or v >= 1, "must be an integer >= 1, or null to use epochs"),
    "warmup_steps": (lambda v: v >= 0, "must be an integer >= 0"),
    "batch_size": (lambda v: v >= 1, "must be an integer >= 1"),
    "weight_decay": (lambda v: v >= 0 and math.isfinite(v), "must be a number >= 0"),
    "adam_eps": (lambda v: v > 0 and math.isfinite(v), "must be a number > 0 (e.g. 1e-8)"),
    "grad_clip": (lambda v: v >= 0 and math.isfinite(v), "must be >= 0 (0 disables clipping)"),
    "eval_every": (lambda v: v >= 1, "must be an integer >= 1 (steps between evaluations)"),
    "eval_batch_size": (lambda v: v == "auto" or v >= 1, "must be an integer >= 1 or 'auto'"),
    "select_from": (lambda v: 0 <= v <= 1, "must be a fraction of training in [0, 1]"),
    "seed": (lambda v: v >= 0, "must be an integer >= 0"),
    "ood_eval_every": (lambda v: v is None or v >= 0,
                       "must be null (every evaluation), 0 (only at the selected checkpoint) or a number of steps"),
    "amp": (lambda v: v in ("auto", "off", "bf16"), "must be one of 'auto', 'off', 'bf16'"),
}


def _check_train_config(cfg, where: str) -> None:
    """Range checks of a TrainConfig (or a dict of its fields); raises ValueError naming ``where.field``."""
    values = cfg if isinstance(cfg, dict) else {f.name: getattr(cfg, f.name) for f in dataclass_fields(cfg)}
    for name, value in values.items():
        check = _TRAIN_RANGES.get(name)
        if check is not None and not check[0](value):
            raise FieldError(f"{where}.{name}", f"{check[1]}, not {value!r}")




LossName = Literal["std", "poe", "reweight", "conf_reg", "kd"]  # kd: Sparse*BERT distillation
_PARADIGMS = ("full", "a", "b", "c", "ood_upper_bound", "timing", "gradual", "transfer")  # full: dense fine-tunes
Paradigm = Literal[_PARADIGMS[1:]]


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
    # (weights trained), structured (heads and FFN neurons by importance;
    # a neuron-level relative of Super Tickets, not Super Tickets itself: docs/pruning.md), super_tickets
    # (Liang et al. 2021: heads and whole FFN sublayers of the std fine-tuned model by importance over the whole
    # training set, one shot, then re-fine-tuned from the pre-trained weights by a retrain node; its phase
    # transition is swept with low grid sparsities, e.g. sparsities: [0.1, 0.2, 0.3, 0.4, 0.5]).
    # Any registered pruning method (srnet_core.stages.registry: StageKind(method=True)).
    methods: list[str] = ["mask_train"]

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks):
        for t in tasks:
            if t not in TASKS:
                raise ValueError(f"unknown task '{t}'; known: {sorted(TASKS)}")
        return tasks

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods):
        known = method_names()
        for m in methods:
            if m not in known:
                raise ValueError(f"unknown method '{m}'; known: {known}")
        return methods

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, seeds):
        for s in seeds:
            if not 0 <= s <= 2**32 - 1:  # numpy and the Parquet rows take 0 .. 2^32-1
                raise ValueError(f"seed {s} is outside 0 .. 2^32-1 (4294967295); use a smaller integer >= 0")
        return seeds

    @field_validator("backbones")
    @classmethod
    def _backbone_names(cls, names):
        for b in names:
            if not b.strip():
                raise ValueError("a backbone name is empty; use e.g. 'tiny-bert', 'minilm' or a model directory")
        return names

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
    sparsities: list[float] | None = None  # None: grid.sparsities (e.g. [0.5]: a smaller (c) arm)

    @field_validator("sparsities")
    @classmethod
    def _sparsity_range(cls, values):
        return values if values is None else Grid._sparsity_range(values)


class OODUpperBound(_Strict):
    paradigms: list[Literal["a", "b", "c"]] = ["a"]  # mask training with OOD training data added (CE loss)


class Timing(_Strict):
    # Where mask training starts (the end of fine-tuning is always added): absolute steps of the std fine-tune
    # (its fixed step grid: every 5,000 steps below its end, orchestrator/plan/factory.py FT_CHECKPOINT_EVERY;
    # the reference's 5000, 10000, 15000, 20000) and/or fractions of its steps (its fraction grid: 0.1, ..., 0.9)
    steps: list[int] = []
    fractions: list[float] = []
    sparsity: float = Field(0.7, gt=0, lt=1)
    loss: LossName = "poe"

    @field_validator("fractions")
    @classmethod
    def _inside_training(cls, fractions):
        for f in fractions:
            if not 0 < f < 1:
                raise ValueError(f"fraction {f} must be inside (0, 1): a point of the fine-tuning to start mask "
                                 "training from (the end is always added)")
        return fractions

    @field_validator("steps")
    @classmethod
    def _positive_steps(cls, steps):
        for s in steps:
            if s < 1:
                raise ValueError(f"step {s} must be >= 1: a step of the fine-tuning to start mask training from")
        return steps

    @model_validator(mode="after")
    def _some_start(self):
        if not self.steps and not self.fractions:
            raise ValueError("give the start points: steps (e.g. the reference's [5000, 10000, 15000, 20000]) "
                             "and/or fractions")
        return self


class Gradual(_Strict):
    s_initial: float = Field(0.7, gt=0, lt=1)
    s_final: float = Field(0.9, gt=0, lt=1)
    loss: LossName = "poe"  # the reference's gradual runs used PoE
    unit: Literal["epoch", "step"] = "epoch"
    start: float = 0.0  # t0, in `unit`
    # t_f, in `unit`; None (the reference: --final_sparsity_epoch = the number of epochs): s_f at the end of
    # training; "last_epoch": s_f from the start of the last epoch (Sparse*BERT's recovery phase)
    end: float | Literal["last_epoch"] | None = None
    frequency: int | None = None  # update the target every N steps; None = every eval interval (the reference)
    # which evaluations may be selected: "any" (the reference): the best ID-dev eval from select_from (0.7 of
    # training from a fine-tuned model: epoch 3.5 of MNLI's 5, 4.9 of QQP's/FEVER's 7) at whatever sparsity the
    # schedule had then; "final": only evals at s_f
    select: Literal["any", "final"] = "any"
    # The gradual-vs-fixed comparison across mask-training epochs (paper: gradual 0.7 -> 0.9 beats fixed 0.9 at
    # a lower training cost): one gradual run per value (empty: the mask_train section's epochs only) and,
    # with fixed_baseline, one fixed-s_final mask-training run (magnitude init, same loss) per value too.
    epochs: list[float] = []
    fixed_baseline: bool = False

    @field_validator("epochs")
    @classmethod
    def _positive_epochs(cls, epochs):
        for e in epochs:
            if not (e > 0 and math.isfinite(e)):
                raise ValueError(f"epochs {e} must be > 0")
        return sorted(set(epochs))

    @model_validator(mode="after")
    def _increasing(self):
        if self.s_final <= self.s_initial:
            raise ValueError("s_final must be above s_initial")
        check_schedule(self)
        return self


class Transfer(_Strict):
    source_tasks: list[str] = Field(min_length=1)  # masks found here (mask training on the std fine-tuned model)
    target_tasks: list[str] = Field(min_length=1)  # ...are re-trained here with the mask fixed (Sparse*BERT)


class Full(_Strict):
    # Dense fine-tuning baselines beyond those the paradigms plan (std always; poe with a.finetune_losses):
    # e.g. [reweight, conf_reg] (protocol 8's dense reference points). conf_reg's teacher is the std
    # fine-tuned model of the same task and seed.
    losses: list[LossName] = []


class ParadigmOptions(_Strict):
    full: Full = Full()
    a: ParadigmA = ParadigmA()
    b: ParadigmB = ParadigmB()
    c: ParadigmC = ParadigmC()
    ood_upper_bound: OODUpperBound = OODUpperBound()
    timing: Timing | None = None
    gradual: Gradual = Gradual()
    transfer: Transfer | None = None


class StageResources(_Strict):
    cpus: float | Literal["auto"] | None = None  # None: resources.cpus_per_trial
    gpus: float | Literal["auto"] | None = None  # None: resources.gpus_per_trial

    @field_validator("cpus")
    @classmethod
    def _cpus_positive(cls, value):
        return _check_cpus(value)

    @field_validator("gpus")
    @classmethod
    def _divides_one(cls, value):
        return _check_gpu_fraction(value)


def _check_cpus(value):
    # 0 CPUs makes a trial that Ray schedules anywhere without limit; negative ones never schedule (a hang)
    if value not in (None, "auto") and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"CPUs per trial must be > 0 or 'auto', not {value!r}")
    return value


def _check_gpu_fraction(value):
    if value in (None, "auto"):
        return value
    if not (value >= 0 and math.isfinite(value)):  # a negative count is never schedulable: the launch hangs
        raise ValueError(f"GPUs per trial must be >= 0 or 'auto', not {value!r}")
    if 0 < value < 1 and abs(round(1 / value) - 1 / value) > 1e-9:
        raise ValueError(f"{value} does not divide 1: Ray packs such fractions unevenly; use 1/n")
    if value > 1 and value != int(value):
        raise ValueError(f"{value} GPUs: above 1 a trial takes whole GPUs; use an integer")
    return value


class Resources(_Strict):
    # "auto": the cluster's CPUs shared among a wave's trials (a lone fine-tuning run gets them all).
    cpus_per_trial: float | Literal["auto"] = "auto"
    # "auto": one GPU per trial when the cluster has GPUs, else CPU. A fraction must divide 1 (0.5, 0.25...).
    gpus_per_trial: float | Literal["auto"] = "auto"
    max_concurrent_trials: int | None = Field(None, ge=1)
    # Per stage kind, e.g. {bias_model: {gpus: 0}, mask_train: {gpus: 0.5}}: what differs from the above.
    # bias_model (scikit-learn) asks for no GPU unless given one here.
    # Keys: the planned stage kinds (srnet_core.stages.registry).
    stages: dict[str, StageResources] = {}
    # Times a node's trial is retried after an infrastructure failure (its process or node died, a preemption,
    # an I/O or network error, out of memory; Tune FailureConfig.max_failures); a retry resumes from the node's
    # last checkpoint. A deterministic error (divergence, bad data, a code error) is never retried.
    max_retries_infra: int = Field(10, ge=0, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "max_retries" in data:
            raise ValueError("resources.max_retries is now resources.max_retries_infra (infrastructure failures "
                             "only, default 10; deterministic errors are never retried): rename it")
        return data

    @field_validator("cpus_per_trial")
    @classmethod
    def _cpus_positive(cls, value):
        return _check_cpus(value)

    @field_validator("gpus_per_trial")
    @classmethod
    def _divides_one(cls, value):
        return _check_gpu_fraction(value)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages):
        known = stage_names(planned=True)
        for name in stages:
            if name not in known:
                raise ValueError(f"unknown stage kind '{name}'; known: {known}")
        return stages


class SweepSpec(_Strict):
    """The static part of a spec. ``spec_model()`` adds what the stage registry declares: one training section
    per ``train_section`` (finetune, mask_train, imp, gmp, retrain), one ``<kind>_options`` section per kind
    with an options dataclass (imp, gmp, structured, super_tickets, ...), and the override tables keyed by
    those sections."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str  # a directory (relative: to the working directory of `launch`) or a URI (s3://bucket/x)
    # Where stage artifacts live: a directory or a pyarrow URI (s3://, gs://, file:///nfs/...). Sweeps that
    # share a store share their work: a node finished by one sweep is reused by any other. Default:
    # <output_dir>/artifacts.
    artifact_store: str | None = None
    data_dir: str | None = None  # real task data; defaults to $SRNET_DATA_DIR
    max_length: int = Field(128, ge=8, le=512)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The cost model's calibration (bench/calibration/<file> or a path) for --dry-run's GPU-hours, the
    # scheduler's ordering and the live ETA; None: $SRNET_CALIBRATION, else the H200 file (docs/cost.md)
    cost_calibration: str | None = None
    grid: Grid
    task_options: dict[str, dict] = {}
    paradigm_options: ParadigmOptions = ParadigmOptions()
    # Training settings per section (every field of srnet_core.train.TrainConfig; added by spec_model()), then
    # per loss (loss_overrides), per task (task_overrides.<task>, its by_loss), per paradigm
    # (paradigm_overrides.<paradigm>, then task_overrides.<task>.by_paradigm.<paradigm>): see train_config.
    # Mixed precision for every stage: "auto" (bf16 on a GPU that supports it, else fp32), "off" (fp32,
    # for replication runs), "bf16". None: each stage section's own `amp` (default auto).
    amp: Literal["auto", "off", "bf16"] | None = None
    # Bias log-probs for poe/reweight/conf_reg: "fit" = the planner fits srnet_core.bias's hand-crafted model
    # on the training split (a bias_model node); "file" = the reference's per-example files, one per task in
    # bias_files (.npy indexed by GLUE index / FEVER line, .parquet or .json keyed by example id), joined
    # to the training examples by id; a training id without a row fails the stage (QQP drops it, protocol 5).
    bias_source: Literal["fit", "file"] = "fit"
    bias_files: dict[str, str] = {}
    mask: MaskConfig = MaskConfig()
    resources: Resources = Resources()
    # Modules (importable names or .py files) that register stage kinds of one's own, e.g. a pruning method
    # (srnet_core.stages.registry.register); imported on the driver and on every worker (docs/spec.md).
    plugins: list[str] = []
    search: SearchSpec | None = None  # an Optuna study (python -m orchestrator.search; docs/search.md)

    @model_validator(mode="after")
    def _train_ranges(self):
        for section in train_sections():
            _check_train_config(self.section(section), section)
        return self

    @field_validator("output_dir")
    @classmethod
    def _output_dir_named(cls, value):
        if not value.strip():
            raise ValueError("is empty; give a directory for results (e.g. results/<name>)")
        return value

    @field_validator("artifact_store")
    @classmethod
    def _store_scheme(cls, value):
        if value is not None:
            check_store_location(value)
        return value

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
            raise ValueError("paradigm_options.timing: grid.paradigms has 'timing' but no steps or fractions are given")
        for section, names in (("task_options", self.task_options), ("task_overrides", self.task_overrides)):
            for task in names:
                if task not in tasks:
                    raise ValueError(f"{section}.{task}: task '{task}' is not in the sweep's tasks")
        for task, options in self.task_options.items():
            check_task_options(task, options)
        known = TrainConfig.__dataclass_fields__
        for section in train_sections():
            for where, overrides in self.override_sections(section):
                for key in overrides:
                    if key not in known:
                        raise FieldError(where, f"unknown key '{key}'; known: {sorted(known)}")
            paradigms = set(self.paradigm_overrides) | {p for o in self.task_overrides.values() for p in o.by_paradigm}
            for task in self.grid.tasks:
                variants = [(None, None, None)]
                for paradigm in sorted(paradigms):
                    tables = [self.paradigm_overrides.get(paradigm),
                              self.task_overrides[task].by_paradigm.get(paradigm) if task in self.task_overrides else None]
                    combos = {v for t in tables if t is not None for v in _paradigm_variants(t)} or {(None, None)}
                    variants += [(paradigm, src, sp) for src, sp in sorted(combos, key=str)]
                for paradigm, source, sparsity in variants:
                    if paradigm is None and task not in self.task_overrides:
                        continue
                    detail = "".join(f", {k} {v}" for k, v in (("source", source), ("sparsity", sparsity)) if v is not None)
                    where = f"task_overrides.{task}.{section}" if paradigm is None else \
                        f"paradigm_overrides.{paradigm}.{section} (task {task}{detail})"
                    merged = {**self.train_config(section, task, 0, paradigm=paradigm, source=source,
                                                  sparsity=sparsity),
                              "seed": self.section(section).seed}
                    try:
                        checked = _TRAIN_ADAPTER.validate_python(merged)
                    except ValidationError as err:
                        e = err.errors()[0]
                        raise FieldError(f"{where}.{'.'.join(map(str, e['loc']))}",
                                         f"{e['msg']} (got {_short(e.get('input'))})") from None
                    _check_train_config(checked, where)
        for paradigm in set(self.paradigm_overrides) | {p for o in self.task_overrides.values() for p in o.by_paradigm}:
            if paradigm not in self.grid.paradigms and paradigm != "full":
                raise ValueError(f"paradigm_overrides.{paradigm}: paradigm '{paradigm}' is not in grid.paradigms "
                                 "(or 'full', the dense fine-tunes)")
        if self.bias_source == "file":
            for task in sorted(tasks):
                path = self.bias_files.get(task)
                if not path:
                    raise ValueError(f"bias_files.{task}: bias_source is 'file' but no file is given for task "
                                     f"'{task}'; add it or use bias_source: fit")
                if not os.path.isfile(os.path.expanduser(path)):
                    raise ValueError(f"bias_files.{task}: file '{path}' does not exist")
        for task in self.bias_files:
            if task not in tasks:
                raise ValueError(f"bias_files.{task}: task '{task}' is not in the sweep's tasks")
        for backbone in self.grid.backbones:
            if backbone.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(backbone)):
                raise ValueError(f"grid.backbones: model directory '{backbone}' does not exist")
        return self

    @model_validator(mode="after")
    def _absolute_paths(self):
        # Resolved here, on the driver: a Tune trial runs in its own working directory on another machine.
        # URIs (s3://, gs://, file://...) pass through unchanged.
        def resolve(path):
            return path if path is None or "://" in path else os.path.abspath(os.path.expanduser(path))

        self.output_dir = resolve(self.output_dir)
        self.artifact_store = resolve(self.artifact_store)
        self.data_dir = resolve(self.data_dir)
        self.bias_files = {task: resolve(p) for task, p in self.bias_files.items()}
        self.grid.backbones = [resolve(b) if b.startswith(("/", "./", "../", "~")) else b
                               for b in self.grid.backbones]
        return self

    def section(self, name: str) -> TrainConfig:
        """A training section (``finetune``, ``mask_train``, ...: srnet_core.stages.registry.train_sections)."""
        return getattr(self, name)

    def override_sections(self, section: str) -> list[tuple[str, dict]]:
        """(where, {field: value}) of every override table of a training section, in the order they apply."""
        out = [(f"loss_overrides.{section}.{loss}", v) for loss, v in getattr(self.loss_overrides, section).items()]
        for task, o in self.task_overrides.items():
            out.append((f"task_overrides.{task}.{section}", getattr(o, section)))
            out += [(f"task_overrides.{task}.by_loss.{section}.{loss}", v)
                    for loss, v in getattr(o.by_loss, section).items()]
            for p, v in o.by_paradigm.items():
                out += _paradigm_sections(f"task_overrides.{task}.by_paradigm.{p}", v, section)
        for p, v in self.paradigm_overrides.items():
            out += _paradigm_sections(f"paradigm_overrides.{p}", v, section)
        return out

    def train_config(self, section: str, task: str, seed: int, loss: str | None = None,
                     paradigm: str | None = None, source: str | None = None,
                     sparsity: float | None = None) -> dict:
        """The TrainConfig of a training section for a task, loss and paradigm: the section,
        loss_overrides[section][loss], the task's overrides, the task's by_loss[section][loss],
        paradigm_overrides[paradigm] (its section, by_sparsity[sparsity], by_source[source] and its
        by_sparsity), the task's by_paradigm[paradigm] (the same), then the sweep-level amp. ``source``: what
        the node's paradigm starts from or retrains (the OOD upper bound's base paradigm a / b / c; (b)'s mask
        source imp_rw / mask_train). An override touches only the nodes it applies to (their keys change, no
        other's)."""
        from dataclasses import asdict

        cfg = asdict(self.section(section))
        if loss is not None:
            cfg.update(getattr(self.loss_overrides, section).get(loss, {}))
        overrides = self.task_overrides.get(task)
        if overrides is not None:
            cfg.update(getattr(overrides, section))
            if loss is not None:
                cfg.update(getattr(overrides.by_loss, section).get(loss, {}))
        if paradigm is not None:
            if paradigm in self.paradigm_overrides:
                _apply_paradigm(cfg, self.paradigm_overrides[paradigm], section, source, sparsity)
            if overrides is not None and paradigm in overrides.by_paradigm:
                _apply_paradigm(cfg, overrides.by_paradigm[paradigm], section, source, sparsity)
        if self.amp is not None:
            cfg["amp"] = self.amp
        cfg["seed"] = seed
        return cfg

    def options_of(self, stage: str) -> dict:
        """A stage kind's options section as a dict (``<kind>_options``; its dataclass's defaults if not given)."""
        from dataclasses import asdict

        return asdict(getattr(self, get_kind(stage).options_section))

    def stage_request(self, stage: str) -> tuple[float | str, str, float | str, str]:
        """(cpus, cpus field, gpus, gpus field) a trial of ``stage`` asks for: its ``resources.stages`` entry,
        else the per-trial values (a CPU-only kind, the bias model, asks for no GPU unless given one)."""
        o, r = self.resources.stages.get(stage), self.resources
        cpus, cpus_field = ((o.cpus, f"resources.stages.{stage}.cpus") if o is not None and o.cpus is not None
                            else (r.cpus_per_trial, "resources.cpus_per_trial"))
        if o is not None and o.gpus is not None:
            return cpus, cpus_field, o.gpus, f"resources.stages.{stage}.gpus"
        gpus = 0.0 if get_kind(stage).memory == "cpu" else r.gpus_per_trial
        return cpus, cpus_field, gpus, "resources.gpus_per_trial"

    def bias_file(self, task: str) -> str | None:
        """With bias_source 'file': the absolute path of the task's per-example bias file (goes straight
        into the stage config's bias_file); None with 'fit' (the planner adds a bias_model node)."""
        if self.bias_source != "file":
            return None
        return os.path.abspath(os.path.expanduser(self.bias_files[task]))

    def artifact_root(self) -> str:
        if self.artifact_store:
            return self.artifact_store if "://" in self.artifact_store else os.path.abspath(self.artifact_store)
        if "://" in self.output_dir:  # s3://bucket/x -> s3://bucket/x/artifacts (not a local "s3:" folder)
            return self.output_dir.rstrip("/") + "/artifacts"
        return os.path.join(os.path.abspath(self.output_dir), "artifacts")

    def resolved_data_dir(self) -> str | None:
        env = os.environ.get("SRNET_DATA_DIR")
        return self.data_dir or (os.path.abspath(os.path.expanduser(env)) if env else None)


def _sparsity_match(table: dict, sparsity: float | None) -> dict | None:
    if sparsity is None:
        return None
    for s, v in table.items():
        if abs(float(s) - float(sparsity)) < 1e-9:
            return v
    return None


def _apply_paradigm(cfg: dict, o, section: str, source: str | None, sparsity: float | None) -> None:
    """One paradigm's overrides in order: its section, by_sparsity, by_source.<source> (section, by_sparsity)."""
    for level in (o, o.by_source.get(source) if source is not None else None):
        if level is None:
            continue
        cfg.update(getattr(level, section))
        by_s = _sparsity_match(level.by_sparsity, sparsity)
        if by_s is not None:
            cfg.update(getattr(by_s, section))


def _paradigm_sections(where: str, o, section: str) -> list[tuple[str, dict]]:
    out = [(f"{where}.{section}", getattr(o, section))]
    out += [(f"{where}.by_sparsity.{s}.{section}", getattr(v, section)) for s, v in o.by_sparsity.items()]
    for src, v in o.by_source.items():
        out.append((f"{where}.by_source.{src}.{section}", getattr(v, section)))
        out += [(f"{where}.by_source.{src}.by_sparsity.{s}.{section}", getattr(w, section))
                for s, w in v.by_sparsity.items()]
    return out


def _paradigm_variants(o) -> list[tuple[str | None, float | None]]:
    """(source, sparsity) combinations that select a distinct set of a paradigm's overrides."""
    out = [(None, None)] + [(None, float(s)) for s in o.by_sparsity]
    for src, v in o.by_source.items():
        out += [(src, None)] + [(src, float(s)) for s in {*v.by_sparsity, *o.by_sparsity}]
    return out


_TRAIN_ADAPTER = TypeAdapter(TrainConfig)
_MODELS: dict[tuple, type] = {}


def spec_model() -> type[SweepSpec]:
    """SweepSpec plus what the stage registry declares, built once per registry state (a kind registered later,
    e.g. a user's pruning method, is in the next spec parsed):

    - one TrainConfig section per training section (finetune, mask_train, imp, gmp, retrain);
    - ``<kind>_options`` typed with the kind's options dataclass (its defaults are the only defaults);
    - the override tables: ``loss_overrides.<section>.<loss>``, ``task_overrides.<task>.<section>`` (with
      ``by_loss`` and ``by_paradigm``), ``paradigm_overrides.<paradigm>.<section>`` (e.g. the OOD upper bound's
      epochs and learning rate differ from paradigm (a)'s: protocol 7)."""
    state = tuple((k.name, id(k)) for k in REGISTRY.values())
    model = _MODELS.get(state)
    if model is not None:
        return model
    sections = train_sections()
    for kind in option_kinds():  # unknown keys inside an options dataclass are errors too
        kind.options.__pydantic_config__ = ConfigDict(extra="forbid")
    loss_overrides = create_model("LossOverrides", __base__=_Strict,
                                  **{s: (dict[LossName, dict], {}) for s in sections})
    sections_model = create_model("SectionOverrides", __base__=_Strict, **{s: (dict, {}) for s in sections})
    # per paradigm: its sections, then by_sparsity.<s>, then by_source.<source> (its sections, its by_sparsity)
    sparsity_model = create_model("SparsityOverrides", __base__=sections_model,
                                  by_sparsity=(dict[float, sections_model], {}))
    paradigm_model = create_model("ParadigmOverrides", __base__=sparsity_model,
                                  by_source=(dict[str, sparsity_model], {}))
    stage_overrides = create_model("StageOverrides", __base__=sections_model,
                                   by_loss=(loss_overrides, loss_overrides()),
                                   by_paradigm=(dict[Literal[_PARADIGMS], paradigm_model], {}))
    fields = {s: (TrainConfig, TrainConfig()) for s in sections}
    fields.update({k.options_section: (k.options, k.options()) for k in option_kinds()})
    fields.update(task_overrides=(dict[str, stage_overrides], {}), loss_overrides=(loss_overrides, loss_overrides()),
                  paradigm_overrides=(dict[Literal[_PARADIGMS], paradigm_model], {}))
    model = create_model("SweepSpec", __base__=SweepSpec, **fields)
    _MODELS.clear()
    _MODELS[state] = model
    return model


def _task_options_class(task: str):
    """The dataclass of a task's options (FileTask subclasses name it ``Options``; synthetic has its own)."""
    cls = TASKS[task]
    options = getattr(cls, "Options", None)
    if options is None and task == "synthetic":
        from srnet_core.tasks.synthetic import SyntheticOptions as options
    return options


# Option values that would crash or divide by zero when the data is generated/loaded.
_SYNTHETIC_RANGES = {
    "n_train": (lambda v: v >= 1, "must be an integer >= 1"),
    "n_dev": (lambda v: v >= 1, "must be an integer >= 1"),
    "n_ood": (lambda v: v >= 1, "must be an integer >= 1"),
    "n_ood_train": (lambda v: v >= 1, "must be an integer >= 1"),
    "spurious_agreement": (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]"),
    "ood_mode": (lambda v: v in ("reversed", "balanced"), "must be 'reversed' or 'balanced'"),
    "data_seed": (lambda v: v >= 0, "must be an integer >= 0"),
    "generator": (lambda v: v in (1, 2), "must be 1 (the first templates) or 2"),
}


def check_task_options(task: str, options: dict) -> None:
    """Names, types and ranges of one task's options; raises ValueError listing the valid names."""
    where = f"task_options.{task}"
    if not isinstance(options, dict):
        raise FieldError(where, "must be a mapping of option: value")
    cls = _task_options_class(task)
    known = sorted(f.name for f in dataclass_fields(cls)) if cls is not None else []
    for key in options:
        if key not in known:
            raise FieldError(where, f"unknown option '{key}'; valid options of '{task}': {known}")
    if cls is None:
        return
    adapter = TypeAdapter(cls)
    try:
        adapter.validate_python(options)
    except ValidationError as err:
        e = err.errors()[0]
        raise FieldError(f"{where}.{'.'.join(map(str, e['loc']))}", f"{e['msg']} (got {_short(e.get('input'))})") from None
    if task == "synthetic":
        for key, value in options.items():
            check = _SYNTHETIC_RANGES.get(key)
            if check is not None and not check[0](value):
                raise FieldError(f"{where}.{key}", f"{check[1]}, not {value!r}")
    else:
        try:  # the task's own checks (source, paths, row limits); construction reads no data
            TASKS[task](data_dir=None, **options)
        except (TypeError, ValueError) as err:
            raise FieldError(where, str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def supported_schemes() -> set[str]:
    """URI schemes pyarrow can open in this installation (its optional filesystems are build options)."""
    import importlib

    schemes = {"file", "local", "mock"}
    for module, names in (("pyarrow._s3", {"s3"}), ("pyarrow._gcsfs", {"gs", "gcs"}),
                          ("pyarrow._hdfs", {"hdfs", "viewfs"}), ("pyarrow._azurefs", {"abfs", "abfss"})):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        schemes |= names
    return schemes


def check_store_location(value: str) -> None:
    """A directory or a URI with a scheme pyarrow supports here (and a bucket/host); no network is touched."""
    if not value.strip():
        raise ValueError("is empty; give a directory or a URI such as s3://bucket/prefix, or remove the field")
    if "://" not in value:
        return
    scheme, rest = value.split("://", 1)
    supported = supported_schemes()
    if scheme.lower() not in supported:
        raise ValueError(f"URI scheme '{scheme}' is not supported by pyarrow here; use a directory or one of "
                         f"{sorted(supported)}")
    if scheme.lower() not in ("file", "local", "mock") and not rest.split("/", 1)[0]:
        raise ValueError(f"URI '{value}' names no bucket or host; use {scheme}://<bucket>/<prefix>")
    if scheme.lower() in ("file", "local") and not rest.startswith("/"):
        raise ValueError(f"URI '{value}' must be absolute: {scheme}:///absolute/path")


def _writable_location(path: str) -> str | None:
    """None if ``path`` is (or can be created as) a writable directory, else why not. Tries a real temp file
    in the nearest existing ancestor: os.access says yes to root even on a read-only mount."""
    path = os.path.abspath(os.path.expanduser(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"'{probe}' is a file, not a directory"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".srnet-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"'{probe}' is not writable ({err.strerror or err})"
    return None


def preflight(spec: SweepSpec, source: str, local_ray: bool = True) -> None:
    """What a launch would refuse, checked before Ray starts (and by --dry-run): the output directory and a
    local (or file://) artifact store must be writable; on a local Ray, the per-trial CPUs and GPUs must fit
    this machine, else trials stay pending forever. Raises SpecError (one line)."""
    why = _writable_location(spec.output_dir)
    if why:
        raise SpecError(f"{source}: field 'output_dir': {why}; choose a directory you can write")
    store = spec.artifact_store
    if store is not None:
        local = store if "://" not in store else (store.split("://", 1)[1] if store.lower().startswith(("file://", "local://")) else None)
        if local is not None:
            why = _writable_location(local)
            if why:
                raise SpecError(f"{source}: field 'artifact_store': {why}; choose a location you can write")
    if not local_ray:
        return  # a remote cluster's resources are checked when it is reached
    cpus_here = os.cpu_count() or 1
    gpus_here = _local_gpus()
    asked = [("resources.cpus_per_trial", spec.resources.cpus_per_trial, "resources.gpus_per_trial",
              spec.resources.gpus_per_trial)]
    for stage, res in spec.resources.stages.items():
        asked.append((f"resources.stages.{stage}.cpus", res.cpus, f"resources.stages.{stage}.gpus", res.gpus))
    for cpu_field, cpus, gpu_field, gpus in asked:
        if isinstance(cpus, (int, float)) and cpus > cpus_here:
            raise SpecError(f"{source}: field '{cpu_field}': {cpus:g} CPUs per trial but this machine has "
                            f"{cpus_here}; use at most {cpus_here} or 'auto', or --address to plan for a cluster")
        if isinstance(gpus, (int, float)) and gpus > gpus_here:
            raise SpecError(f"{source}: field '{gpu_field}': {gpus:g} GPUs per trial but this machine has "
                            f"{gpus_here}; use 'auto' (CPU when there is no GPU) or at most {gpus_here}, or --address to "
                            "plan for a cluster")


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install means no usable GPU for this check
        return 0


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # the latter: dataclass fields
        return " ".join(f"{source}: unknown key '{field}': remove it or fix its spelling".split())
    if e["type"] == "missing":
        return f"{source}: missing required field '{field}'"
    exc = (e.get("ctx") or {}).get("error")
    if isinstance(exc, FieldError):  # names the nested field itself
        return " ".join(f"{source}: field '{exc.field}': {exc.message}".split())
    if isinstance(exc, OptionError):  # a field of an options dataclass (srnet_core.pruning)
        return " ".join(f"{source}: field '{field}.{exc.field}': {exc.message}".split())
    if not e["loc"]:  # a whole-spec check: its message names the field
        return " ".join(f"{source}: {e['msg'].removeprefix('Value error, ')}".split())
    msg = e["msg"].removeprefix("Value error, ")
    nested = re.match(r"train\.(\w+) (.*)", msg, flags=re.S)  # srnet_core.train.TrainConfig.__post_init__
    if nested:
        field, msg = f"{field}.{nested.group(1)}", nested.group(2)
    got = e.get("input")
    shown = f" (got {_short(got)})" if not isinstance(got, (dict, list)) else ""
    return " ".join(f"{source}: field '{field}': {msg}{shown}".split())  # always one line


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_spec(data: dict, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping of fields, not {type(data).__name__}")
    plugins = data.get("plugins", [])
    if not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
        raise SpecError(f"{source}: field 'plugins': a list of module names or .py files, not {_short(plugins)}")
    try:  # before validation: a plugin's methods and option sections are part of the spec's schema
        load_plugins(plugins)
    except Exception as err:  # noqa: BLE001 - any error inside a user's module is reported in one line
        first = str(err).splitlines()[0] if str(err) else ""
        raise SpecError(f"{source}: field 'plugins': cannot import: {type(err).__name__}: {first}") from None
    try:
        return spec_model().model_validate(data)
    except ValidationError as err:
        raise SpecError(_one_line(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let the base class report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}': give each field once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str) -> SweepSpec:
    if not os.path.isfile(path):
        raise SpecError(f"spec file '{path}' does not exist; see sweeps/ for examples")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: byte {err.start} is not UTF-8; save the spec as UTF-8 text") from None
    except OSError as err:
        raise SpecError(f"spec file '{path}' cannot be read: {err.strerror or err}") from None
    if "\x00" in text:
        raise SpecError(f"{path}: contains NUL bytes; a spec is a UTF-8 YAML text file")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        what = " ".join(str(getattr(err, "problem", None) or err).split())
        raise SpecError(f"{path}:{where} is not valid YAML: {what}") from None
    except (RecursionError, ValueError, OverflowError) as err:  # absurd nesting, unrepresentable scalars
        raise SpecError(f"{path}: cannot be read as YAML ({type(err).__name__}); check its structure") from None
    return parse_spec(data, source=path)
