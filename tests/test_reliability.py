"""Faults: corrupt artifacts, diverging runs, killed workers and drivers, two drivers on one store.

Fast unit tests of the store and the loop first; then end-to-end ones (``slow``) that inject the fault from
outside: a flipped byte, SIGKILL of a trial process or of the driver, two launches at once. Every launch
subprocess runs under ``timeout`` with its own HOME/RAY_TMPDIR and a tag in its environment, by which its
Ray processes are found (and counted after it exits)."""
from __future__ import annotations

import glob
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pandas as pd
import pytest
import yaml

from orchestrator import failures, launch, results
from srnet_core.train import DivergenceError
from workers import store as store_mod
from workers.store import MARKER, ArtifactStore, CorruptArtifactError, LeaseKeeper
from workers.trainable import run_node

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VOLATILE = ["wall_seconds", "queued_at", "started_at", "ended_at", "gpu_hours", "attempt"]


# -- the store: verification against the marker -------------------------------------------------------------
def _complete_node(root, stage="finetune", key="k1", payload=b"w" * 1000):
    store = ArtifactStore(str(root))
    out = store.node_dir(stage, key)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "weights.safetensors"), "wb") as f:
        f.write(payload)
    with open(os.path.join(out, "summary.json"), "w") as f:
        f.write("{}")
    store.mark_complete(stage, key, {})
    return store, os.path.join(out, "weights.safetensors")


def _flip(path, offset=10):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("fault,expect", [
    ("flip", "does not match its recorded sha256"),
    ("truncate", "has 500 bytes, the marker recorded 1000"),
    ("missing", "weights.safetensors is missing"),
])
def test_corrupt_artifact_invalidates_node_and_is_logged(tmp_path, fault, expect):
    store, path = _complete_node(tmp_path)
    assert store.fetch_verified("finetune", "k1", "weights.safetensors") == path
    if fault == "flip":
        _flip(path)
    elif fault == "truncate":
        with open(path, "r+b") as f:
            f.truncate(500)
    else:
        os.unlink(path)
    if fault == "flip":  # same size: the cheap check passes, only the digest tells
        assert store.is_complete("finetune", "k1")
        with pytest.raises(CorruptArtifactError, match="sha256.*invalidated and will re-run"):
            store.fetch_verified("finetune", "k1", "weights.safetensors")
    else:  # a cut or missing file is seen by the cheap check every launch makes
        assert expect in store.check("finetune", "k1", sha256=False)
        assert not store.is_complete("finetune", "k1")
    assert not store.is_complete("finetune", "k1")  # the marker was moved aside: the node re-runs
    assert glob.glob(os.path.join(store.node_dir("finetune", "k1"), "_INVALID.*.json"))
    events = [e for e in store.events() if e["event"] == "invalidated"]
    assert len(events) == 1 and events[0]["key"] == "k1"
    assert expect.split(" ")[-1] in events[0]["reason"] or "sha256" in events[0]["reason"]


def test_files_are_hashed_once_per_path_mtime_size(tmp_path, monkeypatch):
    store, path = _complete_node(tmp_path, payload=os.urandom(4096))
    store_mod._HASHES.clear()
    calls = []
    real = store_mod._sha256
    monkeypatch.setattr(store_mod, "_sha256", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        store.fetch_verified("finetune", "k1", "weights.safetensors")
    assert len(calls) == 1
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten (same bytes): hashed again
    store.fetch_verified("finetune", "k1", "weights.safetensors")
    assert len(calls) == 2


def test_verify_inputs_invalidates_only_what_will_be_read(tmp_path):
    """verify_inputs hashes the complete inputs of incomplete nodes (and unpublished nodes), and files written
    after their node's marker, nothing else."""
    from orchestrator.plan import build_plan
    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "v", "output_dir": str(tmp_path / "o"),
                       "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.7],
                                "seeds": [0]}})
    plan = build_plan(spec)
    store = ArtifactStore(spec.artifact_root())
    ft = next(n for n in plan.nodes.values() if n.stage == "finetune")
    masks = [n for n in plan.nodes.values() if n.stage == "mask_train"]
    for node in [ft, masks[0]]:
        _complete_node(spec.artifact_root(), node.stage, node.key)
    _flip(os.path.join(store.node_dir(ft.stage, ft.key), "weights.safetensors"))
    found = failures.verify_inputs(plan, store, published={ft.key, masks[0].key})
    # the flipped file is newer than its marker: hashed, found changed, and its complete consumer re-runs too
    assert sorted(found) == sorted([ft.key, masks[0].key]) and "sha256" in found[ft.key]
    assert found[masks[0].key].startswith(f"upstream finetune {ft.key} re-runs")
    assert not store.is_complete(ft.stage, ft.key)
    # a finished sweep whose rows are all published reads nothing: nothing is hashed
    store2, _ = _complete_node(tmp_path / "s2")
    assert failures.verify_inputs(plan, ArtifactStore(str(tmp_path / "none")), published=set(plan.nodes)) == {}


# -- leases -------------------------------------------------------------------------------------------------
def test_lease_excludes_a_second_owner_until_release_or_expiry(tmp_path):
    store = ArtifactStore(str(tmp_path))
    a = store.try_lease("finetune", "k", "driver-a", ttl=30)
    assert a is not None
    assert store.try_lease("finetune", "k", "driver-b", ttl=30) is None
    again = store.try_lease("finetune", "k", "driver-a", ttl=30)  # a's retried trial takes it back
    assert again is not None
    assert not store.renew_lease("finetune", "k", a)  # ... and the old attempt's lease is gone (fenced)
    store.release_lease("finetune", "k", again)
    b = store.try_lease("finetune", "k", "driver-b", ttl=1.0)
    assert b is not None
    # a holder that stops renewing: its lease expires (on the store's clock: file mtimes)
    assert store.try_lease("finetune", "k", "driver-c", ttl=30) is None
    time.sleep(1.2)
    assert store.try_lease("finetune", "k", "driver-c", ttl=30) is not None
    assert not store.renew_lease("finetune", "k", b)  # b's late renewal cannot overwrite its successor's lease
    assert [e["event"] for e in store.events()] == ["lease_expired"]


def test_lease_of_a_dead_process_on_this_machine_is_taken_at_once(tmp_path):
    store = ArtifactStore(str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lease = store.try_lease("finetune", "k", "killed-driver", ttl=3600)
    # as if a killed driver's trial process (same kernel, same pid namespace) had written it
    dead = {**lease, "pid": proc.pid, "process": {**lease["process"], "pid": proc.pid}}
    assert store.leases.replace("finetune", "k", dead, lease["_version"]) is not None
    assert store.try_lease("finetune", "k", "relaunch", ttl=30) is not None


def test_second_holder_waits_then_skips_the_completed_node(tmp_path):
    store = ArtifactStore(str(tmp_path))
    first = LeaseKeeper(store, "finetune", "k", owner="one", ttl=3, poll=0.1).__enter__()
    assert first.acquired
    time.sleep(1.5)  # longer than ttl/3: the keeper renewed it in the background
    done = threading.Event()

    def finish():
        time.sleep(2.5)  # past the original expiry: only renewal keeps the second one out
        _complete_node(tmp_path, "finetune", "k")
        first.__exit__(None, None, None)
        done.set()

    threading.Thread(target=finish).start()
    with LeaseKeeper(store, "finetune", "k", owner="two", ttl=3, poll=0.1, max_wait=20) as second:
        assert done.is_set() and not second.acquired and second.waited > 2.0
    assert store.read_lease("finetune", "k")["released"]
    assert [e["event"] for e in store.events()] == ["lease_wait"]


# -- divergence ---------------------------------------------------------------------------------------------
TINY = {"task": "synthetic", "task_options": {"n_train": 128, "n_dev": 32, "n_ood": 32}, "backbone": "tiny-bert",
        "seed": 0, "max_length": 32, "device": "cpu", "sparsity": 0.0}


def test_nan_loss_is_detected_at_the_next_eval(tmp_path):
    node = {"key": "nan", "stage": "finetune", "inputs": {}, "artifact_root": str(tmp_path), "columns": {},
            "stage_config": {**TINY, "stage": "finetune",
                             "train": {"lr": 1e30, "epochs": 2, "batch_size": 16, "eval_every": 4}}}
    seen = []
    with pytest.raises(DivergenceError, match=r"training loss is (nan|inf) between steps 0 and 4 \(lr 1e\+30\)"):
        run_node(node, report=lambda r: seen.append(r.step))
    assert seen == [0]  # the eval at step 4 (of 16) raised instead of reporting
    assert not ArtifactStore(str(tmp_path)).is_complete("finetune", "nan")


def test_reason_and_skip_chain():
    text = ("ray.exceptions.RayTaskError(DivergenceError): ray::ImplicitFunc.train() (pid=1, ip=x)\n"
            "  File \"x.py\", line 1, in f\n"
            "srnet_core.train.DivergenceError: training loss is nan between steps 4 and 8 (lr 1e+30): diverged")
    assert failures.reason_of(text) == "DivergenceError: training loss is nan between steps 4 and 8 (lr 1e+30): diverged"

    class N:
        def __init__(self, key, stage, upstream=()):
            self.key, self.stage, self.upstream, self.columns = key, stage, list(upstream), {}

    ft = N("f1", "finetune")
    mask = N("m1", "mask_train", [ft])
    ev = N("e1", "evaluate", [mask])
    errors = {"f1": "DivergenceError: x"}
    errors["m1"] = failures.skip_reason(mask, errors)
    errors["e1"] = failures.skip_reason(ev, errors)
    assert errors["m1"] == errors["e1"] == "skipped: upstream finetune f1 failed: DivergenceError: x"


# -- end to end ---------------------------------------------------------------------------------------------
BASE = {
    "name": "rel", "max_length": 32,
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
    "task_options": {"synthetic": {"n_train": 128, "n_dev": 32, "n_ood": 32}},
    "finetune": {"lr": 1e-3, "epochs": 2, "batch_size": 16, "eval_every": 4},
    "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4},
    "resources": {"cpus_per_trial": 1},
}


def _spec(tmp_path, name="rel", **changes):
    spec = {**BASE, "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec["output_dir"]


def _rows_per_node(frame):
    keys = ["node_key", "step", "metric", "eval_dataset"]
    assert not frame.duplicated(keys).any(), "duplicated rows"
    return frame.groupby("node_key").size().to_dict()


@pytest.mark.slow
def test_diverging_node_fails_its_descendants_are_skipped_others_finish(ray_env, tmp_path, capsys):
    # the default 10 infrastructure retries: a deterministic error is still tried once
    path, out = _spec(tmp_path, grid={**BASE["grid"], "paradigms": ["a", "c"]},
                      finetune={**BASE["finetune"], "lr": 1e30}, resources={"cpus_per_trial": 1})
    assert launch.main([path, "--no-figure", "--no-report"]) == 1
    text = capsys.readouterr().out
    assert "2 node(s) did not complete" in text and "DivergenceError" in text
    frame = results.load(out)
    failed = frame[frame["status"] == "failed"].set_index("stage")
    assert sorted(failed.index) == ["finetune", "mask_train"]
    assert failed.loc["finetune", "error"].startswith("DivergenceError: training loss is")
    assert "between steps 0 and 4" in failed.loc["finetune", "error"]  # the first eval after the blow-up
    assert failed.loc["mask_train", "error"].startswith("skipped: upstream finetune")
    assert "DivergenceError" in failed.loc["mask_train", "error"]
    done = frame[frame["status"] == "completed"]
    assert set(done["paradigm"]) == {"c"} and len(done) > 0  # mask training from the pre-trained model ran
    key = failed.loc["finetune", "node_key"]
    events = [e for e in ArtifactStore(os.path.join(out, "artifacts")).events() if e["key"] == key]
    assert [e["event"] for e in events] == ["run", "failed"]  # one attempt: divergence is not retried
    assert events[1]["retried"] is False and "DivergenceError: training loss is" in events[1]["traceback"]


@pytest.mark.slow
def test_corrupt_input_is_rerun_before_a_consumer_reads_it(ray_env, tmp_path):
    path, out = _spec(tmp_path)
    assert launch.main([path, "--no-figure", "--no-report"]) == 0
    store = ArtifactStore(os.path.join(out, "artifacts"))
    (ft_dir,) = glob.glob(os.path.join(out, "artifacts", "finetune", "*"))
    weights = os.path.join(ft_dir, "weights.safetensors")
    good = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    first = _rows_per_node(results.load(out))
    (mask_dir,) = glob.glob(os.path.join(out, "artifacts", "mask_train", "*"))  # the fine-tune's consumer
    _flip(weights, offset=os.path.getsize(weights) // 2)
    # widening needs the fine-tuned weights again: the flipped byte must be found before anything reads them
    wider, _ = _spec(tmp_path, name="wider", grid={**BASE["grid"], "sparsities": [0.5, 0.7]})
    assert launch.main([wider, "--no-figure", "--no-report"]) == 0
    events = store.events()
    key = os.path.basename(ft_dir)
    # the flipped file is newer than its marker: the fine-tune re-opens, and its complete consumer with it
    assert [e["key"] for e in events if e["event"] == "invalidated"] == [key, os.path.basename(mask_dir)]
    assert len([e for e in events if e["event"] == "run" and e["key"] == key]) == 2
    assert len([e for e in events if e["event"] == "run" and e["key"] == os.path.basename(mask_dir)]) == 2
    assert hashlib.sha256(open(weights, "rb").read()).hexdigest() == good  # re-run, bit-identical
    assert store.check("finetune", key) is None
    final = _rows_per_node(results.load(out))
    assert {k: v for k, v in final.items() if k in first} == first and len(final) == len(first) + 1  # 0 lost


def _env(tmp_path, tag, **extra):
    home = tmp_path / f"home-{tag}"
    home.mkdir()
    return {**os.environ, "PYTHONPATH": REPO, "HOME": str(home), "SRNET_REL_TAG": tag,
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0", **extra}


def _tagged(tag) -> list[int]:
    """Live processes started under this tag (the driver and every Ray process it spawned inherit it)."""
    pids = []
    for env_file in glob.glob("/proc/[0-9]*/environ"):
        pid = int(env_file.split("/")[2])
        try:
            with open(env_file, "rb") as f:
                if f"SRNET_REL_TAG={tag}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        pids.append(pid)
    return pids


def _cmdline(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _listening(pid) -> list[str]:
    """Addresses (hex ip:port from /proc/net/tcp*) of the TCP sockets a process listens on."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    found.append(parts[1])
    return found


def _loopback(hex_addr: str) -> bool:
    ip = hex_addr.split(":")[0]
    return ip in ("0100007F", "00000000000000000000000001000000")


def _wait_until(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


_FIRST_INODE: dict[str, int] = {}


def _replaced(path) -> bool:
    """True once ``path`` was atomically replaced since the first call (a later checkpoint was written)."""
    try:
        ino = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    return _FIRST_INODE.setdefault(path, ino) != ino


def _launch(spec_path, env, cwd):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.launch", spec_path, "--no-figure", "--no-report"],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"launch hung:\n{out[-3000:]}")
    return proc.returncode, out


def _no_orphans(tag, timeout=30):
    end = time.time() + timeout
    while _tagged(tag) and time.time() < end:
        time.sleep(0.2)
    left = [(pid, _cmdline(pid)[:100]) for pid in _tagged(tag)]
    for pid, _ in left:  # never leave them running, even when the test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.mark.slow
def test_killed_trial_resumes_killed_driver_relaunches_without_orphans(tmp_path):
    """1) SIGKILL the trial process after its first checkpoint: Tune retries it (resources.max_retries_infra) and
    the node resumes from that checkpoint; rows equal an uninterrupted run's. 2) kill -9 the driver: its Ray
    processes go with it, and the relaunch resumes and leaves none behind. The local Ray serves no dashboard
    beyond 127.0.0.1."""
    longer = {"finetune": {**BASE["finetune"], "epochs": 3}, "mask_train": {**BASE["mask_train"], "epochs": 3}}
    path, out = _spec(tmp_path, resources={"cpus_per_trial": 1, "max_retries_infra": 2}, **longer)
    artifacts = os.path.join(out, "artifacts")
    faults = 0
    proc = _launch(path, _env(tmp_path, "a"), str(tmp_path))
    try:
        ckpt = _wait_until(lambda: glob.glob(os.path.join(artifacts, "finetune", "*", "_checkpoint", "*.safetensors")),
                           240, "the fine-tune's first checkpoint")
        _wait_until(lambda: _replaced(ckpt[0]), 120, "a checkpoint after a training step")  # the first is step 0
        trials = [p for p in _tagged("a") if _cmdline(p).startswith("ray::ImplicitFunc")]
        assert trials, [_cmdline(p) for p in _tagged("a")]
        # The dashboard head process gets --host=127.0.0.1 and serves nothing beyond loopback. (Ray 2.60's
        # gRPC servers, GCS/raylet/workers/agents, listen on every interface whatever ray.init is given.)
        (head,) = [p for p in _tagged("a") if "ray/dashboard/dashboard.py" in _cmdline(p)]
        assert "--host=127.0.0.1" in _cmdline(head)
        assert all(_loopback(a) for a in _listening(head)), _listening(head)
        assert not any(a.endswith(":2031") for p in _tagged("a") for a in _listening(p))  # 8265: no web UI
        assert not glob.glob(os.path.join(artifacts, "finetune", "*", MARKER))  # killed mid-trial
        for pid in trials:
            os.kill(pid, signal.SIGKILL)
        faults += 1
        rc, text = _finish(proc)
    finally:
        proc.kill()
    assert rc == 0, text[-3000:]
    assert _no_orphans("a") == []
    store = ArtifactStore(artifacts)
    ft_key = ckpt[0].split(os.sep)[-3]
    runs = [e for e in store.events() if e["event"] == "run" and e["key"] == ft_key]
    assert len(runs) == 2 and runs[0]["resumed_from"] is None and runs[1]["resumed_from"] >= 4  # a later eval

    # the same nodes, uninterrupted and without Ray, in a fresh store: equal rows, bit-identical weights
    ref_root = str(tmp_path / "reference")
    frames = {}
    for stage in ("finetune", "mask_train"):
        (node_dir,) = glob.glob(os.path.join(artifacts, stage, "*"))
        # re-targeted at another store: the original store's identity (orchestrator/cluster.py) does not apply
        node = {**store.marker(stage, os.path.basename(node_dir))["node"], "artifact_root": ref_root,
                "store_id": None}
        ref_dir = run_node(node)
        frames[stage] = (pd.read_parquet(os.path.join(node_dir, "rows.parquet")),
                         pd.read_parquet(os.path.join(ref_dir, "rows.parquet")))
        if stage == "finetune":
            assert open(os.path.join(node_dir, "weights.safetensors"), "rb").read() == \
                open(os.path.join(ref_dir, "weights.safetensors"), "rb").read()
    for got, want in frames.values():
        drop = VOLATILE + ["hostname", "gpus_used", "ray_node_id", "node_ip"]
        got, want = got.drop(columns=drop, errors="ignore"), want.drop(columns=drop, errors="ignore")
        assert len(got) > 0 and sorted(got.columns) == sorted(want.columns)  # the marker's copy has sorted keys
        pd.testing.assert_frame_equal(got[sorted(got.columns)], want[sorted(got.columns)])
    before = _rows_per_node(results.load(out))

    # kill -9 the driver while a new node trains; relaunch
    wider, _ = _spec(tmp_path, name="wider", grid={**BASE["grid"], "sparsities": [0.5, 0.7]},
                     resources={"cpus_per_trial": 1, "max_retries_infra": 2}, **longer)
    proc = _launch(wider, _env(tmp_path, "b"), str(tmp_path))
    try:
        ckpt = _wait_until(lambda: glob.glob(os.path.join(artifacts, "mask_train", "*", "_checkpoint", "*.safetensors")),
                           240, "the new mask node's first checkpoint")
        _wait_until(lambda: _replaced(ckpt[0]), 120, "a checkpoint after a training step")
        os.kill(proc.pid, signal.SIGKILL)
        faults += 1
        proc.wait()
    finally:
        proc.kill()
    # Ray's processes share the driver's fate: GCS, raylet and workers at once; its agents once their calls
    # to the dead GCS give up (about a minute), meanwhile the relaunch already runs.
    proc = _launch(wider, _env(tmp_path, "c"), str(tmp_path))
    rc, text = _finish(proc)
    assert rc == 0, text[-3000:]
    assert _no_orphans("c") == []
    started = time.time()
    assert _no_orphans("b", timeout=150) == []
    print(f"killed driver's last Ray process gone {time.time() - started:.0f} s after the relaunch ended")
    new_key = ckpt[0].split(os.sep)[-3]
    runs = [e for e in store.events() if e["event"] == "run" and e["key"] == new_key]
    assert len(runs) == 2 and runs[1]["resumed_from"] >= 4  # resumed, not restarted
    after = _rows_per_node(results.load(out))
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == len(before) + 1  # 0 lost
    print(f"faults injected {faults}, survived {faults}")


WRAPPER = ("import sys, ray; ray.init(num_cpus=1, include_dashboard=False, logging_level='WARNING'); "
           "from orchestrator.launch import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_failed_launch_reads_as_one_line_traceback_in_events_log(tmp_path):
    """Issue 22: a launch whose fine-tuning diverges prints the plan, the failure table and the root cause
    once (about 20 lines in all: no Tune or Ray traceback); the traceback is in the store's events log.
    With --verbose it is on the console again."""
    path, out = _spec(tmp_path, finetune={**BASE["finetune"], "lr": 1e30}, resources={"cpus_per_trial": 1})
    code, text = _finish(_launch(path, _env(tmp_path, "q1"), str(tmp_path)))
    lines = text.splitlines()
    assert code == 1, text
    assert len(lines) <= 25, text
    causes = [line for line in lines if "DivergenceError: training loss is nan" in line]
    assert len(causes) == 1 and causes[0].startswith("failed node "), text
    assert "Traceback" not in text and "Trial task failed" not in text and "(pid=" not in text, text
    assert "2 node(s) did not complete" in text and "upstream finetune" in text
    logged = [e for e in ArtifactStore(os.path.join(out, "artifacts")).events() if e["event"] == "failed"]
    assert len(logged) == 1 and logged[0]["stage"] == "finetune" and logged[0]["retried"] is False
    assert "Traceback (most recent call last)" in logged[0]["traceback"]
    assert "DivergenceError: training loss is nan" in logged[0]["traceback"]
    assert _no_orphans("q1") == []
    verbose = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", path, "--no-figure", "--no-report",
                                "--verbose"], env=_env(tmp_path, "q2"), cwd=str(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, text = _finish(verbose)
    assert code == 1 and "Traceback" in text and "DivergenceError" in text, text  # the worker's log
    assert _no_orphans("q2") == []


@pytest.mark.slow
def test_two_drivers_on_one_store_run_each_node_once(tmp_path):
    path, out = _spec(tmp_path, grid={**BASE["grid"], "sparsities": [0.5, 0.9]})
    procs = [subprocess.Popen([sys.executable, "-c", WRAPPER, path, "--no-figure", "--no-report"],
                              env=_env(tmp_path, tag), cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for tag in ("d1", "d2")]
    try:
        outcomes = [_finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rc, text in outcomes:
        assert rc == 0, text[-3000:]
    events = ArtifactStore(os.path.join(out, "artifacts")).events()
    runs = [e for e in events if e["event"] == "run"]
    completed = [e for e in events if e["event"] == "completed"]
    assert len(runs) == len(completed) == 3, events  # 3 nodes, each trained once across both drivers
    assert len({e["key"] for e in runs}) == 3
    assert any(e["event"] == "lease_wait" for e in events), events  # they did overlap on a node
    per_node = _rows_per_node(results.load(out))
    assert len(per_node) == 3
    for tag in ("d1", "d2"):
        assert _no_orphans(tag) == []


def test_uri_store_corrupt_file_is_not_served_from_cache(tmp_path):
    """A pyarrow URI store: the fetched copy is verified, a bad download is dropped, the node invalidated."""
    local, _ = _complete_node(tmp_path / "scratch")  # build the files, then publish them through a URI store
    store = ArtifactStore(f"file://{tmp_path}/remote", cache_dir=str(tmp_path / "cache"))
    os.makedirs(store.node_dir("finetune", "k1"), exist_ok=True)
    for name in ("weights.safetensors", "summary.json"):
        with open(os.path.join(local.node_dir("finetune", "k1"), name), "rb") as src, \
                open(os.path.join(store.node_dir("finetune", "k1"), name), "wb") as dst:
            dst.write(src.read())
    store.mark_complete("finetune", "k1", {})
    store.fetch_verified("finetune", "k1", "weights.safetensors")
    _flip(str(tmp_path / "remote" / "finetune" / "k1" / "weights.safetensors"))
    assert "does not match its recorded sha256" in store.check("finetune", "k1")  # downloads afresh
    assert not os.path.exists(os.path.join(str(tmp_path / "cache"), "fetched", "finetune", "k1", "weights.safetensors"))
    assert not store.is_complete("finetune", "k1", verify=True)
    remote_dir = tmp_path / "remote" / "finetune" / "k1"
    assert not (remote_dir / MARKER).exists() and len(list(remote_dir.glob("_INVALID.*.json"))) == 1
    with pytest.raises(CorruptArtifactError, match="no marker entry"):  # nothing is served any more
        store.fetch_verified("finetune", "k1", "weights.safetensors")
    # a corrupt LOCAL cached copy of a good remote file is downloaded again, not blamed on the node
    good = ArtifactStore(f"file://{tmp_path}/remote2", cache_dir=str(tmp_path / "cache2"))
    os.makedirs(good.node_dir("finetune", "k2"), exist_ok=True)
    with open(os.path.join(good.node_dir("finetune", "k2"), "weights.safetensors"), "wb") as f:
        f.write(b"x" * 100)
    good.mark_complete("finetune", "k2", {})
    cached = good.fetch_verified("finetune", "k2", "weights.safetensors")
    _flip(cached, offset=5)
    assert open(good.fetch_verified("finetune", "k2", "weights.safetensors"), "rb").read() == b"x" * 100
    assert good.is_complete("finetune", "k2")


def test_only_infrastructure_failures_are_retried(tmp_path):
    """Issue 24 item 6: a retry resumes from the last checkpoint, which cures a lost machine or a network error,
    never a divergence, bad data or a code error; the old retry count is refused with the new name."""
    import ray.exceptions
    import torch

    from orchestrator.spec import SpecError, parse_spec
    from srnet_core.train import DivergenceError
    from workers.store import MissingOutputError
    from workers.trainable import retryable

    for err in (OSError("connection reset"), TimeoutError(), FileNotFoundError("lost scratch file"),
                torch.OutOfMemoryError("CUDA out of memory"), MemoryError(), ray.exceptions.RayError()):
        assert retryable(err), err
    for err in (CorruptArtifactError("artifact x: sha256"),  # its upstream re-runs first (scheduler.reopen)
                DivergenceError("training loss is nan"), ValueError("bad label"), KeyError("x"), TypeError(),
                MissingOutputError("lacks"), RuntimeError("node refused: other code"), AssertionError()):
        assert not retryable(err), err
    spec = {"name": "r", "output_dir": str(tmp_path), "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"],
                                                               "sparsities": [0.5], "seeds": [0]}}
    assert parse_spec(spec).resources.max_retries_infra == 10
    with pytest.raises(SpecError, match=r"max_retries is now resources.max_retries_infra"):
        parse_spec({**spec, "resources": {"max_retries": 2}})
