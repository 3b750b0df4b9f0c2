"""Packing several trials onto one GPU (``resources.stages.<kind>.gpus: 0.25``) only when they fit.

Ray shares a GPU among trials whose fractions add up to at most 1 but never looks at memory. A trial with
fraction f may therefore only count on f of the GPU's memory: ``check_packing`` refuses, before anything
starts, a spec where some stage's estimated peak (srnet_core.memory) exceeds its share, with one line naming
the field and the fix. Packing pays because one BERT-base bs32 trial leaves most of an H200 idle (129k
tokens/s alone, 292k for 4 processes: issue 12; bench/packing.py measures it).
"""
from __future__ import annotations

import os

from srnet_core.memory import backbone_shape, estimate_stage_memory
from srnet_core.stages import get_kind

from .spec import SpecError, SweepSpec

GIB = 2**30


def packing_report(spec: SweepSpec, plan, gpu_memory_bytes: int) -> list[dict]:
    """Per (stage, backbone, batch, length): the estimated peak and the share of the GPU it may use."""
    rows: dict[tuple, dict] = {}
    for node in plan.nodes.values():
        if get_kind(node.stage).memory == "cpu":
            continue
        _, _, fraction, _ = spec.stage_request(node.stage)
        if fraction == "auto":
            fraction = 1.0
        if not fraction:
            continue
        cfg = node.stage_config
        train = cfg.get("train", {})
        batch, seq = int(train.get("batch_size", 32)), int(cfg.get("max_length", 128))
        key = (node.stage, cfg["backbone"], batch, seq, cfg.get("mask", {}).get("scope", "local"))
        if key in rows:
            continue
        shape = backbone_shape(cfg["backbone"])
        if shape is None:
            continue
        eval_batch = train.get("eval_batch_size", 256)
        need = estimate_stage_memory(node.stage, shape, batch, seq, amp=train.get("amp", "auto") != "off",
                                     scope=key[4], eval_batch=256 if eval_batch == "auto" else int(eval_batch))
        rows[key] = {"stage": node.stage, "backbone": cfg["backbone"], "batch": batch, "seq": seq,
                     "gpu_fraction": float(fraction), "estimate_bytes": need.total,
                     "share_bytes": int(float(fraction) * gpu_memory_bytes)}
    return list(rows.values())


def check_packing(spec: SweepSpec, plan, gpu_memory_bytes: int | None) -> list[dict]:
    """Refuse (SpecError, one line) a GPU fraction whose share of memory cannot hold its stage's trial.

    ``gpu_memory_bytes``: one GPU's memory (``detect_gpu_memory()``); None skips the check (no GPU known).
    Returns the per-stage rows of ``packing_report`` when everything fits.
    """
    if not gpu_memory_bytes:
        return []
    rows = packing_report(spec, plan, gpu_memory_bytes)
    for row in rows:
        if row["estimate_bytes"] > row["share_bytes"]:
            need_fraction = row["estimate_bytes"] / gpu_memory_bytes
            fits = next((1 / n for n in (8, 4, 2, 1) if 1 / n >= need_fraction), None)
            fix = (f"use {fits:g} or more" if fits else "the trial does not fit one GPU: lower batch_size or max_length")
            raise SpecError(
                f"field '{spec.stage_request(row['stage'])[3]}': {row['gpu_fraction']:g} GPU gives a {row['stage']} trial "
                f"{row['share_bytes'] / GIB:.1f} GiB but {row['backbone']} at batch {row['batch']} x {row['seq']} "
                f"needs ~{row['estimate_bytes'] / GIB:.1f} GiB (srnet_core.memory); {fix}")
    return rows


def detect_gpu_memory() -> int | None:
    """One GPU's memory: $SRNET_GPU_MEMORY_GB when set (a driver without a GPU), else GPU 0 of this
    process, else None (nothing to check against)."""
    value = os.environ.get("SRNET_GPU_MEMORY_GB")
    if value:
        try:
            return int(float(value) * GIB)
        except ValueError:
            raise SpecError(f"SRNET_GPU_MEMORY_GB={value!r} is not a number of GiB (e.g. 141)") from None
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no usable CUDA on the driver
        pass
    return None


def main(argv=None) -> int:
    """``python -m orchestrator.packing SPEC [--gpu-memory-gb 141]``: the estimate per stage, or the refusal
    (one line, exit 2)."""
    import argparse
    import sys

    from .plan import build_plan
    from .spec import load_spec

    parser = argparse.ArgumentParser(description="Check that a spec's GPU fractions fit in GPU memory")
    parser.add_argument("spec")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="one GPU's memory (default: detect)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        memory = int(args.gpu_memory_gb * GIB) if args.gpu_memory_gb else detect_gpu_memory()
        if not memory:
            raise SpecError("no GPU memory size known: pass --gpu-memory-gb or set SRNET_GPU_MEMORY_GB")
        rows = check_packing(spec, build_plan(spec), memory)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['stage']:<11} {row['backbone']:<20} batch {row['batch']:>4} x {row['seq']:<4} "
              f"gpus {row['gpu_fraction']:<6g} estimate {row['estimate_bytes'] / GIB:6.1f} GiB "
              f"of a {row['share_bytes'] / GIB:6.1f} GiB share")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
