"""The timing study across seeds (issue 21 item 5): after one `orchestrator.search` study per seed of a timing
spec (sweeps/timing_search_mnli.yaml), tabulate each start step's subnetwork, the search's best start, and the
predictors' picks, with Early-Bird's threshold calibrated for fine-tuning on the calibration seed's ID dev only.

    python bench/timing_study.py sweeps/timing_search_mnli.yaml [--calibration-seed 0] [--out FILE]

Reads only the artifact store (rows.parquet of the fine-tuning and of every trial node, the fine-tuning's
timing.json); runs nothing. A start step counts when its trial node is complete (the enqueued starts, and any
pick a study run added).

Calibration (ID data only): on the calibration seed, the threshold candidates are the Early-Bird distances
themselves (a threshold between two distances is equivalent to the next one up); each gives a pick (the
first step closing `early_bird_window` consecutive distances below it, snapped up to a start with a trial).
The calibrated threshold is the largest one whose pick has the best ID dev of the calibration seed's starts
(largest: the earliest such pick, so the most compute saved). The other seeds are held out: their picks at
that threshold are what trusting the predictor gives. OOD dev (HANS train) and the HANS evaluation set are
reported, never read to choose; the search's "best" is its own rule (scalarised ID dev + OOD dev - 0.1 cost,
among starts keeping >= min_id_ratio of dense ID dev).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import write_result  # noqa: E402


def seed_table(spec, seed: int) -> dict:
    """Per start step with a complete trial node: ID dev, OOD dev, HANS (overall, non-entailment), dev-mm."""
    from orchestrator.search.objectives import dense_id, node_rows, objective_values
    from orchestrator.search.setting import build_setting, max_cost, trial_cost, trial_node
    from srnet_core.pruning.timing import pick_early_bird, plateau_step
    from workers.store import ArtifactStore

    spec.search.seed = seed
    setting = build_setting(spec)
    store = ArtifactStore(spec.artifact_root())
    if not store.is_complete("finetune", setting.finetune.key):
        raise SystemExit(f"seed {seed}: the fine-tuning {setting.finetune.key} is not complete; run "
                         f"python -m orchestrator.search {spec.name} --seed {seed} first")
    starts = {}
    for step in setting.candidates:
        node = trial_node(setting, {"start_step": step})
        if not store.is_complete(node.stage, node.key):
            continue
        rows = node_rows(store, node)
        v = objective_values(rows, setting.task_obj, setting.search.metric)
        sel = rows[rows["selected"].astype(bool)]

        def metric(dataset, name):
            hit = sel[(sel["eval_dataset"] == dataset) & (sel["metric"] == name)]
            return float(hit["value"].iloc[0]) if len(hit) else None
        with open(store.fetch(node.stage, node.key, "summary.json")) as f:
            wall = float(json.load(f).get("wall_seconds", 0.0))
        starts[step] = {"id_dev": v["id_dev"], "ood_dev": v["ood_dev"], "hans": metric("hans", "accuracy"),
                        "hans_non_entailment": metric("hans", "accuracy_non-entailment"),
                        "dev_mismatched": metric("dev_mismatched", "accuracy"),
                        "cost_steps": trial_cost(setting, {"start_step": step}, setting.mask_steps),
                        "wall_seconds": wall}
    with open(store.fetch("finetune", setting.finetune.key, "timing.json")) as f:
        bird = pick_early_bird(json.load(f), setting.space.sparsity)
    ft = node_rows(store, setting.finetune)
    hist = ft[(ft["eval_role"] == "id") & (ft["eval_dataset"] == setting.task_obj.id_eval_splits[0])
              & (ft["metric"] == setting.search.metric)].sort_values("step")
    curve = list(zip(hist["step"].astype(int), hist["value"].astype(float)))
    enqueued = [int(p["start_step"]) for p in spec.search.enqueue]
    return {"seed": seed, "study": setting.study_name, "finetune": setting.finetune.key,
            "dense_id": dense_id(setting, store), "candidates": list(setting.candidates),
            "searched": [s for s in enqueued if s in starts], "starts": starts,
            "bird_steps": list(bird["steps"]), "bird_distances": list(bird["distances"]),
            "id_curve": curve, "plateau": plateau_step(curve), "cost_max": max_cost(setting)}


def snap(step, candidates):
    if step is None:
        return None
    return min((c for c in candidates if c >= step), default=candidates[-1])


def bird_pick(t: dict, threshold: float, window: int):
    from srnet_core.pruning.timing import settled_step

    return snap(settled_step(t["bird_steps"], t["bird_distances"], threshold, window), t["candidates"])


def search_best(t: dict, spec) -> int | None:
    from orchestrator.search.objectives import scalarize

    pool = t["searched"]
    ratio = spec.search.min_id_ratio or 0.0
    feasible = [s for s in pool if t["starts"][s]["id_dev"] >= ratio * t["dense_id"]] or pool
    if not feasible:
        return None
    return max(feasible, key=lambda s: (scalarize(spec.search, t["starts"][s], t["starts"][s]["cost_steps"],
                                                  t["cost_max"]), -s))


def calibrate(t: dict, window: int) -> tuple[float | None, int | None]:
    """The largest threshold whose pick is the calibration seed's best-ID start (among starts with a trial)."""
    if not t["starts"]:
        return None, None
    best_id = max(v["id_dev"] for v in t["starts"].values())
    best = sorted(s for s, v in t["starts"].items() if v["id_dev"] == best_id)
    # a threshold just above each distance makes that distance count as "below"
    candidates = sorted({d * 1.0001 for d in t["bird_distances"]} | {1e-9}, reverse=True)
    for thr in candidates:
        if bird_pick(t, thr, window) in best:
            return thr, bird_pick(t, thr, window)
    return None, best[0]


def main(argv=None) -> int:
    from orchestrator.spec import SpecError, load_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--calibration-seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    window = spec.search.early_bird_window
    tables = [seed_table(spec, s) for s in spec.grid.seeds]
    by_seed = {t["seed"]: t for t in tables}
    cal = by_seed[args.calibration_seed]
    threshold, cal_pick = calibrate(cal, window)
    print(f"Early-Bird threshold calibrated on seed {args.calibration_seed}'s ID dev: "
          f"{threshold if threshold is None else f'{threshold:.2e}'} (pick {cal_pick}); window {window}")
    print("\nper seed and start step (ID dev / OOD dev = HANS train / HANS eval / HANS non-entailment / dev-mm):")
    for t in tables:
        dist = ", ".join(f"{s}:{d:.4f}" for s, d in zip(t["bird_steps"], t["bird_distances"]))
        print(f"seed {t['seed']}: dense ID {t['dense_id']:.4f}; Early-Bird distances {dist}")
        print("  ID-dev curve: " + ", ".join(f"{s}:{v:.3f}" for s, v in t["id_curve"]))
        for s, v in sorted(t["starts"].items()):
            print(f"  start {s:>4}: {v['id_dev']:.4f} / {v['ood_dev']:.4f} / {v['hans']:.4f} / "
                  f"{v['hans_non_entailment']:.4f} / {v['dev_mismatched']:.4f}   cost {v['cost_steps']} steps, "
                  f"{v['wall_seconds']:.0f} s")
    methods = {"search (best of the enqueued starts)": lambda t: search_best(t, spec),
               f"Early-Bird, threshold {spec.search.early_bird_threshold:g} (spec)":
                   lambda t: bird_pick(t, spec.search.early_bird_threshold, window),
               "Early-Bird, calibrated threshold": lambda t: bird_pick(t, threshold, window) if threshold else None,
               "ID-dev plateau": lambda t: snap(t["plateau"], t["candidates"]),
               "the end (paper's default)": lambda t: max(t["candidates"])}
    out = {"spec": args.spec, "calibration_seed": args.calibration_seed, "threshold": threshold, "window": window,
           "seeds": {t["seed"]: t for t in tables}, "methods": {}}
    print("\n| method | seed | start | ID dev | OOD dev (HANS train) | HANS | HANS non-ent. | cost steps | "
          "mask trainings | their wall s | ID dev vs search | OOD dev vs search |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, pick_of in methods.items():
        out["methods"][name] = {}
        for t in tables:
            pick, best = pick_of(t), search_best(t, spec)
            v, b = t["starts"].get(pick), t["starts"].get(best)
            searched = name.startswith("search")
            n = len(t["searched"]) if searched else 1
            wall = sum(t["starts"][s]["wall_seconds"] for s in t["searched"]) if searched else (v or {}).get("wall_seconds")
            held = " (held out)" if "calibrated" in name and t["seed"] != args.calibration_seed else ""
            out["methods"][name][t["seed"]] = {"start": pick, "values": v, "mask_trainings": n, "wall_seconds": wall}
            if v is None:
                print(f"| {name} | {t['seed']}{held} | {pick} | no trial at this start yet: the study's predictor "
                      f"comparison runs it (run the study again, with the threshold in the spec) | | | | | | | | |")
                continue
            print(f"| {name} | {t['seed']}{held} | {pick} | {v['id_dev']:.4f} | {v['ood_dev']:.4f} | {v['hans']:.4f} | "
                  f"{v['hans_non_entailment']:.4f} | {v['cost_steps']} | {n} | {wall:.0f} | "
                  f"{v['id_dev'] - b['id_dev']:+.4f} | {v['ood_dev'] - b['ood_dev']:+.4f} |")
    print("\nmeans over seeds:")
    for name in methods:
        vals = [x["values"] for x in out["methods"][name].values() if x["values"]]
        if len(vals) == len(tables):
            def ms(k):
                xs = [v[k] for v in vals]
                return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"
            print(f"  {name}: ID dev {ms('id_dev')}, OOD dev {ms('ood_dev')}, HANS {ms('hans')}, "
                  f"cost {statistics.mean(v['cost_steps'] for v in vals):.0f} steps")
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "timing_study.json")
    write_result(path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
