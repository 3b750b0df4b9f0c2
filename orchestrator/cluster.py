"""Running a sweep on a multi-node Ray cluster: paths, the shared-store probe, code shipping and trial sizes.

* Paths: the spec's local paths are made absolute on the driver (a Tune trial runs in its own working
  directory); ``s3://``, ``gs://`` and other pyarrow URIs pass through unchanged.
* Shared store: on a cluster of more than one node every node must reach the artifact store. The driver
  writes the store's identity file (``_store.json``, a random id, written once) through the store and a task
  pinned to every alive node (NodeAffinitySchedulingStrategy) reads it back; the same task checks that the
  spec's local paths exist there. A failure stops the launch before anything runs, with one line that names
  the fix. Nodes that join later (autoscaling) are checked by the worker itself: every node payload carries
  the store id, and a worker that reads another id (or none) there refuses the node.
* Code: the driver ships ``srnet_core``, ``workers`` and ``orchestrator`` as Ray ``py_modules`` (or every
  node runs the same pinned image); each node's payload carries the driver's stage and code versions, which
  the worker checks before running it (workers/trainable.py).
* Resources: ``auto`` GPUs mean "the cluster has, or its autoscaler can start, a GPU node"; ``auto`` CPUs
  never exceed the largest node's CPUs; the head node (``CPU: 0`` in the manifests) runs no trials.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import uuid
from typing import TYPE_CHECKING

from workers.uri import is_uri

if TYPE_CHECKING:  # the probe task imports this module on every node: keep it free of torch
    from .spec import SweepSpec

PACKAGES = ("srnet_core", "workers", "orchestrator")
IDENTITY = "_store.json"  # workers/trainable.py reads the same name
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD_RESOURCE = "node:__internal_head__"


class ClusterError(RuntimeError):
    """The cluster cannot run the sweep as configured; ``str()`` is one line with the fix."""


# -- paths --------------------------------------------------------------------------------------------------

def resolve_path(path: str | None) -> str | None:
    """Absolute local path (``~`` expanded, relative to the driver's working directory); URIs unchanged."""
    if path is None or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    if is_uri(root):
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def filesystem(root: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI. Endpoint and credentials come from the
    environment as pyarrow reads them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS...)."""
    import pyarrow.fs as pafs

    if is_uri(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def job_config(name: str):
    """The Ray job of one launch, named for the Ray dashboard: its Jobs page shows ``metadata["job_name"]`` in
    the Name column (for a driver that connects with ``ray.init``; ``ray job submit`` sets its own name unless
    given ``--metadata-json '{"job_name": ...}'``)."""
    from ray.job_config import JobConfig

    return JobConfig(metadata={"job_name": name})


def scratch_dir() -> str:
    """This machine's scratch space (URI stores stage node outputs here; Tune keeps its disposable state)."""
    return os.path.abspath(os.environ.get("SRNET_CACHE", os.path.join(tempfile.gettempdir(), "srnet-cache")))


def local_output_dir(output_dir: str, name: str) -> str:
    """Where the driver writes the figure, report and spec copy: the output directory itself, or for a URI a
    scratch directory that :func:`upload_outputs` copies to it."""
    if not is_uri(output_dir):
        return os.path.abspath(output_dir)
    return os.path.join(scratch_dir(), "outputs", name)


def tune_storage(output_dir: str, name: str) -> str:
    """Tune's experiment state (disposable: completion lives in the artifact store) for a local output
    directory goes beside the results; for a URI it stays in the driver's scratch space."""
    if not is_uri(output_dir):
        return os.path.join(os.path.abspath(output_dir), "ray")
    return os.path.join(scratch_dir(), "tune", name)


def upload_outputs(local_dir: str, output_dir: str) -> None:
    """Copy the driver's local outputs (figure, report, spec copy) to a URI output directory."""
    if not is_uri(output_dir) or not os.path.isdir(local_dir):
        return
    import pyarrow.fs as pafs

    fs, base = filesystem(output_dir)
    fs.create_dir(base, recursive=True)
    pafs.copy_files(local_dir, base, destination_filesystem=fs)


def override_output_dir(spec: "SweepSpec", output_dir: str | None) -> None:
    """``launch --output-dir``: the spec's output_dir replaced (resolved on the driver like the spec's own)."""
    if output_dir:
        spec.output_dir = resolve_path(output_dir)


def local_paths(spec: SweepSpec) -> dict[str, str]:
    """The spec's local paths every worker node must see: {field: absolute path}."""
    out = {}
    if spec.resolved_data_dir():
        out["data_dir"] = spec.resolved_data_dir()
    for i, backbone in enumerate(spec.grid.backbones):
        if os.path.isabs(backbone):
            out[f"grid.backbones[{i}]"] = backbone
    if not is_uri(spec.artifact_root()):
        out["artifact_store"] = spec.artifact_root()
    return out


# -- the cluster's shape ------------------------------------------------------------------------------------

def alive_nodes() -> list[dict]:
    """[{node_id, host, ip, CPU, GPU, head, resources}] of the alive Ray nodes."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append({"node_id": n["NodeID"], "host": n.get("NodeManagerHostname", ""),
                      "ip": n.get("NodeManagerAddress", ""), "CPU": float(res.get("CPU", 0)),
                      "GPU": float(res.get("GPU", 0)), "head": HEAD_RESOURCE in res, "resources": res})
    return nodes


def autoscaler_node_types() -> list[dict] | None:
    """The node types the autoscaler may start, [{name, CPU, GPU, max_count}] (max_count -1: unbounded), read
    from the cluster config the autoscaler reports to the GCS (``ray._private.state.state.get_cluster_config``,
    what Ray Data's autoscaling reads in Ray 2.60). None when the cluster has no autoscaler."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # no autoscaler state on this Ray, or a private API that moved: treat as no autoscaler
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{"name": g.name, "CPU": float(g.resources.get("CPU", 0)), "GPU": float(g.resources.get("GPU", 0)),
             "max_count": int(g.max_count)} for g in config.node_group_configs if g.max_count != 0]


def joined_cluster() -> bool:
    """True when this driver connected to a Ray cluster someone else started (``--address``), False for the
    Ray it started itself (its Node object then owns the GCS/raylet processes)."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return node is not None and not node.all_processes
    except Exception:  # noqa: BLE001 - a private attribute that moved: treat as local (fail fast on GPUs)
        return False


def shape() -> dict:
    """What trial sizes are computed from: alive nodes, the autoscaler's node types (None: unknown), and
    whether the driver joined an existing cluster."""
    return {"nodes": alive_nodes(), "node_types": autoscaler_node_types(), "joined": joined_cluster()}


def trial_shapes(nodes: list[dict], node_types: list[dict] | None) -> list[dict]:
    """Every machine shape a trial can land on: alive nodes with CPUs (a head with ``CPU: 0`` runs no trial)
    and the autoscaler's node types."""
    shapes = [{"CPU": n["CPU"], "GPU": n["GPU"], "count": 1} for n in nodes if n["CPU"] > 0]
    for t in node_types or []:
        if t["CPU"] > 0:
            shapes.append({"CPU": t["CPU"], "GPU": t["GPU"], "count": t["max_count"]})
    return shapes


def trial_resources(spec: SweepSpec, stage: str, n_trials: int, nodes: list[dict],
                    node_types: list[dict] | None, joined: bool = False) -> dict:
    """CPUs and GPUs of one trial: the stage's override, else the spec's per-trial values.

    GPUs: ``auto`` = 1 when an alive node or an autoscaler node type has a GPU, else 0; an explicit number is
    passed through (the autoscaler sees the demand and starts a GPU node) unless no GPU node can ever exist:
    known when the autoscaler reports its node types (autoscaler v2) or for a Ray the driver started itself.
    On a joined cluster whose autoscaler does not report them (v1) it passes with a warning.
    CPUs: ``auto`` = the cluster's CPUs (alive, or reachable by autoscaling) shared among the wave's trials,
    at least 1 and at most the CPUs of the largest node that fits the trial's GPUs; an explicit number larger
    than every node fails now instead of pending forever.
    """
    from .spec import SpecError

    cpus, cpu_field, gpus, gpu_field = spec.stage_request(stage)
    shapes = trial_shapes(nodes, node_types)
    gpu_shapes = [s for s in shapes if s["GPU"] > 0]
    hypothetical = False  # a GPU node assumed to come from an autoscaler that does not say what it can start
    if gpus == "auto":
        gpus = 1.0 if gpu_shapes else 0.0
    elif gpus > 0 and not [s for s in gpu_shapes if s["GPU"] >= min(gpus, 1.0)]:
        field = gpu_field
        if joined and node_types is None:
            _warn_once(f"warning: field '{field}': {gpus} GPUs asked and no Ray node has one now; the trials wait "
                       "for the autoscaler to start a GPU node (on a cluster that cannot, they wait forever: stop "
                       "and use 'auto')")
            hypothetical = True
        else:
            raise SpecError(f"field '{field}': {gpus} GPUs asked but no Ray node has them and the autoscaler "
                            "(if any) can start none; add a GPU node type or use 'auto' to run on CPU")
    fits = [s for s in shapes if s["GPU"] >= gpus] if gpus > 0 else shapes
    largest = max((s["CPU"] for s in fits), default=1.0)
    if hypothetical:  # its CPUs are unknown: explicit CPUs pass, "auto" takes one
        return {"cpu": 1.0 if cpus == "auto" else float(cpus), "gpu": float(gpus)}
    if cpus == "auto":  # share the CPUs among the wave's trials; never more than one node has
        alive = sum(n["CPU"] for n in nodes)
        reachable = sum(s["CPU"] * (s["count"] if s["count"] > 0 else 1) for s in shapes)
        total = max(alive, reachable)
        cpus = min(largest, max(1.0, float(int(total // max(1, n_trials)))))
    elif shapes and cpus > largest:
        raise SpecError(f"field '{cpu_field}': {cpus} CPUs asked but the largest node that can run this trial has "
                        f"{largest:g}; ask for at most {largest:g} (or 'auto')")
    return {"cpu": float(cpus), "gpu": float(gpus)}


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        import sys

        print(message, file=sys.stderr, flush=True)


# -- code shipping and versions -----------------------------------------------------------------------------

def runtime_env() -> dict:
    """Ship the project's packages to every worker (Ray uploads them to the GCS once per content hash) with
    the driver's code version as the label rows record (the shipped copy has no .git to read it from)."""
    from workers.provenance import code_version

    return {"py_modules": [os.path.join(REPO, p) for p in PACKAGES], "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {"SRNET_CODE_VERSION": code_version(),
                         **{k: os.environ[k] for k in ("SRNET_PLUGINS",) if os.environ.get(k)}}}


def driver_versions(stage: str) -> dict:
    """What the driver planned a node with: its stage version (part of the node key) and code digest."""
    from srnet_core.stages import STAGE_VERSION
    from workers.provenance import code_digest

    return {"stage_version": STAGE_VERSION[stage], "code": code_digest()}


# -- the shared-store probe ---------------------------------------------------------------------------------

def _read_identity(root: str) -> str | None:
    fs, base = filesystem(root)
    try:
        with fs.open_input_stream(base.rstrip("/") + "/" + IDENTITY) as f:
            return json.loads(f.read())["id"]
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=8)
def store_identity(root: str) -> str:
    """The store's id, from ``<root>/_store.json``; written (once, never rewritten) if the store has none.
    Two launches creating the same new store at the same instant could each write theirs; the later one wins
    and nodes planned by the other are refused (and re-run on its relaunch)."""
    found = _read_identity(root)
    if found:
        return found
    import pandas as pd

    fs, base = filesystem(root)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(base.rstrip("/") + "/" + IDENTITY) as f:
        f.write(json.dumps({"id": uuid.uuid4().hex, "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
                            "what": "SRNet Sweep artifact store; workers check they see this file"}).encode())
    return _read_identity(root)


def _read_probe(root: str, expected: str, paths: dict[str, str]) -> dict:
    """On one node: does it see the driver's store (same id), and which of the spec's local paths are missing?"""
    import socket

    try:
        seen = _read_identity(root)
        store = "ok" if seen == expected else ("no identity file" if seen is None else "another store")
    except Exception as err:  # noqa: BLE001 - any failure to read means "not shared"
        store = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    missing = [field for field, p in paths.items() if field != "artifact_store" and not os.path.exists(p)]
    return {"host": socket.gethostname(), "store": store, "missing": missing}


def check_cluster(store_root: str, paths: dict[str, str], nodes: list[dict], timeout: float = 120.0) -> None:
    """Raise ClusterError (one line) when a cluster of more than one node cannot share ``store_root`` or a
    node lacks one of the spec's local ``paths``. A single-node cluster needs no probe (a node that joins later
    is checked by the worker, see ``store_identity``)."""
    try:
        expected = store_identity(store_root)
    except Exception as err:  # noqa: BLE001
        raise ClusterError(f"artifact store '{store_root}' is not writable from the driver ({err}); fix "
                           "artifact_store/output_dir or the credentials in the environment") from None
    if len(nodes) < 2:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
    refs = {n["node_id"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["node_id"], soft=False)).remote(store_root, expected, paths) for n in nodes}
    answers = {}
    for node_id, ref in refs.items():
        try:
            answers[node_id] = ray.get(ref, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - a node that cannot even run the probe
            if node_id in {n["node_id"] for n in alive_nodes()}:  # one that left meanwhile is no concern
                answers[node_id] = {"host": node_id[:12], "store": type(err).__name__, "missing": []}
    unshared = sorted({a["host"] for a in answers.values() if a["store"] != "ok"})
    if unshared:
        raise ClusterError(
            f"artifact store '{store_root}' is not shared: node(s) {', '.join(unshared)} of this "
            f"{len(nodes)}-node cluster cannot read a file the driver wrote there; set artifact_store (or "
            "output_dir) to a shared filesystem every node mounts at the same path, or to an s3:// or gs:// URI")
    missing = sorted({(f, a["host"]) for a in answers.values() for f in a["missing"]})
    if missing:
        field, host = missing[0]
        raise ClusterError(f"field '{field}': '{paths[field]}' exists on the driver but not on node {host}"
                           f"{' (and others)' if len(missing) > 1 else ''}; put it on shared storage mounted at "
                           "the same path on every node, or bake it into the image")
