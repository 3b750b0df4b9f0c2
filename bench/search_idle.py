"""GPU idle time of the schedule search: one Tune run per batch and per rung (old) vs ask/tell on the one
running scheduler (new, issue 21 item 2), on fake GPUs.

    .venv/bin/python bench/search_idle.py [--gpus 4] [--n-trials 24] [--scale 200] [--seed 0]

The study's own code runs for real: the spec (sweeps/schedule_search.yaml, output in a temp dir), Optuna (TPE,
the median pruner fed by a rung at 50% of mask training), ``orchestrator.search.run_study`` with its trial loop
(old: ``TrialLoop.run_batch``, batches of ``--gpus`` trials; new: ``AskTell``, ``--gpus`` trials in flight), and
``orchestrator.scheduler.DagScheduler`` handing out ready nodes. Only the Tune run is replaced: ``--gpus``
worker threads take ready nodes from the scheduler as Tune's trials would, and a node "trains" by sleeping
its duration, then writes rows (an objective that is a smooth function of the trial's parameters) and its
completion marker. Each Tune run first costs ``--run-start`` seconds during which every GPU idles (the
measured fixed cost of a launch: Tune start-up, cold trial processes; bench/RESULTS.md).

Durations, in seconds of a GPU: fine-tuning ``--finetune-s``; mask training ``--mask-s`` x the node's share
of the full length (a rung: 0.5) x a lognormal straggler factor (sigma ``--sigma``, drawn from the node's key,
so the same node always takes the same time). Time runs ``--scale`` times faster than that (the sleeps), and
everything is reported in GPU seconds (real seconds x scale), the driver's own work (Optuna, rows, markers)
included at the same scale. Idle GPU time = GPUs x makespan - busy GPU time, from the first run's start to the
last node's end. Writes JSON (default bench/results/search_idle.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from orchestrator import results  # noqa: E402
from orchestrator import search  # noqa: E402
from orchestrator.scheduler import DagScheduler  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from workers.store import ArtifactStore  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeGpus:
    """Runs a DagScheduler's ready nodes on ``gpus`` threads, as one Tune run would; records busy time."""

    def __init__(self, args, store, setting):
        self.args, self.store, self.setting = args, store, setting
        self.busy = 0.0  # real seconds of node work, all GPUs together
        self.trial_busy = 0.0  # the same, mask-training nodes only
        self.ft_end = None  # perf_counter when the fine-tuning ended
        self.runs = 0
        self.nodes = 0
        self.lock = threading.Lock()

    def duration(self, node) -> float:
        a = self.args
        if node.stage != "mask_train":
            return a.finetune_s
        steps = node.stage_config["train"].get("max_steps") or self.setting.mask_steps
        u = int(hashlib.sha256(f"{a.seed}:{node.key}".encode()).hexdigest()[:12], 16) / 16 ** 12
        z = math.sqrt(2) * _erfinv(2 * min(max(u, 1e-9), 1 - 1e-9) - 1)  # a standard normal draw from the key
        return a.mask_s * steps / self.setting.mask_steps * math.exp(a.sigma * z)

    def rows(self, node) -> pd.DataFrame:
        """An objective with a known optimum: accuracy falls with the distance of the mask lr from 3e-3 and of
        the initial sparsity from 0.7; a rung reads a little lower."""
        cfg = node.stage_config
        gradual, lr = cfg.get("gradual") or {}, cfg["train"]["lr"]
        acc = 0.85 - 0.04 * abs(math.log10(lr) - math.log10(3e-3)) - 0.2 * abs(gradual.get("initial", 0.7) - 0.7)
        acc -= 0.03 if cfg["train"].get("max_steps") else 0.0
        return pd.DataFrame([{"node_key": node.key, "step": 4, "eval_dataset": split, "eval_role": role,
                              "metric": "accuracy", "value": acc if role != "ood" else 0.0, "selected": True}
                             for split, role in (("dev", "id"), ("ood_dev", "ood_dev"), ("ood", "ood"))])

    def run(self, sched: DagScheduler) -> None:
        """One "Tune run": its start-up (every GPU idle), then the scheduler's nodes until it is finished."""
        self.runs += 1
        time.sleep(self.args.run_start / self.args.scale)

        def gpu():
            while True:
                node = sched.next_ready()
                if node is None:
                    if sched.finished:
                        return
                    time.sleep(0.002)
                    continue
                start = time.perf_counter()
                time.sleep(self.duration(node) / self.args.scale)
                out = self.store.node_dir(node.stage, node.key)
                os.makedirs(out, exist_ok=True)
                self.rows(node).to_parquet(os.path.join(out, "rows.parquet"))
                with open(os.path.join(out, "summary.json"), "w") as f:
                    json.dump({"wall_seconds": self.duration(node)}, f)
                self.store.mark_complete(node.stage, node.key, {})
                with self.lock:
                    self.busy += time.perf_counter() - start
                    self.nodes += 1
                    if node.stage == "mask_train":
                        self.trial_busy += time.perf_counter() - start
                    else:
                        self.ft_end = time.perf_counter()
                sched.node_done(node.key)

        threads = [threading.Thread(target=gpu, daemon=True) for _ in range(self.args.gpus)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()


def _erfinv(y: float) -> float:
    """Inverse error function (Newton on math.erf), for the straggler draw."""
    x = 0.0
    for _ in range(60):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


class BatchRunner(FakeGpus):
    """The old runner: each ``run_nodes`` call (a batch of trials, or a batch's rung) is its own run."""

    def run_nodes(self, nodes):
        every = [n for wave in search.closure(nodes) for n in wave]
        sched = DagScheduler()
        sched.add_nodes(every, complete={n.key for n in every if self.store.is_complete(n.stage, n.key)})
        self.run(sched)
        return {n.key: None for n in nodes}


class AskTellRunner(FakeGpus):
    """The new runner: the whole study is one run; ``AskTell`` adds the trials' nodes as others end."""

    ask_tell = True

    def run_study(self, finetune, driver) -> None:
        sched = DagScheduler(keep_open=True)
        every = [n for wave in search.closure([finetune]) for n in wave]
        sched.add_nodes(every, complete={n.key for n in every if self.store.is_complete(n.stage, n.key)})
        driver.attach(sched)
        self.run(sched)
        driver.join()


def measure(mode: str, args) -> dict:
    with open(os.path.join(REPO, "sweeps", "schedule_search.yaml")) as f:
        d = yaml.safe_load(f)
    with tempfile.TemporaryDirectory(prefix="search-idle-") as out:
        d["output_dir"] = out
        d["search"].update(n_trials=args.n_trials, batch_size=args.gpus, parallelism=args.gpus,
                           sampler_seed=args.seed)
        spec = parse_spec(d)
        store = ArtifactStore(spec.artifact_root())
        root = results.results_dir(spec.output_dir)
        setting = search.build_setting(spec)
        runner = (BatchRunner if mode == "batches" else AskTellRunner)(args, store, setting)
        started = time.perf_counter()
        result = search.run_study(spec, runner, store, root, log=lambda m: None)
        ended = time.perf_counter()
        wall = ended - started
        trials_wall = ended - runner.ft_end
        states = [t.state.name for t in result.study.trials]
        best = result.study.best_value
    makespan, busy = wall * args.scale, runner.busy * args.scale
    return {"mode": mode, "tune_runs": runner.runs, "nodes": runner.nodes, "trials": len(states),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "best_value": best,
            "makespan_gpu_s": makespan, "busy_gpu_s": busy, "idle_gpu_s": args.gpus * makespan - busy,
            "utilisation": busy / (args.gpus * makespan), "real_wall_s": wall,
            # after the fine-tuning (every GPU could be busy with trials from then on)
            "trials_makespan_gpu_s": trials_wall * args.scale,
            "trials_idle_gpu_s": args.gpus * trials_wall * args.scale - runner.trial_busy * args.scale,
            "trials_utilisation": runner.trial_busy / (args.gpus * trials_wall)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--n-trials", type=int, default=24)
    p.add_argument("--finetune-s", type=float, default=1200.0)
    p.add_argument("--mask-s", type=float, default=600.0)
    p.add_argument("--sigma", type=float, default=0.3)
    p.add_argument("--run-start", type=float, default=16.0)
    p.add_argument("--scale", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "search_idle.json"))
    args = p.parse_args(argv)
    rows = [measure(mode, args) for mode in ("batches", "ask-tell")]
    print(f"{'mode':>9} {'runs':>5} {'nodes':>5} {'pruned':>6} {'makespan s':>10} {'idle GPU-s':>10} {'util':>6}"
          f" | after fine-tuning: {'makespan s':>10} {'idle GPU-s':>10} {'util':>6}")
    for r in rows:
        print(f"{r['mode']:>9} {r['tune_runs']:>5} {r['nodes']:>5} {r['pruned']:>6} {r['makespan_gpu_s']:>10,.0f} "
              f"{r['idle_gpu_s']:>10,.0f} {r['utilisation']:>6.1%} | {'':>19}{r['trials_makespan_gpu_s']:>10,.0f} "
              f"{r['trials_idle_gpu_s']:>10,.0f} {r['trials_utilisation']:>6.1%}")
    return write_result(args.out, {"args": vars(args), "rows": rows, "machine": platform.node(),
                                   "python": platform.python_version()})


if __name__ == "__main__":
    main()
