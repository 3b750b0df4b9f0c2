"""N stage trials at once on one GPU (separate processes, as Ray runs packed trials): aggregate tokens/s.

Each process runs a real stage training loop (bench/workload.py: TrainLoop, fused AdamW on CUDA, optional
torch.compile) with BERT-shaped random weights, is limited to 1/N of the GPU's memory (what a
``gpus: 1/N`` trial may count on, srnet_core.memory / orchestrator.packing), warms up, waits for the others
at a barrier, then runs its timed steps. Aggregate throughput = all processes' timed tokens / the span
from the first start to the last finish.

    python bench/packing.py --device cuda --procs 1 2 4 8                       # BERT-base bs32 x 128
    python bench/packing.py --device cpu --size tiny --procs 1 2 --steps 4      # a smoke run

Target (issue 12): >= 450k tokens/s for BERT-base bs32 finetune trials on one H200.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TARGET_TOKENS_PER_S = 450_000


def _child(rank, n, args, barrier, queue):
    try:
        import torch

        from workload import SIZES, make_trial, sync  # noqa: F401

        from srnet_core.memory import ModelShape, estimate_stage_memory

        device = torch.device(args["device"])
        if device.type == "cpu":
            torch.set_num_threads(1)
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(min(1.0, 1.0 / n))
        total = args["warmup"] + args["steps"]
        loop, _ = make_trial(args["stage"], args["size"], args["batch"], args["seq"], total, device,
                             compile=args["compile"], seed=rank)
        marks = {}
        original = loop.after_step

        def after_step(step):
            original(step)
            if step == args["warmup"]:
                sync(device)
                barrier.wait(timeout=600)  # everyone warmed up (and compiled): start the clock together
                marks["start"] = time.time()
            if step == total:
                sync(device)
                marks["end"] = time.time()

        loop.after_step = after_step
        loop.train()
        size = SIZES[args["size"]]
        shape = ModelShape.bert(size["hidden_size"], size["num_hidden_layers"], size["num_attention_heads"],
                                size["intermediate_size"])
        queue.put({"rank": rank, "start": marks["start"], "end": marks["end"],
                   "tokens": args["steps"] * args["batch"] * args["seq"],
                   "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                   "estimate_bytes": estimate_stage_memory(args["stage"], shape, args["batch"], args["seq"]).total})
    except BaseException as err:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        queue.put({"rank": rank, "error": f"{type(err).__name__}: {err}"})


def run_packed(n: int, args: dict, timeout: float = 600) -> dict:
    """Run ``n`` trial processes together; returns aggregate tokens/s and per-process numbers."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(r, n, args, barrier, queue)) for r in range(n)]
    started = time.time()
    for p in procs:
        p.start()
    results = []
    deadline = time.time() + timeout
    while len(results) < n and time.time() < deadline:
        try:
            results.append(queue.get(timeout=5))
        except Exception:  # noqa: BLE001 - queue.Empty: check the processes are still alive
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors or len(results) < n:
        return {"procs": n, "error": errors[0] if errors else f"{n - len(results)} processes gave no result"}
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"procs": n, "tokens_per_s": tokens / span, "span_s": span, "wall_s": time.time() - started,
            "per_process_tokens_per_s": [r["tokens"] / (r["end"] - r["start"]) for r in results],
            "peak_bytes": [r["peak_bytes"] for r in results], "estimate_bytes": results[0]["estimate_bytes"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="bert-base", choices=["bert-base", "minilm", "tiny"])
    parser.add_argument("--stage", default="finetune", choices=["finetune", "mask_train"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--compile", action="store_true", help="torch.compile each trial's model")
    parser.add_argument("--out", default=None, help="JSON result path")
    a = parser.parse_args(argv)
    args = {k: getattr(a, k) for k in ("device", "size", "stage", "batch", "seq", "warmup", "steps", "compile")}
    runs = [run_packed(n, args) for n in a.procs]
    single = next((r["tokens_per_s"] for r in runs if r["procs"] == 1 and "tokens_per_s" in r), None)
    best = max((r.get("tokens_per_s", 0.0) for r in runs), default=0.0)
    result = {**args, "runs": runs, "best_tokens_per_s": best,
              "speedup_vs_one": best / single if single else None,
              "target_tokens_per_s": TARGET_TOKENS_PER_S,
              "meets_target": best >= TARGET_TOKENS_PER_S if a.device == "cuda" and a.size == "bert-base" else None}
    for r in runs:
        print(f"{r['procs']} procs: " + (f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else r["error"]))
    if a.out:
        from benchlib import write_result

        write_result(a.out, result)
    return result


if __name__ == "__main__":
    main()
