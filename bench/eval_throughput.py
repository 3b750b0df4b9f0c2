"""Evaluation throughput on the full HANS set: length-bucketed dynamic padding (our way) vs fixed padding
to 128 tokens at batch 8 in file order (the reference's way), same model, same process, side by side.

    SRNET_DATA_DIR=../shared/data .venv/bin/python bench/eval_throughput.py [--threads 1] [--limit N]

Both modes evaluate every example. To keep the comparison fair on a shared machine whose load changes
over minutes, the set is cut into ``--chunks`` consecutive chunks and each chunk is evaluated by both
modes back to back (alternating which goes first); the times are summed per mode. Dynamic padding sorts
and pads within each chunk (3,000 rows per chunk by default: ~12 batches of 256, as tight as over the
whole set since HANS lengths are 9-24 tokens). The script checks that both modes predict the same labels.
Prints a table and writes JSON (default bench/results/eval_throughput.json).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core.data import encode, fixed_batches  # noqa: E402
from srnet_core.models import load_model, load_tokenizer  # noqa: E402
from srnet_core.tasks import get_task  # noqa: E402
from srnet_core.train import forward_logits, predict_logits  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)


@torch.no_grad()
def predict_fixed(model, enc, batch_size: int, pad_to: int) -> np.ndarray:
    """The reference's evaluation: file order, every batch padded to ``pad_to``."""
    model.eval()
    out = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
    for index in fixed_batches(len(enc), batch_size):
        out[index] = forward_logits(model, enc.batch(index, pad_to=pad_to), "cpu").float().numpy()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data-dir", default=None, help="default: $SRNET_DATA_DIR")
    ap.add_argument("--limit", type=int, default=None, help="first N HANS rows only (default: all 30,000)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--dynamic-batch", type=int, default=256)
    ap.add_argument("--fixed-batch", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "eval_throughput.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task("mnli", data_dir=args.data_dir)
    hans = task.load("hans")
    if args.limit:
        hans = hans.subset(np.arange(min(args.limit, len(hans))))
    enc = encode(load_tokenizer(args.backbone), hans, args.max_length)
    model = load_model(args.backbone, task.num_labels, seed=0).eval()
    warm = enc.subset(np.arange(min(16, len(enc))))
    predict_logits(model, warm, 16, "cpu", amp="off")
    predict_fixed(model, warm, args.fixed_batch, args.max_length)

    n = len(enc)
    dyn = np.zeros((n, task.num_labels), dtype=np.float32)
    fixed = np.zeros_like(dyn)
    t_dyn = t_fixed = 0.0
    for k, chunk in enumerate(np.array_split(np.arange(n), args.chunks)):
        part = enc.subset(chunk)
        for mode in (("dynamic", "fixed") if k % 2 == 0 else ("fixed", "dynamic")):
            t0 = time.perf_counter()
            if mode == "dynamic":
                dyn[chunk] = predict_logits(model, part, args.dynamic_batch, "cpu", amp="off")
                t_dyn += time.perf_counter() - t0
            else:
                fixed[chunk] = predict_fixed(model, part, args.fixed_batch, args.max_length)
                t_fixed += time.perf_counter() - t0
        print(f"  chunk {k + 1}/{args.chunks}: dynamic {t_dyn:.0f}s, fixed {t_fixed:.0f}s so far", flush=True)

    lengths = enc.lengths()
    agree = float((dyn.argmax(-1) == fixed.argmax(-1)).mean())
    hans_acc = {name: task.metrics("hans", logits, hans)["accuracy"] for name, logits in
                (("dynamic", dyn), ("fixed", fixed))}
    result = {
        "bench": "eval_throughput", "backbone": args.backbone, "examples": n, "max_length": args.max_length,
        "mean_tokens": float(lengths.mean()), "max_tokens": int(lengths.max()), "chunks": args.chunks,
        "dynamic": {"batch_size": args.dynamic_batch, "seconds": t_dyn, "examples_per_s": n / t_dyn,
                    "hans_accuracy": hans_acc["dynamic"]},
        "fixed": {"batch_size": args.fixed_batch, "pad_to": args.max_length, "seconds": t_fixed,
                  "examples_per_s": n / t_fixed, "hans_accuracy": hans_acc["fixed"]},
        "speedup": t_fixed / t_dyn, "prediction_agreement": agree,
        "max_abs_logit_diff": float(np.abs(dyn - fixed).max()),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_end": list(os.getloadavg()),
    }
    print(f"HANS evaluation, {n} examples, {args.backbone}, {torch.get_num_threads()} thread(s) "
          f"(mean {lengths.mean():.1f} tokens, max {lengths.max()})")
    print(f"{'mode':<34}{'seconds':>10}{'examples/s':>12}{'HANS acc':>10}")
    print(f"{'dynamic, length-bucketed, bs ' + str(args.dynamic_batch):<34}{t_dyn:>10.1f}{n / t_dyn:>12.1f}"
          f"{hans_acc['dynamic']:>10.4f}")
    print(f"{'fixed pad ' + str(args.max_length) + ', file order, bs ' + str(args.fixed_batch):<34}{t_fixed:>10.1f}"
          f"{n / t_fixed:>12.1f}{hans_acc['fixed']:>10.4f}")
    print(f"speed-up {result['speedup']:.2f}x; predictions agree on {agree:.4%} "
          f"(max |logit diff| {result['max_abs_logit_diff']:.2e})")
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
