"""Orchestrator overhead per node: N trivial nodes through the real launch path on a local Ray.

    .venv/bin/python bench/orchestrator_overhead.py [--n 20,100] [--concurrency 1]

A trivial node is a real ``finetune`` stage of the synthetic task on tiny-bert with ``max_steps: 1`` (32
training examples, one training step, one evaluation of 16 + 16 examples, its fraction-grid checkpoints and
weights written, rows published): the N nodes are N seeds of ``grid.paradigms: []``. Ray is started once,
outside the timing (a launch reuses a running Ray, as with ``--address``). Timed: ``launch.main([spec,
"--no-figure", "--no-report"])`` on a fresh output directory: planning, the completion listing, one Tune run
with actor reuse, row publishing, the final collect and summary. The nodes' own time is the sum of their
``wall_seconds`` (run_node: inputs, stage, outputs, marker). With ``--concurrency 1`` trials run one at a
time, so overhead per node = (launch wall - sum of nodes' own time) / N. Prints a table and writes JSON
(default bench/results/orchestrator_overhead.json).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)


def spec_for(n: int, out: str, concurrency: int) -> dict:
    train = {"lr": 1e-3, "max_steps": 1, "batch_size": 32, "eval_every": 1, "eval_at_start": False,
             "eval_batch_size": 64}
    return {"name": f"overhead{n}", "output_dir": out, "max_length": 32,
            "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5],
                     "seeds": list(range(n)), "paradigms": []},
            "task_options": {"synthetic": {"n_train": 32, "n_dev": 16, "n_ood": 16}},
            "finetune": train,
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent_trials": concurrency}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="20,100")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--out", default="bench/results/orchestrator_overhead.json")
    args = parser.parse_args(argv)

    import ray

    from orchestrator import launch, results

    tmp = tempfile.mkdtemp(prefix="srnet-overhead-")
    os.environ.setdefault("SRNET_PROGRESS_EVERY", "3600")  # one progress line at the end
    ray.init(num_cpus=max(2, args.concurrency), include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    rows = []
    try:
        for n in [int(x) for x in args.n.split(",")]:
            out = os.path.join(tmp, f"n{n}")
            path = os.path.join(tmp, f"n{n}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(spec_for(n, out, args.concurrency), f)
            t0 = time.perf_counter()
            rc = launch.main([path, "--no-figure", "--no-report"])
            wall = time.perf_counter() - t0
            frame = results.load(out)
            per_node = frame.drop_duplicates("node_key")
            assert rc == 0 and len(per_node) == n and (per_node["status"] == "completed").all()
            own = float(per_node["wall_seconds"].sum())
            overhead = (wall - own / args.concurrency) / n
            rows.append({"n": n, "launch_wall_s": wall, "nodes_own_s": own, "overhead_s_per_node": overhead})
    finally:
        ray.shutdown()
    print(f"\n{'N':>5} {'launch wall s':>14} {'nodes own s':>12} {'overhead s/node':>16}")
    for r in rows:
        print(f"{r['n']:>5} {r['launch_wall_s']:>14.1f} {r['nodes_own_s']:>12.1f} {r['overhead_s_per_node']:>16.3f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return write_result(args.out, {"rows": rows, "concurrency": args.concurrency, "node": "finetune, tiny-bert, "
                                   "synthetic, max_steps 1", "machine": platform.platform(),
                                   "cpus": os.cpu_count(), "commit": commit})


if __name__ == "__main__":
    main()
