"""bias_model: fit the task's hand-crafted bias model (srnet_core.bias) on its training split; per-example
log-probs for the training split (``bias_train.parquet``) and every eval split, and its own metrics: good on
ID and near chance on OOD is what shows the features are the bias. No model, no training loop."""
from __future__ import annotations

import os
import time

from ..io import write_json
from ..tasks import get_task
from ..train import EvalRecord
from .common import rows_from_history
from .config import StageConfig
from .registry import StageKind, register


def bias_model(cfg: StageConfig, out_dir: str) -> list[dict]:
    """Fit the task's hand-crafted bias model on its training split (srnet_core.bias); write per-example
    log-probs for the training split (``bias_train.parquet``) and every eval split, and its own metrics: good
    on ID and near chance on OOD is what shows the features are the bias."""
    from ..bias import fit_bias_model, write_bias_file

    started = time.time()
    task = get_task(cfg.task, data_dir=cfg.data_dir, **cfg.task_options)
    result = fit_bias_model(task)
    os.makedirs(out_dir, exist_ok=True)
    result.write(out_dir)
    train = task.train_split
    write_bias_file(os.path.join(out_dir, "bias_train.parquet"), result.ids[train], result.log_probs[train])
    write_json(os.path.join(out_dir, "summary.json"), {"config": cfg.to_dict(), "wall_seconds": time.time() - started,
                                                       "info": result.info})
    evals = {split: m for split, m in result.metrics.items() if split != train}
    rows = rows_from_history([EvalRecord(0, 0.0, evals, 0.0)], 0, task)
    # the training set, role "train": how confident and how right the bias model is where the debiasing losses
    # read it (reweight's weights 1 - p_gold, conf_reg's scaling, PoE's product); the reference's per-example
    # files come from other bias models, so a fitted one is a documented deviation measured here (issue 19)
    rows += [{**r, "eval_role": "train"}
             for r in rows_from_history([EvalRecord(0, 0.0, {train: train_confidence(task, result)}, 0.0)], 0, task)]
    return rows


def train_confidence(task, result) -> dict[str, float]:
    """The bias model's training-set metrics (out of fold when the task's spec uses folds) plus its mean
    probability of the gold label (``gold_confidence``) and of its predicted label (``max_confidence``)."""
    import numpy as np

    train = task.train_split
    lp = np.asarray(result.log_probs[train], dtype=np.float64)
    gold = np.asarray(task.load(train).labels)
    return {**result.metrics[train], "gold_confidence": float(np.exp(lp[np.arange(len(gold)), gold]).mean()),
            "max_confidence": float(np.exp(lp.max(axis=1)).mean())}


register(StageKind("bias_model", bias_model, fields=("stage", "task", "task_options", "data_dir"), common=False,
                   outputs=("bias_train.parquet", "summary.json"), memory="cpu", needs_model=False,
                   loss_inputs=False))
