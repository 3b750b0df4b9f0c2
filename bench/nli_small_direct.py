"""The nli_small recipe run directly through srnet_core (no Ray, no planner): MiniLM fine-tuned with std and
with PoE on a fixed 8,000-row split of MNLI dev-matched, ID dev on the other 1,815 rows, OOD on all 30,000
HANS examples. The same recipe as sweeps/nli_small.yaml, for measuring its numbers and wall time.

    SRNET_DATA_DIR=../shared/data .venv/bin/python bench/nli_small_direct.py [--losses std,poe] [--out PATH]

Steps: fit the hand-crafted bias model on the 8,000 training rows and write its log-probs as a Parquet
artifact; join them to the training examples by id (srnet_core.bias.read_per_example); fine-tune once
per loss with srnet_core.train.TrainLoop; evaluate at the end on dev and HANS (length-bucketed dynamic
padding, eval batch 256). Writes JSON (default bench/results/nli_small_direct.json) and prints a table.

Caveat: all-MiniLM-L6-v2 saw MNLI/SNLI pairs in its own (sentence-embedding) training.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core import losses  # noqa: E402
from srnet_core.bias import fit_bias_model, read_per_example  # noqa: E402
from srnet_core.cache import encode_cached  # noqa: E402
from srnet_core.models import load_model, load_tokenizer  # noqa: E402
from srnet_core.tasks import get_task  # noqa: E402
from srnet_core.train import TrainConfig, TrainLoop, predict_logits  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

TASK_OPTIONS = {"train_source": "dev_matched", "train_size": 8000, "split_seed": 0}


def run_one(loss: str, task, train_enc, eval_enc, eval_splits, args) -> dict:
    model = load_model(args.backbone, task.num_labels, seed=args.seed)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    config = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                         warmup_steps=0, eval_batch_size=args.eval_batch_size, seed=args.seed, amp="off")
    config.warmup_steps = int(0.1 * config.total_steps(len(train_enc)))
    config.eval_every = config.total_steps(len(train_enc))  # evaluate once, at the end
    holder = {}
    eval_seconds = []

    def evaluate():
        if holder["loop"].step == 0:
            return {}  # skip the step-0 evaluation of the untrained head: it costs a HANS pass and tells nothing
        t0 = time.perf_counter()
        out = {}
        for name, enc in eval_enc.items():
            logits = predict_logits(model, enc, args.eval_batch_size, "cpu", amp="off")
            out[name] = task.metrics(name, logits, eval_splits[name])
        eval_seconds.append(time.perf_counter() - t0)
        return out

    started = time.perf_counter()

    def progress(step: int) -> None:
        if step % 100 == 0:
            print(f"  [{loss}] step {step}/{holder['loop'].total_steps}, {time.perf_counter() - started:.0f}s",
                  flush=True)

    loop = TrainLoop(model, params, train_enc, losses.get_loss(loss), config, evaluate=evaluate,
                     selection=lambda ev: ev["dev_matched"]["accuracy"] if ev else -math.inf,
                     snapshot=lambda: {}, device="cpu", after_step=progress)
    holder["loop"] = loop
    t0 = time.perf_counter()
    def show(record, _loop):
        accs = {s: round(m.get("accuracy", float("nan")), 4) for s, m in record.metrics.items()}
        print(f"  [{loss}] step {record.step}: {accs}", flush=True)

    loop.train(on_eval=show)
    wall = time.perf_counter() - t0
    final = loop.history[-1].metrics
    return {"loss": loss, "steps": loop.total_steps, "train_seconds": loop.train_seconds,
            "eval_seconds": sum(eval_seconds), "wall_seconds": wall, "metrics": final}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data-dir", default=None, help="default: $SRNET_DATA_DIR")
    ap.add_argument("--losses", default="std,poe")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work-dir", default=None, help="bias artifact + token cache (default: a temp dir)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "nli_small_direct.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = args.work_dir or tempfile.mkdtemp(prefix="nli_small_")

    task = get_task("mnli", data_dir=args.data_dir, **TASK_OPTIONS)
    train = task.load(task.train_split)
    eval_splits = {name: task.load(name) for name in task.eval_splits}

    t0 = time.perf_counter()
    bias = fit_bias_model(task)
    bias_paths = bias.write(os.path.join(work, "bias"))
    bias_seconds = time.perf_counter() - t0
    print(f"bias model ({bias_seconds:.1f}s): " + ", ".join(
        f"{s} acc {m['accuracy']:.4f} (binary balanced {m['binary_balanced_accuracy']:.4f}, "
        f"majority {m['majority_baseline']:.4f})" for s, m in bias.metrics.items()), flush=True)

    tokenizer = load_tokenizer(args.backbone)
    t0 = time.perf_counter()
    cache = os.path.join(work, "tokens")
    train_enc = encode_cached(tokenizer, train, args.max_length, cache, task.cache_key())
    eval_enc = {n: encode_cached(tokenizer, s, args.max_length, cache, task.cache_key())
                for n, s in eval_splits.items()}
    tokenize_seconds = time.perf_counter() - t0
    log_probs, kept = read_per_example(bias_paths[task.train_split], train_enc.ids, task.num_labels,
                                       check="log_probs")
    assert len(kept) == len(train_enc)
    train_enc.with_extra("bias", log_probs)

    runs = []
    for loss in args.losses.split(","):
        print(f"fine-tuning with {loss} ...", flush=True)
        runs.append(run_one(loss, task, train_enc, eval_enc, eval_splits, args))
    total = time.perf_counter() - started

    result = {"bench": "nli_small_direct", "backbone": args.backbone, "task_options": TASK_OPTIONS,
              "n_train": len(train), "n_dev": len(eval_splits["dev_matched"]), "n_hans": len(eval_splits["hans"]),
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "max_length": args.max_length,
              "seed": args.seed, "bias_model": {"metrics": bias.metrics, "info": bias.info, "seconds": bias_seconds},
              "tokenize_seconds": tokenize_seconds, "runs": runs, "total_wall_seconds": total,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
              "caveat": "all-MiniLM-L6-v2 saw MNLI/SNLI pairs in its own training"}
    print(f"\nnli_small direct: {len(train)} train / {result['n_dev']} dev / {result['n_hans']} HANS, {args.backbone}, "
          f"{args.epochs} epoch(s), bs {args.batch_size}, lr {args.lr}, {torch.get_num_threads()} threads")
    cells = [f"hans_{h}_{lab}" for h in ("lexical_overlap", "subsequence", "constituent")
             for lab in ("entailment", "non-entailment")]
    print(f"{'loss':<6}{'dev acc':>9}{'HANS':>8}{'HANS ent':>10}{'HANS non':>10}{'train s':>9}{'eval s':>8}")
    for r in runs:
        d, h = r["metrics"]["dev_matched"], r["metrics"]["hans"]
        print(f"{r['loss']:<6}{d['accuracy']:>9.4f}{h['accuracy']:>8.4f}{h['accuracy_entailment']:>10.4f}"
              f"{h['accuracy_non-entailment']:>10.4f}{r['train_seconds']:>9.0f}{r['eval_seconds']:>8.0f}")
    print("HANS per heuristic x label: " + "; ".join(
        f"{r['loss']}: " + ", ".join(f"{c[5:]} {r['metrics']['hans'][c]:.3f}" for c in cells) for r in runs))
    print(f"total wall time {total:.0f}s")
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
