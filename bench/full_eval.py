"""The selected models of a finished CPU-scale sweep on the *full* evaluation sets (issue 20 item 1).

The CPU sweeps (sweeps/nli_subset*.yaml) select and report on seeded 2,000-row samples of each set
(``max_eval_rows``), which the 2-core budget needs during training. This re-evaluates what each node selected
(a fine-tune's ``weights.safetensors``; a paradigm-(a) mask training's ``masks.safetensors`` on its fine-tune's
weights) with the product's ``evaluate`` stage on every row of every set: MNLI dev-matched (9,815),
dev-mismatched (9,832) and HANS (30,000). Nothing is selected here: the checkpoints are the ones the sweep chose
on the dev-matched sample.

    OMP_NUM_THREADS=1 python bench/full_eval.py results/nli_subset_long --part 0/2 &
    OMP_NUM_THREADS=1 python bench/full_eval.py results/nli_subset_long --part 1/2 &
    wait; python bench/full_eval.py results/nli_subset_long --table --out bench/results/nli_subset_long_full.json

``--check`` (alone): evaluate one mask node on the sweep's own sampled sets and require the node's selected rows
back exactly (the stage and the weights + mask composition are the ones the sweep used). Each node's rows go
to ``<results>/full_eval/<key>.json`` (atomic; a node done is skipped on a re-run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import pandas as pd  # noqa: E402

METRICS = [("dev_matched", "accuracy"), ("dev_mismatched", "accuracy"), ("hans", "accuracy"),
           ("hans", "accuracy_entailment"), ("hans", "accuracy_non-entailment"),
           ("hans", "hans_lexical_overlap_non-entailment"), ("hans", "hans_subsequence_non-entailment"),
           ("hans", "hans_constituent_non-entailment")]


def models(results_dir: str) -> list[dict]:
    """One entry per completed fine-tune and paradigm-(a) mask training: its config and the files to load."""
    from orchestrator import results

    frame = results.load(results_dir)
    art = os.path.join(results_dir, "artifacts")
    out = []
    for key, rows in frame[frame["stage"].isin(["finetune", "mask_train"])].groupby("node_key"):
        r = rows.iloc[0]
        entry = {"key": key, "stage": r["stage"], "paradigm": r["paradigm"], "loss": r["loss"],
                 "sparsity": float(r["target_sparsity"]), "seed": int(r["seed"]),
                 "cfg": {"task": r["cfg.task"], "task_options": json.loads(r["cfg.task_options"]),
                         "data_dir": r["cfg.data_dir"], "backbone": r["cfg.backbone"],
                         "max_length": int(r["cfg.max_length"]), "seed": int(r["seed"]),
                         "train": {"eval_batch_size": int(r["cfg.train.eval_batch_size"])}}}
        if r["stage"] == "finetune":
            entry["weights"] = os.path.join(art, "finetune", key, "weights.safetensors")
        elif r["paradigm"] == "a":
            ups = [u for u in str(r["upstream_keys"]).split(",") if os.path.isdir(os.path.join(art, "finetune", u))]
            if len(ups) != 1:
                raise SystemExit(f"error: mask node {key}: expected one fine-tune upstream, found {ups}")
            entry["weights"] = os.path.join(art, "finetune", ups[0], "weights.safetensors")
            entry["mask"] = os.path.join(art, "mask_train", key, "masks.safetensors")
            entry["finetune_key"] = ups[0]
        else:
            continue  # (c) and others start from the pre-trained model: not needed for the long study
        entry["selected"] = {(d, m): float(v) for d, m, v in
                             rows[rows["selected"].astype(bool)][["eval_dataset", "metric", "value"]].itertuples(index=False)}
        out.append(entry)
    # the paper's comparison first (dense std against the PoE subnetwork), so a run cut short still answers it
    first = {("finetune", "std"): 0, ("mask_train", "poe"): 1, ("finetune", "poe"): 2, ("mask_train", "std"): 3}
    return sorted(out, key=lambda e: (first.get((e["stage"], e["loss"]), 4), e["seed"], e["key"]))


def evaluate(entry: dict, full: bool, device: str = "cpu") -> tuple[list[dict], float]:
    import tempfile

    from srnet_core.stages import run_stage

    cfg = json.loads(json.dumps(entry["cfg"]))
    if full:
        cfg["task_options"].pop("max_eval_rows", None)
    cfg.update(stage="evaluate", device=device, init_weights=entry["weights"])
    if entry.get("mask"):
        cfg["mask_file"] = entry["mask"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_stage(cfg, tmp)
    return rows, time.time() - t0


def check(entry: dict) -> None:
    rows, secs = evaluate(entry, full=False)
    got = {(r["eval_dataset"], r["metric"]): float(r["value"]) for r in rows}
    diff = {k: (v, got.get(k)) for k, v in entry["selected"].items() if k[0] != "train"
            and (got.get(k) is None or abs(got[k] - v) > 1e-9)}
    if diff:
        raise SystemExit(f"error: node {entry['key']} re-evaluated on its sampled sets differs: {diff}")
    print(f"check: node {entry['key']} ({entry['stage']}) re-evaluated on the sweep's sampled sets: "
          f"{len(entry['selected'])} selected rows reproduced exactly ({secs:.0f} s)", flush=True)


def run(results_dir: str, part: tuple[int, int]) -> None:
    from srnet_core.io import write_json

    todo = models(results_dir)
    out_dir = os.path.join(results_dir, "full_eval")
    for i, entry in enumerate(todo):
        if i % part[1] != part[0]:
            continue
        path = os.path.join(out_dir, f"{entry['key']}.json")
        if os.path.exists(path):
            continue
        rows, secs = evaluate(entry, full=True)
        write_json(path, {"node": {k: v for k, v in entry.items() if k != "selected"}, "seconds": secs,
                          "rows": [{k: r[k] for k in ("eval_dataset", "metric", "value")} for r in rows]})
        print(f"{entry['stage']} {entry['key']} (seed {entry['seed']}): full sets in {secs:.0f} s", flush=True)


def table(results_dir: str, out: str | None) -> None:
    from srnet_core.io import write_json

    recs = []
    out_dir = os.path.join(results_dir, "full_eval")
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            d = json.load(f)
        n = d["node"]
        arm = (f"dense, {n['loss']} fine-tuned" if n["stage"] == "finetune"
               else f"(a) {n['loss']} mask training of the std model at {n['sparsity']:g}")
        for r in d["rows"]:
            recs.append({"arm": arm, "seed": n["seed"], "dataset": r["eval_dataset"], "metric": r["metric"],
                         "value": r["value"], "seconds": d["seconds"]})
    frame = pd.DataFrame(recs)
    cols = [f"{d} {m}" for d, m in METRICS]
    frame["col"] = frame["dataset"] + " " + frame["metric"]
    frame = frame[frame["col"].isin(cols)]
    agg = frame.groupby(["arm", "col"])["value"].agg(["mean", "std", "count"]).reset_index()
    dense = agg[(agg["arm"] == "dense, std fine-tuned") & (agg["col"] == "dev_matched accuracy")]["mean"]
    print("| model | seeds | " + " | ".join(cols) + " | % of dense ID |")
    print("|---" * (len(cols) + 3) + "|")
    summary = {}
    for arm, part in agg.groupby("arm", sort=True):
        cell = {c: part[part["col"] == c] for c in cols}
        vals = [f"{x['mean'].iloc[0]:.3f} ± {x['std'].iloc[0]:.3f}" if len(x) else "-" for x in cell.values()]
        ratio = (cell["dev_matched accuracy"]["mean"].iloc[0] / dense.iloc[0]) if len(dense) else float("nan")
        seeds = int(part["count"].max())
        print(f"| {arm} | {seeds} | " + " | ".join(vals) + f" | {ratio:.0%} |")
        summary[arm] = {c: [float(x["mean"].iloc[0]), float(x["std"].iloc[0]), int(x["count"].iloc[0])]
                        for c, x in cell.items() if len(x)} | {"pct_of_dense_id": ratio}
    secs = frame.groupby(["arm", "seed"])["seconds"].first()
    print(f"\n{len(secs)} models, {secs.sum() / 60:.1f} CPU-minutes of evaluation (1 thread each)")
    if out:
        write_json(out, {"results_dir": results_dir, "sets": "full", "table": summary})
        print(f"wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir")
    ap.add_argument("--part", default="0/1", help="i/n: this process evaluates every n-th model from the i-th")
    ap.add_argument("--check", action="store_true", help="first reproduce one mask node's rows on its own sets")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.check:  # alone: the full evaluation is a separate (parallel) run
        masked = [e for e in models(args.results_dir) if e.get("mask")]
        check(masked[0])
    elif not args.table:
        i, n = (int(x) for x in args.part.split("/"))
        run(args.results_dir, (i, n))
    else:
        table(args.results_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
