"""structured: heads and FFN neurons pruned by loss sensitivity in rounds, with training between them
(neuron-level; not a faithful Super Tickets, see srnet_core.pruning.structured and super_tickets.py). Saves the
head/neuron masks (``structured.safetensors``, from which a physically smaller model is built with
srnet_core.pruning.structured.shrink_model) and the equivalent per-matrix ``masks.safetensors``."""
from __future__ import annotations

import os
import time

import torch

from .. import losses
from ..io import atomic_path, write_json
from ..pruning.structured import StructuredOptions
from ..train import EvalRecord
from .common import Context, rows_from_history, save_mask_file
from .config import Report, StageConfig
from .registry import StageKind, get_kind, register


def structured_options(cfg: StageConfig) -> StructuredOptions:
    """The node's StructuredOptions, fractions left None set to its grid sparsity."""
    return get_kind("structured").make_options(cfg.option_values("structured")).resolved(cfg.sparsity)


def structured_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Structured pruning of attention heads and FFN neurons by loss sensitivity (neuron-level; not a faithful
    Super Tickets, see srnet_core.pruning.structured).
    Saves the head/neuron masks (``structured.safetensors``, from which a physically smaller model is built
    with srnet_core.pruning.structured.shrink_model) and the equivalent per-matrix ``masks.safetensors``."""
    from safetensors.torch import save_file

    from ..pruning.structured import structured_prune

    s = ctx.cfg.sparsity
    options = structured_options(ctx.cfg)
    rounds = structured_prune(ctx.model, ctx.names(classifier=False), ctx.train_enc, losses.get_loss(ctx.cfg.loss),
                              ctx.cfg.train, evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device,
                              options=options, report=report, resume_state=resume_state)
    last = rounds[-1]
    os.makedirs(out_dir, exist_ok=True)
    save_mask_file(ctx, os.path.join(out_dir, "masks.safetensors"), last.weight_masks, s, structured=True)
    with atomic_path(os.path.join(out_dir, "structured.safetensors")) as tmp:
        save_file({"head_mask": last.head_mask.to(torch.uint8).contiguous(),
                   "neuron_mask": last.neuron_mask.to(torch.uint8).contiguous(),
                   "head_importance": last.head_importance.float().contiguous(),
                   "neuron_importance": last.neuron_importance.float().contiguous()}, tmp)
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started,
        "rounds": [{"head_sparsity": r.head_sparsity, "neuron_sparsity": r.neuron_sparsity,
                    "measured_sparsity": r.encoder_sparsity} for r in rounds]})
    history = [EvalRecord(r.start_step + h.step, h.epoch, h.metrics, r.encoder_sparsity) for r in rounds for h in r.history]
    return rows_from_history(history, last.start_step + last.final.step, ctx.task)



# Trains the weights between rounds with the mask_train section's settings (docs/spec.md says so).
register(StageKind(
    "structured", structured_stage, fields=("seed", "loss", "sparsity", "train"), train_section="mask_train",
    options=StructuredOptions, outputs=("masks.safetensors", "structured.safetensors", "summary.json"),
    memory="weights", method=True, structured=True))
