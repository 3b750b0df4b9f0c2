"""super_tickets: Super Tickets (Liang et al. 2021, srnet_core.pruning.super_tickets): head and FFN-sublayer
importance of the fine-tuned init_weights over the whole training set, one-shot prune, masks saved. The pruned
model (fine-tuned weights, not re-trained) is evaluated once for its rows; a ``retrain`` node re-fine-tunes the
ticket from the pre-trained weights. One pass with no optimizer state: nothing to resume (a retry recomputes)."""
from __future__ import annotations

import os

import torch

from .. import losses
from ..io import atomic_path
from ..masks import MaskConfig, MaskSet, sparsity_of
from ..pruning.super_tickets import SuperTicketOptions
from ..train import EvalRecord
from .common import Context, rows_from_history, save_mask_file, write_summary
from .config import Report, StageConfig
from .registry import StageKind, get_kind, register


def super_ticket_options(cfg: StageConfig) -> SuperTicketOptions:
    """The node's SuperTicketOptions, fractions left None set to its grid sparsity."""
    return get_kind("super_tickets").make_options(cfg.option_values("super_tickets")).resolved(cfg.sparsity)


def super_tickets_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Super Tickets (srnet_core.pruning.super_tickets): head and FFN-sublayer importance of the fine-tuned
    init_weights over the whole training set, one-shot prune, masks saved. The pruned model (fine-tuned weights,
    not re-trained) is evaluated once for its rows; the ``retrain`` stage re-fine-tunes the ticket from the
    pre-trained weights. One pass with no optimizer state: nothing to resume (a retry recomputes it)."""
    from safetensors.torch import save_file

    from ..models import encoder_layers
    from ..pruning.super_tickets import check_head_budget, super_ticket

    cfg = ctx.cfg
    if not cfg.init_weights:
        raise ValueError("the super_tickets stage needs init_weights (the std fine-tuned model to prune)")
    options = super_ticket_options(cfg)
    layers = encoder_layers(ctx.model)  # refuse an impossible head fraction before the pass over the data
    explicit = (cfg.option_values("super_tickets") or {}).get("head_sparsity") is not None
    check_head_budget(len(layers), layers[0].num_heads, options.head_sparsity, options.min_heads_per_layer,
                      field="super_tickets_options.head_sparsity" if explicit else "grid.sparsities")
    ticket = super_ticket(ctx.model, ctx.train_enc, losses.get_loss(cfg.loss), batch_size=cfg.train.batch_size,
                          device=ctx.device, amp=cfg.train.amp, options=options)
    names = ctx.names(classifier=False)  # the pooler (when prunable) is kept whole, like `structured`
    modules = dict(ctx.model.named_modules())
    masks = {n: ticket.weight_masks[n] if n in ticket.weight_masks
             else torch.ones(tuple(modules[n].weight.shape), dtype=torch.bool) for n in names}
    encoder = ctx.encoder_names()
    measured = sparsity_of({n: masks[n] for n in encoder})["total"]
    os.makedirs(out_dir, exist_ok=True)
    measured_all = save_mask_file(ctx, os.path.join(out_dir, "masks.safetensors"), masks, cfg.sparsity,
                               super_tickets=True, head_sparsity=ticket.head_sparsity,
                               ffn_sparsity=ticket.ffn_sparsity)
    with atomic_path(os.path.join(out_dir, "super_tickets.safetensors")) as tmp:
        save_file({"head_mask": ticket.head_mask.to(torch.uint8).contiguous(),
                   "ffn_mask": ticket.ffn_mask.to(torch.uint8).contiguous(),
                   "head_importance": ticket.importance.heads.float().contiguous(),
                   "ffn_importance": ticket.importance.ffn.float().contiguous(),
                   "head_scores": ticket.head_scores.float().contiguous(),
                   "ffn_scores": ticket.ffn_scores.float().contiguous()}, tmp)
    mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
    mask_set.load_masks(masks)
    record = EvalRecord(0, 0.0, ctx.evaluate(), measured)
    pruned_heads = [[int(h) for h in torch.nonzero(~row).flatten()] for row in ticket.head_mask]
    write_summary(ctx, out_dir, None, measured_sparsity=measured, measured_sparsity_all_masked=measured_all,
             head_sparsity=ticket.head_sparsity, ffn_sparsity=ticket.ffn_sparsity,
             pruned_heads=pruned_heads, pruned_ffn=[int(i) for i in torch.nonzero(~ticket.ffn_mask).flatten()],
             importance_batches=ticket.importance.batches, importance_examples=ticket.importance.examples)
    return rows_from_history([record], 0, ctx.task)



# Std loss on the std fine-tune: no bias or teacher inputs. Its importance pass runs at the fine-tuning's batch
# size, so it reads that section's batch_size / eval_batch_size / amp only.
register(StageKind(
    "super_tickets", super_tickets_stage, fields=("seed", "loss", "sparsity", "train"), train_section="finetune",
    train_fields=("batch_size", "eval_batch_size", "amp"), options=SuperTicketOptions,
    outputs=("masks.safetensors", "super_tickets.safetensors", "summary.json"), memory="importance", method=True,
    per_sparsity=False, loss_inputs=False, structured=True))
