"""Multi-node Ray: trial sizes on autoscaling clusters, paths resolved on the driver, the worker's version check,
the shared-store probe, and a sweep on a 3-node cluster (CPU-only head + 2 workers) whose artifacts and results
live in an S3 server (moto) reached over HTTP through pyarrow.

The clusters run on this one machine, started by a helper process (``python tests/test_cluster.py serve``) with
``ray.cluster_utils.Cluster``, so the pytest process never connects to them (the session's embedded Ray, if
any, is left alone); sweeps run through the real CLI in a subprocess. "Not shared" is real, not mocked: the
extra worker node runs in its own mount namespace (``unshare -m``) with an empty tmpfs mounted over the store
directory, so a file the driver writes there does not exist for that node, as on a machine with its own disk.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

BASE = {"name": "c", "output_dir": "out",
        "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]}}


# -- trial sizes ------------------------------------------------------------------------------------------

def _spec(**resources):
    from orchestrator.spec import parse_spec

    return parse_spec({**copy.deepcopy(BASE), "resources": resources})


HEAD = {"CPU": 0.0, "GPU": 0.0}  # the manifests' head: CPU 0, runs no trial


def test_auto_gpus_come_from_the_autoscalers_node_types():
    from orchestrator.cluster import trial_resources
    from orchestrator.spec import SpecError

    gpu_type = {"name": "gpu", "CPU": 8.0, "GPU": 1.0, "max_count": 4}
    cpu_type = {"name": "cpu", "CPU": 16.0, "GPU": 0.0, "max_count": 2}
    # no worker is up yet: "auto" still asks for a GPU (the autoscaler starts one) and the CPUs of that type
    assert trial_resources(_spec(), "finetune", 1, [HEAD], [cpu_type, gpu_type]) == {"cpu": 8.0, "gpu": 1.0}
    assert trial_resources(_spec(), "finetune", 8, [HEAD], [cpu_type, gpu_type]) == {"cpu": 8.0, "gpu": 1.0}
    # (4 x 8 + 2 x 16) CPUs reachable / 16 trials = 4
    assert trial_resources(_spec(), "finetune", 16, [HEAD], [cpu_type, gpu_type]) == {"cpu": 4.0, "gpu": 1.0}
    assert trial_resources(_spec(), "bias_model", 1, [HEAD], [cpu_type, gpu_type]) == {"cpu": 16.0, "gpu": 0.0}
    # an explicit GPU passes through: the autoscaler sees the demand
    assert trial_resources(_spec(gpus_per_trial=1, cpus_per_trial=2), "finetune", 1, [HEAD], [gpu_type]) == \
        {"cpu": 2.0, "gpu": 1.0}
    # no GPU anywhere, now or after scaling: "auto" is CPU, an explicit GPU fails at once naming the field
    assert trial_resources(_spec(), "finetune", 1, [HEAD], [cpu_type]) == {"cpu": 16.0, "gpu": 0.0}
    with pytest.raises(SpecError, match=r"'resources.gpus_per_trial': 1.0 GPUs asked but no Ray node"):
        trial_resources(_spec(gpus_per_trial=1), "finetune", 1, [HEAD], [cpu_type])
    with pytest.raises(SpecError, match=r"'resources.gpus_per_trial'"):
        trial_resources(_spec(gpus_per_trial=1), "finetune", 1, [HEAD, {"CPU": 4.0, "GPU": 0.0}], None)


def test_explicit_gpus_wait_for_an_autoscaler_that_does_not_report_its_node_types(capsys):
    from orchestrator.cluster import trial_resources
    from orchestrator.spec import SpecError

    # autoscaler v1 reports no node types: on a cluster the driver joined, an explicit ask passes, with a warning
    spec = _spec(gpus_per_trial=1, cpus_per_trial=6)
    assert trial_resources(spec, "finetune", 1, [HEAD], None, joined=True) == {"cpu": 6.0, "gpu": 1.0}
    assert "warning: field 'resources.gpus_per_trial': 1.0 GPUs asked and no Ray node has one now" in \
        capsys.readouterr().err
    assert trial_resources(_spec(gpus_per_trial=1), "finetune", 4, [HEAD], None, joined=True) == \
        {"cpu": 1.0, "gpu": 1.0}
    assert trial_resources(_spec(), "finetune", 1, [HEAD, {"CPU": 2.0, "GPU": 0.0}], None, joined=True) == \
        {"cpu": 2.0, "gpu": 0.0}  # "auto" never assumes a GPU it cannot see
    with pytest.raises(SpecError):  # a Ray the driver started itself cannot grow
        trial_resources(_spec(gpus_per_trial=1), "finetune", 1, [{"CPU": 2.0, "GPU": 0.0}], None, joined=False)
    with pytest.raises(SpecError):  # an autoscaler that says it has no GPU type
        trial_resources(_spec(gpus_per_trial=1), "finetune", 1, [HEAD],
                        [{"name": "cpu", "CPU": 4.0, "GPU": 0.0, "max_count": 2}], joined=True)


def test_node_types_are_read_from_the_gcs_cluster_config(ray_env):
    """What the autoscaler (v2) reports, written here in its own protobuf and KV slot, is what launch reads."""
    import ray._raylet as raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from orchestrator.cluster import autoscaler_node_types, shape

    assert autoscaler_node_types() is None and shape()["joined"] is False  # the session's own Ray: no autoscaler
    config = autoscaler_pb2.ClusterConfig()
    head = config.node_group_configs.add(name="head", min_count=1, max_count=1)
    head.resources["CPU"] = 0
    gpu = config.node_group_configs.add(name="gpu", min_count=0, max_count=4)
    gpu.resources.update({"CPU": 8, "GPU": 1})
    config.node_group_configs.add(name="off", min_count=0, max_count=0).resources["CPU"] = 64
    key, namespace = raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    _internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        assert autoscaler_node_types() == [{"name": "head", "CPU": 0.0, "GPU": 0.0, "max_count": 1},
                                           {"name": "gpu", "CPU": 8.0, "GPU": 1.0, "max_count": 4}]
    finally:  # other tests share this Ray: it must not look GPU-capable to them
        _internal_kv_del(key, namespace=namespace)
    assert autoscaler_node_types() is None


def test_auto_cpus_never_exceed_the_largest_node():
    from orchestrator.cluster import trial_resources
    from orchestrator.spec import SpecError

    nodes = [HEAD, {"CPU": 4.0, "GPU": 0.0}, {"CPU": 4.0, "GPU": 0.0}]
    # 8 CPUs in all, but a lone trial can only ever get one node's 4 (asking 8 would pend forever)
    assert trial_resources(_spec(), "finetune", 1, nodes, None) == {"cpu": 4.0, "gpu": 0.0}
    assert trial_resources(_spec(), "finetune", 3, nodes, None) == {"cpu": 2.0, "gpu": 0.0}
    assert trial_resources(_spec(), "finetune", 100, nodes, None) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(SpecError, match=r"'resources.cpus_per_trial': 6.0 CPUs asked but the largest node .* 4"):
        trial_resources(_spec(cpus_per_trial=6), "finetune", 1, nodes, None)
    # a GPU trial is sized by the GPU nodes, not by a bigger CPU-only node
    mixed = [HEAD, {"CPU": 32.0, "GPU": 0.0}, {"CPU": 6.0, "GPU": 2.0}]
    assert trial_resources(_spec(), "finetune", 1, mixed, None) == {"cpu": 6.0, "gpu": 1.0}


# -- paths and versions -----------------------------------------------------------------------------------

def test_relative_data_dir_is_resolved_on_the_driver(data_dir, tmp_path, monkeypatch):
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec
    from srnet_core.tasks import get_task

    (tmp_path / "project").mkdir()
    os.symlink(data_dir, tmp_path / "data")
    spec_file = tmp_path / "project" / "s.yaml"
    spec_file.write_text(yaml.safe_dump({**BASE, "data_dir": "../data", "output_dir": "out",
                                         "grid": {**BASE["grid"], "tasks": ["mnli"]}}))
    monkeypatch.chdir(tmp_path / "project")
    spec = load_spec("s.yaml")
    assert spec.data_dir == str(tmp_path / "data") and spec.output_dir == str(tmp_path / "project" / "out")
    plan = build_plan(spec)
    monkeypatch.chdir(tmp_path)  # a trial runs elsewhere: its working directory is Tune's trial dir
    (elsewhere := tmp_path / "trial").mkdir()
    monkeypatch.chdir(elsewhere)
    dirs = {n.stage_config["data_dir"] for n in plan.nodes.values()}
    assert dirs == {str(tmp_path / "data")}
    task = get_task("mnli", data_dir=dirs.pop())
    assert len(task.load(task.id_eval_splits[0])) > 1000


def test_worker_refuses_a_node_planned_with_other_code(tmp_path):
    from orchestrator.cluster import driver_versions
    from workers.trainable import check_versions, run_node

    node = {"key": "k" * 16, "stage": "finetune", "stage_config": {}, "artifact_root": str(tmp_path / "store"),
            "versions": {**driver_versions("finetune"), "code": "0123456789ab"}}
    with pytest.raises(RuntimeError, match=r"refused on .* code [0-9a-f]{12}, the driver planned it with stage "
                                           r"version 1 and code 0123456789ab"):
        run_node(node)
    assert not (tmp_path / "store").exists()  # refused before touching the store
    node["versions"] = {**driver_versions("finetune"), "stage_version": "0"}
    with pytest.raises(RuntimeError, match="stage version 0"):
        check_versions(node)
    node["versions"] = driver_versions("finetune")
    check_versions(node)  # the same code passes


def test_worker_refuses_a_node_when_it_does_not_see_the_drivers_store(tmp_path):
    from orchestrator.cluster import store_identity
    from workers.trainable import check_store, run_node

    driver = tmp_path / "driver-store"
    sid = store_identity(str(driver))
    assert len(sid) == 32 and store_identity(str(driver)) == sid  # written once, then read back
    node = {"key": "k" * 16, "stage": "finetune", "stage_config": {}, "artifact_root": str(tmp_path / "local"),
            "store_id": sid}
    with pytest.raises(RuntimeError, match=r"refused on .*: the artifact store '.*local' is not shared with this "
                                           r"node \(no store identity file there\)"):
        run_node(node)
    assert not (tmp_path / "local").exists()
    store_identity.cache_clear()
    store_identity(str(tmp_path / "local"))  # another store with its own id
    with pytest.raises(RuntimeError, match=r"\(another store identity file there\)"):
        check_store(node)
    check_store({**node, "artifact_root": str(driver)})


# -- clusters on this machine -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process we started in its own session, and everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # children (raylet, workers) that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _env(tmp_path, **extra) -> dict:
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    home.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    # no RAY_* from this process: a Ray started here (the ray_env fixture) sets RAY_AUTH_MODE=token in it,
    # and a cluster started with that but no token never comes up
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = dict(inherited, HOME=str(home), SRNET_CACHE=str(scratch), PYTHONPATH=REPO,
               RAY_TMPDIR=tempfile.mkdtemp(prefix="rc", dir="/tmp"),  # Ray's socket paths must stay short
               RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0", **extra)
    return env


@contextlib.contextmanager
def ray_cluster(env: dict, workers: list[dict]):
    """A head with ``CPU: 0`` plus ``workers`` (Cluster.add_node kwargs, e.g. ``env_vars`` for a node's own
    scratch directory), served by a helper process. ``info["remove"](i)`` kills worker i's node at once
    (raylet and its processes, SIGKILL: a machine lost), as ``Cluster.remove_node`` does."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", json.dumps(workers)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def remove(index: int) -> None:
        proc.stdin.write(f"remove {index}\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != f"removed {index}":
            raise RuntimeError(f"the Ray cluster helper did not remove worker {index}")

    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the Ray cluster helper exited before the cluster was up")
        yield {**json.loads(line), "remove": remove}
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the helper shuts the cluster down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        _kill(proc)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def _serve(workers: list[dict]) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(**w) for w in workers]
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                          "workers": [n.node_id for n in nodes]}), flush=True)
        for line in sys.stdin:  # commands, until the test closes our stdin
            if line.startswith("remove "):
                index = int(line.split()[1])
                cluster.remove_node(nodes[index], allow_graceful=False)
                print(f"removed {index}", flush=True)
    finally:
        cluster.shutdown()


def _wait_for_nodes(env: dict, address: str, count: int, timeout: float = 120.0) -> None:
    code = ("import ray,sys,time; ray.init(address=sys.argv[1], logging_level='ERROR'); t=time.time()\n"
            "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time()-t < float(sys.argv[3]):"
            " time.sleep(0.5)\nsys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[2]) else 1)")
    subprocess.run([sys.executable, "-c", code, address, str(count), str(timeout)], env=env, check=True,
                   timeout=timeout + 60, capture_output=True)


def _launch(env: dict, cwd, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.launch", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root or user namespaces) to give one node "
                                                "its own filesystem view")
def test_non_shared_store_and_driver_only_paths_fail_at_launch(tmp_path):
    env = _env(tmp_path)
    hidden = tmp_path / "driver-only"  # the second node sees an empty disk here: its store and data are not ours
    store, data = hidden / "store", hidden / "data"
    store.mkdir(parents=True)
    data.mkdir()
    shared_store = tmp_path / "shared-store"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out"), "artifact_store": str(store),
                                    "resources": {"cpus_per_trial": 1}}))
    spec2 = tmp_path / "s2.yaml"
    spec2.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out"), "data_dir": str(data),
                                     "artifact_store": str(shared_store), "resources": {"cpus_per_trial": 1}}))
    (cwd := tmp_path / "cwd").mkdir()
    late = tmp_path / "late.yaml"  # the probe cannot see a node that joins after it: the worker itself refuses
    late.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "late"), "artifact_store": str(store),
                                    "resources": {"cpus_per_trial": 1}}))
    with ray_cluster(env, []) as info:
        # the head alone (CPU 0): the launch passes the probe and its first trial waits for a node to join
        pending = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(late), "--address",
                                    info["address"], "--no-ship-code", "--no-figure", "--no-report"], cwd=cwd,
                                   env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        head = []
        for line in pending.stdout:  # connected; then it probes the one node and submits its first trial
            head.append(line)
            if "Connected to Ray cluster" in line:
                break
        time.sleep(5)
        node = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs tmpfs "{hidden}" && exec "{RAY}" start --block --address={info["address"]} '
             '--num-cpus=1 --disable-usage-stats'],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for_nodes(env, info["address"], 2)
            late_out = "".join(head) + pending.communicate(timeout=300)[0]
            run = _launch(env, cwd, str(spec), "--address", info["address"], "--no-ship-code", timeout=300)
            run2 = _launch(env, cwd, str(spec2), "--address", info["address"], "--no-ship-code", timeout=300)
        finally:
            _kill(node, grace=5)
            _kill(pending, grace=5)
    assert pending.returncode == 1, late_out[-3000:]
    flat = " ".join(late_out.split())  # rich wraps long lines of a non-terminal at 140 columns
    assert re.search(r"failed node [0-9a-f]{16}: RuntimeError: node [0-9a-f]{16} refused on \S+: the artifact store "
                     + re.escape(f"'{store}' is not shared with this node (no store identity file there)"), flat)
    assert not os.path.exists(store / "finetune")  # on the driver's disk: nothing was written by that node
    for r in (run, run2):
        assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in run.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"error: artifact store '{store}' is not shared: node(s) " in errors[0]
    assert "of this 2-node cluster cannot read a file the driver wrote there; set artifact_store" in errors[0]
    # nothing ran: no stage directory (the late launch's failure is in the events log), the probe file is gone
    assert sorted(p.name for p in store.iterdir()) == ["_events", "_store.json"]
    assert not os.path.exists(tmp_path / "out" / "results")
    # a store every node shares, but a data_dir only the driver has
    errors = [line for line in run2.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: field 'data_dir': '{data}' exists on the driver but "
                                                     "not on node ")
    assert [p.name for p in shared_store.iterdir()] == ["_store.json"]


def _s3_files(prefix: str) -> dict[str, float]:
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(prefix)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return {i.path.removeprefix(base + "/"): i.mtime_ns for i in infos if i.type == pafs.FileType.File}


@pytest.mark.slow
def test_sweep_on_a_multi_node_cluster_with_an_s3_store(tmp_path, s3_server, monkeypatch):
    from orchestrator import results

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    env = _env(tmp_path, **s3_server)
    spec = tmp_path / "specs" / "s3.yaml"
    spec.parent.mkdir()
    out = "s3://sweeps/cluster"
    spec.write_text(yaml.safe_dump({
        **BASE, "name": "s3", "output_dir": out, "max_length": 32,
        "grid": {**BASE["grid"], "sparsities": [0.5, 0.9]},  # two mask nodes run at once: on two nodes
        "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
        # long enough (evals at steps 0 and 600 only) that the two mask nodes overlap: a sub-second node would
        # end before a second actor starts, and Tune would reuse the first node's actor for both
        "mask_train": {"lr": 1e-3, "max_steps": 600, "batch_size": 32, "eval_every": 600},
        "resources": {"cpus_per_trial": 1}}))
    (cwd := tmp_path / "cwd").mkdir()
    workers = [{"num_cpus": 1, "resources": {"w1": 1}}, {"num_cpus": 1, "resources": {"w2": 1}}]
    with ray_cluster(env, workers) as info:
        run = _launch(env, cwd, str(spec), "--address", info["address"], "--no-report")
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        files = _s3_files(out)
        frame = results.load(out)
        again = _launch(env, cwd, str(spec), "--address", info["address"], "--no-report", "--no-figure")
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    # the relaunch ran no node: every artifact, marker and results file is the one the first launch wrote
    stored = {p: t for p, t in files.items() if p.startswith(("artifacts/", "results/"))}
    assert {p: t for p, t in _s3_files(out).items() if p.startswith(("artifacts/", "results/"))} == stored
    assert len(results.load(out)) == len(frame)

    # 3 nodes (dense fine-tune + 2 sparsities) x 2 evals (steps 0 and the last) x 2 splits x 3 metrics, all on workers
    assert len(frame) == 3 * 2 * 2 * 3 and (frame["status"] == "completed").all()
    by_node = frame.groupby("node_key")["ray_node_id"].unique()
    assert all(len(ids) == 1 for ids in by_node)
    ids = {ids[0] for ids in by_node}
    assert len(ids) >= 2 and ids <= set(info["workers"]) and info["head"] not in ids
    assert frame["hostname"].eq(socket.gethostname()).all() and frame["node_ip"].str.len().gt(0).all()

    # everything landed in the bucket: artifacts with completion markers, results, spec copy and figure
    markers = [p for p in files if p.startswith("artifacts/") and p.endswith("/_COMPLETE.json")]
    assert len(markers) == 3 and {p.split("/")[1] for p in markers} == {"finetune", "mask_train"}
    assert len([p for p in files if p.startswith("results/") and p.endswith(".parquet")]) == 3
    assert {"s3.spec.yaml", "s3_sparsity.png"} <= set(files)
    assert {p for p in files if p.startswith("artifacts/") and p.count("/") < 3} == {"artifacts/_store.json"}
    # nothing written outside the store and the machine's scratch space (no local "s3:" folder either)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "home", "scratch", "specs"]
    assert [p.name for p in (tmp_path / "specs").iterdir()] == ["s3.yaml"]
    home_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "home") for f in fs]
    assert not [f for f in home_files if "artifacts" in f or f.endswith((".parquet", ".safetensors"))]


def _ray_workers_with(name: str, value: str) -> list[int]:
    """Pids of the Ray worker processes (``ray::...``) whose environment has ``name=value``: one node's."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if cmd.startswith(b"ray::") and f"{name}={value}".encode() in environ:
            out.append(int(pid))
    return out


@pytest.mark.slow
def test_a_fine_tune_killed_with_its_machine_resumes_on_the_other_with_all_its_outputs(tmp_path, s3_server,
                                                                                        monkeypatch):
    """Issue 24 item 1 on a real 2-worker cluster with the S3 store and a scratch directory per node: once the
    fine-tune has pushed weights_f0.2 or later, its machine is lost (its Ray workers SIGKILLed, then the node
    removed: raylet and all); Tune retries the trial on the other node, which resumes from the checkpoint in the
    store. The marker lists all 9 checkpoint files, which with timing.json equal an uninterrupted run's; the
    timing paradigm's mask training (from f0.2 and from the end) completes; the launch exits 0."""
    import pyarrow.fs as pafs

    from orchestrator import results
    from orchestrator.launch import node_payload
    from orchestrator.plan import build_plan
    from orchestrator.spec import parse_spec
    from workers.store import ArtifactStore
    from workers.trainable import run_node

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    env = _env(tmp_path, **s3_server)
    out = "s3://sweeps/lost"
    d = {**BASE, "name": "lost", "output_dir": out, "max_length": 32,
         "grid": {**BASE["grid"], "paradigms": ["timing"]},
         "task_options": {"synthetic": {"n_train": 256, "n_dev": 32, "n_ood": 32}},
         # 1,000 steps, checkpoints every 50: the 10%..90% files at steps 100, ..., 900
         "finetune": {"lr": 1e-3, "max_steps": 1000, "batch_size": 16, "eval_every": 50},
         "mask_train": {"lr": 1e-3, "max_steps": 10, "batch_size": 16, "eval_every": 5},
         "paradigm_options": {"timing": {"fractions": [0.2], "sparsity": 0.5, "loss": "std"}},
         "resources": {"cpus_per_trial": 1}}
    spec = tmp_path / "specs" / "lost.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump(d))
    plan = build_plan(parse_spec(d))
    (ft,) = [n for n in plan.nodes.values() if n.stage == "finetune"]
    masks = [n for n in plan.nodes.values() if n.stage == "mask_train"]
    assert len(masks) == 2 and len(plan.nodes) == 3
    scratch = [str(tmp_path / "scratch-w1"), str(tmp_path / "scratch-w2")]
    workers = [{"num_cpus": 1, "resources": {f"w{i + 1}": 1}, "env_vars": {"SRNET_CACHE": scratch[i]}}
               for i in range(2)]
    store = ArtifactStore(f"{out}/artifacts", cache_dir=str(tmp_path / "probe"))
    later = {f"weights_f0.{i}.safetensors" for i in range(2, 9)}
    (cwd := tmp_path / "cwd").mkdir()
    started = time.time()
    with ray_cluster(env, workers) as info, open(tmp_path / "launch.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(spec), "--address", info["address"],
                                 "--no-report", "--no-figure"], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        victim, killed, deadline = None, [], time.time() + 300
        try:
            while victim is None and time.time() < deadline and proc.poll() is None:
                names = {i.base_name for i in store.fs.get_file_info(pafs.FileSelector(
                    store._remote_path("finetune", ft.key), allow_not_found=True))}
                if "_COMPLETE.json" in names:
                    break
                if names & later:  # the machine running it is lost: its workers first, then the node itself
                    (victim,) = [i for i, s in enumerate(scratch) if glob.glob(f"{s}/*/nodes/finetune/{ft.key}")]
                    killed = _ray_workers_with("SRNET_CACHE", scratch[victim])
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                    info["remove"](victim)
                    break
                time.sleep(0.2)
            assert victim is not None, "the fine-tune was not caught mid-run"
            proc.wait(timeout=600)
        finally:
            _kill(proc)
        log.seek(0)
        text = log.read()
    took = time.time() - started
    assert proc.returncode == 0, text[-4000:]
    assert killed, "no Ray worker process of the lost node was found"
    lost = sorted(os.path.basename(p) for p in glob.glob(f"{scratch[victim]}/*/nodes/finetune/{ft.key}/weights_f*"))
    assert "weights_f0.1.safetensors" in lost and "weights_f0.9.safetensors" not in lost  # written on the lost node

    files = store.marker("finetune", ft.key)["files"]
    grid = [f"weights_f0.{i}.safetensors" for i in range(1, 10)]
    assert sorted(f for f in files if f.startswith("weights_f")) == grid
    assert all(store.is_complete("mask_train", n.key) for n in masks)
    frame = results.load(out)
    assert (frame["status"] == "completed").all() and frame["node_key"].nunique() == 3
    ft_rows = frame[frame["node_key"] == ft.key]
    assert set(ft_rows["ray_node_id"]) == {info["workers"][1 - victim]} and ft_rows["attempt"].min() >= 2
    assert set(frame["ray_node_id"]) == {info["workers"][1 - victim]}  # the downstream nodes ran there too

    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "reference"))  # the same node, never interrupted
    reference = ArtifactStore(str(tmp_path / "reference-store"))
    ft.stage_config["device"] = "cpu"
    run_node(node_payload(ft, reference))
    expected = reference.marker("finetune", ft.key)["files"]
    assert {n: m["sha256"] for n, m in files.items() if n.startswith("weights")} == \
        {n: m["sha256"] for n, m in expected.items() if n.startswith("weights")}
    timing = json.load(open(store.fetch("finetune", ft.key, "timing.json")))
    assert timing == json.load(open(os.path.join(reference.node_dir("finetune", ft.key), "timing.json")))
    assert all(len(e["distances"]) == 9 for e in timing["early_bird"].values())
    print(f"lost node {victim + 1} ({len(killed)} worker processes); launch and checks took {took:.0f} s")


@pytest.mark.slow
def test_a_search_killed_on_a_cluster_continues_from_the_store_on_another_machine(tmp_path, s3_server, monkeypatch):
    """Issue 21 items 1 and 2 on a 3-node cluster with the S3 store: the study's driver (ask/tell on one Tune
    run, output_dir s3://...) is killed with SIGKILL while a trial runs, after one completed; a relaunch from
    another working directory and scratch space continues it from the journal in the bucket: no trial repeated
    or lost, completed trials keep their parameters and values."""
    import optuna

    from orchestrator import results, search
    from orchestrator.search.storage import StoreJournalStorage
    from orchestrator.spec import parse_spec

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    out = "s3://sweeps/search21"
    d = {**BASE, "name": "s21", "output_dir": out, "max_length": 24,
         "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32, "n_ood_dev": 32}},
         "finetune": {"lr": 2e-3, "epochs": 2, "batch_size": 16, "eval_every": 4, "eval_batch_size": 64},
         "mask_train": {"lr": 1e-2, "epochs": 1, "batch_size": 16, "eval_every": 2, "eval_batch_size": 64},
         "mask": {"init": "magnitude_soft", "scope": "local"}, "resources": {"cpus_per_trial": 1},
         "search": {"kind": "timing", "n_trials": 4, "parallelism": 2, "sampler": "random",
                    "timing": {"sparsity": 0.5, "loss": "std"}}}
    spec_path = tmp_path / "specs" / "s21.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(d))
    name = search.build_setting(parse_spec(d)).study_name
    remote = f"{out}/search/{name}.journal"
    probes = iter(range(10**6))

    def in_store():
        local = str(tmp_path / "probe" / f"{next(probes)}.journal")
        return optuna.load_study(study_name=name, storage=StoreJournalStorage(remote, local=local)).get_trials()

    workers = [{"num_cpus": 1, "resources": {"w1": 1}}, {"num_cpus": 1, "resources": {"w2": 1}}]
    env = _env(tmp_path, **s3_server)
    machines = {}
    for tag in ("a", "b"):  # two driver machines: their own working directory, home and scratch space
        for sub in ("home", "scratch"):
            (tmp_path / tag / sub).mkdir(parents=True)
        machines[tag] = dict(env, HOME=str(tmp_path / tag / "home"), SRNET_CACHE=str(tmp_path / tag / "scratch"))
    with ray_cluster(env, workers) as info:
        cmd = [sys.executable, "-m", "orchestrator.search", str(spec_path), "--address", info["address"], "--no-report"]
        proc = subprocess.Popen(cmd, cwd=tmp_path / "a", env=machines["a"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        at_kill, deadline = None, time.time() + 600
        try:
            while time.time() < deadline and proc.poll() is None:
                try:
                    trials = in_store()
                except KeyError:  # no study yet
                    trials = []
                states = [t.state.name for t in trials]
                if "COMPLETE" in states and "RUNNING" in states:
                    os.kill(proc.pid, signal.SIGKILL)
                    at_kill = trials
                    break
                time.sleep(0.5)
        finally:
            _kill(proc)
        assert at_kill, "the driver ended before a trial was caught running: " + proc.stdout.read().decode()[-3000:]
        running = [t.number for t in at_kill if t.state.name == "RUNNING"]
        done = {t.number: (t.params, t.values) for t in at_kill if t.state.name == "COMPLETE"}
        again = subprocess.run(cmd, cwd=tmp_path / "b", env=machines["b"], text=True, capture_output=True,
                               timeout=900)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    resumed = re.search(r"resuming (\d+) unfinished trial\(s\): \[([\d, ]*)\]", again.stdout)
    assert resumed and [int(n) for n in resumed.group(2).split(",")] == running, again.stdout
    trials = in_store()
    assert [t.number for t in trials] == [0, 1, 2, 3] and [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {t.number: (t.params, t.values) for t in trials if t.number in done} == done
    rows = results.load(f"{out}/results")
    trial_rows = rows[rows["stage"] == "search_trial"]
    assert len(trial_rows) == 16 and sorted(trial_rows.groupby("trial").size().items()) == [(i, 4) for i in range(4)]
    nodes = rows[(rows["stage"] != "search_trial") & (rows["status"] == "completed")]
    assert nodes.groupby("node_key")["ray_node_id"].nunique().eq(1).all()  # each node's rows: one run's
    assert set(nodes["ray_node_id"]) <= set(info["workers"])
    assert not os.path.exists(tmp_path / "a" / "s3:") and not os.path.exists(tmp_path / "b" / "s3:")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "serve":
    _serve(json.loads(sys.argv[2]))
