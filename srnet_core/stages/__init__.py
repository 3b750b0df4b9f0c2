"""Stages: pure functions of (config, input artifacts) -> (output artifacts in out_dir, metric rows).

A stage never knows about Ray: the caller passes ``report(record, state_fn)`` to see each evaluation (and
checkpoint the state it is given) and ``resume_state`` to continue an interrupted run exactly. Inputs from
upstream stages arrive as file paths in the config (init_weights, mask_file, bias_file, teacher_file).

One module per stage kind, each ending with its ``register(StageKind(...))`` (registry.py documents the
fields: key fields, training section, options dataclass, declared outputs, memory class, version). Every
stage also writes summary.json. A new stage kind or pruning method is one such module (or one ``register``
call in user code): tests/test_registry.py adds a toy method that way.
"""
from __future__ import annotations

from ..train import release_memory
# Each module registers its kind; this order is the registry's (and the spec's training sections').
from . import bias_model, finetune, teacher, mask_train, imp, gmp, structured, super_tickets  # noqa: F401, I001
from . import retrain, evaluate  # noqa: F401, I001
from .common import Context, prepare, rows_from_history, write_teacher
from .config import Report, StageConfig
from .finetune import checkpoint_file, checkpoint_files, checkpoint_step, step_file
from .imp import level_file
from .registry import REGISTRY, StageKind, get_kind, register, stage_version, unregister
from .structured import structured_options
from .super_tickets import super_ticket_options

__all__ = ["Context", "REGISTRY", "Report", "StageConfig", "StageKind", "checkpoint_file", "checkpoint_files",
           "checkpoint_step", "get_kind", "level_file", "prepare", "register", "rows_from_history", "run_stage",
           "stage_version", "step_file", "structured_options", "super_ticket_options", "unregister", "write_teacher"]


def __getattr__(name: str):
    # Views of the registry, read live (a kind registered later is in them): STAGE_VERSION and STAGES.
    if name == "STAGE_VERSION":
        return stage_version()
    if name == "STAGES":
        return {k.name: k.run for k in REGISTRY.values()}
    raise AttributeError(name)


def run_stage(config: dict | StageConfig, out_dir: str, report: Report | None = None,
              resume_state: dict | None = None) -> list[dict]:
    """Run one stage; write its artifacts to ``out_dir``; return its metric rows (long format)."""
    cfg = config if isinstance(config, StageConfig) else StageConfig.from_dict(config)
    kind = get_kind(cfg.stage)
    if not kind.needs_model:
        return kind.run(cfg, out_dir)
    ctx = prepare(cfg)
    device = ctx.device
    try:
        return kind.run(ctx, out_dir, report, resume_state)
    finally:
        del ctx  # a reused worker process must not keep this stage's model (tests/test_memory_release.py)
        release_memory(cfg.train.compile, device)
