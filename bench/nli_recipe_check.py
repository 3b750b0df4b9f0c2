"""Issue 20 item 3, at CPU scale: were sweeps/nli_subset.yaml's learning rates the ones ID dev picks? A small
grid around them on seed 0, read on ID dev (dev-matched) only: HANS and dev-mismatched are never printed here.

    OMP_NUM_THREADS=1 python bench/nli_recipe_check.py --variant ft5e-5 &   # each variant: its nodes, in process
    OMP_NUM_THREADS=1 python bench/nli_recipe_check.py --variant ft2e-4 &
    OMP_NUM_THREADS=1 python bench/nli_recipe_check.py --variant mask3e-4 &
    wait; python bench/nli_recipe_check.py --table                         # ID dev per recipe

Each variant is sweeps/nli_subset.yaml cut to seed 0, the std fine-tuning and (a) std mask training at 50%,
with one learning rate changed (same steps: the budget is fixed by the 2-core machine). The nodes go to
nli_subset's artifact store, so the base recipe's nodes (and any shared fine-tuning) are reused by content key,
and rows to results/nli_recipe (not nli_subset's results, whose report would mix the recipes).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (fine-tuning lr, mask-training lr); "base" is nli_subset's own recipe
VARIANTS = {"base": (1.0e-4, 1.0e-4), "ft5e-5": (5.0e-5, 1.0e-4), "ft2e-4": (2.0e-4, 1.0e-4),
            "mask3e-4": (1.0e-4, 3.0e-4), "mask3e-5": (1.0e-4, 3.0e-5)}
OUT = os.path.join(REPO, "results", "nli_recipe")


def variant_spec(name: str):
    from orchestrator.spec import parse_spec

    with open(os.path.join(REPO, "sweeps", "nli_subset.yaml")) as f:
        d = yaml.safe_load(f)
    d = copy.deepcopy(d)
    ft_lr, mask_lr = VARIANTS[name]
    d["name"], d["output_dir"] = "nli_recipe", OUT
    d["artifact_store"] = os.path.join(REPO, "results", "nli_subset", "artifacts")
    d["grid"].update(seeds=[0], sparsities=[0.5], paradigms=["a"], losses=["std"])
    d["paradigm_options"] = {"a": {"finetune_losses": ["std"]}}
    d["finetune"]["lr"], d["mask_train"]["lr"] = ft_lr, mask_lr
    return parse_spec(d)


def run_variant(name: str) -> None:
    from orchestrator import results
    from orchestrator.launch import node_payload, publish_node
    from orchestrator.plan import build_plan
    from workers.store import ArtifactStore
    from workers.trainable import run_node

    spec = variant_spec(name)
    plan = build_plan(spec)
    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    order = sorted(plan.nodes.values(), key=lambda n: {"finetune": 0, "mask_train": 1}.get(n.stage, 2))
    for node in order:
        node.stage_config["device"] = "cpu"
        if not store.is_complete(node.stage, node.key):
            print(f"{name}: running {node.stage} {node.key}", flush=True)
            run_node(node_payload(node, store))
        publish_node(node, store, root)
        print(f"{name}: {node.stage} {node.key} complete", flush=True)


def table() -> None:
    from orchestrator import results

    rows = results.load(results.results_dir(OUT))
    sel = rows[(rows["eval_role"] == "id") & (rows["eval_dataset"] == "dev_matched") & (rows["metric"] == "accuracy")]
    print("| recipe | fine-tuning lr | mask lr | dense ID dev (selected step) | (a) std 50% ID dev (selected step) |")
    print("|---|---|---|---|---|")
    for name, (ft_lr, mask_lr) in VARIANTS.items():
        ft = sel[(sel["stage"] == "finetune") & (sel["cfg.train.lr"] == ft_lr) & sel["selected"].astype(bool)]
        mt = sel[(sel["stage"] == "mask_train") & (sel["cfg.train.lr"] == mask_lr) & sel["selected"].astype(bool)
                 & (sel["upstream_keys"].fillna("").apply(lambda u: any(k in u for k in ft["node_key"])))]
        cell = lambda f: f"{f['value'].iloc[0]:.4f} ({int(f['step'].iloc[0])})" if len(f) == 1 else "not run"  # noqa: E731
        print(f"| {name} | {ft_lr:g} | {mask_lr:g} | {cell(ft)} | {cell(mt)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    if args.variant:
        run_variant(args.variant)
    if args.table:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
