"""Predict a sweep's wall time on this CPU machine from a CPU calibration, and (given a finished output
directory) compare it with the measured one.

    nice -n 19 .venv/bin/python bench/predict_wall.py sweeps/demo.yaml --calibration cpu_2core_idle_2026-12-03.json
    nice -n 19 .venv/bin/python bench/predict_wall.py sweeps/demo.yaml --calibration cpu_2core_idle_2026-12-03.json \\
        --measured results/demo [--measured-wall 412]   # after `python -m orchestrator.launch sweeps/demo.yaml`

The prediction: each node's cost (orchestrator.plan.cost, at the trial's thread count), then the launch's
dependency-driven order (orchestrator.scheduler.DagScheduler, longest remaining path first) replayed on the
trial slots this machine gives the spec (CPUs / CPUs per trial, as orchestrator.launch sizes trials; capped
by max_concurrent_trials), plus the calibration's fixed launch overhead (Ray start, report, figure).
The measurement: the results rows the launch wrote (first node start to last node end; the sum of the nodes'
own wall times), or ``--measured-wall`` (e.g. from `time`), which then counts as the launch's whole wall time.
Use a fresh output directory: rows of an earlier run would stretch the measured span.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.plan import build_plan, node_cost, use_calibration  # noqa: E402
from orchestrator.plan.cost import CostModelError  # noqa: E402
from orchestrator.spec import SpecError, load_spec  # noqa: E402

from benchlib import write_result  # noqa: E402
from scheduler import simulate_dag  # noqa: E402


def trial_slots(spec, plan, cpus: int) -> tuple[int, dict[str, float]]:
    """(trials at once, CPUs per trial per stage) on a machine of ``cpus`` CPUs and no GPU, as the launch
    sizes them (orchestrator.launch.validate_resources)."""
    from orchestrator.launch import concurrent_width, node_resources

    todo = list(plan.nodes.values())
    width = concurrent_width(spec, plan, todo)
    per_stage = {stage: node_resources(spec, stage, width, {"CPU": cpus, "GPU": 0})["cpu"]
                 for stage in plan.count_by_stage()}
    widest = max(per_stage.values())  # a stage asking more CPUs than others bounds the trials at once
    slots = max(1, int(cpus // widest))
    if spec.resources.max_concurrent_trials:
        slots = min(slots, spec.resources.max_concurrent_trials)
    return slots, per_stage


def predict(spec, plan, cal, cpus: int) -> dict:
    slots, per_stage = trial_slots(spec, plan, cpus)
    seconds = {}
    for key, node in plan.nodes.items():
        threads = max(1, int(per_stage[node.stage]))  # Ray sets OMP_NUM_THREADS to the trial's CPUs
        seconds[key] = node_cost(node, cal=cal, threads=threads).seconds
    # on a CPU machine every node, the bias model too, takes a trial slot
    span, busy = simulate_dag(plan, seconds, slots, priority=True, duration=lambda node: seconds[node.key],
                              uses=lambda node: True)
    launch = float(cal.data.get("overheads", {}).get("launch_s", 0.0))
    by_stage: dict[str, list[float]] = {}
    for key, node in plan.nodes.items():
        by_stage.setdefault(node.stage, []).append(seconds[key])
    return {"slots": slots, "cpus_per_trial": per_stage, "nodes": len(plan.nodes), "node_seconds_sum": busy,
            "makespan_s": span, "launch_s": launch, "wall_s": span + launch,
            "by_stage": {s: {"nodes": len(v), "mean_s": sum(v) / len(v)} for s, v in by_stage.items()}}


def measured(output_dir: str) -> dict:
    """Measured times from the results rows a launch wrote under ``output_dir`` (or its results dir)."""
    from orchestrator import results

    root = output_dir if os.path.basename(os.path.normpath(output_dir)) == "results" else \
        results.results_dir(output_dir)
    frame = results.load(root, columns=["node_key", "stage", "started_at", "ended_at", "wall_seconds"])
    nodes = frame.dropna(subset=["started_at", "ended_at"]).drop_duplicates("node_key")
    if nodes.empty:
        raise SystemExit(f"{root}: no node rows with start and end times; run the sweep there first")
    span = (nodes["ended_at"].max() - nodes["started_at"].min()).total_seconds()
    by_stage = {s: {"nodes": len(g), "mean_s": float(g["wall_seconds"].mean())}
                for s, g in nodes.groupby("stage", observed=True)}
    return {"results": root, "nodes": len(nodes), "span_s": span,
            "node_seconds_sum": float(nodes["wall_seconds"].sum()), "by_stage": by_stage}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--calibration", required=True, help="a CPU calibration in bench/calibration/ or a path")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the machine (default: this one)")
    parser.add_argument("--measured", help="the finished sweep's output_dir (or its results dir)")
    parser.add_argument("--measured-wall", type=float, help="the launch's measured wall seconds (e.g. from `time`)")
    parser.add_argument("--out", default=None, help="JSON (default bench/results/predict_wall_<sweep>.json)")
    args = parser.parse_args(argv)
    try:
        cal = use_calibration(args.calibration)
        spec = load_spec(args.spec)
        plan = build_plan(spec)
        p = predict(spec, plan, cal, args.cpus)
    except (CostModelError, SpecError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{args.spec}: {p['nodes']} nodes, {p['slots']} trial(s) at once on {args.cpus} CPUs "
          f"(CPUs per trial {sorted(set(p['cpus_per_trial'].values()))}), calibration {cal.label()}")
    print(f"predicted: nodes {p['makespan_s']:,.0f} s + launch {p['launch_s']:,.0f} s = wall {p['wall_s']:,.0f} s "
          f"({p['wall_s'] / 60:.1f} min); node seconds summed {p['node_seconds_sum']:,.0f}")
    out = {"spec": args.spec, "calibration": cal.label(), "cpus": args.cpus, "predicted": p}
    if args.measured or args.measured_wall:
        m = measured(args.measured) if args.measured else {}
        if args.measured_wall:  # the whole launch, timed outside: compare with the whole prediction
            m["wall_s"], pred = args.measured_wall, p["wall_s"]
        else:  # the rows only span first node start .. last node end: compare with the nodes' makespan
            m["wall_s"], pred = m["span_s"], p["makespan_s"]
        m["ratio_predicted_over_measured"] = pred / m["wall_s"]
        what = "launch, timed" if args.measured_wall else "first node start to last node end"
        print(f"measured: {m['wall_s']:,.0f} s ({what}); "
              f"predicted / measured = {m['ratio_predicted_over_measured']:.2f} (target 0.75-1.25)")
        if "by_stage" in m:
            print(f"{'stage':<12} {'nodes':>5} {'pred s/node':>12} {'meas s/node':>12} {'ratio':>6}")
            for stage, row in m["by_stage"].items():
                pr = p["by_stage"].get(stage, {}).get("mean_s", float("nan"))
                print(f"{stage:<12} {row['nodes']:>5} {pr:>12.1f} {row['mean_s']:>12.1f} {pr / row['mean_s']:>6.2f}")
        out["measured"] = m
    name = os.path.splitext(os.path.basename(args.spec))[0]
    return write_result(args.out or f"bench/results/predict_wall_{name}.json", out)


if __name__ == "__main__":
    main()
