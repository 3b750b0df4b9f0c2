"""A node resumed on another machine keeps what it wrote before (issue 24, item 1), on the local S3 server with
per-node scratch directories: a fine-tune stopped after some checkpoints on "node A" resumes on "node B",
whose scratch is empty, and its marker lists all nine checkpoint files; they and timing.json equal an
uninterrupted run's, byte for byte. The same for IMP's level masks."""
from __future__ import annotations

import json
import os

import pytest

from orchestrator.launch import node_payload
from orchestrator.plan import build_plan
from orchestrator.spec import parse_spec
from workers.store import ArtifactStore
from workers.trainable import run_node

SPEC = {"name": "move", "max_length": 32,
        "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.3], "seeds": [0],
                 "methods": ["imp"]},
        "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
        # 4 steps an epoch, 12 in all: the 10%..90% grid lands on steps 1, 2, 4, 5, 6, 7, 8, 10, 11
        "finetune": {"lr": 1e-3, "epochs": 3, "batch_size": 16, "eval_every": 2},
        "imp": {"lr": 1e-3, "epochs": 3, "batch_size": 16, "eval_every": 2},
        "imp_options": {"rate": 0.3, "final": 0.9, "intervals": 3}}


class Preempted(RuntimeError):
    pass


def _nodes(root, tmp_path):
    spec = parse_spec({**SPEC, "output_dir": str(tmp_path / "out")})
    plan = build_plan(spec)
    store = ArtifactStore(root)
    out = {}
    for node in plan.nodes.values():
        node.stage_config["device"] = "cpu"
        out[node.stage] = (node, node_payload(node, store))
    return out


def _on(monkeypatch, tmp_path, machine):  # each "machine" has its own scratch and cache
    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / machine))


def _preempt_after(evals):
    """A report callback that stops the run at its ``evals``-th evaluation, right after that checkpoint."""
    seen = []

    def report(record):
        seen.append(record.step)
        if len(seen) >= evals:
            raise Preempted(f"preempted after evaluation {len(seen)} (step {record.step})")
    return report


def _files(root, stage, key):
    return ArtifactStore(root).marker(stage, key)["files"]


@pytest.mark.slow
def test_a_node_resumed_on_another_machine_keeps_its_earlier_outputs(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    moved, straight = "s3://sweeps/moved", "s3://sweeps/straight"
    nodes = _nodes(moved, tmp_path)
    ft, ft_payload = nodes["finetune"]
    _on(monkeypatch, tmp_path, "node-a")
    with pytest.raises(Preempted):
        run_node(ft_payload, report=_preempt_after(4))  # steps 0, 2, 4, 6: f0.1 .. f0.5 on node A's scratch
    _on(monkeypatch, tmp_path, "node-b")
    run_node(ft_payload)
    assert not os.path.exists(ArtifactStore(moved).node_dir("finetune", ft.key))  # scratch gone once committed
    files = _files(moved, "finetune", ft.key)
    assert sorted(f for f in files if f.startswith("weights_f")) == [f"weights_f0.{i}.safetensors" for i in range(1, 10)]
    import pandas as pd

    rows = pd.read_parquet(ArtifactStore(moved).fetch("finetune", ft.key, "rows.parquet"))
    assert set(rows["attempt"]) == {2}  # the counter moved with the checkpoint: node B's run is the second

    _on(monkeypatch, tmp_path, "node-c")  # the same node, never interrupted, in another store
    run_node(_nodes(straight, tmp_path)["finetune"][1])
    reference = _files(straight, "finetune", ft.key)
    assert {n: m["sha256"] for n, m in files.items() if n.startswith("weights")} == \
        {n: m["sha256"] for n, m in reference.items() if n.startswith("weights")}
    timing = [json.load(open(ArtifactStore(r).fetch("finetune", ft.key, "timing.json"))) for r in (moved, straight)]
    assert timing[0] == timing[1]
    assert all(len(e["distances"]) == 9 for e in timing[0]["early_bird"].values())  # 9 saved + the end

    # IMP: three levels (0.3, 0.6, 0.9); stopped during the second on node A, resumed on node B
    imp, imp_payload = nodes["imp"]
    _on(monkeypatch, tmp_path, "node-a")
    with pytest.raises(Preempted):
        run_node(imp_payload, report=_preempt_after(5))
    pushed = ArtifactStore(moved)
    assert "masks_s0.30.safetensors" in {i.base_name for i in pushed.fs.get_file_info(
        __import__("pyarrow.fs").fs.FileSelector(pushed._remote_path("imp", imp.key)))}  # level 1 done on A
    _on(monkeypatch, tmp_path, "node-b2")
    run_node(imp_payload)
    assert sorted(f for f in _files(moved, "imp", imp.key) if f.startswith("masks_s")) == [
        "masks_s0.30.safetensors", "masks_s0.60.safetensors", "masks_s0.90.safetensors"]


def test_the_download_cache_is_bounded_least_recently_used_first(s3_server, monkeypatch, tmp_path):
    """$SRNET_CACHE_GB bounds a machine's downloaded inputs: trim_cache removes the least recently used files
    (a fetch from the cache counts as a use) until the rest fit."""
    import os
    import time

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    store = ArtifactStore("s3://sweeps/cache", cache_dir=str(tmp_path / "cache"))
    for i in range(4):  # four 1 MiB files of a complete node in the store
        local = tmp_path / f"f{i}.bin"
        local.write_bytes(bytes([i]) * 2**20)
        store._upload(str(local), store._remote_path("finetune", "k", f"f{i}.bin"))
    paths = [store.fetch("finetune", "k", f"f{i}.bin") for i in range(4)]
    for i, path in enumerate(paths):  # distinct, increasing last-use times
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    time.sleep(0.01)
    store.fetch("finetune", "k", "f0.bin")  # f0 used again: now the most recent
    removed = store.trim_cache(limit_gb=2.5 / 1024)  # room for two and a half files
    assert sorted(os.path.basename(p) for p in removed) == ["f1.bin", "f2.bin"]
    assert os.path.exists(paths[0]) and os.path.exists(paths[3])
    assert store.trim_cache(limit_gb=1.0) == []


def test_a_relaunch_reads_markers_not_artifacts_on_an_object_store(s3_server, monkeypatch, tmp_path):
    """Issue 24 item 2: the driver's checks before a relaunch list the store once and download no artifact
    (measured on the local S3 server's request log); a corrupt file is found by its consumer instead, which
    names the producer to re-run (orchestrator.scheduler.DagScheduler.reopen)."""
    import urllib.request

    from orchestrator.failures import verify_inputs
    from workers.store import CorruptArtifactError

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    _on(monkeypatch, tmp_path, "node-a")
    root = "s3://sweeps/relaunch"
    spec = parse_spec({**SPEC, "grid": {**SPEC["grid"], "methods": ["mask_train"]}, "output_dir": str(tmp_path / "o"),
                       "finetune": {**SPEC["finetune"], "epochs": 1}, "mask_train": {**SPEC["imp"], "epochs": 1}})
    plan = build_plan(spec)
    store = ArtifactStore(root)
    payloads = {}
    for node in plan.nodes.values():
        node.stage_config["device"] = "cpu"
        payloads[node.stage] = (node, node_payload(node, store))
    ft, mt = payloads["finetune"][0], payloads["mask_train"][0]
    run_node(payloads["finetune"][1])
    run_node(payloads["mask_train"][1])
    store.fs.delete_file(store._remote_path("mask_train", mt.key, "_COMPLETE.json"))  # the consumer is to re-run

    def record(action):
        urllib.request.urlopen(urllib.request.Request(
            s3_server["AWS_ENDPOINT_URL"] + f"/moto-api/recorder/{action}-recording", method="POST")).read()
    record("reset")
    record("start")
    _on(monkeypatch, tmp_path, "driver")  # an empty cache: whatever the check needs, it must download
    assert verify_inputs(plan, ArtifactStore(root), published=set()) == {}
    record("stop")
    requests = [json.loads(line) for line in open(s3_server["MOTO_RECORDER_FILEPATH"]) if line.strip()]
    gets = [r["url"] for r in requests if r["method"] == "GET" and "/relaunch/" in r["url"].split("?")[0]]
    assert gets == [], gets  # listings only (GET /sweeps?list-type=2&prefix=...): no object downloaded

    path = store._remote_path("finetune", ft.key, "weights.safetensors")  # one flipped byte in the store
    with store.fs.open_input_stream(path) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with store.fs.open_output_stream(path) as f:
        f.write(bytes(data))
    _on(monkeypatch, tmp_path, "node-b")
    with pytest.raises(CorruptArtifactError) as err:
        run_node(payloads["mask_train"][1])
    assert err.value.upstream == ft.key and not store.is_complete("finetune", ft.key)


def test_the_attempt_count_survives_a_retry_on_a_machine_that_never_ran_the_node(s3_server, monkeypatch, tmp_path):
    """Review finding: a retry on a machine with no scratch for the node yet still counts on."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root = "s3://sweeps/attempts"
    assert ArtifactStore(root, cache_dir=str(tmp_path / "a")).count_attempt("finetune", "k") == 1
    assert ArtifactStore(root, cache_dir=str(tmp_path / "b")).count_attempt("finetune", "k") == 2
    assert ArtifactStore(root, cache_dir=str(tmp_path / "c")).count_attempt("finetune", "k") == 3
