"""Scheduler replay: full_grid's plan on 8, 64 and 256 GPUs, old waves vs the dependency-driven scheduler.

    .venv/bin/python bench/scheduler.py [--spec sweeps/full_grid.yaml] [--noise 0.3] [--seed 0]

An event simulation, no training: every node's duration is the planner's estimate
(``orchestrator.plan.node_seconds``) times a uniform factor in [1 - noise, 1 + noise] (the same draw for every
policy). Each GPU node takes one GPU; bias models run on CPU beside them and take none. Policies:

- ``waves``: the old launch, one Tune run per wave of the DAG; a wave's nodes are list-scheduled onto the GPUs
  in plan order, and the next wave starts when the slowest node of this one ends.
- ``dag-fifo``: nodes start as soon as their inputs are complete, in plan order.
- ``dag-lrp``: the same, ready nodes ordered longest-remaining-path first: ``orchestrator.scheduler.
  DagScheduler``, the very object the launch's Tune Searcher asks (priorities from the noise-free estimates).

Utilisation = GPU-busy seconds / (GPUs x makespan). Prints a table and writes JSON
(default bench/results/scheduler.json).
"""
from __future__ import annotations

import argparse
import heapq
import os
import platform
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.plan import Plan, build_plan, node_seconds  # noqa: E402
from orchestrator.scheduler import DagScheduler  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)


def uses_gpu(node) -> bool:
    return node.stage != "bias_model"


def simulate_waves(plan: Plan, actual: dict[str, float], gpus: int) -> tuple[float, float]:
    t, busy = 0.0, 0.0
    for wave in plan.waves():
        free = [t] * gpus  # heap of GPU free times
        end = t
        for node in wave:
            if not uses_gpu(node):
                end = max(end, t + actual[node.key])
                continue
            start = heapq.heappop(free)
            finish = start + actual[node.key]
            busy += actual[node.key]
            heapq.heappush(free, finish)
            end = max(end, finish)
        t = end
    return t, busy


def simulate_dag(plan: Plan, actual: dict[str, float], gpus: int, priority: bool, duration=None,
                 uses=uses_gpu, starts: dict[str, float] | None = None) -> tuple[float, float]:
    """Makespan and busy slot-seconds of the dependency-driven launch on ``gpus`` slots. ``duration``: the
    scheduler's estimate for its priorities (default node_seconds); ``uses(node)``: whether a node takes a
    slot (default: every node but the CPU bias models; bench/predict_wall.py counts CPU slots); ``starts``:
    filled with each node's start time (bench/tune_order.py compares them with the real Tune path's)."""
    duration = duration or node_seconds
    sched = DagScheduler(duration=duration if priority else (lambda node: 0.0))
    sched.add_nodes(plan.nodes.values())
    events: list[tuple[float, int, str]] = []  # (finish time, seq, key)
    seq, t, free, busy = 0, 0.0, gpus, 0.0
    while True:
        # like Tune asking the Searcher whenever a trial could start: pull ready nodes while a GPU is free
        # (a bias model, CPU only, does not use one up)
        while free > 0:
            node = sched.next_ready()
            if node is None:
                break
            if uses(node):
                free -= 1
                busy += actual[node.key]
            if starts is not None:
                starts[node.key] = t
            heapq.heappush(events, (t + actual[node.key], seq, node.key))
            seq += 1
        if not events:
            break
        t, _, key = heapq.heappop(events)
        if uses(plan.nodes[key]):
            free += 1
        sched.node_done(key)
    assert sched.finished, "simulation ended with nodes left"
    return t, busy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="sweeps/full_grid.yaml")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpus", default="8,64,256")
    parser.add_argument("--out", default="bench/results/scheduler.json")
    args = parser.parse_args(argv)
    plan = build_plan(load_spec(args.spec))
    rng = random.Random(args.seed)
    actual = {k: node_seconds(n) * rng.uniform(1 - args.noise, 1 + args.noise) for k, n in plan.nodes.items()}
    work = sum(v for k, v in actual.items() if uses_gpu(plan.nodes[k]))
    rows = []
    print(f"{args.spec}: {len(plan.nodes)} nodes, {work / 3600:,.0f} GPU-hours of work (±{args.noise:.0%} noise)")
    print(f"{'GPUs':>5} {'policy':>9} {'makespan h':>11} {'util':>6} {'idle GPU-h':>11}")
    for gpus in [int(g) for g in args.gpus.split(",")]:
        for policy in ("waves", "dag-fifo", "dag-lrp"):
            if policy == "waves":
                makespan, busy = simulate_waves(plan, actual, gpus)
            else:
                makespan, busy = simulate_dag(plan, actual, gpus, priority=policy == "dag-lrp")
            util = busy / (gpus * makespan)
            idle = (gpus * makespan - busy) / 3600
            rows.append({"gpus": gpus, "policy": policy, "makespan_h": makespan / 3600, "utilisation": util,
                         "idle_gpu_hours": idle})
            print(f"{gpus:>5} {policy:>9} {makespan / 3600:>11,.1f} {util:>6.1%} {idle:>11,.0f}")
    return write_result(args.out, {"spec": args.spec, "nodes": len(plan.nodes), "noise": args.noise,
                                   "seed": args.seed, "gpu_hours_of_work": work / 3600, "rows": rows,
                                   "machine": platform.platform()})


if __name__ == "__main__":
    main()
