"""The ordering through the real Tune path vs bench/scheduler.py's replay, on a local Ray with fake GPUs.

    nice -n 19 .venv/bin/python bench/tune_order.py --spec sweeps/paper_small.yaml --gpus 4 --makespan 40
    nice -n 19 .venv/bin/python bench/tune_order.py --dag late_critical --gpus 2

Each DAG is run through the launch's own ``orchestrator.tune_run.TuneRun`` (one Tune run, the
``NodeSearcher`` over a ``DagScheduler``, actor reuse, the ``on_trial_start`` callback, and the admission that
hands out only what can start: ``orchestrator/admission.py``) on ``ray.init(num_gpus=N)`` (fake GPUs: Ray
only counts them), each trial a sleep of its node's duration instead of its stage; and through
``bench/scheduler.py``'s event replay of the same ``DagScheduler`` with the same durations. Policies of the
real path: ``bounded`` (the launch) and ``unbounded`` (before issue 24: every ready node handed to Tune at once,
``TUNE_MAX_PENDING_TRIALS_PG`` = min(200, width), Tune choosing which pending trial starts).

DAGs: ``--spec``: a sweep's plan, each node's duration = the planner's estimate x U(1 - noise, 1 + noise)
(bench/scheduler.py's draw), scaled so that the replay's makespan is ``--makespan`` seconds; one GPU per node,
bias models on CPU. ``--dag late_critical``: six 2 s nodes ready at once and a 1 s node whose child is
estimated long (3 s, estimate 20): the child becomes ready while the short ones wait, and should start next.

Reported per run: makespan (first hand-out to last end), utilisation = GPU work (the sleeps) / (GPUs x
makespan), held = GPU time from each trial's start to its end / (GPUs x makespan), pending seconds (trial
start - hand-out), the most GPU trials handed out and not ended at once, the share of node pairs started
in the same order as in the replay, and the GPU-seconds lost per trial against the replay ((makespan - the
replay's) x GPUs / GPU trials: Tune's hand-off, which real node durations of minutes to hours dwarf).
JSON (with every node's times) to ``--out``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from orchestrator.plan import Input, Node, Plan, build_plan, node_seconds  # noqa: E402
from orchestrator.scheduler import DagScheduler  # noqa: E402

from benchlib import write_result  # noqa: E402
from scheduler import simulate_dag, uses_gpu  # noqa: E402  (bench/scheduler.py)


def late_critical() -> tuple[Plan, dict, dict, dict]:
    """(plan, estimates, actual seconds, labels)."""
    shorts = [Node("finetune", {"stage": "finetune", "seed": i}) for i in range(1, 7)]
    first = Node("finetune", {"stage": "finetune", "seed": 0})
    critical = Node("mask_train", {"stage": "mask_train", "sparsity": 0.9}, {"init_weights": Input(first, "w")})
    nodes = [first, *shorts, critical]  # topological order: the short ones come before the critical child
    labels = {first.key: "P", critical.key: "C", **{n.key: f"S{i}" for i, n in enumerate(shorts, 1)}}
    est = {first.key: 1.0, critical.key: 20.0, **{n.key: 2.0 for n in shorts}}
    actual = {first.key: 1.0, critical.key: 3.0, **{n.key: 2.0 for n in shorts}}
    return Plan({n.key: n for n in nodes}), est, actual, labels


def from_spec(path: str, noise: float, seed: int, gpus: int, makespan: float) -> tuple[Plan, dict, dict, dict]:
    from orchestrator.spec import load_spec

    plan = build_plan(load_spec(path))
    rng = random.Random(seed)
    est = {k: node_seconds(n) for k, n in plan.nodes.items()}
    actual = {k: est[k] * rng.uniform(1 - noise, 1 + noise) for k in plan.nodes}  # bench/scheduler.py's draw
    span, _ = simulate_dag(plan, actual, gpus, priority=True)
    factor = makespan / span
    labels = {k: f"{n.stage}-{k[:6]}" for k, n in plan.nodes.items()}
    return plan, est, {k: v * factor for k, v in actual.items()}, labels


def make_sleeper(seconds: dict[str, float]):
    def sleeper(config: dict) -> None:
        from ray import tune

        began = time.time()
        time.sleep(seconds[config["node"]["key"]])
        tune.report({"began": began})
    return sleeper


def replay(plan: Plan, est: dict, actual: dict, gpus: int) -> dict:
    starts: dict[str, float] = {}
    span, busy = simulate_dag(plan, actual, gpus, priority=True, duration=lambda n: est[n.key], starts=starts)
    return {"makespan_s": span, "utilisation": busy / (gpus * span), "starts": starts}


def real(plan: Plan, est: dict, actual: dict, gpus: int, policy: str, workdir: str) -> dict:
    """One Tune run of the plan through TuneRun (the launch's), trials sleeping their durations."""
    import ray

    from orchestrator.launch import concurrent_width
    from orchestrator.tune_run import TuneRun, env_vars, no_metrics_files_warning, tune_env
    from workers.store import ArtifactStore

    spec = SimpleNamespace(name=f"order-{policy}", output_dir=workdir,
                           resources=SimpleNamespace(max_concurrent_trials=None, max_retries_infra=0))
    scheduler = DagScheduler(duration=lambda n: est[n.key])
    scheduler.add_nodes(plan.nodes.values())
    resources = {stage: {"cpu": 1.0, "gpu": 1.0 if stage != "bias_model" else 0.0}
                 for stage in {n.stage for n in plan.nodes.values()}}
    totals = ray.cluster_resources()
    cluster = {"nodes": [{"CPU": totals.get("CPU", 0.0), "GPU": totals.get("GPU", 0.0)}], "node_types": None}
    no_rows = SimpleNamespace(submit=lambda node, status, message: None)  # a sleep writes no rows to publish
    run = TuneRun(spec, ArtifactStore(os.path.join(workdir, "artifacts")), scheduler, no_rows, resources, cluster,
                  trainable_fn=make_sleeper(actual), admission=None if policy == "bounded" else False)
    width = concurrent_width(spec, plan, list(plan.nodes.values()))
    began = time.time()
    try:
        with env_vars(**tune_env(), RAY_AIR_NEW_OUTPUT="0", TUNE_MAX_PENDING_TRIALS_PG=str(min(200, width))), \
                no_metrics_files_warning():
            run.tuner().fit()
    finally:
        run.close()
    wall = time.time() - began
    status = scheduler.snapshot()
    bad = {k: s for k, s in status.items() if s != "done"}
    if bad:
        raise RuntimeError(f"{policy}: nodes not done: {bad}")
    q, s, e = scheduler.queued_at, scheduler.started_at, scheduler.ended_at
    t0 = min(q.values())
    span = max(e.values()) - t0
    gpu_keys = [k for k, n in plan.nodes.items() if uses_gpu(n)]
    work = sum(actual[k] for k in gpu_keys)
    held = sum(e[k] - s[k] for k in gpu_keys)
    pending = [s[k] - q[k] for k in plan.nodes]
    # the most GPU trials handed out and not ended at once (a hand-out at the very moment of an end counts after)
    events = sorted([(q[k], 1) for k in gpu_keys] + [(e[k], -1) for k in gpu_keys], key=lambda x: (x[0], x[1]))
    claimed = max(itertools.accumulate(d for _, d in events))
    return {"policy": policy, "wall_s": wall, "makespan_s": span, "utilisation": work / (gpus * span),
            "held": held / (gpus * span), "pending_mean_s": sum(pending) / len(pending),
            "pending_max_s": max(pending), "max_claimed_gpu_trials": claimed,
            "nodes": {k: {"queued": q[k] - t0, "started": s[k] - t0, "ended": e[k] - t0} for k in plan.nodes}}


def concordance(a: dict[str, float], b: dict[str, float], tie: float = 1e-6) -> float:
    """Share of node pairs (strictly ordered in ``a``) that ``b`` orders the same way."""
    same = total = 0
    for x, y in itertools.combinations(a, 2):
        if abs(a[x] - a[y]) <= tie:
            continue
        total += 1
        same += (a[x] < a[y]) == (b[x] < b[y])
    return same / total if total else 1.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", help="a sweep spec: its plan is the DAG")
    parser.add_argument("--dag", choices=["late_critical"], help="a built-in DAG instead of --spec")
    parser.add_argument("--gpus", type=int, default=4, help="fake GPUs given to the local Ray")
    parser.add_argument("--makespan", type=float, default=40.0, help="--spec: the replay's makespan in seconds")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default="bounded,unbounded")
    parser.add_argument("--out", default="bench/results/tune_order.json")
    args = parser.parse_args(argv)
    if bool(args.spec) == bool(args.dag):
        parser.error("give exactly one of --spec and --dag")
    if args.dag:
        plan, est, actual, labels = late_critical()
    else:
        plan, est, actual, labels = from_spec(args.spec, args.noise, args.seed, args.gpus, args.makespan)
    import ray

    sim = replay(plan, est, actual, args.gpus)
    name = args.spec or args.dag
    print(f"{name}: {len(plan.nodes)} nodes on {args.gpus} fake GPUs; replay makespan {sim['makespan_s']:.1f} s, "
          f"utilisation {sim['utilisation']:.1%}")
    workdir = tempfile.mkdtemp(prefix="tune-order-")
    ray.init(num_cpus=args.gpus + 2, num_gpus=args.gpus, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    runs = []
    try:
        for policy in args.policies.split(","):
            got = real(plan, est, actual, args.gpus, policy, os.path.join(workdir, policy))
            n_gpu = sum(uses_gpu(n) for n in plan.nodes.values())
            # GPU-seconds lost per GPU trial against the replay: Tune's hand-off (a step, the actor's reset or start)
            got["overhead_per_trial_s"] = (got["makespan_s"] - sim["makespan_s"]) * args.gpus / n_gpu
            got["same_order_as_replay"] = concordance(sim["starts"], {k: v["started"] for k, v in got["nodes"].items()})
            order = sorted(got["nodes"], key=lambda k: got["nodes"][k]["started"])
            got["start_order"] = [labels[k] for k in order]
            runs.append(got)
            print(f"{policy:>9}: makespan {got['makespan_s']:.1f} s, utilisation {got['utilisation']:.1%} "
                  f"(held {got['held']:.1%}), pending mean {got['pending_mean_s']:.2f} s max "
                  f"{got['pending_max_s']:.2f} s, at most {got['max_claimed_gpu_trials']} GPU trials handed out, "
                  f"same order as replay {got['same_order_as_replay']:.1%}, "
                  f"{got['overhead_per_trial_s']:.2f} GPU-s lost per trial")
            if args.dag:
                print(f"{'':>11}start order {' '.join(got['start_order'])}")
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    replay_order = sorted(sim["starts"], key=lambda k: (sim["starts"][k], k))
    return write_result(args.out, {
        "dag": name, "nodes": len(plan.nodes), "gpus": args.gpus, "noise": args.noise, "seed": args.seed,
        "replay": {"makespan_s": sim["makespan_s"], "utilisation": sim["utilisation"],
                   "start_order": [labels[k] for k in replay_order]},
        "labels": labels, "runs": runs, "machine": platform.platform(), "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
