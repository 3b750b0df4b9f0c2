"""A pruning method of one's own, in one place: its options dataclass, its run function, one ``register``.

Named in a spec's ``plugins:`` (tests/test_registry.py), it validates, plans and runs end to end with no edit to
orchestrator/ or spec.py. The method: seeded random unstructured masks at the grid sparsity (every encoder
matrix keeps exactly the top-k of a random score), no training, one evaluation of the masked fine-tuned model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from srnet_core.masks import MaskConfig, MaskSet, prune_count, sparsity_of
from srnet_core.pruning.common import OptionError
from srnet_core.stages import StageKind, register, rows_from_history
from srnet_core.stages.common import save_mask_file, write_summary
from srnet_core.train import EvalRecord


@dataclass
class ToyRandomOptions:
    """salt: mixed into the mask seed (different salts, different masks). order: ``random`` scores, or
    ``first`` (keep the first entries of each matrix: a deterministic control)."""

    salt: int = 0
    order: Literal["random", "first"] = "random"

    def __post_init__(self):
        if self.salt < 0:
            raise OptionError("salt", f"must be >= 0, got {self.salt}")


def toy_random(ctx, out_dir: str, report, resume_state) -> list[dict]:
    options = ToyRandomOptions(**(ctx.cfg.option_values("toy_random") or {}))
    names = ctx.names(classifier=False)
    modules = dict(ctx.model.named_modules())
    generator = torch.Generator().manual_seed(1000 * ctx.cfg.seed + options.salt)
    masks = {}
    for name in names:
        shape = modules[name].weight.shape
        n = shape.numel()
        order = torch.randperm(n, generator=generator) if options.order == "random" else torch.arange(n)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[: n - prune_count(n, ctx.cfg.sparsity)]] = True
        masks[name] = keep.view(shape)
    os.makedirs(out_dir, exist_ok=True)
    save_mask_file(ctx, os.path.join(out_dir, "masks.safetensors"), masks, ctx.cfg.sparsity)
    mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
    mask_set.load_masks(masks)
    measured = sparsity_of({n: masks[n] for n in ctx.encoder_names()})["total"]
    record = EvalRecord(0, 0.0, ctx.evaluate(), measured)
    write_summary(ctx, out_dir, None, measured_sparsity=measured, salt=options.salt)
    return rows_from_history([record], 0, ctx.task)


register(StageKind("toy_random", toy_random, fields=("seed", "sparsity"), options=ToyRandomOptions,
                   outputs=("masks.safetensors", "summary.json"), memory="inference", method=True,
                   loss_inputs=False))
