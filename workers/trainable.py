"""The Ray Tune function trainable that runs one srnet_core stage node.

config = {"node": {"key", "stage", "stage_config", "inputs": {name: path}, "artifact_root", "columns"}}
At every evaluation it reports metrics to Tune and checkpoints the full training state (weights or scores,
optimizer, RNG, best snapshot, eval history) into the node's own directory in the artifact store, so a
retried trial, a relaunched sweep or a different Tune experiment resumes the node exactly where it stopped.
Tune's own experiment state is disposable. On success it writes ``rows.parquet`` and marks the node complete.
"""
from __future__ import annotations

import os
import shutil
import time

from ray import tune

from srnet_core.checkpoint import AsyncCheckpointWriter, load_checkpoint
from srnet_core.io import atomic_path
from srnet_core.stages import run_stage
from srnet_core.train import EvalRecord, Preempted, stop_requested

from . import preempt
from .leases import HELD_KEY, RETRY_KEY, held_result  # noqa: F401 - re-exported (scheduler, tests)
from .provenance import provenance
from .rows import config_columns, result_frame  # noqa: F401 - config_columns: re-exported
from .store import ArtifactStore, CorruptArtifactError, HeldElsewhere, LeaseKeeper, LeaseLost, check_store

STATE_FILE = "train_state.safetensors"


def flat_metrics(record: EvalRecord) -> dict:
    out = {"step": record.step, "epoch": record.epoch}
    if record.sparsity is not None:
        out["measured_sparsity"] = record.sparsity
    for split, metrics in record.metrics.items():
        for name, value in metrics.items():
            out[f"{split}/{name}"] = value
    return out


def run_node(node: dict, report=None, owner: str | None = None) -> str:
    """Run a node (inside Tune or not), resuming from its checkpoint; returns its local artifact directory (on a
    URI store a scratch directory, removed once the node is committed: its files are in the store).
    Idempotent once complete. ``report(record)`` sees every evaluation. The node's lease in the store makes
    a second driver wait for it (and skip it once complete) instead of running it again; ``owner`` names
    the holder (a retried trial of the same driver reuses its lease at once). Raises ``HeldElsewhere`` when
    another live holder kept the lease for a whole ttl (the trial ends; the driver hands the node out later),
    and ``LeaseLost`` (a ``HeldElsewhere``) when this run's lease was taken over: the run stops at its next
    evaluation or checkpoint upload and commits nothing (workers/leases.py)."""
    from srnet_core.stages.registry import load_plugins

    load_plugins(node.get("plugins", []))  # the spec's plugins: their stage kinds
    check_versions(node)
    check_store(node)
    store = ArtifactStore(node["artifact_root"])
    stage, key = node["stage"], node["key"]
    out_dir = store.node_dir(stage, key)
    if store.is_complete(stage, key):
        return out_dir
    with preempt.notice():  # SIGTERM (a spot notice) from here on: checkpoint at the next step, then Preempted
        if stop_requested():  # this process was told to stop before the node began: it is not the place to run
            raise Preempted(f"{stop_requested()}: node {key} not started")
        try:
            with LeaseKeeper(store, stage, key, owner) as lease:
                if lease.acquired:
                    _run_node(node, report, store, lease)
        except LeaseLost:
            if not store.is_complete(stage, key):
                raise
    return out_dir


def _run_node(node: dict, report, store: ArtifactStore, lease: LeaseKeeper) -> None:
    stage, key, owner = node["stage"], node["key"], lease.owner
    out_dir = store.node_dir(stage, key)
    state_path = store.checkpoint_path(stage, key, STATE_FILE)
    resume_from = store.pull_checkpoint(stage, key, STATE_FILE)
    resume_state = load_checkpoint(resume_from) if resume_from else None
    if resume_state is not None:  # outputs written before the checkpoint, maybe on another machine's scratch
        store.pull_outputs(stage, key)

    def upload() -> None:  # outputs first: a pushed state never refers to a file the store lacks
        lease.check()  # fenced: a run whose lease was taken over never overwrites its successor's state
        store.push_outputs(stage, key)
        store.push_checkpoint(stage, key, STATE_FILE)

    attempt = store.count_attempt(stage, key)  # rows record it: retries of a node, wherever they ran
    # queued_at: when the driver handed the node to Tune; this event's time is when it started running here
    store.log_event("run", stage, key, owner=owner, resumed_from=_step_of(resume_state), attempt=attempt,
                    queued_at=node.get("queued_at"))

    def on_eval(record: EvalRecord | None, state_fn) -> None:
        lease.check()  # a lost lease ends the run here (LeaseLost), before another checkpoint or report
        writer.submit(state_fn)
        if report and record is not None:  # None: a checkpoint before stopping (preemption), no evaluation
            report(record)

    started = time.time()
    os.environ.setdefault("SRNET_CODE_VERSION", provenance()["code_version"])  # recorded in mask artifacts
    stage_config = dict(node["stage_config"])
    store.trim_cache()  # downloaded inputs of earlier nodes, least recently used first, before this node's
    for name, (up_stage, up_key, filename) in node.get("inputs", {}).items():
        try:
            stage_config[name] = store.fetch_verified(up_stage, up_key, filename)  # never a corrupt input
        except CorruptArtifactError as err:
            err.upstream = up_key  # invalidated: the running launch re-runs it (orchestrator.scheduler.reopen)
            raise
    # Written and uploaded off the training thread, only the latest kept; atomic: a kill mid-write leaves the
    # previous checkpoint. Training waits only for the snapshot to host memory.
    writer = AsyncCheckpointWriter(state_path, upload=upload)
    try:
        rows = run_stage(stage_config, out_dir, report=on_eval, resume_state=resume_state)
    except BaseException as err:
        try:  # the stage's own error is the one to report: an upload error must not replace it
            writer.close()  # a preempted run's last checkpoint (its stop step) is written and pushed here
        except LeaseLost:
            pass  # the upload was fenced: the lease is another holder's now
        except Exception as close_err:  # noqa: BLE001
            store.log_event("checkpoint_upload_failed", stage, key, error=f"{type(close_err).__name__}: {close_err}")
        if isinstance(err, Preempted):
            store.log_event("preempted", stage, key, owner=owner, attempt=attempt, message=str(err))
        raise
    writer.close()  # the last checkpoint is on disk (and uploaded) before anything else happens
    ended = time.time()
    frame = result_frame(node, rows, started, ended)
    frame["attempt"] = attempt
    with atomic_path(os.path.join(out_dir, "rows.parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    shutil.rmtree(os.path.dirname(state_path), ignore_errors=True)  # outputs are saved; the state is not needed
    from srnet_core.stages import get_kind

    store.mark_complete(stage, key, {"node": node, "wall_seconds": ended - started, **provenance(),
                                     "checkpoint_seconds": writer.summary()},
                        required=get_kind(stage).declared_outputs(node["stage_config"]) + ["rows.parquet"],
                        lease=lease.lease)  # fenced: committed only under the lease this run still holds
    store.log_event("completed", stage, key, owner=owner)


def _step_of(state: dict | None):
    step = state.get("step") if isinstance(state, dict) else None
    return int(step) if isinstance(step, (int, float)) or hasattr(step, "item") else None


def check_versions(node: dict) -> None:
    """Refuse a node planned by a driver running other code: its key embeds the driver's STAGE_VERSION, and
    its artifacts must come from the code the driver planned with. ``node["versions"]`` is set by the driver."""
    expected = node.get("versions")
    if not expected:
        return
    from srnet_core.stages import STAGE_VERSION

    from .provenance import code_digest

    mine = {"stage_version": STAGE_VERSION.get(node["stage"]), "code": code_digest()}
    if mine != expected:
        import socket

        raise RuntimeError(
            f"node {node['key']} refused on {socket.gethostname()}: this worker runs {node['stage']} stage version "
            f"{mine['stage_version']} with code {mine['code']}, the driver planned it with stage version "
            f"{expected.get('stage_version')} and code {expected.get('code')}; launch ships its code unless "
            "--no-ship-code is given, so run every node from the same image or drop --no-ship-code")


def retryable(err: BaseException) -> bool:
    """Whether a retry can cure the failure: infrastructure (I/O and network errors, a lost object or actor,
    memory, a preemption notice) is retried from the last checkpoint; anything else is deterministic
    (divergence, bad data, a code error, a refused node) and would only fail again, so it is not."""
    import torch

    if isinstance(err, CorruptArtifactError):
        # a retry would read the same bad file: the upstream node is invalidated, and the running launch re-runs
        # it before this one (orchestrator.scheduler.DagScheduler.reopen)
        return False
    if isinstance(err, (OSError, MemoryError, torch.OutOfMemoryError, Preempted)):
        return True  # Preempted: a SIGTERM (spot notice) stopped it at a checkpoint it resumes from
    try:
        from ray.exceptions import RayError
    except ImportError:  # pragma: no cover - workers always run under Ray
        return False
    return isinstance(err, RayError)


ERROR_KEY = "srnet_error"  # a trial's last result carries it when its node failed deterministically
REOPEN_KEY = "srnet_reopen"  # ... and this, the key of an upstream node whose file it found corrupt
# ... or HELD_KEY with RETRY_KEY (workers/leases.py) when another holder has the node's lease: not run, not failed


def stage_trainable(config: dict) -> None:
    """Tune's function trainable: run one node. A deterministic failure ends the trial with ``ERROR_KEY`` in
    its last result (Tune retries only what raises, up to resources.max_retries_infra times); its traceback
    goes to the store's events log."""
    ctx = tune.get_context()  # a retry of this trial keeps its id, so it takes over its own lease at once
    owner = f"{ctx.get_experiment_name()}/{ctx.get_trial_id()}"
    node = config["node"]
    try:
        run_node(node, report=lambda record: tune.report(flat_metrics(record)), owner=owner)
    except HeldElsewhere as err:  # another driver has it: free this trial's GPU, check again later
        tune.report(held_result(err))
    except Exception as err:  # noqa: BLE001 - sorted by cause below
        if retryable(err):
            raise
        import sys
        import traceback

        text = "".join(traceback.format_exception(err))
        print(text, file=sys.stderr)  # the worker's log: on the console only with --verbose (log_to_driver)
        ArtifactStore(node["artifact_root"]).log_event("failed", node["stage"], node["key"], retried=False,
                                                       traceback=text)
        result = {ERROR_KEY: f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]}
        if getattr(err, "upstream", None):  # the scheduler re-runs that node, then this one (same launch)
            result[REOPEN_KEY] = err.upstream
        tune.report(result)
