"""A trial's objectives, read from its node's rows: ID dev (eval_role "id") and OOD dev (eval_role "ood_dev")
at the checkpoint selected on ID dev. Rows with eval_role "ood" (the reported OOD test sets) are never read."""
from __future__ import annotations

import pandas as pd

from ..search_spec import SearchSpec

OBJECTIVE_DIRECTIONS = {"id_dev": "maximize", "ood_dev": "maximize", "cost": "minimize"}


class SearchError(RuntimeError):
    """The study cannot go on (e.g. the fine-tuning every trial needs failed)."""


def _selected_value(rows: pd.DataFrame, role: str, dataset: str, metric: str) -> tuple[float, int]:
    sel = rows[(rows["eval_role"] == role) & (rows["eval_dataset"] == dataset) & (rows["metric"] == metric)
               & rows["selected"].astype(bool)]
    if len(sel) != 1:
        raise SearchError(f"node {rows['node_key'].iloc[0] if len(rows) else '?'}: expected one selected "
                          f"'{metric}' row on {role} split '{dataset}', found {len(sel)}")
    return float(sel["value"].iloc[0]), int(sel["step"].iloc[0])


def objective_values(rows: pd.DataFrame, task_obj, metric: str) -> dict:
    """ID dev and OOD-dev ``metric`` at the selected checkpoint. Only rows whose eval_role is "id" or
    "ood_dev" are looked at: the OOD test rows (eval_role "ood") cannot change a study."""
    rows = rows[rows["eval_role"].isin(["id", "ood_dev"])]
    id_split, ood_dev_split = task_obj.id_eval_splits[0], task_obj.ood_dev_splits[0]
    id_dev, step = _selected_value(rows, "id", id_split, metric)
    ood_dev, _ = _selected_value(rows, "ood_dev", ood_dev_split, metric)
    return {"id_dev": id_dev, "ood_dev": ood_dev, "selected_step": step, "id_split": id_split,
            "ood_dev_split": ood_dev_split}


def scalarize(search: SearchSpec, values: dict, cost: float, cost_max: float) -> float:
    w = search.weights
    return (w.get("id_dev", 0.0) * values["id_dev"] + w.get("ood_dev", 0.0) * values["ood_dev"]
            - w.get("cost", 0.0) * cost / max(1.0, cost_max))


def node_rows(store, node) -> pd.DataFrame:
    return pd.read_parquet(store.fetch(node.stage, node.key, "rows.parquet"))


def dense_id(setting, store) -> float:
    """The fine-tuned (dense) model's ID dev ``metric`` at its selected checkpoint."""
    rows = node_rows(store, setting.finetune)
    return _selected_value(rows, "id", setting.task_obj.id_eval_splits[0], setting.search.metric)[0]
