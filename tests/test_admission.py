"""Issue 24 item 3: the launch hands Tune only what can start now, so the longest-remaining-path order holds in
the real Tune run; the rest of the ready queue goes to the autoscaler; a node's GPU time counts from when its
trial starts, not from when it was handed out."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from orchestrator.admission import Admission
from orchestrator.plan import Input, Node
from orchestrator.scheduler import DagScheduler, make_searcher

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def dag():
    """P -> C (C estimated long: P carries the longest path), S1..S4 short and ready at once, B on CPU."""
    p = Node("finetune", {"stage": "finetune", "seed": 0})
    c = Node("mask_train", {"stage": "mask_train", "sparsity": 0.9}, {"init_weights": Input(p, "w")})
    shorts = [Node("finetune", {"stage": "finetune", "seed": i}) for i in range(1, 5)]
    b = Node("bias_model", {"stage": "bias_model", "task": "t", "task_options": {}, "data_dir": None})
    names = {p.key: "P", c.key: "C", b.key: "B", **{n.key: f"S{i}" for i, n in enumerate(shorts, 1)}}
    est = {"P": 1.0, "C": 20.0, "B": 0.5, "S1": 2.0, "S2": 2.0, "S3": 2.0, "S4": 2.0}
    s = DagScheduler(duration=lambda n: est[names[n.key]])
    s.add_nodes([p, *shorts, b, c])
    return s, names


def request(node) -> dict:
    return {"CPU": 1.0, "GPU": 0.0 if node.stage == "bias_model" else 1.0}


def test_searcher_hands_out_only_what_the_free_resources_can_start():
    s, names = dag()
    admission = Admission(request, totals=lambda: {"CPU": 8.0, "GPU": 2.0, "memory": 1e9})
    searcher = make_searcher(s, lambda n: {"key": n.key}, admission=admission)

    def suggest(trial_id):
        got = searcher.suggest(trial_id)
        return names[got["node"]["key"]] if got else got
    # two GPUs: the best two GPU nodes, then the CPU-only bias model beside them; S2..S4 stay ready, not claimed
    assert [suggest(f"t{i}") for i in range(4)] == ["P", "S1", "B", None]
    assert sorted(names[k] for k, st in s.snapshot().items() if st == "ready") == ["S2", "S3", "S4"]
    assert admission.free() == {"CPU": 5.0, "GPU": 0.0, "memory": 1e9}
    # P ends: its child C (longest remaining path, ready only now) is the next handed out, ahead of S2..S4
    searcher.on_trial_complete("t0")
    assert suggest("t4") == "C" and suggest("t5") is None
    searcher.on_trial_complete("t1", error=True)  # a failed trial frees its resources too
    assert suggest("t6") == "S2" and suggest("t7") is None
    assert len(admission.claimed) == 3  # C, S2 and the bias model


def test_unbounded_searcher_hands_out_every_ready_node():
    """The behaviour before: every ready node claimed at once (Tune then picks which pending trial starts)."""
    s, names = dag()
    searcher = make_searcher(s, lambda n: {"key": n.key})
    got = [searcher.suggest(f"t{i}") for i in range(7)]
    assert [names[g["node"]["key"]] for g in got[:6]] == ["P", "S1", "S2", "S3", "S4", "B"] and got[6] is None


def test_with_nothing_in_flight_the_best_node_goes_even_if_the_cluster_lacks_its_resources():
    """A cluster that must scale up first (no GPU node yet): the best node is handed out (Tune waits for its
    resources and an autoscaler sees it), one at a time."""
    s, names = dag()
    admission = Admission(request, totals=lambda: {"CPU": 2.0})
    searcher = make_searcher(s, lambda n: {"key": n.key}, admission=admission)
    assert names[searcher.suggest("t0")["node"]["key"]] == "P"
    assert names[searcher.suggest("t1")["node"]["key"]] == "B"  # the CPU node fits beside it
    assert searcher.suggest("t2") is None


def test_cluster_resources_are_re_read_so_joining_nodes_count():
    s, names = dag()
    totals = {"CPU": 8.0, "GPU": 1.0}
    now = [0.0]
    admission = Admission(request, totals=lambda: dict(totals), refresh_s=5.0, clock=lambda: now[0])
    searcher = make_searcher(s, lambda n: {"key": n.key}, admission=admission)
    assert names[searcher.suggest("t0")["node"]["key"]] == "P"
    assert names[searcher.suggest("t1")["node"]["key"]] == "B"
    assert searcher.suggest("t2") is None
    totals["GPU"] = 3.0  # two GPUs joined
    now[0] = 4.0
    assert searcher.suggest("t2") is None  # not re-read yet
    now[0] = 5.0
    assert [names[searcher.suggest(t)["node"]["key"]] for t in ("t2", "t3")] == ["S1", "S2"]


def test_ready_queue_is_signalled_to_the_autoscaler_and_withdrawn_at_the_end():
    s, names = dag()
    sent = []
    now = [0.0]
    admission = Admission(request, totals=lambda: {"CPU": 8.0, "GPU": 2.0}, autoscale=True, max_bundles=5,
                          signal_every_s=10.0, request_resources=sent.append, clock=lambda: now[0])
    searcher = make_searcher(s, lambda n: {"key": n.key}, admission=admission)
    searcher.suggest("t0")
    gpu, cpu = {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}
    # in flight (P) plus the ready queue best first (S1..S4, B), at most 5 bundles: a target for the cluster
    assert sent == [[gpu, gpu, gpu, gpu, gpu]]
    searcher.suggest("t1"); searcher.suggest("t2"); searcher.suggest("t3")
    assert len(sent) == 1  # throttled
    now[0] = 10.0
    searcher.suggest("t3")
    assert sent[-1] == [gpu, gpu, cpu, gpu, gpu] and len(sent) == 2  # P, S1, B in flight; S2, S3 ready
    now[0] = 20.0
    searcher.suggest("t3")
    assert len(sent) == 2  # unchanged: not re-sent
    admission.close()
    assert sent[-1] == []


def test_no_autoscaler_no_request():
    s, _ = dag()
    sent = []
    admission = Admission(request, totals=lambda: {"CPU": 8.0, "GPU": 2.0}, request_resources=sent.append)
    make_searcher(s, lambda n: {"key": n.key}, admission=admission).suggest("t0")
    admission.close()
    assert sent == []


def test_the_launch_signals_the_autoscaler_only_where_there_can_be_one(tmp_path):
    from types import SimpleNamespace

    from orchestrator.tune_run import TuneRun

    spec = SimpleNamespace(resources=SimpleNamespace(max_concurrent_trials=None))
    s, _ = dag()
    resources = {"finetune": {"cpu": 2.0, "gpu": 1.0}, "bias_model": {"cpu": 1.0, "gpu": 0.0}}

    def run(cluster):
        return TuneRun(spec, None, s, None, dict(resources), cluster)
    local = run({"nodes": [], "node_types": None, "joined": False})
    assert local.admission is not None and not local.admission.autoscale  # bounded, nothing to signal
    assert local.request(s.nodes[next(iter(s.nodes))]) == {"CPU": 2.0, "GPU": 1.0}  # what Tune is asked for
    assert run({"nodes": [], "node_types": [{"name": "gpu", "CPU": 8, "GPU": 1, "max_count": 4}]}).admission.autoscale
    assert run({"nodes": [], "node_types": None, "joined": True}).admission.autoscale  # v1: may have one
    assert TuneRun(spec, None, s, None, resources, {}, admission=False).admission is None  # the old hand-out


def test_request_reaches_the_gcs(ray_env):
    """Through Ray's own request_resources (v1 autoscaler channel in the GCS key-value store)."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2():
        pytest.skip("this Ray runs autoscaler v2: requests go over RPC, not the key-value store")
    s, _ = dag()
    admission = Admission(request, totals=lambda: {"CPU": 8.0, "GPU": 2.0}, autoscale=True, max_bundles=3)
    admission.signal(s)
    try:
        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == [{"CPU": 1.0, "GPU": 1.0}] * 3
        assert admission.signal_errors == []
    finally:
        admission.close()
    assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == []


def test_next_ready_skips_what_does_not_fit_and_keeps_its_place():
    s, names = dag()
    no_gpu = s.next_ready(lambda n: n.stage == "bias_model")
    assert names[no_gpu.key] == "B"
    assert s.next_ready(lambda n: False) is None
    assert [names[n.key] for n in s.ready_nodes()] == ["P", "S1", "S2", "S3", "S4"]
    assert [names[s.next_ready().key] for _ in range(2)] == ["P", "S1"]


def test_gpu_time_counts_from_the_trial_start_not_the_hand_out():
    from rich.console import Console

    from orchestrator.plan import Plan
    from orchestrator.progress import LiveProgress

    a, b = (Node("bias_model", {"stage": "bias_model", "task": t, "task_options": {}, "data_dir": None})
            for t in ("a", "b"))
    s = DagScheduler()
    s.add_nodes([a, b])
    p = s.next_ready()
    assert p.key in s.queued_at and p.key not in s.started_at
    view = LiveProgress(Plan({a.key: a, b.key: b}), s, {a.key: 1.0, b.key: 1.0}, Console(), live=False)
    assert view.tally().total("spent") == 0.0  # handed out, still pending in Tune: no GPU time yet
    s.node_started(p.key, at=time.time() - 3600)
    assert view.tally().total("spent") == pytest.approx(1.0, abs=0.01)
    s.node_started(p.key)  # a retried trial keeps its first start
    assert view.tally().total("spent") == pytest.approx(1.0, abs=0.01)
    other = b if p is a else a
    s.node_started(other.key)  # not handed out: ignored
    assert other.key not in s.started_at


# -- the real Tune path ---------------------------------------------------------------------------------------

def _tagged(tag: str) -> list[int]:
    pids = []
    for env_file in glob.glob("/proc/[0-9]*/environ"):
        with contextlib.suppress(OSError):
            with open(env_file, "rb") as f:
                if f"SRNET_ORDER_TAG={tag}".encode() in f.read().split(b"\0"):
                    pids.append(int(env_file.split("/")[2]))
    return pids


@pytest.mark.slow
def test_real_tune_run_starts_a_late_critical_node_before_the_waiting_short_ones(tmp_path):
    """bench/tune_order.py's late_critical DAG through the launch's TuneRun on a local Ray with 2 fake GPUs:
    P (1 s) and S1 start; when P ends, its child C (estimated long) is ready and must start next, before
    S2..S6 that were ready from the start. Before issue 24 all of S2..S6 were pending in Tune by then and C
    started last (bench/RESULTS.md)."""
    out = tmp_path / "order.json"
    tag = f"order-{os.getpid()}-{time.time_ns()}"
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "PYTHONPATH": REPO, "HOME": str(tmp_path), "RAY_TMPDIR": ray_tmp, "SRNET_ORDER_TAG": tag}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "bench", "tune_order.py"), "--dag", "late_critical",
                             "--gpus", "2", "--policies", "bounded", "--out", str(out)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.time() + 30
        while _tagged(tag) and time.time() < deadline:  # Ray's processes end with ray.shutdown
            time.sleep(0.5)
        for pid in _tagged(tag):  # never leave one behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, text[-3000:]
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert result["replay"]["start_order"][:3] == ["P", "S1", "C"]
    assert run["start_order"][2] == "C", run["start_order"]  # the real path follows the scheduler's order
    assert run["max_claimed_gpu_trials"] <= 2  # never more GPU trials handed out than GPUs
    times = {result["labels"][k]: v for k, v in run["nodes"].items()}
    assert all(t["queued"] <= t["started"] < t["ended"] for t in times.values())
    # S2 was handed out only when a GPU was free (after S1 or C ended), not at the start with P and S1
    assert times["S2"]["queued"] >= min(times["S1"]["ended"], times["C"]["ended"]) - 0.5
    assert times["C"]["started"] - times["P"]["ended"] < 5.0  # C waited for no queue
    # pending time is measured (queued -> started), and it is not in the node's time: P started after its
    # hand-out (a new trial process), and its held time is about its 1 s sleep, not the wait before it
    assert times["P"]["started"] > times["P"]["queued"]
    assert times["P"]["ended"] - times["P"]["started"] < times["P"]["ended"] - times["P"]["queued"]
