"""Issue 24 item 7: two drivers, one store, no double work (workers/leases.py).

Leases are compare-and-swap on the store (a directory: exclusive link of generation files; S3: If-None-Match /
If-Match through boto3, on the local S3 server), expire on the store's clock, fence a holder that lost its
lease (it stops at its next report and never commits), keep the dead-holder shortcut to the holder's own
kernel and pid namespace, bound a waiter's wait, and a store without conditional writes takes one driver.

The two-driver tests run two driver processes over the same nodes through the real node path with the stage
replaced by a sleep (``workers.simulate.run_simulated``: lease, attempt count, events, rows, fenced
``mark_complete``), one of them with its clock 5 minutes ahead, and count runs and commits per node. New
names are looked up lazily (``getattr``) so the file also runs against the code before this change, where
each test fails on the behaviour it checks rather than on an import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple

import pytest

from workers import store as store_mod
from workers.store import ArtifactStore

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SKEW = 300.0  # seconds: one driver's clock is 5 minutes ahead


class _Never(Exception):
    """Stands in for an exception class the code under test does not have."""


def _new(name):
    return getattr(store_mod, name, _Never)


@pytest.fixture(params=["dir", "s3"])
def root(request, tmp_path, monkeypatch):
    """The store under test: a local directory, or a prefix on the local S3 server (env set for this process
    and the drivers it starts)."""
    if request.param == "dir":
        return str(tmp_path / "store")
    env = request.getfixturevalue("s3_server")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "cache"))
    return f"s3://sweeps/{tmp_path.name}"


def _skewed(monkeypatch, seconds):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)
    return real


def _remove_lease(store: ArtifactStore, stage: str, key: str) -> None:
    """The lease vanishes under its holder (an operator, a lifecycle rule; what a takeover looks like to it)."""
    if hasattr(store, "leases"):
        store.leases.remove(stage, key)
    elif store.remote:  # the code before this change: one _LEASE.json
        store.fs.delete_file(store._remote_path(stage, key, "_LEASE.json"))
    else:
        os.unlink(os.path.join(store.root, stage, key, "_LEASE.json"))


# -- the store's clock ----------------------------------------------------------------------------------------
def test_expiry_is_judged_on_the_stores_clock_not_the_drivers(root, monkeypatch):
    """A driver whose clock runs 5 minutes fast does not take a live lease; one 5 minutes slow still takes an
    expired one."""
    store = ArtifactStore(root)
    if root.startswith("s3://") and hasattr(store, "conditional_writes"):
        assert store.conditional_writes() is None  # the local S3 server honours If-None-Match (probed)
    assert store.try_lease("finetune", "k", "driver-a", ttl=30) is not None
    real = _skewed(monkeypatch, SKEW)
    assert store.try_lease("finetune", "k", "driver-b", ttl=30) is None, "a fast clock took a live lease"
    monkeypatch.setattr(time, "time", real)

    assert store.try_lease("finetune", "k2", "driver-a", ttl=1) is not None  # not renewed: expires after 1 s
    time.sleep(2.6)  # S3 LastModified / Date have 1 s resolution
    _skewed(monkeypatch, -SKEW)
    assert store.try_lease("finetune", "k2", "driver-c", ttl=30) is not None, "a slow clock kept an expired lease"


# -- the dead-holder shortcut -------------------------------------------------------------------------------------
def _free_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _forge(store: ArtifactStore, stage: str, key: str, lease: dict, **fields) -> None:
    """Rewrite our own lease as if another process had written it."""
    if hasattr(store, "leases"):
        assert store.leases.replace(stage, key, {**lease, **fields}, lease["_version"]) is not None
    else:  # the code before this change
        lease.update(fields)
        store._write_lease(stage, key, lease, exclusive=False)


def test_dead_holder_shortcut_does_not_misfire_across_containers_sharing_a_hostname(tmp_path):
    """A holder with this hostname and a pid that does not exist here, but in another pid namespace (another
    container on this kernel) or on another kernel: alive as far as we can know, so its lease waits for its
    expiry. The same holder in this namespace, with that pid gone: taken at once (the shortcut still works)."""
    store = ArtifactStore(str(tmp_path))
    pid = _free_pid()
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    here = os.readlink("/proc/self/ns/pid")
    for n, process in enumerate([{"boot_id": boot, "pid_ns": "pid:[1]", "pid": pid, "start": 1},
                                 {"boot_id": "another-kernel", "pid_ns": here, "pid": pid, "start": 1}]):
        lease = store.try_lease("finetune", f"k{n}", "other-container", ttl=3600)
        _forge(store, "finetune", f"k{n}", lease, pid=pid, process=process)
        assert store.try_lease("finetune", f"k{n}", "relaunch", ttl=30) is None, process
    lease = store.try_lease("finetune", "k9", "killed-driver", ttl=3600)
    _forge(store, "finetune", "k9", lease, pid=pid, process={"boot_id": boot, "pid_ns": here, "pid": pid, "start": 1})
    assert store.try_lease("finetune", "k9", "relaunch", ttl=30) is not None


# -- a waiter does not hold its GPU forever ----------------------------------------------------------------------
def test_a_waiter_gives_up_after_the_holders_ttl(tmp_path):
    store = ArtifactStore(str(tmp_path))
    holder = store_mod.LeaseKeeper(store, "finetune", "k", owner="one", ttl=2, poll=0.1).__enter__()
    outcome = {}

    def wait():
        start = time.monotonic()
        try:
            with store_mod.LeaseKeeper(store, "finetune", "k", owner="two", ttl=2, poll=0.1) as second:
                outcome["acquired"] = second.acquired
        except Exception as err:  # noqa: BLE001
            outcome["error"] = err
        outcome["waited"] = time.monotonic() - start

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=8)
    gave_up = not waiter.is_alive()
    holder.__exit__(None, None, None)
    waiter.join(timeout=10)
    assert gave_up, "the waiter was still polling 8 s into a 2 s ttl"
    assert isinstance(outcome.get("error"), _new("HeldElsewhere")), outcome
    assert 1.5 <= outcome["waited"] <= 5, outcome
    assert outcome["error"].holder == "one" and outcome["error"].retry_after == 2
    assert [e["event"] for e in store.events()] == ["lease_wait", "lease_held"]


def test_a_trial_that_met_a_held_node_is_deferred_not_done():
    """The trial's last result says "held elsewhere": the scheduler puts the node back, due after the given
    seconds, instead of taking it as done (its rows would never exist) or failed."""
    from orchestrator.scheduler import DagScheduler, make_searcher

    N = namedtuple("N", "key stage upstream")
    scheduler = DagScheduler()
    scheduler.add_nodes([N("a", "finetune", []), N("b", "mask_train", [N("a", "finetune", [])])])
    searcher = make_searcher(scheduler, lambda node: {"key": node.key})
    assert searcher.suggest("t1")["node"]["key"] == "a"
    searcher.on_trial_complete("t1", result={"srnet_held": "node finetune/a is held by x", "srnet_retry_after": 0.5})
    assert scheduler.status["a"] == "waiting" and scheduler.status["b"] == "waiting"
    assert searcher.suggest("t2") is None and not scheduler.finished
    time.sleep(0.6)
    assert searcher.suggest("t3")["node"]["key"] == "a"
    searcher.on_trial_complete("t3", result={})
    assert scheduler.status["a"] == "done" and searcher.suggest("t4")["node"]["key"] == "b"


@pytest.mark.parametrize("kind", ["stage", "simulated"])
def test_a_trial_whose_node_is_held_elsewhere_frees_its_slot_with_a_held_result(tmp_path, monkeypatch, kind):
    """Tune's trainables (the real one and the rehearsal's): a node held by another live driver ends the trial
    after the holder's ttl with ``srnet_held`` / ``srnet_retry_after`` as its last result, not an error."""
    from ray import tune

    from workers import simulate, trainable

    root = str(tmp_path / "store")
    store = ArtifactStore(root)
    holder = store_mod.LeaseKeeper(store, "finetune", "held", owner="other-driver", ttl=1.5, poll=0.1).__enter__()
    reported = []
    monkeypatch.setattr(tune, "report", lambda result: reported.append(result))
    monkeypatch.setattr(tune, "get_context", lambda: namedtuple("Ctx", "get_experiment_name get_trial_id")(
        lambda: "exp", lambda: "trial1"))
    node = {"key": "held", "stage": "finetune", "inputs": {}, "artifact_root": root, "columns": {},
            "stage_config": {"stage": "finetune", "task": "synthetic", "seed": 0}}
    run = (lambda: trainable.stage_trainable({"node": node})) if kind == "stage" else (
        lambda: simulate.simulated_trainable({"held": (0.1, ["weights.safetensors"])})({"node": node}))
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    still_waiting = worker.is_alive()
    holder.__exit__(None, None, None)
    worker.join(timeout=10)
    assert not still_waiting, "the trial still held its slot 10 s into a 1.5 s ttl"
    assert len(reported) == 1 and reported[0]["srnet_retry_after"] == 1.5, reported
    assert "held by other-driver" in reported[0]["srnet_held"], reported
    assert not store.is_complete("finetune", "held")


# -- fencing in the real node runner -----------------------------------------------------------------------------
def test_run_node_stops_at_its_next_report_when_its_lease_is_taken(tmp_path, monkeypatch):
    """The stage reports every 0.1 s; its lease is taken over at step 5. The renewal thread notices (ttl 1.5 s:
    every 0.5 s), the next report ends the run with LeaseLost, nothing is committed, and the successor's lease
    is untouched."""
    import torch

    from srnet_core.train import EvalRecord
    from workers import trainable

    leases = sys.modules.get("workers.leases")
    if leases is not None:
        monkeypatch.setattr(leases, "LEASE_TTL", 1.5)
    root = str(tmp_path / "store")
    store = ArtifactStore(root)
    node = {"key": "fence", "stage": "finetune", "inputs": {}, "artifact_root": root, "columns": {},
            "stage_config": {"stage": "finetune", "task": "synthetic", "seed": 0}}
    steps, taken = [], {}

    def stage(cfg, out_dir, report=None, resume_state=None):
        for step in range(40):
            time.sleep(0.1)
            if step == 5:
                _remove_lease(store, "finetune", "fence")
                taken["lease"] = store.try_lease("finetune", "fence", "successor", ttl=60)
            report(EvalRecord(step=step, epoch=0.0, metrics={}), lambda: {"w": torch.zeros(2)})
            steps.append(step)
        raise AssertionError("the stage ran to its end after its lease was taken")

    monkeypatch.setattr(trainable, "run_stage", stage)
    with pytest.raises(_new("LeaseLost")):
        trainable.run_node(node, owner="driver-a")
    assert taken["lease"] is not None
    assert max(steps) <= 5 + 8, f"{max(steps) - 5} reports after the lease was taken"
    assert not store.is_complete("finetune", "fence")
    assert store.read_lease("finetune", "fence")["owner"] == "successor"
    assert "lease_lost" in [e["event"] for e in store.events()]


# -- a store that cannot do conditional writes takes one driver --------------------------------------------------
def test_a_second_driver_is_refused_on_a_store_without_conditional_writes(tmp_path, monkeypatch, capsys):
    from orchestrator import launch
    from orchestrator.spec import SpecError

    monkeypatch.setattr(ArtifactStore, "conditional_writes", lambda self: "as if gs:// (test)", raising=False)
    argv = ["sweeps/smoke.yaml", "--output-dir", f"file://{tmp_path}/out", "--skip-input-checks"]
    monkeypatch.chdir(REPO)
    store = launch.load(launch.parse_args(argv))[2]
    first = launch.guard_store(store, "sweeps/smoke.yaml")  # the first driver
    assert first is not None
    try:
        assert launch.main(argv) == 2
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert store.root in lines[0] and "conditional writes" in lines[0] and "s3://" in lines[0], lines
        with pytest.raises(SpecError):
            launch.guard_store(ArtifactStore(store.root), "sweeps/smoke.yaml")
    finally:
        first.stop()
    again = launch.guard_store(ArtifactStore(store.root), "sweeps/smoke.yaml")  # the first one ended: free
    assert again is not None
    again.stop()


def test_a_search_is_refused_beside_a_driver_on_a_store_without_conditional_writes(tmp_path, monkeypatch, capsys):
    import yaml

    from orchestrator import launch
    from orchestrator.search import cli
    from orchestrator.spec import load_spec

    monkeypatch.setattr(ArtifactStore, "conditional_writes", lambda self: "as if gs:// (test)", raising=False)
    spec = yaml.safe_load(open(os.path.join(REPO, "sweeps", "timing_search.yaml")))
    spec["output_dir"] = f"file://{tmp_path}/out"
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = launch.guard_store(ArtifactStore(load_spec(str(path)).artifact_root()), str(path))
    try:
        assert cli.main([str(path), "--runner", "local", "--no-report"]) == 2
    finally:
        first.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "conditional writes" in err[0] and "is running on it" in err[0], err


# -- two drivers ----------------------------------------------------------------------------------------------------
DRIVER = r'''
import json, os, sys, threading, time
skew = float(os.environ.get("LEASE_TEST_SKEW", "0"))
if skew:  # this driver's clock: everything it reads from time.time() is off by `skew` seconds
    _real = time.time
    time.time = lambda: _real() + skew
from workers import store as store_mod
from workers.simulate import run_simulated

Held = getattr(store_mod, "HeldElsewhere", None) or type("Never", (Exception,), {})
root, name, log_path, n_nodes, seconds, n_threads = sys.argv[1:7]
n_nodes, seconds, n_threads = int(n_nodes), float(seconds), int(n_threads)
local = threading.local()


def record(**entry):
    line = (json.dumps({"driver": name, "thread": getattr(local, "owner", None), **entry}) + "\n").encode()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


real_log, real_mark = store_mod.ArtifactStore.log_event, store_mod.ArtifactStore.mark_complete


def log_event(self, event, stage, key, **info):  # S3 stores keep no events file: every event here too
    record(event=event, key=key, owner=str(info.get("owner")))
    return real_log(self, event, stage, key, **info)


def mark_complete(self, stage, key, info, *args, **kwargs):
    real_mark(self, stage, key, info, *args, **kwargs)
    record(event="committed", key=key, owner=local.owner)


store_mod.ArtifactStore.log_event, store_mod.ArtifactStore.mark_complete = log_event, mark_complete
nodes = [{"key": f"n{i}", "stage": "finetune", "stage_config": {"seed": i}, "artifact_root": root,
          "columns": {"sweep": "leases"}} for i in range(n_nodes)]  # both drivers: same nodes, same order
store = store_mod.ArtifactStore(root)


def work(i):
    local.owner = f"{name}/t{i}"
    start = i * len(nodes) // n_threads  # thread i of each driver starts at the same place: they contend
    todo = nodes[start:] + nodes[:start]
    while todo:
        node = todo.pop(0)
        if store.is_complete("finetune", node["key"]):
            continue
        try:
            run_simulated(node, seconds, ["weights.safetensors"], owner=local.owner)
        except Held as err:  # held elsewhere, or our lease was lost: the driver hands it out again later
            record(event="held", key=node["key"], error=type(err).__name__)
            todo.append(node)
            time.sleep(0.2)


threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
record(event="driver_done", key="")
'''


def _start_drivers(tmp_path, root, n_nodes=6, seconds=2.0, threads=2, ttl=6):
    """Driver a, then (once a holds its first node) driver b, whose clock is 5 minutes ahead: b meets live
    leases of a, the case a skewed clock gets wrong."""
    log = tmp_path / "drivers.jsonl"
    env = {**os.environ, "PYTHONPATH": REPO, "SRNET_LEASE_TTL": str(ttl)}

    def start(name, skew):
        scratch = str(tmp_path / f"cache-{name}")  # each driver its own scratch: two machines
        return subprocess.Popen([sys.executable, "-c", DRIVER, root, name, str(log), str(n_nodes), str(seconds),
                                 str(threads)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**env, "LEASE_TEST_SKEW": str(skew), "SRNET_CACHE": scratch})

    procs = [start("a", 0.0)]
    _wait_for(log, lambda e: e["event"] == "run" and e["driver"] == "a", procs)
    procs.append(start("b", SKEW))
    return log, procs


def _wait_for(log, match, procs, timeout=60.0):
    deadline = time.time() + timeout
    while not any(match(e) for e in _events(log)):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            _finish(procs)
            raise AssertionError(f"timed out waiting in {log}: {_events(log)}")
        time.sleep(0.05)


def _events(log) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finish(procs, timeout=150):
    deadline = time.time() + timeout
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def _per_key(events, event):
    return Counter(e["key"] for e in events if e["event"] == event)


def test_two_drivers_one_5_minutes_fast_train_every_node_once(root, tmp_path):
    """Two driver processes, 2 threads each, over the same 6 nodes in the same order; driver b, started once a
    holds its first node, has its clock 5 minutes ahead. Every node is run once and committed once, and no
    lease is ever taken as expired."""
    # ttl 15 s (renewed every 5 s): a loaded CI machine once delayed a renewal past a 6 s ttl, and this test is
    # about the skewed clock, not about expiry
    log, procs = _start_drivers(tmp_path, root, ttl=15)
    _finish(procs)
    events = _events(log)
    keys = [f"n{i}" for i in range(6)]
    assert _per_key(events, "run") == Counter(keys), events
    assert _per_key(events, "committed") == Counter(keys), events
    assert not [e for e in events if e["event"] in ("lease_expired", "lease_lost")], events
    store = ArtifactStore(root)
    assert all(store.is_complete("finetune", k) for k in keys)
    assert any(e["event"] == "lease_wait" and e["driver"] == "b" for e in events)  # b met a's live leases
    for k in keys:  # the marker was written under the lease of the run that committed it
        committed = next(e for e in events if e["event"] == "committed" and e["key"] == k)
        assert store.marker("finetune", k)["lease"]["owner"] == committed["owner"]


def test_a_holder_whose_lease_is_lost_stops_and_never_commits(root, tmp_path):
    """As above, and while driver a runs node n0 (b waiting for it) n0's lease is deleted from the store: b takes
    it and runs n0; a is fenced (lease_lost, its run ends, no commit). Every node is committed exactly once, n0
    by the run that holds its lease."""
    log, procs = _start_drivers(tmp_path, root, seconds=4.0)
    store = ArtifactStore(root)
    try:  # a runs n0 and b waits for it (or, were b's clock trusted, has taken it): then n0's lease vanishes
        _wait_for(log, lambda e: e["event"] in ("lease_wait", "run") and e["key"] == "n0" and e["driver"] == "b",
                  procs)
        _remove_lease(store, "finetune", "n0")
    finally:
        _finish(procs)
    events = _events(log)
    keys = [f"n{i}" for i in range(6)]
    assert _per_key(events, "committed") == Counter(keys), events
    runs = [e for e in events if e["event"] == "run" and e["key"] == "n0"]
    lost = [e for e in events if e["event"] == "lease_lost" and e["key"] == "n0"]
    committed = [e for e in events if e["event"] == "committed" and e["key"] == "n0"]
    assert len(runs) == 2 and runs[0]["driver"] == "a" and [e["owner"] for e in lost] == [runs[0]["owner"]], events
    assert [e["owner"] for e in committed] == [runs[1]["owner"]], events  # the stale holder never committed
    assert store.marker("finetune", "n0")["lease"]["owner"] == runs[1]["owner"]
    others = _per_key(events, "run")
    del others["n0"]
    assert others == Counter(keys[1:]), events  # every other node ran exactly once
