"""retrain: fine-tune the weights of a fixed subnetwork from the pre-trained weights ("in isolation",
paradigm (b); Super Tickets; Sparse*BERT transfer)."""
from __future__ import annotations

import os

import torch

from ..masks import MaskConfig, MaskSet, load_masks
from .common import Context, copy_into, make_loop, rows_from_history, run_loop, save_state_dict, write_summary
from .config import Report
from .registry import StageKind, register


def retrain(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Fine-tune the weights of a fixed subnetwork from the pre-trained weights ("in isolation", paradigm b;
    sparse transfer). The classifier is not masked; the mask is loaded for every matrix the model shares
    with it, so a mask found on another task (other label count) transfers."""
    masks, _ = load_masks(ctx.cfg.mask_file)
    names = [n for n in ctx.names(classifier=False) if n in masks]
    if not names:
        raise ValueError(f"mask file {ctx.cfg.mask_file} has no matrix of this model; was it made for another "
                         "backbone?")
    mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
    mask_set.load_masks({n: masks[n] for n in names})
    params = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
    encoder = [n for n in ctx.encoder_names() if n in names]
    measured = mask_set.sparsity_report(encoder)["total"]
    loop = make_loop(ctx, params, snapshot=lambda: params, current_sparsity=lambda: measured,
                     restore=copy_into(params))
    run_loop(loop, report, resume_state)
    with torch.no_grad():
        for name, value in loop.best.items():
            params[name].copy_(value)
    mask_set.bake()  # plain weights with zeros: loads as an ordinary HF model
    os.makedirs(out_dir, exist_ok=True)
    save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    write_summary(ctx, out_dir, loop, measured_sparsity=measured)
    return rows_from_history(loop.history, loop.best_step, ctx.task)


register(StageKind("retrain", retrain, fields=("seed", "loss", "train"), train_section="retrain",
                   outputs=("weights.safetensors", "summary.json"), memory="weights"))
