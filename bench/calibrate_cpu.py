"""A CPU calibration for the cost model: MiniLM and tiny-bert dense, mask-training and eval passes timed on
this machine at three token counts, written in the calibration format (docs/cost.md).

    nice -n 19 .venv/bin/python bench/calibrate_cpu.py [--out bench/calibration/cpu_2core_<date>.json]

Each pass is the body of srnet_core.train.TrainLoop (bench/step_overhead.py's steppers: autocast forward,
loss, backward, global-norm clip, AdamW; the mask step trains the scores and re-projects to exact top-k, the
projection timed apart), on one thread, wall clock (the predictions are wall times). Per pass the three points
are fitted as seconds = fixed_s + per_token_s x tokens. A second run at 2 threads (MiniLM dense) gives the
thread speed-up. The node overhead is measured too: MiniLM's model and tokenizer load and the encoding of 2,048
synthetic pairs, plus Ray's trial start (2.5-4 s, stack.md; an assumption here). Takes about 2 minutes.
On a shared machine the figures carry the other tenants' load: treat them as approximate.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core.masks import MaskConfig, MaskSet  # noqa: E402
from srnet_core.models import prunable_linear_names  # noqa: E402

from benchlib import write_result  # noqa: E402
from calibration_format import SIZES, fit_linear  # noqa: E402
from step_overhead import build_model, make_stepper  # noqa: E402

LOAD_AT_START = os.getloadavg()
MODELS = {"minilm": "minilm", "tiny-bert": "tiny"}  # calibration size -> step_overhead model shape
BATCH = 32
SEQS = (16, 32, 48)  # 512 / 1024 / 1536 tokens per step: the demo's and paper_small's range (lengths ~20)
EVAL_ROWS = 256


def batch_of(rows: int, seq: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (rows, seq), generator=g),
            "token_type_ids": torch.zeros(rows, seq, dtype=torch.long),
            "attention_mask": torch.ones(rows, seq, dtype=torch.long),
            "labels": torch.randint(0, 3, (rows,), generator=g)}


def timed(fn, n: int, warmup: int) -> float:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(warmup + i)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure(size: str, steps: int, warmup: int) -> tuple[dict, dict, float]:
    device = torch.device("cpu")
    shape = MODELS[size]
    dense = build_model(shape, 3, 0, device).train()
    masked = build_model(shape, 3, 0, device).train()
    for p in masked.parameters():
        p.requires_grad_(False)
    names = prunable_linear_names(masked, include_pooler=True, include_classifier=True)
    mask_set = MaskSet(masked, names, MaskConfig(sparsity=0.7, init="magnitude", scope="local", reproject_every=1))
    proj: list[float] = []
    step_dense = make_stepper(dense, [p for p in dense.parameters() if p.requires_grad], device, "off",
                              time.perf_counter)
    step_mask = make_stepper(masked, mask_set.score_parameters(), device, "off", time.perf_counter,
                             mask_set.project, proj)
    evaluator = build_model(shape, 3, 0, device).eval()

    def forward(batch):
        with torch.no_grad():
            evaluator(**{k: v for k, v in batch.items() if k != "labels"})
    train_batches = {seq: batch_of(BATCH, seq) for seq in SEQS}
    eval_batches = {seq: batch_of(EVAL_ROWS, seq) for seq in SEQS}
    runs = {"dense": lambda seq, i: step_dense(train_batches[seq], i),
            "mask": lambda seq, i: step_mask(train_batches[seq], i),
            "eval": lambda seq, i: forward(eval_batches[seq])}
    times = {(kind, seq): [] for kind in runs for seq in SEQS}
    proj_at = {seq: [] for seq in SEQS}
    # interleaved rounds (every kind and token count once per round): a change in the other tenants' load
    # then hits every point alike instead of bending the fit; the first `warmup` rounds are not kept
    for r in range(warmup + steps):
        for seq in SEQS:
            for kind, run in runs.items():
                n_proj = len(proj)
                t0 = time.perf_counter()
                run(seq, r)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    if kind == "mask":  # the projection is its own term (projection_s_per_param)
                        proj_at[seq].append(proj[n_proj])
                        dt -= proj[n_proj]
                    times[(kind, seq)].append(dt)
    points = {kind: [((BATCH if kind != "eval" else EVAL_ROWS) * seq, statistics.median(times[(kind, seq)]))
                     for seq in SEQS] for kind in runs}
    for i, seq in enumerate(SEQS):
        print(f"  {size:<9} {BATCH}x{seq:<3} dense {points['dense'][i][1]:.4f} s  mask {points['mask'][i][1]:.4f} s "
              f"(+ projection {statistics.median(proj_at[seq]):.4f})  "
              f"eval {EVAL_ROWS}x{seq} {points['eval'][i][1]:.4f} s")
    curves = {}
    for kind, pts in points.items():
        fixed, per_token = fit_linear(pts)
        curves[kind] = {"floor_s": 0.0, "fixed_s": fixed, "per_token_s": per_token, "points": pts,
                        "provenance": f"measured: bench/calibrate_cpu.py, 1 thread, wall clock, median of {steps} "
                                      f"interleaved rounds at {len(pts)} token counts, least-squares fit"}
    all_proj = [x for v in proj_at.values() for x in v]
    projection_per_param = float(statistics.median(all_proj)) / sum(s.numel() for s in mask_set.score_parameters())
    return curves, points, projection_per_param


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    today = datetime.date.today().isoformat()
    out = args.out or f"bench/calibration/cpu_{os.cpu_count()}core_{today}.json"
    started = time.time()
    torch.set_num_threads(1)
    curves, projection = {}, {}
    for size in MODELS:
        c, _, proj = measure(size, args.steps, args.warmup)
        curves[size] = {"fp32": {"eager": c}}
        projection[size] = proj
    # thread speed-up: MiniLM dense at the middle token count on 2 threads vs 1
    dense = build_model("minilm", 3, 0, torch.device("cpu")).train()
    step = make_stepper(dense, list(dense.parameters()), torch.device("cpu"), "off", time.perf_counter)
    b = batch_of(BATCH, SEQS[1])
    one = timed(lambda i: step(b, i), args.steps, args.warmup)
    torch.set_num_threads(2)
    two = timed(lambda i: step(b, i), args.steps, args.warmup)
    torch.set_num_threads(1)
    # node overhead: what a MiniLM stage does before its first step
    from srnet_core.data import encode
    from srnet_core.models import load_model, load_tokenizer
    from srnet_core.tasks.synthetic import SyntheticOptions, generate

    t0 = time.perf_counter()
    tok = load_tokenizer("minilm")
    load_model("minilm", 3)
    encode(tok, generate("train", SyntheticOptions(n_train=2048)), 48)
    load_s = time.perf_counter() - t0
    trial_start_s = 3.0  # Ray trial start, stack.md's 2.5-4 s (an assumption: not timed here)
    result = {
        "format": 1, "name": os.path.splitext(os.path.basename(out))[0], "kind": "cpu",
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})",
        "measured": today,
        # the other tenants' load is in every figure: record it (1/5/15-minute load averages at the start)
        "load_average_at_start": [round(x, 2) for x in LOAD_AT_START],
        "form": "seconds of a pass = max(floor_s, fixed_s + per_token_s * padded tokens); 1 thread; "
                "thread_speedup divides it for a trial with more CPUs",
        "sources": ["bench/calibrate_cpu.py"],
        "backbones": {"minilm": "minilm", "tiny-bert": "tiny-bert"},
        "sizes": {k: SIZES[k] for k in MODELS}, "curves": curves,
        "projection_s_per_param": projection["minilm"],
        "projection_provenance": "measured: MiniLM's per-step top-k re-projection (MaskSet.project), per score",
        "thread_speedup": {"1": 1.0, "2": one / two},
        "thread_speedup_provenance": f"measured: MiniLM dense step {BATCH}x{SEQS[1]}: {one:.4f} s on 1 thread, "
                                     f"{two:.4f} s on 2",
        "eval_batch_auto": 256,
        "overheads": {"node_s": load_s + trial_start_s, "host_copy_bytes_per_s": 2e9, "write_bytes_per_s": 3e8,
                      "launch_s": 15.0},
        "overheads_provenance": (f"node_s: measured MiniLM tokenizer + model load + encoding 2,048 synthetic pairs "
                                 f"({load_s:.2f} s) + Ray trial start 3 s (assumption, stack.md); launch_s: Ray start "
                                 "(2-4 s, stack.md), planning, the results table, report and figure at the end "
                                 "(assumption); host_copy / write: memory copy and disk writes (assumptions)"),
        "seconds": round(time.time() - started, 1),
    }
    return write_result(out, result)


if __name__ == "__main__":
    main()
