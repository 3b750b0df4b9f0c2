"""A node interrupted mid-training resumes from its checkpoint to exactly the uninterrupted result."""
from __future__ import annotations

import math
import os

import pandas as pd
import pytest
from safetensors.torch import load_file

from srnet_core.io import sha256_file
from srnet_core.masks import load_masks
from workers.store import ArtifactStore
from workers.store import CHECKPOINT
from workers.trainable import run_node

STAGE_CONFIG = {
    "task": "synthetic", "task_options": {"n_train": 256, "n_dev": 64, "n_ood": 64},
    "backbone": "tiny-bert", "seed": 3, "max_length": 40, "device": "cpu",
    "train": {"lr": 1e-3, "epochs": 2, "batch_size": 16, "eval_every": 8},
}


class Interrupt(RuntimeError):
    pass


def _node(root, stage, **extra):
    cfg = {**STAGE_CONFIG, "stage": stage, **extra}
    return {"key": f"k-{stage}", "stage": stage, "stage_config": cfg, "inputs": {}, "artifact_root": str(root),
            "columns": {"sweep": "t", "task": "synthetic", "paradigm": "c"}}


def _interrupt_after(n_evals):
    seen = []

    def report(record):
        seen.append(record.step)
        if len(seen) == n_evals:
            raise Interrupt(f"killed after step {record.step}")
    return report


VOLATILE = ["wall_seconds", "queued_at", "started_at", "ended_at", "gpu_hours", "attempt"]


@pytest.mark.parametrize("stage,artifact", [("mask_train", "masks.safetensors"),
                                             ("finetune", "weights.safetensors")])
def test_interrupted_equals_uninterrupted(tmp_path, stage, artifact):
    extra = {"sparsity": 0.6} if stage == "mask_train" else {"sparsity": 0.0}
    straight = tmp_path / "straight"
    run_node(_node(straight, stage, **extra))

    resumed = tmp_path / "resumed"
    node = _node(resumed, stage, **extra)
    with pytest.raises(Interrupt):
        run_node(node, report=_interrupt_after(3))  # evals at steps 0, 8, 16: dies after the step-16 checkpoint
    store = ArtifactStore(str(resumed))
    assert not store.is_complete(stage, node["key"])
    assert os.path.exists(os.path.join(store.node_dir(stage, node["key"]), CHECKPOINT))
    steps = []
    run_node(node, report=lambda r: steps.append(r.step))
    assert steps[0] == 24  # continued after the checkpoint instead of starting over
    assert store.is_complete(stage, node["key"], verify=True)

    a_dir = ArtifactStore(str(straight)).node_dir(stage, node["key"])
    b_dir = store.node_dir(stage, node["key"])
    if stage == "mask_train":
        a, _ = load_masks(os.path.join(a_dir, artifact))
        b, _ = load_masks(os.path.join(b_dir, artifact))
    else:
        a, b = load_file(os.path.join(a_dir, artifact)), load_file(os.path.join(b_dir, artifact))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert set(pd.read_parquet(os.path.join(b_dir, "rows.parquet"))["attempt"]) == {2}  # resumed: 2nd run
    rows_a = pd.read_parquet(os.path.join(a_dir, "rows.parquet")).drop(columns=VOLATILE)
    rows_b = pd.read_parquet(os.path.join(b_dir, "rows.parquet")).drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(rows_a, rows_b)
    assert not os.path.exists(os.path.join(b_dir, CHECKPOINT))  # the checkpoint is dropped once complete


def test_complete_node_is_not_rerun(tmp_path):
    node = _node(tmp_path, "mask_train", sparsity=0.5)
    run_node(node)
    calls = []
    run_node(node, report=lambda r: calls.append(r))
    assert calls == []


def test_corrupted_artifact_detected(tmp_path):
    node = _node(tmp_path, "mask_train", sparsity=0.5)
    out = run_node(node)
    store = ArtifactStore(str(tmp_path))
    assert store.is_complete("mask_train", node["key"], verify=True)
    with open(os.path.join(out, "masks.safetensors"), "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    assert not store.is_complete("mask_train", node["key"], verify=True)


@pytest.mark.slow
def test_kill9_of_the_launch_then_relaunch(ray_env, tmp_path):
    """kill -9 of a running launch (one Tune run, nodes mid-flight), then a relaunch: every node completes
    once, finished nodes are not re-run, and the results hold each row exactly once."""
    import signal
    import subprocess
    import sys
    import time

    import ray
    import yaml

    from orchestrator import launch, results

    out = tmp_path / "out"
    spec = {"name": "kill", "output_dir": str(out), "max_length": 40,
            "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.9], "seeds": [0]},
            "task_options": {"synthetic": {"n_train": 256, "n_dev": 64, "n_ood": 64}},
            "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
            "mask_train": {"lr": 1e-3, "epochs": 2, "batch_size": 32, "eval_every": 2},
            "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1}}
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(path), "--no-figure", "--no-report"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    artifacts = out / "artifacts"
    deadline = time.time() + 240
    try:
        # wait until the fine-tune is complete and a mask-training node has checkpointed mid-training
        while time.time() < deadline and proc.poll() is None:
            ft_done = list(artifacts.glob("finetune/*/_COMPLETE.json"))
            mid = list(artifacts.glob("mask_train/*/_checkpoint/*"))
            if ft_done and mid:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the launch ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(3)  # Ray reaps the dead driver's trial workers
    ft_marker = list(artifacts.glob("finetune/*/_COMPLETE.json"))[0]
    before = os.path.getmtime(ft_marker)
    assert launch.main([str(path), "--no-figure", "--no-report"]) == 0
    assert os.path.getmtime(ft_marker) == before  # the finished fine-tune was not re-run
    frame = results.load(str(out))
    assert set(frame["stage"]) == {"finetune", "mask_train"} and (frame["status"] == "completed").all()
    assert frame["node_key"].nunique() == 3
    assert not frame.duplicated(["node_key", "step", "eval_dataset", "metric"]).any()
    # every node published all its evals (8 steps of fine-tuning, 16 of mask training, every 2; plus step 0)
    evals = frame.groupby("node_key")["step"].nunique().sort_values().tolist()
    assert evals == [5, 9, 9]


def test_imp_with_rewinding_checkpoints_no_rewind_copy_and_resumes_exactly(tmp_path):
    """Issue 24 item 5: the rewind point of imp-rw is the pre-trained weights, which a resume re-reads from the
    backbone (or input file): the checkpoint holds no copy of them (an optimizer-sized saving: a BERT-large state
    is ~1.3 GB smaller), and an interrupted run still ends with the uninterrupted run's masks and rows."""
    from safetensors import safe_open

    from workers.trainable import STATE_FILE

    # 32 steps: three levels of 10 (0.3, 0.6, 0.9), evaluations at each level's steps 0, 8 and 10
    extra = {"imp": {"rate": 0.3, "final": 0.9, "intervals": 3, "rewind": "start"}}
    straight = tmp_path / "straight"
    run_node(_node(straight, "imp", **extra))

    resumed = tmp_path / "resumed"
    node = _node(resumed, "imp", **extra)
    with pytest.raises(Interrupt):
        run_node(node, report=_interrupt_after(5))  # in the second level, after one rewind
    store = ArtifactStore(str(resumed))
    state = store.checkpoint_path("imp", node["key"], STATE_FILE)
    with safe_open(state, framework="pt") as f:
        tensors = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert not [k for k in tensors if k.startswith("rewind")]  # nothing of the rewind point

    def size(prefix):
        return sum(4 * math.prod(shape) for k, shape in tensors.items() if k.startswith(prefix))

    weights = size("loop.params.")
    assert weights > 0 and os.path.getsize(state) < 3.2 * weights  # weights + 2 AdamW moments (+ small state)

    run_node(node)
    a_dir, b_dir = ArtifactStore(str(straight)).node_dir("imp", node["key"]), store.node_dir("imp", node["key"])
    masks = sorted(f for f in os.listdir(a_dir) if f.startswith("masks_s"))
    assert masks == ["masks_s0.30.safetensors", "masks_s0.60.safetensors", "masks_s0.90.safetensors"]

    for name in masks:  # the same bytes: mask files have a canonical header (srnet_core.io.save_safetensors)
        assert sha256_file(os.path.join(a_dir, name)) == sha256_file(os.path.join(b_dir, name)), name
    rows_a = pd.read_parquet(os.path.join(a_dir, "rows.parquet")).drop(columns=VOLATILE)
    rows_b = pd.read_parquet(os.path.join(b_dir, "rows.parquet")).drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(rows_a, rows_b)
