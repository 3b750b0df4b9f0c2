"""evaluate: given weights (and optionally a mask) on the task's ID and OOD sets, no training. No paradigm
plans it (every training stage evaluates its own selected model); it is run directly, e.g. on a mask found
elsewhere."""
from __future__ import annotations

import os

from ..masks import MaskConfig, MaskSet, load_masks
from ..train import EvalRecord
from .common import Context, rows_from_history, write_summary
from .config import Report
from .registry import StageKind, register


def evaluate(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Evaluate given weights (and optionally a mask) on the task's ID and OOD sets."""
    measured = 0.0
    if ctx.cfg.mask_file:
        masks, _ = load_masks(ctx.cfg.mask_file)
        names = [n for n in ctx.names(classifier=True) if n in masks]
        mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
        mask_set.load_masks({n: masks[n] for n in names})
        measured = mask_set.sparsity_report([n for n in ctx.encoder_names() if n in names])["total"]
    record = EvalRecord(0, 0.0, ctx.evaluate(), measured)
    os.makedirs(out_dir, exist_ok=True)
    write_summary(ctx, out_dir, None, measured_sparsity=measured)
    return rows_from_history([record], 0, ctx.task)


register(StageKind("evaluate", evaluate, fields=("seed",), outputs=("summary.json",), memory="inference",
                   loss_inputs=False, planned=False))
