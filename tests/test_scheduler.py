"""The dependency-driven scheduler: readiness, longest-remaining-path order, failure -> descendants skipped,
nodes added while it runs; and on Ray, one failing branch while the rest of the DAG finishes."""
from __future__ import annotations

import os
import threading

import pytest
import yaml

from orchestrator.plan import Input, Node
from orchestrator.scheduler import DagScheduler


def node(name: str, *ups: Node) -> Node:
    """A tiny node; the key is a content hash like any other (bias_model: the smallest config)."""
    cfg = {"stage": "bias_model", "task": name, "task_options": {}, "data_dir": None}
    return Node("bias_model", cfg, {f"in{i}": Input(u, "f") for i, u in enumerate(ups)})


def dag():
    #   a -> b -> c          (long chain)
    #   d -> e               d fails in one test: e is its only descendant
    #   f                    (independent, short)
    a = node("a"); b = node("b", a); c = node("c", b)
    d = node("d"); e = node("e", d, a)
    f = node("f")
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}


DUR = {"a": 1.0, "b": 5.0, "c": 5.0, "d": 2.0, "e": 1.0, "f": 3.0}


def scheduler_of(nodes, **kw):
    names = {n.key: name for name, n in nodes.items()}
    s = DagScheduler(duration=lambda n: DUR[names[n.key]], **kw)
    return s, names


def test_longest_remaining_path_first_and_dependencies():
    nodes = dag()
    s, names = scheduler_of(nodes)
    s.add_nodes(nodes.values())
    # remaining paths: a 1+5+5=11, d 2+1=3, f 3 -> a first; d and f tie at 3: insertion order breaks ties
    assert s.priority[nodes["a"].key] == 11 and s.priority[nodes["d"].key] == 3
    order = [names[s.next_ready().key] for _ in range(3)]
    assert order == ["a", "d", "f"]
    assert s.next_ready() is None  # b, c, e wait on inputs
    s.node_done(nodes["a"].key)
    assert names[s.next_ready().key] == "b"
    assert s.next_ready() is None  # e still waits on d
    s.node_done(nodes["d"].key)
    assert names[s.next_ready().key] == "e"
    for name in ("b", "e", "f"):
        s.node_done(nodes[name].key)
    assert names[s.next_ready().key] == "c" and not s.finished
    s.node_done(nodes["c"].key)
    assert s.finished


def test_failure_skips_exactly_the_descendants():
    nodes = dag()
    s, names = scheduler_of(nodes)
    events = []
    s.on_node_done(lambda n, status, msg: events.append((names[n.key], status, msg)))
    s.add_nodes(nodes.values())
    while (n := s.next_ready()) is not None:
        if names[n.key] == "a":
            skipped = s.node_failed(n.key, "boom")
            assert {names[k] for k in skipped} == {"b", "c", "e"}  # all of a's descendants, transitively
        else:
            s.node_done(n.key)
    status = {names[k]: v for k, v in s.snapshot().items()}
    assert status == {"a": "failed", "b": "skipped", "c": "skipped", "d": "done", "e": "skipped", "f": "done"}
    assert s.finished
    assert ("a", "failed", "boom") in events
    assert ("c", "skipped", f"skipped: upstream bias_model {nodes['a'].key} failed: boom") in events


def test_complete_nodes_and_nodes_added_while_running():
    nodes = dag()
    s, names = scheduler_of(nodes, keep_open=True)
    s.add_nodes([nodes[k] for k in ("a", "b", "c")], complete={nodes["a"].key})
    assert s.snapshot()[nodes["a"].key] == "cached"
    assert names[s.next_ready().key] == "b"
    with pytest.raises(ValueError, match="neither scheduled nor complete"):
        s.add_nodes([node("x", node("unknown"))])
    # another producer (e.g. an Optuna study) adds nodes from another thread while b runs
    t = threading.Thread(target=s.add_nodes, args=([nodes["d"], nodes["e"], nodes["f"]],))
    t.start(); t.join()
    assert s.add_nodes([nodes["d"]]) == 0  # known keys are not added twice
    assert {names[s.next_ready().key], names[s.next_ready().key]} == {"d", "f"}  # ready at once; e waits on d
    assert s.next_ready() is None
    for k in ("b", "c", "d", "e", "f"):
        s.node_done(nodes[k].key)
    assert not s.finished  # kept open until the producer closes it
    s.close()
    assert s.finished


def test_searcher_suggests_none_while_blocked_and_finished_at_the_end():
    from ray.tune.search import Searcher

    from orchestrator.scheduler import make_searcher

    nodes = dag()
    s, names = scheduler_of({k: nodes[k] for k in ("a", "b")})
    s.add_nodes([nodes["a"], nodes["b"]])
    searcher = make_searcher(s, lambda n: {"key": n.key}, error_of=lambda tid: "ValueError: broken")
    assert searcher.suggest("t1") == {"node": {"key": nodes["a"].key}}
    assert searcher.suggest("t2") is None  # b waits for a
    searcher.on_trial_complete("t1")
    assert searcher.suggest("t2") == {"node": {"key": nodes["b"].key}}
    searcher.on_trial_complete("t2", error=True)
    assert s.message[nodes["b"].key] == "ValueError: broken"
    assert searcher.suggest("t3") == Searcher.FINISHED
    # what tuner.pkl holds: the searcher pickles to a finished stand-in, never the live scheduler
    # (its __reduce__ is checked directly: the project never unpickles, tests/test_no_pickle.py)
    rebuild, args = searcher.__reduce__()[:2]
    assert rebuild(*args).suggest("x") == Searcher.FINISHED


SPEC = {
    "name": "branch", "max_length": 32,
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.9], "seeds": [0]},
    "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
    "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
    "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 2},
    "resources": {"cpus_per_trial": 1},
}


@pytest.mark.slow
def test_failing_branch_skips_its_descendants_while_the_rest_finishes(ray_env, tmp_path):
    from orchestrator import launch, results

    # a model directory that passes the launch's preflight (config, tokenizer, a weights file) but whose weights
    # are not a model: its fine-tune fails at run time
    import shutil

    from srnet_core.models import minilm_path

    broken = tmp_path / "not_a_model"
    broken.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_path(), name), broken / name)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    spec = {**SPEC, "output_dir": str(tmp_path / "out"),
            "grid": {**SPEC["grid"], "backbones": ["tiny-bert", str(broken)]}}
    path = tmp_path / "branch.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert launch.main([str(path), "--no-figure", "--no-report"]) == 1
    frame = results.load(str(tmp_path / "out"))
    per_node = frame.drop_duplicates("node_key").set_index("node_key")
    ok = per_node[per_node["backbone"] == "tiny-bert"]
    bad = per_node[per_node["backbone"] == str(broken)]
    assert len(ok) == 3 and (ok["status"] == "completed").all()  # the independent branch finished
    assert len(bad) == 3 and (bad["status"] == "failed").all()
    ft = bad[bad["stage"] == "finetune"]
    assert len(ft) == 1 and not ft["error"].iloc[0].startswith("skipped")
    assert ft["error"].iloc[0] != "failed"  # the trial's own error line, not a placeholder
    masks = bad[bad["stage"] == "mask_train"]
    # each skipped node names the failed node and its error, the root cause
    assert (masks["error"] == f"skipped: upstream finetune {ft.index[0]} failed: {ft['error'].iloc[0]}").all()
    # nothing of the failed branch was run or left half-done in the store
    store = os.path.join(str(tmp_path / "out"), "artifacts", "mask_train")
    assert sorted(os.listdir(store)) == sorted(ok[ok["stage"] == "mask_train"].index)


def test_every_stage_resources_checked_before_anything_runs():
    import copy

    from orchestrator.launch import validate_resources
    from orchestrator.plan import build_plan
    from orchestrator.spec import SpecError, parse_spec

    d = copy.deepcopy({**SPEC, "output_dir": "out"})
    d["resources"] = {"cpus_per_trial": "auto", "stages": {"mask_train": {"gpus": 0.5}}}
    spec = parse_spec(d)
    plan = build_plan(spec)
    todo = list(plan.nodes.values())
    # mask training comes only after the fine-tune, yet its impossible GPU request fails up front
    with pytest.raises(SpecError, match=r"resources.stages.mask_train.gpus"):
        validate_resources(spec, plan, todo, {"CPU": 4})
    got = validate_resources(spec, plan, todo, {"CPU": 4, "GPU": 1})
    # "auto" CPUs: 4 shared by the widest wave of remaining nodes (the 2 mask-training nodes)
    assert got == {"finetune": {"cpu": 2.0, "gpu": 1.0}, "mask_train": {"cpu": 2.0, "gpu": 0.5}}


def test_progress_view_counts_and_line(capsys):
    from rich.console import Console

    from orchestrator.plan import Plan
    from orchestrator.progress import LiveProgress

    nodes = dag()
    s, names = scheduler_of(nodes)
    s.add_nodes(nodes.values(), complete={nodes["f"].key})
    a = s.next_ready()
    s.node_failed(a.key, "boom")
    d = s.next_ready()
    s.node_started(d.key)  # its trial started (Tune's on_trial_start): its time counts from here
    s.node_done(d.key)
    console = Console(width=200, force_terminal=False)
    view = LiveProgress(Plan({n.key: n for n in nodes.values()}), s, {}, console, every=3600, live=False)
    tally = view.tally()
    row = tally.rows["bias_model"]
    assert (row["nodes"], row["done"], row["cached"], row["failed"], row["skipped"], row["to run"]) == (6, 1, 1, 1, 3, 0)
    with view:
        pass
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("progress: 6/6 nodes ended (done 1, cached 1, failed 1, skipped 3)")
    assert "ETA 0:00:00" in out  # nothing left


def test_progress_lines_when_something_changes_and_a_heartbeat_when_nothing_does(capsys):
    """Without a TTY: a line at a change; nothing while nothing changes, until the heartbeat is due."""
    from rich.console import Console

    from orchestrator.plan import Plan
    from orchestrator.progress import LiveProgress

    nodes = dag()
    s, names = scheduler_of(nodes)
    s.add_nodes(nodes.values())
    view = LiveProgress(Plan({n.key: n for n in nodes.values()}), s, {}, Console(width=200, force_terminal=False),
                        live=False, heartbeat=3600)
    view._print_line()  # the first: a change from nothing
    view._print_line()  # the same counts (elapsed time does not count as a change)
    s.node_started(s.next_ready().key)
    view._print_line()  # a node started
    view._print_line()
    view._printed_at -= 3600  # an hour without a line
    view._print_line()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "running 0" in lines[0] and "running 1" in lines[1] and "running 1" in lines[2]


@pytest.mark.parametrize("uri", [False, True])
def test_store_lists_completion_markers_in_one_pass(tmp_path, uri):
    from workers.store import ArtifactStore

    root = str(tmp_path / "store")
    store = ArtifactStore("file://" + root if uri else root, cache_dir=str(tmp_path / "cache"))
    assert store.list_complete() == set()
    for stage, key in (("finetune", "k1"), ("mask_train", "k2"), ("mask_train", "k3")):
        os.makedirs(store.node_dir(stage, key), exist_ok=True)
        with open(os.path.join(store.node_dir(stage, key), "rows.parquet"), "wb") as f:
            f.write(b"x")
        if key != "k3":  # k3 is half-done: files, no marker
            store.mark_complete(stage, key, {})
    assert store.list_complete() == {("finetune", "k1"), ("mask_train", "k2")}
    assert all(store.is_complete(s, k) for s, k in store.list_complete())


@pytest.mark.slow
def test_nodes_added_while_the_tune_run_goes_on(ray_env, tmp_path):
    """A producer (as a search would) adds a node after the first one ended; the same Tune run runs it."""
    from orchestrator import launch, results
    from orchestrator.plan import build_plan
    from orchestrator.spec import parse_spec
    from workers.store import ArtifactStore

    def spec_for(seeds):
        train = {"lr": 1e-3, "max_steps": 1, "batch_size": 32, "eval_every": 1, "eval_at_start": False}
        return parse_spec({"name": "grow", "output_dir": str(tmp_path / "out"), "max_length": 32,
                           "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5],
                                    "seeds": seeds, "paradigms": []},
                           "task_options": {"synthetic": {"n_train": 32, "n_dev": 16, "n_ood": 16}},
                           "finetune": train, "resources": {"cpus_per_trial": 1}})
    spec, later = spec_for([0]), build_plan(spec_for([1]))
    plan = build_plan(spec)
    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)

    def producer(scheduler):
        def add_after_first(node, status, message):
            if node.key in plan.nodes:  # closed whatever the first node's fate: a failure fails the test, no hang
                if status == "done":
                    scheduler.add_nodes(later.nodes.values())
                scheduler.close()
        scheduler.on_node_done(add_after_first)

    errors, failures, finished = launch.run_plan(spec, plan, store, root, set(), on_scheduler=producer)
    assert errors == {} and failures == []
    assert {k for _, k in finished} == set(plan.nodes) | set(later.nodes)
    assert set(results.load(root)["node_key"]) == set(plan.nodes) | set(later.nodes)


def test_reopen_puts_a_corrupt_producer_back_before_its_consumers():
    """Issue 24 item 8: a consumer that finds its input corrupt re-opens the producer in the running scheduler:
    the producer runs again, the consumer and its not-yet-started siblings wait for it, then run."""
    from orchestrator.plan import Input, Node

    a = Node("finetune", {"stage": "finetune", "seed": 0})
    b = Node("mask_train", {"stage": "mask_train", "sparsity": 0.5}, {"init_weights": Input(a, "w")})
    c = Node("mask_train", {"stage": "mask_train", "sparsity": 0.9}, {"init_weights": Input(a, "w")})
    s = DagScheduler()
    s.add_nodes([a, b, c])
    assert s.next_ready() is a
    s.node_done(a.key)
    assert s.next_ready() in (b, c)
    waiter = b if s.status[b.key] == "running" else c
    sibling = c if waiter is b else b
    assert s.reopen(a.key, waiter.key)
    assert (s.status[a.key], s.status[waiter.key], s.status[sibling.key]) == ("ready", "waiting", "waiting")
    assert s.next_ready() is a and s.next_ready() is None  # nothing downstream starts before it is redone
    s.node_done(a.key)
    assert {s.next_ready().key, s.next_ready().key} == {b.key, c.key}
    assert not s.reopen(b.key, None)  # running, not done: nothing to re-open
    s.node_done(b.key)
    s.node_done(c.key)
    # a second consumer failure re-opens it once more; a third is refused (a store that corrupts every write)
    assert s.reopen(a.key, None) and s.next_ready() is a
    s.node_done(a.key)
    assert not s.reopen(a.key, None) and s.finished


@pytest.mark.slow
def test_a_file_corrupted_while_the_sweep_runs_reruns_its_producer_then_the_consumer(ray_env, tmp_path):
    """Issue 24 item 8, end to end: the fine-tune's weights are corrupted right after it completes; the mask
    training that reads them finds the sha256 wrong, the running launch re-runs the fine-tune, then the mask
    training, and the sweep ends with no error."""
    from orchestrator import launch, results
    from orchestrator.plan import build_plan
    from orchestrator.spec import parse_spec
    from workers.store import ArtifactStore

    train = {"lr": 1e-3, "max_steps": 2, "batch_size": 32, "eval_every": 1}
    spec = parse_spec({"name": "corrupt", "output_dir": str(tmp_path / "out"), "max_length": 32,
                       "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
                       "task_options": {"synthetic": {"n_train": 32, "n_dev": 16, "n_ood": 16}},
                       "finetune": train, "mask_train": train, "resources": {"cpus_per_trial": 1}})
    plan = build_plan(spec)
    store = ArtifactStore(spec.artifact_root())
    (ft,) = [n for n in plan.nodes.values() if n.stage == "finetune"]
    corrupted = []

    def producer(scheduler):
        def corrupt_once(node, status, message):
            if node.key == ft.key and status == "done" and not corrupted:
                path = os.path.join(store.node_dir("finetune", ft.key), "weights.safetensors")
                with open(path, "r+b") as f:  # one flipped byte, same size: only the sha256 tells
                    f.seek(os.path.getsize(path) // 2)
                    byte = f.read(1)
                    f.seek(-1, 1)
                    f.write(bytes([byte[0] ^ 0xFF]))
                corrupted.append(path)
        scheduler.on_node_done(corrupt_once)
        scheduler.close()

    errors, failures, finished = launch.run_plan(spec, plan, store, results.results_dir(spec.output_dir), set(),
                                                 on_scheduler=producer)
    assert corrupted and errors == {} and failures == []
    assert {k for _, k in finished} == set(plan.nodes)
    events = [(e["event"], e["stage"]) for e in store.events() if e["key"] in plan.nodes]
    assert events.count(("run", "finetune")) == 2 and events.count(("invalidated", "finetune")) == 1
    assert events.count(("failed", "mask_train")) == 1  # found the bad input: not retried, re-opened upstream
    assert store.is_complete("finetune", ft.key, verify=True)  # the re-run wrote good weights
    assert set(results.load(results.results_dir(spec.output_dir))["stage"]) == {"finetune", "mask_train"}


def test_a_second_consumer_of_a_reopened_producer_waits_for_it_too():
    """Review finding: while a producer re-runs for one consumer, another consumer that finds the same file bad
    waits for the re-run instead of failing."""
    from orchestrator.plan import Input, Node

    u = Node("finetune", {"stage": "finetune", "seed": 0})
    a = Node("mask_train", {"stage": "mask_train", "sparsity": 0.5}, {"init_weights": Input(u, "w")})
    b = Node("mask_train", {"stage": "mask_train", "sparsity": 0.9}, {"init_weights": Input(u, "w")})
    s = DagScheduler()
    s.add_nodes([u, a, b], complete=[u.key])
    assert {s.next_ready().key, s.next_ready().key} == {a.key, b.key}  # both running
    assert s.reopen(u.key, a.key) and s.reopen(u.key, b.key)
    assert (s.status[u.key], s.status[a.key], s.status[b.key]) == ("ready", "waiting", "waiting")
    assert s.next_ready() is u
    s.node_done(u.key)
    assert {s.next_ready().key, s.next_ready().key} == {a.key, b.key}
