"""mask_train: train mask scores with frozen weights (straight-through estimator, exact top-k); a fixed target
sparsity, or the gradual paradigm's cubic schedule (s_i -> s_f). gmp (gradual magnitude pruning, weights
trained, Sparse*BERT) shares the gradual code and lives in gmp.py."""
from __future__ import annotations

import os
import time

import torch
from dataclasses import asdict

from .. import losses
from ..io import write_json
from ..masks import MaskConfig, MaskSet, sparsity_of
from ..models import count_prunable
from .common import (Context, make_loop, rows_from_history, run_loop, save_mask_file, save_state_dict,
                     write_summary)
from .config import Report
from .registry import StageKind, register


def mask_train(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Train mask scores with frozen weights (straight-through); fixed or gradual target sparsity."""
    cfg = ctx.cfg
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    names = ctx.names(classifier=cfg.mask_classifier)
    if cfg.gradual:
        return _gradual(ctx, out_dir, report, resume_state, names, train_weights=False)
    mask_set = MaskSet(ctx.model, names, MaskConfig(**{**asdict(cfg.mask), "sparsity": cfg.sparsity}))
    params = {f"scores:{n}": mask_set.parametrization(n).scores for n in names}
    encoder = ctx.encoder_names()
    loop = make_loop(ctx, params, snapshot=lambda: {f"mask:{n}": m for n, m in mask_set.masks().items()},
                 after_step=mask_set.project,
                 # reported over the encoder matrices, the protocol's denominator (section 1)
                 current_sparsity=lambda: mask_set.sparsity_report(encoder)["total"],
                 extra_state=(mask_set.state_dict, mask_set.load_state_dict),
                 restore=lambda snap: _set_masks(mask_set, names, snap))
    run_loop(loop, report, resume_state)
    os.makedirs(out_dir, exist_ok=True)
    best = {n: loop.best[f"mask:{n}"] for n in names}
    measured_all = save_mask_file(ctx, os.path.join(out_dir, "masks.safetensors"), best, cfg.sparsity)
    write_summary(ctx, out_dir, loop, measured_sparsity=sparsity_of({n: best[n] for n in encoder})["total"],
             measured_sparsity_all_masked=measured_all, prunable_params=count_prunable(ctx.model, names))
    return rows_from_history(loop.history, loop.best_step, ctx.task)


def _set_masks(mask_set: MaskSet, names: list[str], snapshot: dict) -> None:
    """Put a snapshot's binary masks into the model, scores untouched (what evaluation reads is the mask)."""
    with torch.no_grad():
        for n in names:
            mask = mask_set.parametrization(n).mask
            mask.copy_(snapshot[f"mask:{n}"].to(mask.device, mask.dtype))


def _gradual_options(ctx: Context, initial: float):
    from ..pruning.gradual import GradualOptions

    g = ctx.cfg.gradual or {}
    # t_f defaults to the last epoch (the reference; for GMP Sparse*BERT's recovery phase at s_f)
    end = g.get("end", "last_epoch")
    return GradualOptions(initial=g.get("initial", initial), final=ctx.cfg.sparsity, start=g.get("start", 0.0),
                          end=end, unit=g.get("unit", "epoch"),
                          frequency=g.get("frequency") or ctx.cfg.train.eval_every, scope=ctx.cfg.mask.scope,
                          # A result reported at sparsity s must be a checkpoint AT s: with "any", GMP's best
                          # ID-dev eval can be its dense start (measured in paper_small: GMP "0.9" was dense).
                          select=g.get("select", "final"), reproject_every=ctx.cfg.mask.reproject_every,
                          # the spec's mask section (full_grid: raw, the reference's S = |W|)
                          score_scale=ctx.cfg.mask.score_scale, phi=ctx.cfg.mask.phi)


def _gradual(ctx: Context, out_dir: str, report, resume_state, names, train_weights: bool) -> list[dict]:
    """Cubic-schedule pruning: gradual mask training (frozen weights, 0.7 -> 0.9 in the reference) or GMP
    (Sparse*BERT: weights trained, magnitude masks 0 -> s_f). The saved mask is the selected checkpoint's,
    at the sparsity the schedule had then (the reference's re-threshold-to-s_i bug is not copied)."""
    from ..pruning.gradual import gmp, gradual_mask_train

    run = gmp if train_weights else gradual_mask_train
    options = _gradual_options(ctx, 0.0 if train_weights else 0.7)
    result = run(ctx.model, names, ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                 evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device, options=options,
                 report=report, resume_state=resume_state)
    os.makedirs(out_dir, exist_ok=True)
    save_mask_file(ctx, os.path.join(out_dir, "masks.safetensors"), result.masks, result.target_sparsity)
    if train_weights:
        result.mask_set.bake()  # weights with real zeros: a plain HF model
        save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started, "best_step": result.best_step,
        "best_value": result.best_value, "target_sparsity_at_best": result.target_sparsity,
        "measured_sparsity": result.encoder_sparsity, "final_sparsity_reached": result.final_sparsity_reached,
        "total_steps": result.total_steps, "train_seconds": result.train_seconds})
    return rows_from_history(result.history, result.best_step, ctx.task)



register(StageKind(
    "mask_train", mask_train, fields=("seed", "loss", "sparsity", "train", "mask", "mask_classifier", "gradual"),
    train_section="mask_train", outputs=("masks.safetensors", "summary.json"), memory="mask", method=True,
    per_sparsity=False))
