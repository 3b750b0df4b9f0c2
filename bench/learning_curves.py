"""Learning curves from a sweep's results: ID and OOD metrics against training steps, mean ± std over seeds.

Every evaluation a node made is a row (step, eval_dataset, metric, value), so the curves need no extra run: train
with ``ood_eval_every`` equal to ``eval_every`` (or a multiple of it) to have the OOD sets at those steps too.

    python bench/learning_curves.py results/nli_subset_long \
        --metric dev_matched:accuracy --metric dev_matched:accuracy_entailment --metric hans:accuracy \
        --metric hans:accuracy_non-entailment --out bench/results/nli_subset_long_curves.json

Prints one markdown table per arm (a node's stage, paradigm, loss and sparsity) and writes the same numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pandas as pd  # noqa: E402

from orchestrator import results  # noqa: E402

ARM = ["stage", "paradigm", "loss", "finetune_loss", "target_sparsity"]


def arm_name(arm: dict) -> str:
    if arm["stage"] == "finetune":
        return f"dense, {arm['loss']} fine-tuned"
    # a group key of None comes back from groupby as NaN: only a string names a fine-tuned source model
    src = f" of the {arm['finetune_loss']} model" if isinstance(arm.get("finetune_loss"), str) else ""
    return f"({arm['paradigm']}) {arm['loss']} {arm['stage'].replace('_', ' ')}{src} at {arm['target_sparsity']:g}"


def curves(frame: pd.DataFrame, metrics: list[tuple[str, str]]) -> list[dict]:
    """[{arm, seeds, steps: [{step, 'dataset:metric': [mean, std, n]}]}], evaluation rows only, every step a node
    evaluated (seeds missing a set at a step are left out of that cell, and n says how many were in it)."""
    rows = frame[frame["step"].notna() & frame["eval_dataset"].notna()].copy()
    if "status" in rows:  # a failed or not-run node's error row is no point of a curve
        rows = rows[rows["status"] == "completed"]
    rows = rows[rows["stage"].isin(["finetune", "mask_train", "imp"])]
    for col in ARM:
        if col not in rows:
            rows[col] = None
    rows[ARM] = rows[ARM].astype(object).where(rows[ARM].notna(), None)
    out = []
    for arm_values, part in rows.groupby(ARM, dropna=False, sort=True):
        arm = dict(zip(ARM, arm_values))
        steps = []
        for step, at in part.groupby("step", sort=True):
            cell = {"step": int(step)}
            for dataset, metric in metrics:
                v = at[(at["eval_dataset"] == dataset) & (at["metric"] == metric)].groupby("seed")["value"].mean()
                if len(v):
                    cell[f"{dataset}:{metric}"] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                                   int(len(v))]
            steps.append(cell)
        out.append({"arm": arm_name(arm), **{k: (None if v is None else v) for k, v in arm.items()},
                    "seeds": sorted(int(s) for s in part["seed"].unique()), "steps": steps})
    return out


def markdown(curve: dict, metrics: list[tuple[str, str]]) -> str:
    cols = [f"{d}:{m}" for d, m in metrics]
    lines = [f"**{curve['arm']}** (seeds {', '.join(map(str, curve['seeds']))})", "",
             "| step | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for cell in curve["steps"]:
        vals = [f"{cell[c][0]:.3f} ± {cell[c][1]:.3f}" if c in cell else "-" for c in cols]
        lines.append(f"| {cell['step']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir")
    ap.add_argument("--metric", action="append", default=None, metavar="DATASET:METRIC",
                    help="repeatable; default dev_matched:accuracy and hans:accuracy")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    metrics = []
    for m in args.metric or ["dev_matched:accuracy", "hans:accuracy"]:
        if ":" not in m:
            print(f"error: --metric {m!r}: give DATASET:METRIC, e.g. hans:accuracy", file=sys.stderr)
            return 2
        metrics.append(tuple(m.split(":", 1)))
    frame = results.load(args.results_dir)
    got = curves(frame, metrics)
    if not got:
        print(f"error: no evaluation rows in {args.results_dir}", file=sys.stderr)
        return 2
    for c in got:
        print(markdown(c, metrics), end="\n\n")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"results_dir": args.results_dir, "metrics": [f"{d}:{m}" for d, m in metrics], "curves": got},
                      f, indent=1)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
