"""The artifact store: completion markers, verification, and the same behaviour on a pyarrow URI."""
from __future__ import annotations

import os

import pytest

from workers.store import CHECKPOINT, ArtifactStore


def _write_node(store, stage="mask_train", key="abc123"):
    d = store.node_dir(stage, key)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "masks.safetensors"), "wb") as f:
        f.write(b"\x01\x02\x03" * 100)
    with open(os.path.join(d, "summary.json"), "w") as f:
        f.write("{}")
    return d


@pytest.mark.parametrize("uri", [False, True])
def test_marker_written_last_and_verified(tmp_path, uri):
    root = f"file://{tmp_path}/store" if uri else str(tmp_path / "store")
    store = ArtifactStore(root, cache_dir=str(tmp_path / "cache"))
    assert store.remote == uri
    _write_node(store)
    assert not store.is_complete("mask_train", "abc123")  # files alone are not completion
    store.mark_complete("mask_train", "abc123", {"note": "x"})
    assert store.is_complete("mask_train", "abc123", verify=True)
    marker = store.marker("mask_train", "abc123")
    assert set(marker["files"]) == {"masks.safetensors", "summary.json"} and marker["note"] == "x"
    assert marker["files"]["masks.safetensors"]["bytes"] == 300
    # a fresh store object (another machine) sees the node and fetches its files
    other = ArtifactStore(root, cache_dir=str(tmp_path / "cache2"))
    path = other.fetch("mask_train", "abc123", "masks.safetensors")
    assert open(path, "rb").read() == b"\x01\x02\x03" * 100
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        other.fetch("mask_train", "abc123", "nope.bin")


def test_uri_store_detects_tampering(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}/store", cache_dir=str(tmp_path / "cache"))
    _write_node(store)
    store.mark_complete("mask_train", "abc123", {})
    with open(tmp_path / "store" / "mask_train" / "abc123" / "masks.safetensors", "r+b") as f:
        f.write(b"\xff")
    assert store.is_complete("mask_train", "abc123")  # the marker is there...
    assert not store.is_complete("mask_train", "abc123", verify=True)  # ...but the content changed


def test_uri_checkpoints_travel_between_machines(tmp_path):
    root = f"file://{tmp_path}/store"
    a = ArtifactStore(root, cache_dir=str(tmp_path / "a"))
    path = a.checkpoint_path("finetune", "k1", "state.bin")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"state")
    a.push_checkpoint("finetune", "k1", "state.bin")
    b = ArtifactStore(root, cache_dir=str(tmp_path / "b"))
    got = b.pull_checkpoint("finetune", "k1", "state.bin")
    assert got and open(got, "rb").read() == b"state"
    assert b.pull_checkpoint("finetune", "other", "state.bin") is None
    _write_node(b, "finetune", "k1")
    b.mark_complete("finetune", "k1", {})
    assert not os.path.exists(tmp_path / "store" / "finetune" / "k1" / CHECKPOINT)  # dropped once complete
