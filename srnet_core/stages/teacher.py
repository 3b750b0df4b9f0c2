"""teacher: conf_reg's (and kd's) teacher as its own node: the class probabilities of fine-tuned weights
(init_weights) over the training set, and their accuracy there (one row, not selected: no curve point)."""
from __future__ import annotations

import os

from .common import Context, write_summary, write_teacher
from .config import Report
from .registry import StageKind, register


def teacher(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    if not ctx.cfg.init_weights:
        raise ValueError("the teacher stage needs init_weights (a fine-tuned model)")
    os.makedirs(out_dir, exist_ok=True)
    probs = write_teacher(os.path.join(out_dir, "teacher.parquet"), ctx)
    accuracy = float((probs.argmax(-1) == ctx.train_enc.labels).mean())
    write_summary(ctx, out_dir, None, train_accuracy=accuracy)
    return [{"step": 0, "epoch": 0.0, "eval_dataset": ctx.task.train_split, "eval_role": "train",
             "metric": "accuracy", "value": accuracy, "selected": False, "measured_sparsity": 0.0}]


# Reads the fine-tune's evaluation settings only: adding conf_reg never re-keys anything upstream.
register(StageKind("teacher", teacher, train_section="finetune", train_fields=("eval_batch_size", "amp"),
                   outputs=("teacher.parquet", "summary.json"), memory="inference", publishes=False,
                   loss_inputs=False))
