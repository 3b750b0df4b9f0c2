"""imp: iterative magnitude pruning. One run gives every level (0.1 .. 0.9 by default), each saved as
``masks_s{level:.2f}.safetensors``; a level's result is the last evaluation of its interval (protocol 3). With
``rewind`` the encoder weights go back to their starting values after each prune (imp-rw)."""
from __future__ import annotations

import os
import time

from .. import losses
from ..io import write_json
from ..pruning.imp import ImpOptions, imp
from ..train import EvalRecord
from .common import Context, rows_from_history, save_mask_file
from .config import Report
from .registry import StageKind, get_kind, register


def level_file(sparsity: float) -> str:
    """The mask file of one IMP level (consumers such as paradigm (b) read it by this name)."""
    return f"masks_s{sparsity:.2f}.safetensors"


def imp_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    options = get_kind("imp").make_options(ctx.cfg.option_values("imp"))
    os.makedirs(out_dir, exist_ok=True)

    def on_level(level, model) -> None:
        save_mask_file(ctx, os.path.join(out_dir, level_file(level.target_sparsity)), level.masks,
                       level.target_sparsity, imp_level=level.level)

    levels = imp(ctx.model, ctx.names(classifier=False), ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                 evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device, options=options,
                 on_level=on_level, report=report, resume_state=resume_state)
    rows = []
    for level in levels:
        for row in rows_from_history(
                [EvalRecord(level.start_step + r.step, r.epoch, r.metrics, level.encoder_sparsity) for r in level.history],
                level.start_step + level.final.step, ctx.task):
            rows.append({**row, "target_sparsity": level.target_sparsity, "imp_level": level.level})
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started,
        "levels": [{"target_sparsity": lv.target_sparsity, "measured_sparsity": lv.encoder_sparsity,
                    "steps": lv.steps} for lv in levels]})
    return rows


def _level_outputs(config: dict) -> list[str]:
    from ..pruning.imp import imp_levels

    return [level_file(s) for s in imp_levels(get_kind("imp").make_options(config.get("imp")))]


# IMP runs its own levels: the planner gives one node per (cell, loss) and sets `rewind` per paradigm.
register(StageKind(
    "imp", imp_stage, fields=("seed", "loss", "train"), train_section="imp", options=ImpOptions,
    planner_options=("rewind",), outputs=("summary.json",), more_outputs=_level_outputs, memory="weights",
    method=True, per_sparsity=False))
