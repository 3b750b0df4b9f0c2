"""StageConfig: everything one stage run depends on (every field documented once, here)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from ..masks import MaskConfig
from ..train import EvalRecord, TrainConfig

@dataclass
class StageConfig:
    """Everything one stage run depends on. Every field is documented once, here.

    stage: the stage kind (srnet_core.stages.registry).
    task / task_options / data_dir: which task, its options (e.g. synthetic sizes, add_ood_train), where real
        data lives (None: $SRNET_DATA_DIR).
    backbone: ``minilm``, ``tiny-bert``, an HF hub name, or a model directory.
    seed: fixes the classifier initialisation, data order and dropout.
    sparsity: target fraction of zeros per prunable matrix (mask_train; the final target for gradual).
    loss: std, poe, reweight or conf_reg (srnet_core.losses).
    max_length: tokens per pair (truncation).
    include_pooler / mask_classifier: mask the pooler / the classifier too (protocol.md section 1 lists both).
    device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    init_weights: weights.safetensors of an upstream node to start from (paradigm (a)); None starts from the
        pre-trained backbone with a randomly initialised classifier.
    mask_file: a fixed mask (retrain, evaluate). bias_file / teacher_file: per-example bias log-probs /
        teacher probabilities, joined to training examples by id.
    save_fractions: fractions of the fine-tuning's steps whose weights are saved (the planner's fixed grid;
        srnet_core.stages.finetune.checkpoint_step is the one rule for their steps). save_steps: absolute steps
        whose weights are saved (``weights_step<N>``; the planner's fixed step grid, the timing paradigm's
        reference start steps); steps at or beyond the run's end are skipped.
    gradual: the cubic schedule of gradual mask training (the gradual paradigm; None: a fixed sparsity).
    options: a stage kind's own options, by its ``options_key`` (e.g. ``imp``, ``structured``, ``gradual`` for
        gmp); in a config dict they are top-level fields, as the planner writes them.
    """

    stage: str = "mask_train"
    task: str = "synthetic"
    task_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    backbone: str = "tiny-bert"
    seed: int = 0
    sparsity: float = 0.5
    loss: str = "std"
    max_length: int = 128
    include_pooler: bool = True
    mask_classifier: bool = True
    device: str = "auto"
    init_weights: str | None = None
    mask_file: str | None = None
    bias_file: str | None = None
    bias_sha256: str | None = None  # a user-given bias file (bias_source: file): its sha256, checked when read
    teacher_file: str | None = None
    save_fractions: list[float] = field(default_factory=list)
    save_steps: list[int] = field(default_factory=list)
    gradual: dict | None = None
    options: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "StageConfig":
        from .registry import get_kind

        d = dict(d)
        train = TrainConfig(**d.pop("train", {}))
        mask = MaskConfig(**d.pop("mask", {}))
        options = dict(d.pop("options", None) or {})
        key = get_kind(d.get("stage", cls.stage)).options_key
        if key is not None and key in d and key not in cls.__dataclass_fields__:
            options[key] = d.pop(key)
        return cls(train=train, mask=mask, options=options, **d)

    def option_values(self, key: str) -> dict | None:
        """The options given under ``key`` (the gmp schedule lives in ``gradual``, a StageConfig field)."""
        return getattr(self, key) if key in self.__dataclass_fields__ and key != "options" else self.options.get(key)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("options"))  # as the planner wrote them: top-level fields
        return d


# report(record, state_fn): after every evaluation; record None: a checkpoint without an evaluation (a stop
# was requested, srnet_core.train.request_stop: checkpoint state_fn() now, the run raises Preempted next)
Report = Callable[[EvalRecord | None, Callable[[], dict]], None]
