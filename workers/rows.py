"""A node's result rows: its metric rows with the node's columns, every config field and provenance.

Imports neither torch nor a stage (a rehearsal's workers, workers/simulate.py, build their rows here too).
"""
from __future__ import annotations

import json

import pandas as pd


def config_columns(stage_config: dict, prefix: str = "cfg.") -> dict:
    """Every stage-config field as a scalar column: ``cfg.train.lr``, ``cfg.mask.init``, ... (dicts flattened,
    other non-scalars JSON-encoded) so results can be filtered by any setting."""
    out = {}
    for key, value in stage_config.items():
        if isinstance(value, dict) and value and key != "task_options":
            out.update(config_columns(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def result_frame(node: dict, rows: list[dict], started: float, ended: float, data: dict | None = None,
                 prov: dict | None = None) -> pd.DataFrame:
    """The node's metric rows with its descriptive columns, config columns and provenance. ``data``: the data
    columns (default: ``data_fingerprint``, ``data_rows`` of the files the rows come from); ``prov``: the
    provenance columns (default: ``workers.provenance.provenance()``, this process's GPU and torch)."""
    frame = pd.DataFrame(rows)
    if data is None:
        from srnet_core.tasks.fingerprints import data_columns

        data = data_columns(node["stage_config"])
    for column, value in {**node.get("columns", {}), **config_columns(node["stage_config"]), **data}.items():
        if column not in frame:  # a stage may set its own (IMP sets target_sparsity per level)
            frame[column] = value
    if prov is None:
        from .provenance import provenance

        prov = provenance()
    gpus = float(node.get("resources", {}).get("gpu", 0.0)) if prov["gpu_type"] else 0.0
    frame["node_key"] = node["key"]
    frame["stage"] = node["stage"]
    frame["status"] = "completed"
    frame["wall_seconds"] = ended - started
    # handed to Tune (the driver's clock; absent outside a launch); the time until started_at was spent pending,
    # not on the node's resources, and counts in neither wall_seconds nor gpu_hours
    queued = node.get("queued_at")
    frame["queued_at"] = pd.Timestamp(queued, unit="s") if queued is not None else pd.NaT
    frame["started_at"] = pd.Timestamp(started, unit="s")
    frame["ended_at"] = pd.Timestamp(ended, unit="s")
    for name, value in prov.items():
        frame[name] = value
    frame["gpus_used"] = gpus
    frame["gpu_hours"] = (ended - started) / 3600 * gpus
    return frame
