"""A relaunch finds a file rewritten in the store after its node was committed, from metadata alone (issue 24,
Deliver item 2): the node and everything downstream of it are re-opened (markers moved aside) so they re-run,
and the check downloads nothing (on the local S3 server's request log: no object GET at all, not even a
marker). Nodes are committed by hand (files + ``mark_complete``): the check reads only the store."""
from __future__ import annotations

import json
import os
import time
import urllib.request

from orchestrator.failures import verify_inputs
from orchestrator.plan import build_plan
from orchestrator.spec import parse_spec
from workers.store import ArtifactStore

SPEC = {"name": "relaunch", "max_length": 32,
        "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0, 1],
                 "methods": ["mask_train"]},
        "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 2},
        "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 2}}


def _finished(root: str, tmp_path):
    """The plan, every node committed in ``root`` with a few files of its own."""
    plan = build_plan(parse_spec({**SPEC, "output_dir": str(tmp_path / "out")}))
    store = ArtifactStore(root, cache_dir=str(tmp_path / "worker"))
    for node in plan.nodes.values():
        local = store.node_dir(node.stage, node.key)
        os.makedirs(local, exist_ok=True)
        for name in ("weights.safetensors", "rows.parquet"):
            with open(os.path.join(local, name), "wb") as f:
                f.write(os.urandom(4096))
        store.mark_complete(node.stage, node.key, {"stage": node.stage})
    assert len(store.list_complete()) == len(plan.nodes)
    return plan


def _seed0_finetune(plan):
    ft = next(n for n in plan.nodes.values() if n.stage == "finetune" and n.columns.get("seed") == 0)
    consumers = {k for k, n in plan.nodes.items() if ft.key in {u.key for u in n.upstream}}
    assert consumers and len(plan.nodes) > len(consumers) + 1  # something else must be left alone
    return ft, consumers


def _flip(fs, path):
    with fs.open_input_stream(path) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with fs.open_output_stream(path) as f:
        f.write(bytes(data))


def test_a_relaunch_reopens_a_rewritten_node_and_its_consumers_without_downloading(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root = "s3://sweeps/rewritten"
    plan = _finished(root, tmp_path)
    ft, consumers = _seed0_finetune(plan)
    store = ArtifactStore(root, cache_dir=str(tmp_path / "tamper"))
    time.sleep(1.1)  # S3 times are whole seconds: the corruption comes later than the commit, as it would
    _flip(store.fs, store._remote_path("finetune", ft.key, "weights.safetensors"))

    def record(action):
        urllib.request.urlopen(urllib.request.Request(
            s3_server["AWS_ENDPOINT_URL"] + f"/moto-api/recorder/{action}-recording", method="POST")).read()
    record("reset")
    record("start")
    found = verify_inputs(plan, ArtifactStore(root, cache_dir=str(tmp_path / "driver")),
                          published=set(plan.nodes))
    record("stop")
    assert set(found) == {ft.key} | consumers, found
    assert "weights.safetensors changed in the store" in found[ft.key]
    requests = [json.loads(line) for line in open(s3_server["MOTO_RECORDER_FILEPATH"]) if line.strip()]
    object_gets = [r["url"] for r in requests if r["method"] == "GET" and "/rewritten/" in r["url"].split("?")[0]]
    assert object_gets == [], object_gets  # listings only: no artifact and no marker downloaded
    left = ArtifactStore(root, cache_dir=str(tmp_path / "after")).list_complete()
    assert {k for s, k in left} == set(plan.nodes) - {ft.key} - consumers  # exactly these re-run, in DAG order

    # the next relaunch (nothing changed since) re-opens nothing more
    assert verify_inputs(plan, ArtifactStore(root, cache_dir=str(tmp_path / "driver2")), set(plan.nodes)) == {}


def test_a_local_store_reopens_a_changed_node_and_its_consumers_but_not_a_same_bytes_rewrite(tmp_path):
    root = str(tmp_path / "store")
    plan = _finished(root, tmp_path)
    ft, consumers = _seed0_finetune(plan)
    other = next(n for n in plan.nodes.values() if n.stage == "finetune" and n.key != ft.key)
    path = os.path.join(root, "finetune", other.key, "weights.safetensors")
    data = open(path, "rb").read()
    time.sleep(0.01)
    with open(path, "wb") as f:  # the same bytes, a newer mtime (a copy that did not keep times)
        f.write(data)
    future = time.time() + 5
    os.utime(path, (future, future))
    flipped = os.path.join(root, "finetune", ft.key, "weights.safetensors")
    _flip(__import__("pyarrow.fs").fs.LocalFileSystem(), flipped)
    os.utime(flipped, (future, future))
    found = verify_inputs(plan, ArtifactStore(root), published=set(plan.nodes))
    assert set(found) == {ft.key} | consumers, found
    assert {k for s, k in ArtifactStore(root).list_complete()} == set(plan.nodes) - {ft.key} - consumers


def test_old_markers_and_an_untouched_store_reopen_nothing(s3_server, monkeypatch, tmp_path):
    """Nothing new is required of a marker: a store committed before this check reads as unchanged."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root = "s3://sweeps/untouched"
    plan = _finished(root, tmp_path)
    assert verify_inputs(plan, ArtifactStore(root, cache_dir=str(tmp_path / "d")), published=set(plan.nodes)) == {}
    assert ArtifactStore(root, cache_dir=str(tmp_path / "d")).changed_since_commit() == {}


def _rows(node) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame([{"node_key": node.key, "stage": node.stage, "status": "completed", "metric": "accuracy",
                          "value": 0.5, "step": 2, "eval_dataset": "dev", "selected": True, "sweep": "relaunch",
                          "task": "synthetic", "paradigm": "a"}])


def test_the_launch_check_reads_no_results_on_an_object_store_but_uses_them_on_a_filesystem(s3_server, monkeypatch,
                                                                                             tmp_path):
    """The published-rows set only decides what a filesystem store hashes: on S3 the relaunch check makes no GET
    at all, though every node's rows are in the results dataset; on a local store it reads them, and a node whose
    rows are not yet published has its files hashed (a corrupt one is found even with no newer mtime)."""
    from orchestrator import launch, results

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root = "s3://sweeps/published"
    plan = _finished(root, tmp_path)
    for node in plan.nodes.values():
        results.publish(results.results_dir(root), _rows(node))
    assert len(results.load(results.results_dir(root), columns=["node_key"])) == len(plan.nodes)

    def record(action):
        urllib.request.urlopen(urllib.request.Request(
            s3_server["AWS_ENDPOINT_URL"] + f"/moto-api/recorder/{action}-recording", method="POST")).read()
    record("reset")
    record("start")
    found = launch.relaunch_check(plan, ArtifactStore(root, cache_dir=str(tmp_path / "driver")),
                                  results.results_dir(root))
    record("stop")
    assert found == {}
    requests = [json.loads(line) for line in open(s3_server["MOTO_RECORDER_FILEPATH"]) if line.strip()]
    gets = [r["url"] for r in requests if r["method"] == "GET" and "/published/" in r["url"].split("?")[0]]
    assert gets == [], gets  # neither the results dataset nor any artifact or marker
    assert any(r["method"] == "GET" for r in requests)  # the listings were recorded: the recorder was on

    # a local store: published rows spare a node's files the hash, unpublished ones do not
    local = str(tmp_path / "store")
    plan = _finished(local, tmp_path)
    ft, _ = _seed0_finetune(plan)
    path = os.path.join(local, "finetune", ft.key, "weights.safetensors")
    stamp = os.stat(path).st_mtime
    _flip(__import__("pyarrow.fs").fs.LocalFileSystem(), path)
    os.utime(path, (stamp, stamp))  # the same time as before: only a hash can find it
    rows_dir = str(tmp_path / "out" / "results")
    for node in plan.nodes.values():
        results.publish(rows_dir, _rows(node))
    assert launch.relaunch_check(plan, ArtifactStore(local), rows_dir) == {}  # published: not read again
    os.remove(os.path.join(rows_dir, "sweep=relaunch", "task=synthetic", "paradigm=a", f"part-{ft.key}.parquet"))
    found = launch.relaunch_check(plan, ArtifactStore(local), rows_dir)
    assert ft.key in found and "sha256" in found[ft.key], found
