"""A node's completion marker is written after its rows: the marker covers rows.parquet, and a node whose rows
write fails is not complete and re-runs to completion (a tiny tiny-bert fine-tune on the synthetic task).

On a local store the marker lists the files present when it is written: were it written before
rows.parquet, a crash between the two would leave a node that counts as complete, has no rows, and is never
re-run."""
from __future__ import annotations

import hashlib
import os

import pandas as pd
import pytest

from workers.store import ArtifactStore
from workers.trainable import run_node

STAGE = "finetune"
STAGE_CONFIG = {
    "stage": STAGE, "task": "synthetic", "task_options": {"n_train": 32, "n_dev": 16, "n_ood": 16},
    "backbone": "tiny-bert", "seed": 0, "loss": "std", "max_length": 24, "device": "cpu",
    "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 1, "eval_batch_size": 32},
}


def _node(root) -> dict:
    return {"key": "commit-order", "stage": STAGE, "stage_config": dict(STAGE_CONFIG), "inputs": {},
            "artifact_root": str(root), "columns": {"sweep": "t", "task": "synthetic", "paradigm": "full"}}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _assert_rows_committed(store: ArtifactStore, key: str) -> None:
    files = store.marker(STAGE, key)["files"]
    assert "rows.parquet" in files, f"the completion marker does not cover rows.parquet: {sorted(files)}"
    path = os.path.join(store.node_dir(STAGE, key), "rows.parquet")
    assert files["rows.parquet"]["sha256"] == _sha256(path)
    assert files["rows.parquet"]["bytes"] == os.path.getsize(path)
    assert store.check(STAGE, key) is None and store.is_complete(STAGE, key, verify=True)
    rows = pd.read_parquet(store.fetch_verified(STAGE, key, "rows.parquet"))
    assert len(rows) and set(rows["node_key"]) == {key}


def test_marker_covers_the_rows(tmp_path):
    node = _node(tmp_path)
    run_node(node)
    _assert_rows_committed(ArtifactStore(str(tmp_path)), node["key"])


class InjectedWriteError(OSError):
    pass


def test_failed_rows_write_leaves_the_node_incomplete(tmp_path, monkeypatch):
    """The rows write fails inside the node (a full disk, a kill): no marker, and a re-run completes it."""
    real = pd.DataFrame.to_parquet
    failed = []

    def failing(self, path, *args, **kwargs):
        if "rows.parquet" in os.path.basename(str(path)):  # atomic_path's temp file: .rows.parquet.<x>.partial
            failed.append(path)
            raise InjectedWriteError("injected: no space left writing rows.parquet")
        return real(self, path, *args, **kwargs)

    node = _node(tmp_path)
    store = ArtifactStore(str(tmp_path))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    with pytest.raises(InjectedWriteError):  # the node's run fails with its write (Tune retries it)
        run_node(node)
    assert failed, "the rows write was never attempted: the injection no longer reaches it"
    assert not store.is_complete(STAGE, node["key"]), (
        "the node counts as complete although its rows.parquet write failed: the marker was written first")
    assert not os.path.exists(os.path.join(store.node_dir(STAGE, node["key"]), "rows.parquet"))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)

    run_node(node)
    _assert_rows_committed(store, node["key"])

