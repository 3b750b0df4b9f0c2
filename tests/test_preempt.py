"""A spot-preemption notice (SIGTERM) checkpoints the training node at once and stops it, as an infrastructure
failure a retry resumes from (issue 24, item 6): in a plain process calling ``run_node`` and, through Tune, in
a trial actor, whose training function runs in a thread that cannot set a signal handler."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from srnet_core.checkpoint import load_checkpoint
from srnet_core.stages import checkpoint_files
from srnet_core.train import Preempted, clear_stop, stop_requested
from workers import preempt
from workers.store import ArtifactStore
from workers.trainable import STATE_FILE, retryable, run_node

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FRACTIONS = [round(0.1 * i, 1) for i in range(1, 10)]
TOTAL, EVERY = 300, 100  # evaluations (and periodic checkpoints) at steps 100, 200, 300 only


def _node(root: str, key: str = "k-preempt") -> dict:
    cfg = {"stage": "finetune", "task": "synthetic", "task_options": {"n_train": 256, "n_dev": 32, "n_ood": 32},
           "backbone": "tiny-bert", "seed": 5, "max_length": 32, "device": "cpu", "sparsity": 0.0,
           "save_fractions": FRACTIONS,
           "train": {"lr": 1e-3, "max_steps": TOTAL, "batch_size": 16, "eval_every": EVERY, "eval_at_start": False}}
    return {"key": key, "stage": "finetune", "stage_config": cfg, "inputs": {}, "artifact_root": root,
            "columns": {"sweep": "p", "task": "synthetic", "paradigm": "full"}}


# The worker side of a preemption: a process that runs one node from its main thread and prints each evaluation
# and each optimizer step (a global post-step hook), so the test signals at a step it has seen, not at a guess.
CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from torch.optim.optimizer import register_optimizer_step_post_hook
steps = [0]
def _count(opt, args, kwargs):
    steps[0] += 1
    print("step", steps[0], flush=True)
register_optimizer_step_post_hook(_count)
from workers.trainable import run_node
run_node(json.loads(sys.argv[1]), report=lambda r: print("eval", r.step, flush=True))
print("completed", flush=True)
"""


def test_sigterm_outside_a_node_keeps_its_old_meaning():
    """The handler only acts while a node trains; otherwise SIGTERM does what it did before (a Ray worker
    exits). Around a run in the main thread it is set and then removed, with its stop request."""
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("previous"))
    try:
        with preempt.notice():
            assert preempt.installed()
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread at the next bytecode
            time.sleep(0.01)
            assert stop_requested() == "SIGTERM (preemption notice)" and seen == []
        assert not preempt.installed() and stop_requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert seen == ["previous"]
        assert preempt.install()  # as the trial actor's main thread does: installed, but no node is training
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert seen == ["previous", "previous"] and stop_requested() is None
    finally:
        preempt.uninstall()
        signal.signal(signal.SIGTERM, before)
        clear_stop()
    assert retryable(Preempted("SIGTERM"))  # infrastructure: Tune retries it (resources.max_retries_infra)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_resume_is_exact(s3_server, monkeypatch, tmp_path):
    """A real process fine-tuning tiny-bert through ``run_node`` on the S3 store gets SIGTERM between two
    evaluations: it exits within seconds, with the state of the step it reached in the store (not the last
    evaluation's) and the checkpoint files written so far pushed; a run on another machine resumes from that
    step (attempt 2) and ends with the weights, checkpoint files and rows of an uninterrupted run."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root, straight = "s3://sweeps/preempted", "s3://sweeps/straight"
    node = _node(root)
    env = {**os.environ, "SRNET_CACHE": str(tmp_path / "node-a"), "PYTHONPATH": REPO}
    with open(tmp_path / "child.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(node)], env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)
        try:
            # Signal once the first evaluation (and its checkpoint) is behind us AND training has gone on past it:
            # on a slow machine the signal could otherwise land while step 100's checkpoint is still being pushed.
            reached, evaluated = False, False
            for line in proc.stdout:
                evaluated = evaluated or line.split() == ["eval", str(EVERY)]
                if evaluated and line.split() == ["step", str(EVERY + 10)]:
                    reached = True
                    break
            assert reached, (tmp_path / "child.err").read_text()[-3000:]
            signalled = time.time()
            os.kill(proc.pid, signal.SIGTERM)
            rc = proc.wait(timeout=120)
            took = time.time() - signalled
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out = proc.stdout.read()
    log = (tmp_path / "child.err").read_text()
    assert rc == 1 and "completed" not in out, log[-3000:]
    found = re.search(r"Preempted: SIGTERM \(preemption notice\): checkpointed at step (\d+) of 300, stopping", log)
    assert found, log[-3000:]
    step = int(found.group(1))
    assert EVERY + 10 <= step < 2 * EVERY  # stopped at the step it reached, not at an evaluation
    assert took < 20, took  # at once: one step, one checkpoint write and upload, the interpreter's exit

    store = ArtifactStore(root, cache_dir=str(tmp_path / "probe"))
    assert load_checkpoint(store.pull_checkpoint("finetune", node["key"], STATE_FILE))["step"] == step
    import pyarrow.fs as pafs

    listing = pafs.FileSelector(store._remote_path("finetune", node["key"]))
    pushed = {i.base_name for i in store.fs.get_file_info(listing)}
    written = {f for s, f in checkpoint_files(FRACTIONS, TOTAL).items() if s <= step}
    assert {f for f in pushed if f.startswith("weights_f")} == written  # pushed with the checkpoint
    assert not store.is_complete("finetune", node["key"])

    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "node-b"))  # the retry, on another machine
    steps = []
    run_node(node, report=lambda r: steps.append(r.step))
    assert steps == [2 * EVERY, TOTAL]  # continued from the stop step: no evaluation repeated
    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "node-c"))
    run_node(_node(straight))
    files = [ArtifactStore(r).marker("finetune", node["key"])["files"] for r in (root, straight)]
    weights = [{n: m["sha256"] for n, m in f.items() if n.startswith("weights")} for f in files]
    assert len(weights[0]) == 10 and weights[0] == weights[1]  # weights.safetensors and the 9 grid files
    assert files[0]["timing.json"]["sha256"] == files[1]["timing.json"]["sha256"]
    rows = [pd.read_parquet(ArtifactStore(r).fetch("finetune", node["key"], "rows.parquet")) for r in (root, straight)]
    assert set(rows[0]["attempt"]) == {2}  # the preempted run was attempt 1
    volatile = ["wall_seconds", "queued_at", "started_at", "ended_at", "gpu_hours", "attempt"]
    pd.testing.assert_frame_equal(rows[0].drop(columns=volatile, errors="ignore"),
                                  rows[1].drop(columns=volatile, errors="ignore"))


@pytest.mark.slow
def test_a_preempted_trial_is_retried_by_tune_from_its_stop_step(ray_env, tmp_path):
    """Through the launch's real Tune path: the trial actor's main thread holds the handler (the function runs
    in Tune's runner thread), so SIGTERM to the trial's process checkpoints and stops the node; Tune retries the
    trial, which resumes from the step it stopped at and completes; the launch exits 0."""
    import ray
    import yaml

    out = tmp_path / "out"
    spec = {"name": "preempt", "output_dir": str(out), "max_length": 32,
            "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
            "task_options": {"synthetic": {"n_train": 256, "n_dev": 32, "n_ood": 32}},
            "finetune": {"lr": 1e-3, "max_steps": 600, "batch_size": 16, "eval_every": 200, "eval_at_start": False},
            "mask_train": {"lr": 1e-3, "max_steps": 4, "batch_size": 16, "eval_every": 2},
            "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1}}
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = tmp_path / "launch.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(path), "--no-figure",
                                 "--no-report"], env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    store = ArtifactStore(str(out / "artifacts"))
    victim = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # the fine-tune's first periodic checkpoint
            try:
                runs = [e for e in store.events() if e["event"] == "run" and e["stage"] == "finetune"]
            except ValueError:  # a line being written
                runs = []
            if runs and list((out / "artifacts" / "finetune").glob("*/_checkpoint/" + STATE_FILE)):
                victim = runs[0]
                break
            time.sleep(0.1)
        assert victim, "the fine-tune never checkpointed: " + log.read_text()[-3000:]
        os.kill(victim["pid"], signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-4000:]
    events = [e for e in store.events() if e["key"] == victim["key"]]
    stopped = [e for e in events if e["event"] == "preempted"]
    assert len(stopped) == 1 and stopped[0]["pid"] == victim["pid"] and stopped[0]["attempt"] == 1, events
    step = int(re.search(r"checkpointed at step (\d+) of 600", stopped[0]["message"]).group(1))
    assert 200 <= step < 600
    retry = [e for e in events if e["event"] == "run"][1]
    assert retry["resumed_from"] == step and retry["attempt"] == 2 and retry["pid"] != victim["pid"]
    assert [e["event"] for e in events].count("completed") == 1
    from orchestrator import results

    frame = results.load(str(out))
    assert (frame["status"] == "completed").all() and set(frame["stage"]) == {"finetune", "mask_train"}
    assert set(frame.loc[frame["node_key"] == victim["key"], "attempt"]) == {2}
