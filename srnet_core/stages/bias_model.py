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
    return rows_from_history([EvalRecord(0, 0.0, evals, 0.0)], 0, task)


register(StageKind("bias_model", bias_model, fields=("stage", "task", "task_options", "data_dir"), common=False,
                   outputs=("bias_train.parquet", "summary.json"), memory="cpu", needs_model=False,
                   loss_inputs=False))
