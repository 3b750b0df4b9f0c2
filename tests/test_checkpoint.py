"""Lean checkpoints written off the training thread: only the latest kept, masks bit-packed, mask-training
states hold scores, optimizer state and masks, never the frozen weights."""
from __future__ import annotations

import threading

import pytest
import torch
from safetensors import safe_open

from srnet_core.checkpoint import AsyncCheckpointWriter, load_checkpoint, save_checkpoint
from srnet_core.masks import prune_count
from srnet_core.models import load_model, prunable_linear_names
from srnet_core.stages import run_stage

BASE = {"task": "synthetic", "task_options": {"n_train": 64, "n_dev": 32, "n_ood": 32}, "backbone": "tiny-bert",
        "seed": 1, "max_length": 32, "device": "cpu",
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 2}}


def test_round_trip_packs_bool_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(37, 11, generator=g) > 0.4
    state = {"step": 3, "m": {"a": mask, "b": [mask[:0], torch.tensor(True)]}, "x": torch.randn(5, generator=g)}
    path = str(tmp_path / "s.safetensors")
    save_checkpoint(path, state)
    with safe_open(path, framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert all(t.dtype != torch.bool for t in stored.values())
    assert stored["m.a.__packed_bool__"].numel() == -(-37 * 11 // 8)  # 8 masks per byte
    back = load_checkpoint(path)
    assert back["step"] == 3 and torch.equal(back["x"], state["x"])
    assert torch.equal(back["m"]["a"], mask) and back["m"]["a"].dtype == torch.bool
    assert back["m"]["b"][0].shape == (0, 11) and bool(back["m"]["b"][1]) is True


def test_writer_keeps_only_the_latest_and_snapshots_before_returning(tmp_path):
    path = str(tmp_path / "c.safetensors")
    gate, started = threading.Event(), threading.Event()
    uploads = []

    def upload():
        started.set()
        gate.wait(5)  # a slow store: snapshots pile up behind the first write
        uploads.append(load_checkpoint(path)["v"].clone())

    writer = AsyncCheckpointWriter(path, upload=upload)
    live = torch.zeros(4)
    for i in range(1, 5):
        live.fill_(i)
        writer.submit(lambda: {"v": live})
        if i == 1:
            assert started.wait(5)
    live.fill_(99)  # the writer must not see changes made after submit returned
    gate.set()
    writer.close()
    assert [int(u[0]) for u in uploads] == [1, 4]  # 2 and 3 were superseded while 1 was uploading
    assert int(load_checkpoint(path)["v"][0]) == 4
    summary = writer.summary()
    assert summary["checkpoints"] == 2 and summary["replaced"] == 2 and summary["write_s_mean"] > 0


def test_writer_errors_surface_on_the_training_thread(tmp_path):
    def fail():
        raise OSError("store unreachable")

    writer = AsyncCheckpointWriter(str(tmp_path / "c.safetensors"), upload=fail)
    writer.submit(lambda: {"v": torch.ones(2)})
    with pytest.raises(RuntimeError, match="store unreachable"):
        writer.close()


def test_mask_training_checkpoint_holds_no_frozen_weights(tmp_path):
    states = []
    run_stage({**BASE, "stage": "mask_train", "sparsity": 0.6}, str(tmp_path / "out"),
              report=lambda record, state_fn: states.append(state_fn()))
    path = str(tmp_path / "state.safetensors")
    save_checkpoint(path, states[-1])
    model = load_model("tiny-bert", 2, seed=0)
    names = prunable_linear_names(model, include_classifier=True)
    shapes = {n: dict(model.named_modules())[n].weight.shape for n in names}
    masked = sum(s.numel() for s in shapes.values())
    with safe_open(path, framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    float_bytes = sum(t.numel() * t.element_size() for t in stored.values() if t.is_floating_point())
    # scores + AdamW's two moments (fp32) + its step counters; the model's weights are not there
    assert float_bytes == 3 * 4 * masked + 4 * len(names)
    packed = sum(t.numel() for k, t in stored.items() if k.endswith("__packed_bool__"))
    assert packed == 2 * sum(-(-s.numel() // 8) for s in shapes.values())  # best + live masks, 1 bit each
    back = load_checkpoint(path)
    for n in names:
        assert int((~back["extra"]["masks"][n]).sum()) == prune_count(shapes[n].numel(), 0.6)
