"""The worker side of a rehearsal (``python -m orchestrator.launch SPEC --simulate``): a node's stage replaced
by a sleep of its planned duration, through the rest of the real node path.

``run_simulated(node, seconds)`` does what ``workers.trainable.run_node`` does around a stage (the version and
store checks, the node's lease, the attempt count, the ``run`` and ``completed`` events, ``rows.parquet``,
``mark_complete`` with the kind's declared outputs required) but, instead of running the stage, sleeps
``seconds`` and writes each declared output as a small placeholder file (``PLACEHOLDER``: a text saying what it
is, never loadable as weights or masks). Its one result row is ``metric = "simulated_seconds"`` (the sleep),
with ``simulated = True`` and ``gpu_type = "simulated"``: no accuracy, loss or sparsity is invented.

A rehearsal's store and results are marked (``SIMULATED_MARKER`` at the artifact root and the results root)
and go to their own output directory; a real launch refuses a marked store (``is_simulated``), so placeholder
files can never be taken for trained artifacts.
"""
from __future__ import annotations

import json
import os
import time

PLACEHOLDER = (b"SRNet Sweep rehearsal placeholder (launch --simulate): not a trained artifact. "
               b"A simulated node slept its planned duration instead of running its stage.\n")
SIMULATED_MARKER = "_simulated.json"
SIMULATED_METRIC = "simulated_seconds"


def _fs(root: str):
    import pyarrow.fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def is_simulated(root: str) -> bool:
    """Whether ``root`` (an artifact store or results root, local or URI) belongs to a rehearsal."""
    import pyarrow.fs as pafs

    fs, base = _fs(root)
    return fs.get_file_info(base.rstrip("/") + "/" + SIMULATED_MARKER).type != pafs.FileType.NotFound


def mark_simulated(root: str, info: dict) -> None:
    """Write ``SIMULATED_MARKER`` at ``root`` (what the rehearsal was: spec, GPUs, time scale, ...)."""
    fs, base = _fs(root)
    fs.create_dir(base, recursive=True)
    text = json.dumps({"simulated": True, "note": "launch --simulate: rows are rehearsal timings, not results",
                       **info}, indent=1, sort_keys=True, default=str).encode()
    if "://" in root:  # an object store's PUT is atomic
        with fs.open_output_stream(base.rstrip("/") + "/" + SIMULATED_MARKER) as f:
            f.write(text)
        return
    from srnet_core.io import atomic_path

    with atomic_path(os.path.join(base, SIMULATED_MARKER)) as tmp:
        with open(tmp, "wb") as f:
            f.write(text)


def simulated_trainable(nodes: dict[str, tuple[float, list[str]]]):
    """Tune's function trainable for a rehearsal: ``nodes[key] = (seconds, declared outputs)`` (computed by the
    driver, which knows every stage kind; the closure travels with the trainable once, not with every trial's
    config). Its workers import neither torch nor a stage: a rehearsal's 64 trial processes stay small."""

    def trainable(config: dict) -> None:
        from ray import tune

        from .leases import HeldElsewhere, held_result

        ctx = tune.get_context()
        node = config["node"]
        seconds, outputs = nodes[node["key"]]
        try:
            run_simulated(node, seconds, outputs, owner=f"{ctx.get_experiment_name()}/{ctx.get_trial_id()}")
        except HeldElsewhere as err:  # another driver has the node: not run here, handed out again later
            tune.report(held_result(err))
            return
        tune.report({SIMULATED_METRIC: seconds})

    return trainable


def run_simulated(node: dict, seconds: float, outputs: list[str], owner: str | None = None) -> str:
    """One node of a rehearsal; returns its local artifact directory. Idempotent once complete. The store check
    is the real node's (``check_store``); the code-version check is not made (it needs the stage registry, and
    a rehearsal's workers run this very checkout on this machine)."""
    from .store import ArtifactStore, LeaseKeeper, LeaseLost, check_store

    check_store(node)
    store = ArtifactStore(node["artifact_root"])
    stage, key = node["stage"], node["key"]
    if not store.is_complete(stage, key):
        try:
            with LeaseKeeper(store, stage, key, owner) as lease:
                if lease.acquired:
                    _simulate(node, seconds, outputs, store, lease)
        except LeaseLost:
            if not store.is_complete(stage, key):
                raise
    return store.node_dir(stage, key)


def _simulate(node: dict, seconds: float, outputs: list[str], store, lease) -> None:
    from srnet_core.io import atomic_path

    from .provenance import host_provenance
    from .rows import result_frame

    stage, key, owner = node["stage"], node["key"], lease.owner
    out_dir = store.node_dir(stage, key)
    attempt = store.count_attempt(stage, key)
    store.log_event("run", stage, key, owner=owner, resumed_from=None, attempt=attempt,
                    queued_at=node.get("queued_at"), simulated=True)
    started = time.time()
    if lease.lost.wait(max(0.0, seconds)):  # the sleep is the training: a lost lease ends it (fencing)
        lease.check()
    for name in outputs:
        with atomic_path(os.path.join(out_dir, name)) as tmp:
            with open(tmp, "wb") as f:
                f.write(PLACEHOLDER)
    ended = time.time()
    row = {"metric": SIMULATED_METRIC, "value": float(seconds), "step": 0, "eval_dataset": "", "eval_role": "",
           "selected": True}
    # gpu_type "simulated": the trial's (fake) GPUs count in gpus_used and gpu_hours like a real run's
    prov = {**host_provenance(), "gpu_type": "simulated", "torch_version": ""}
    frame = result_frame(node, [row], started, ended, data={}, prov=prov)  # a rehearsal reads no data files
    frame["attempt"] = attempt
    frame["simulated"] = True
    with atomic_path(os.path.join(out_dir, "rows.parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    store.mark_complete(stage, key, {"node": node, "wall_seconds": ended - started, **prov, "simulated": True,
                                     "simulated_seconds": seconds},
                        required=list(outputs) + ["rows.parquet"], lease=lease.lease)
    store.log_event("completed", stage, key, owner=owner, simulated=True)
