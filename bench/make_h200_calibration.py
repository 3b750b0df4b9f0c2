"""Build bench/calibration/h200_2026-11-30.json from the H200 measurements in ../shared/reference/gpu/.

    .venv/bin/python bench/make_h200_calibration.py [--ref ../shared/reference/gpu] [--out bench/calibration/h200_2026-11-30.json]

The calibration format (docs/cost.md): per backbone size, precision (bf16, fp32) and mode (eager, compile),
per pass (dense training step, mask-training step, eval batch), seconds = max(floor_s, fixed_s + per_token_s
x padded tokens). Every curve carries its provenance: "measured" (which file and key), "derived" (how) or
"assumption" (what is assumed and why). Only BERT-base bf16 was measured; everything else is derived from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.plan.cost import padded_tokens_per_batch  # noqa: E402

from benchlib import write_result  # noqa: E402
from calibration_format import BACKBONES, FORM, SIZES, scaled  # noqa: E402

SPEED = "h200_2026-11-30_speed.json"
PACKING = "h200_2026-11-30_packing_projection.json"
H200_FP32_PEAK = 67e12  # NVIDIA's H200 SXM spec sheet, FP32 (not TF32); not measured here
FP32_EFFICIENCY = 0.5   # assumption: fraction of that peak the fp32 matmuls reach


def build(ref: str, lengths_path: str) -> dict:
    with open(os.path.join(ref, SPEED)) as f:
        speed = json.load(f)
    with open(os.path.join(ref, PACKING)) as f:
        packing = json.load(f)
    local = speed["step_overhead_bench_bertbase_bs32_local70"]
    bs128 = speed["mask_step_bs128"]
    peer = speed["peer_dense_bertbase"]
    peak = speed["matmul_peak"]["tflops"] * 1e12
    t32, t128 = 32 * 128, 128 * 128
    # training FLOPs per token as the measurement counted them (mfu x peak x step time / tokens)
    flops_token = local["dense_mfu"] * peak * local["dense_step_s_median"] / t32

    src = f"../shared/reference/gpu/{SPEED}"
    # bf16 eager dense: the project's own dense step (bs32 at the floor; bs128 gives the per-token rate)
    dense_eager = {"floor_s": local["dense_step_s_median"], "fixed_s": 0.0,
                   "per_token_s": bs128["dense_step_s_median"] / t128,
                   "provenance": f"measured: {src} step_overhead_bench_bertbase_bs32_local70.dense_step_s_median "
                                 "(floor, 4096 tokens) and mask_step_bs128.dense_step_s_median (per token, 16384)"}
    dense_compile = {"floor_s": peer["compiled_fused_bs32"]["step_s"], "fixed_s": 0.0,
                     "per_token_s": peer["compiled_fused_bs128"]["step_s"] / t128,
                     "provenance": f"measured: {src} peer_dense_bertbase.compiled_fused_bs32 / _bs128 (a plain HF "
                                   "BERT step, torch.compile + fused AdamW; the project's compiled step not measured)"}
    # mask step: the measured step minus its measured projection (since replaced by a device top-k, counted
    # separately as projection_s_per_param at each re-projection); same FLOPs per token as a dense step
    mask_floor = local["mask_step_s_median"] - local["projection_s_median"]
    mask_eager = {"floor_s": mask_floor, "fixed_s": 0.0, "per_token_s": dense_eager["per_token_s"],
                  "provenance": f"derived: {src} step_overhead_bench_bertbase_bs32_local70 mask_step_s_median - "
                                "projection_s_median (an upper bound: the pre-speed-work code); per token = dense's"}
    compile_ratio = peer["compiled_fused_bs32"]["step_s"] / peer["eager_fused_bs32"]["step_s"]
    mask_compile = {"floor_s": mask_floor * compile_ratio, "fixed_s": 0.0, "per_token_s": dense_compile["per_token_s"],
                    "provenance": f"derived: the eager mask floor x compiled/eager dense ratio {compile_ratio:.3f} "
                                  "(peer_dense_bertbase bs32); assumption: compile speeds the mask step as the dense one"}
    # eval: 30,000 HANS pairs, length-sorted batches, at bs256 and bs1024: two equations for (fixed, per token)
    ev = speed["eval_hans_gpu"]
    with open(lengths_path) as f:
        hist = json.load(f)["sets"]["mnli:hans"]["histogram"]
    hans = np.repeat([h[0] for h in hist], [h[1] for h in hist])[: ev["n"]]
    rows = []
    for bs, secs in ((256, ev["bs256_s"]), (1024, ev["bs1024_s"])):
        batches = int(np.ceil(len(hans) / bs))
        rows.append((batches, padded_tokens_per_batch(hans, bs, 128, "sorted") * batches, secs))
    a = np.array([[r[0], r[1]] for r in rows], float)
    fixed, per_token = np.linalg.solve(a, np.array([r[2] for r in rows]))
    eval_eager = {"floor_s": 0.0, "fixed_s": float(fixed), "per_token_s": float(per_token),
                  "provenance": f"measured: {src} eval_hans_gpu bs256_s / bs1024_s, solved for per-batch and "
                                "per-token time with HANS's measured lengths (token_lengths.json mnli:hans)"}
    eval_compile = dict(eval_eager, provenance="assumption: = eager eval (compiled evaluation not measured)")

    base = {"eager": {"dense": dense_eager, "mask": mask_eager, "eval": eval_eager},
            "compile": {"dense": dense_compile, "mask": mask_compile, "eval": eval_compile}}
    curves = {}
    fp32_rate = FP32_EFFICIENCY * H200_FP32_PEAK
    for name, size in SIZES.items():
        flops = size["prunable_params"] / SIZES["bert-base"]["prunable_params"]
        bf16 = {mode: {kind: (dict(c) if name == "bert-base" else scaled(c, name)) for kind, c in passes.items()}
                for mode, passes in base.items()}
        fp32 = {}
        for mode, passes in bf16.items():
            fp32[mode] = {}
            for kind, c in passes.items():
                share = 1 / 3 if kind == "eval" else 1.0  # a forward pass: a third of a training step's FLOPs
                fp32[mode][kind] = {
                    "floor_s": c["floor_s"], "fixed_s": c["fixed_s"],
                    "per_token_s": flops_token * flops * share / fp32_rate,
                    "provenance": (f"assumption: fp32 without TF32 (the project sets no allow_tf32, PyTorch's "
                                   f"default is full fp32 matmuls) runs {flops_token * flops * share:.3g} FLOPs/token at "
                                   f"{FP32_EFFICIENCY:.0%} of the H200's {H200_FP32_PEAK / 1e12:.0f} TFLOP/s FP32 "
                                   "peak; floor and per-batch time as bf16's")}
        curves[name] = {"bf16": bf16, "fp32": fp32}
    n1 = packing["packing_bs32"]["n1_tokens_per_s"]
    procs = [1, 2, 4, 8]
    return {
        "format": 1, "name": "h200_2026-11-30", "kind": "gpu", "device": "one NVIDIA H200 (141 GB)",
        "measured": "2026-11-30", "software": speed["env"],
        "sources": [src, f"../shared/reference/gpu/{PACKING}", "../shared/reference/gpu/README.md",
                    "bench/calibration/token_lengths.json (HANS lengths for the eval fit)"],
        "form": FORM,
        "measured_vs_derived": (
            "measured: BERT-base bf16 dense steps (eager, compiled), the mask step and its projection, HANS eval "
            "at two batch sizes, packing 1/2/4/8 processes, the top-k projection. derived: bert-large and MiniLM "
            "(floor x layers, per-token x prunable params = FLOPs), tiny-bert likewise (never used on a GPU in "
            "earnest), roberta-base = bert-base (same encoder shape), the compiled mask step (dense compile "
            "ratio). assumption: fp32 (no TF32) per-token time from FLOPs at 50% of the FP32 spec peak with "
            "bf16's floor; compiled eval = eager eval; the overheads below."),
        "backbones": BACKBONES, "sizes": SIZES, "curves": curves,
        "training_flops_per_token_bert_base": flops_token,
        "projection_s_per_param": packing["projection_bertbase"]["topk_grouped_ms"] / 1e3
        / SIZES["bert-base"]["prunable_params"],
        "projection_provenance": f"measured: ../shared/reference/gpu/{PACKING} projection_bertbase.topk_grouped_ms "
                                 "(per-matrix top-k over BERT-base's 85.5M scores), per score",
        "packing": {"processes": procs,
                    "factor": [packing["packing_bs32"][f"n{n}_tokens_per_s"] / n1 for n in procs],
                    "provenance": f"measured: ../shared/reference/gpu/{PACKING} packing_bs32 (BERT-base bf16 eager "
                                  "bs32 x 128): total tokens/s of n processes / one process's; assumption: the same "
                                  "factor at other token counts, never below the steps' per-token (compute) time"},
        "eval_batch_auto": 1024,
        "overheads": {"node_s": 30.0, "compile_s": 60.0, "host_copy_bytes_per_s": 5e9, "write_bytes_per_s": 1e9},
        "overheads_provenance": (
            "assumption: node_s = Ray trial start (2.5-4 s, stack.md) + model load + data encoding, the old "
            "planner's 30 s, not measured on the H200; compile_s = the first steps' torch.compile (train and "
            "eval graphs); host_copy = pageable device-to-host copy of the training state at each evaluation; "
            "write = safetensors to local disk"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="../shared/reference/gpu")
    parser.add_argument("--lengths", default="bench/calibration/token_lengths.json")
    parser.add_argument("--out", default="bench/calibration/h200_2026-11-30.json")
    args = parser.parse_args(argv)
    return write_result(args.out, build(args.ref, args.lengths))


if __name__ == "__main__":
    main()
