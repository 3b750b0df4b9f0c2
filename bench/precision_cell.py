"""fp32 vs bf16 autocast on one cell at CPU scale (issue 19, item 7: full_grid now trains and evaluates in fp32,
the reference's precision; `amp: auto`/`bf16` stays the faster option). MiniLM on the synthetic task: a std
fine-tune, then std mask training at 50% from it, once per precision and seed; the selected ID-dev and OOD
accuracies, their differences, and the wall times. On a GPU rerun it with --device cuda for the speed figure.

    .venv/bin/python bench/precision_cell.py [--seeds 0 1] [--out bench/results/precision_cell.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchlib import write_result  # noqa: E402
from srnet_core.stages import run_stage  # noqa: E402

TASK = {"task": "synthetic", "backbone": "minilm", "max_length": 48,
        "task_options": {"n_train": 1024, "n_dev": 256, "n_ood": 256, "spurious_agreement": 0.7}}
FINETUNE = {"lr": 1e-4, "epochs": 2, "batch_size": 32, "eval_every": 32}
MASK = {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 8, "select_from": 0.7}


def selected(rows: list[dict], role: str) -> float:
    return next(r["value"] for r in rows if r["selected"] and r["eval_role"] == role and r["metric"] == "accuracy")


def run_cell(amp: str, seed: int, device: str, root: str) -> dict:
    ft_dir, mt_dir = os.path.join(root, f"ft-{amp}-{seed}"), os.path.join(root, f"mt-{amp}-{seed}")
    started = time.perf_counter()
    ft = run_stage({**TASK, "stage": "finetune", "seed": seed, "device": device,
                    "train": {**FINETUNE, "amp": amp}}, ft_dir)
    ft_s = time.perf_counter() - started
    started = time.perf_counter()
    mt = run_stage({**TASK, "stage": "mask_train", "seed": seed, "device": device, "sparsity": 0.5,
                    "init_weights": os.path.join(ft_dir, "weights.safetensors"),
                    "train": {**MASK, "amp": amp}}, mt_dir)
    mt_s = time.perf_counter() - started
    return {"amp": amp, "seed": seed, "dense_id": selected(ft, "id"), "dense_ood": selected(ft, "ood"),
            "mask50_id": selected(mt, "id"), "mask50_ood": selected(mt, "ood"),
            "finetune_s": round(ft_s, 1), "mask_train_s": round(mt_s, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/precision_cell.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for amp in ("off", "bf16"):
                rows.append(run_cell(amp, seed, args.device, root))
                print(rows[-1], flush=True)
    print(f"\n{'amp':>5} {'seed':>4} {'dense ID':>9} {'dense OOD':>9} {'50% ID':>7} {'50% OOD':>8} {'ft s':>6} {'mt s':>6}")
    for r in rows:
        print(f"{r['amp']:>5} {r['seed']:>4} {r['dense_id']:>9.3f} {r['dense_ood']:>9.3f} {r['mask50_id']:>7.3f} "
              f"{r['mask50_ood']:>8.3f} {r['finetune_s']:>6.1f} {r['mask_train_s']:>6.1f}")
    diffs = {k: max(abs(a[k] - b[k]) for a, b in zip(rows[::2], rows[1::2]))
             for k in ("dense_id", "dense_ood", "mask50_id", "mask50_ood")}
    print("largest |fp32 - bf16| per metric over seeds:", {k: round(v, 4) for k, v in diffs.items()})
    write_result(args.out, {"device": args.device, "rows": rows, "max_abs_diff": diffs, "task": TASK,
                            "finetune": FINETUNE, "mask_train": MASK})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
