"""gmp: gradual magnitude pruning of a (fine-tuned) model with its weights trained (Sparse*BERT): magnitude
masks 0 -> the grid sparsity on a cubic schedule (``gmp_options``); the classifier is not pruned."""
from __future__ import annotations

from ..pruning.gradual import GMPOptions
from .common import Context
from .config import Report
from .mask_train import _gradual
from .registry import StageKind, register


def gmp_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    return _gradual(ctx, out_dir, report, resume_state, ctx.names(classifier=False), train_weights=True)


register(StageKind(
    "gmp", gmp_stage, fields=("seed", "loss", "sparsity", "train", "mask"), train_section="gmp",
    options=GMPOptions, options_field="gradual",
    outputs=("masks.safetensors", "weights.safetensors", "summary.json"), memory="weights", method=True))
