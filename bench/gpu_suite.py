"""Every GPU benchmark of issue 12 in one run (< 5 minutes on an H200), one JSON result.

Needs only torch, transformers, numpy, safetensors and this checkout's srnet_core (no Ray, pydantic,
datasets, optuna, pandas: a bare GPU box). BERT-base-shaped random weights, random tokens, bf16 autocast.

    python bench/gpu_suite.py                       # on the GPU machine; writes $OUT/gpu_suite.json
    python bench/gpu_suite.py --out results.json    # or a given path
    python bench/gpu_suite.py --smoke               # tiny shapes on CPU: checks the suite's logic (~20 s)

Sections (each records its own error instead of stopping the suite):
  projection   exact top-k of the 85M BERT-base scores, local 70% and global 90%: ms (target <= 4), the old
               batched kthvalue for reference, and masks bit-identical to the CPU band search
  steps        dense vs mask-training step (local 70%, global 90%) at batch 32 x 128 through TrainLoop (fused
               AdamW): ms, ratio (target <= 1.10), host syncs per step (target 0); torch.compile'd dense step
               (target <= 26 ms); a compiled mask step with --compile-mask
  packing      N = 1, 4, 8 BERT-base bs32 fine-tuning processes on the GPU: aggregate tokens/s (target >= 450k)
  memory       ten stages (run_stage) in one process: allocated bytes back to baseline after each (within 1%),
               each stage's peak next to srnet_core.memory's estimate
  checkpoints  seconds per checkpoint (snapshot on the training thread, background write) for BERT-base
               fine-tuning and mask training, and their sizes
  inference    latency/throughput of dense, unstructured (baked), 2:4 (baked) and structured (shrunk) models,
               and the 2:4 semi-structured kernel ratio per linear shape
  calibration  the cost model's pass curves (dense, mask, eval; bf16 and fp32; compiled dense) at several token
               counts, written as a calibration file (docs/cost.md) next to the JSON: <device>_<date>.json;
               with the packing section in the same run, its packing factor too
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
os.environ["SRNET_TOKEN_CACHE"] = ""  # no token cache: it is an Arrow file (pyarrow), absent on a bare GPU box

import torch  # noqa: E402

import workload  # noqa: E402
from srnet_core.masks import MaskConfig, MaskSet, _keep_top, _keep_top_topk, prune_count  # noqa: E402

BANNED = ("ray", "pydantic", "datasets", "optuna", "pandas", "pyarrow")
TARGETS = {"projection_ms": 4.0, "mask_step_ratio": 1.10, "dense_compiled_step_ms": 26.0,
           "packed_tokens_per_s": 450_000, "memory_return_fraction": 0.01}


def sync(device):
    workload.sync(device)


def _median_ms(fn, device, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _old_kthvalue_local(values, sparsity):
    """The replaced GPU path's core (batched kthvalue per shape), timed for reference only."""
    groups = {}
    for v in values:
        groups.setdefault(v.numel(), []).append(v)
    for vs in groups.values():
        stacked = torch.stack(vs)
        k = prune_count(stacked.shape[1], sparsity)
        kth = stacked.kthvalue(k, dim=1, keepdim=True).values
        (stacked > kth).sum(dim=1).tolist()


def section_projection(cfg) -> dict:
    device = cfg.device
    model = workload.build_model(cfg.size, device="cpu")
    from srnet_core.models import prunable_linear_names

    names = prunable_linear_names(model, include_pooler=True, include_classifier=True)
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(0)
    scores_cpu = [torch.randn(modules[n].weight.numel(), generator=g) for n in names]
    scores = [s.to(device) for s in scores_cpu]
    out = {"matrices": len(names), "scores": sum(s.numel() for s in scores)}
    for scope, sparsity in (("local", 0.7), ("global", 0.9)):
        ms = _median_ms(lambda: _keep_top_topk(scores, sparsity, scope), device, cfg.iters)
        keeps, _ = _keep_top_topk(scores, sparsity, scope)
        if scope == "global":
            reference, _, _ = _keep_top(scores_cpu, sparsity)
        else:
            reference = [_keep_top([s], sparsity)[0][0] for s in scores_cpu]
        identical = all(torch.equal(a.cpu(), b) for a, b in zip(keeps, reference))
        out[scope] = {"sparsity": sparsity, "topk_ms": ms, "identical_to_cpu_band": identical,
                      "meets_target": ms <= TARGETS["projection_ms"] if cfg.gpu else None}
    out["local"]["old_kthvalue_ms"] = _median_ms(lambda: _old_kthvalue_local(scores, 0.7), device, 3, warmup=1)
    return out


def _steps_ms(stage, cfg, scope="local", sparsity=0.7, compile=False) -> float:
    total = cfg.warmup + cfg.steps
    loop, _ = workload.make_trial(stage, cfg.size, cfg.batch, cfg.seq, total, cfg.device, sparsity=sparsity,
                                  scope=scope, compile=compile)
    per_step = workload.timed_steps(loop, None, cfg.device, cfg.warmup)
    del loop
    from srnet_core.train import release_memory

    release_memory(compile, cfg.device)
    return 1000 * per_step[0]


def _host_syncs_per_step(cfg, stage="mask_train", scope="local") -> float | None:
    """Syncs the CUDA sync debugger sees in 3 steady-state steps of the real loop (None on CPU)."""
    if not cfg.gpu:
        return None
    loop, _ = workload.make_trial(stage, cfg.size, cfg.batch, cfg.seq, 6, cfg.device, scope=scope)
    loop.total_steps = 3
    loop.train()  # warm-up (allocations, first-step state init)
    loop.total_steps = 6
    loop.run_eval = lambda: None  # the final evaluation is not part of a step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.train()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"per_step": len(syncs) / 3, "first": syncs[:3]}


def section_steps(cfg) -> dict:
    out = {"batch": cfg.batch, "seq": cfg.seq}
    dense = _steps_ms("finetune", cfg)
    out["dense_ms"] = dense
    for scope, sparsity in (("local", 0.7), ("global", 0.9)):
        mask = _steps_ms("mask_train", cfg, scope, sparsity)
        out[f"mask_{scope}_ms"] = mask
        out[f"mask_{scope}_ratio"] = mask / dense
        out[f"mask_{scope}_meets_target"] = mask / dense <= TARGETS["mask_step_ratio"] if cfg.gpu else None
    out["host_syncs_mask_step"] = _host_syncs_per_step(cfg)
    out["host_syncs_dense_step"] = _host_syncs_per_step(cfg, "finetune")
    if cfg.compile:
        out["compile_backend"] = cfg.compile
        out["dense_compiled_ms"] = _steps_ms("finetune", cfg, compile=cfg.compile)
        out["dense_compiled_meets_target"] = (out["dense_compiled_ms"] <= TARGETS["dense_compiled_step_ms"]
                                              if cfg.gpu and cfg.size == "bert-base" else None)
        if cfg.compile_mask:  # another ~minute of compilation on a GPU: on request
            out["mask_local_compiled_ms"] = _steps_ms("mask_train", cfg, "local", 0.7, compile=cfg.compile)
            out["mask_local_compiled_ratio"] = out["mask_local_compiled_ms"] / out["dense_compiled_ms"]
    if cfg.gpu:
        out["dense_mfu"] = _mfu(cfg, dense)
    return out


def _mfu(cfg, ms: float) -> float:
    """Model FLOPs utilisation of a dense step vs the H200's dense bf16 peak (989 TFLOP/s spec sheet)."""
    from srnet_core.memory import ModelShape

    size = workload.SIZES[cfg.size]
    shape = ModelShape.bert(size["hidden_size"], size["num_hidden_layers"], size["num_attention_heads"],
                            size["intermediate_size"])
    tokens = cfg.batch * cfg.seq
    flops = 6 * (shape.params - 30522 * size["hidden_size"]) * tokens  # embeddings are lookups
    return flops / (ms / 1000) / 989e12


def section_packing(cfg) -> dict:
    import packing

    args = {"device": str(cfg.device), "size": cfg.size, "stage": "finetune", "batch": cfg.batch, "seq": cfg.seq,
            "warmup": cfg.warmup, "steps": cfg.steps * 2, "compile": False}
    runs = [packing.run_packed(n, args) for n in cfg.procs]
    best = max((r.get("tokens_per_s", 0.0) for r in runs), default=0.0)
    return {"runs": runs, "best_tokens_per_s": best,
            "meets_target": best >= TARGETS["packed_tokens_per_s"] if cfg.gpu and cfg.size == "bert-base" else None}


def _local_backbone(cfg, directory: str) -> str:
    """A BERT-shaped random model saved as a model directory, with a WordPiece vocabulary covering the
    synthetic task's words (run_stage loads backbones from directories)."""
    from transformers import BertTokenizerFast

    from srnet_core.tasks import synthetic

    words = sorted({w for group in synthetic.AGENTS.values() for w in group} | set(synthetic.VERBS)
                   | set(synthetic.ADJS) | set(synthetic.PLACES)
                   | {"the", "near", "a", "someone", "was", "person", "animal", "."})
    letters = [chr(c) for c in range(97, 123)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *[f"##{c}" for c in letters]]
    vocab += [f"[unused{i}]" for i in range(30522 - len(vocab))]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(directory, "vocab.txt")).save_pretrained(directory)
    workload.build_model(cfg.size, num_labels=2).save_pretrained(directory)
    return directory


def section_memory(cfg) -> dict:
    """Stages one after another in this process; allocated bytes after each vs the baseline before them."""
    from srnet_core.memory import ModelShape, estimate_stage_memory
    from srnet_core.stages import run_stage

    with tempfile.TemporaryDirectory() as tmp:
        backbone = _local_backbone(cfg, os.path.join(tmp, "backbone"))
        base = {"task": "synthetic", "task_options": {"n_train": cfg.batch * 4, "n_dev": 64, "n_ood": 64},
                "backbone": backbone, "max_length": cfg.seq, "device": str(cfg.device), "sparsity": 0.7,
                "train": {"max_steps": 4, "batch_size": cfg.batch, "eval_every": 4, "lr": 2e-5}}
        plan = [("finetune", {}), ("mask_train", {}), ("mask_train", {"mask": {"scope": "global"}})]
        allocated = lambda: torch.cuda.memory_allocated() if cfg.gpu else 0  # noqa: E731
        sync(cfg.device)
        baseline = allocated()
        size = workload.SIZES[cfg.size]
        shape = ModelShape.bert(size["hidden_size"], size["num_hidden_layers"], size["num_attention_heads"],
                                size["intermediate_size"], num_labels=2)
        rows = []
        for i in range(cfg.stages):
            stage, extra = plan[i % len(plan)]
            if cfg.gpu:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run_stage({**base, "stage": stage, **extra}, os.path.join(tmp, f"stage{i}"))
            sync(cfg.device)
            after = allocated()
            scope = extra.get("mask", {}).get("scope", "local")
            rows.append({"stage": stage, "scope": scope, "seconds": time.perf_counter() - t0,
                         "allocated_after": after, "peak": torch.cuda.max_memory_allocated() if cfg.gpu else None,
                         "estimate": estimate_stage_memory(stage, shape, cfg.batch, cfg.seq, scope=scope).total})
    worst = max(abs(r["allocated_after"] - baseline) for r in rows)
    # within 1% of what a stage holds at its peak (the baseline of a fresh process is ~0 bytes)
    scale = max([baseline] + [r["peak"] or 0 for r in rows])
    return {"baseline_bytes": baseline, "stages": rows, "worst_delta_bytes": worst,
            "returns_to_baseline": worst <= TARGETS["memory_return_fraction"] * scale if cfg.gpu else None,
            "estimate_covers_peak": all(r["peak"] <= r["estimate"] for r in rows) if cfg.gpu else None}


def section_checkpoints(cfg) -> dict:
    from srnet_core.checkpoint import AsyncCheckpointWriter

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("finetune", "mask_train"):
            loop, _ = workload.make_trial(stage, cfg.size, cfg.batch, cfg.seq, 3, cfg.device)
            loop.train()
            writer = AsyncCheckpointWriter(os.path.join(tmp, f"{stage}.safetensors"))
            for _ in range(3):
                writer.submit(loop.state)
                writer.wait()  # one at a time: the time of each write, not of the replacement logic
            writer.close()
            out[stage] = {**writer.summary(), "file_bytes": os.path.getsize(os.path.join(tmp, f"{stage}.safetensors"))}
            del loop, writer
    return out


def section_inference(cfg) -> dict:
    from srnet_core.inference import measure

    model = workload.build_model(cfg.size, device=cfg.device)
    return measure(model, cfg.device, batch_sizes=(1, cfg.batch), seq=cfg.seq, iters=cfg.iters)


def _slug(device_name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'cpu (x86_64)' -> 'cpu': the calibration file's name stem."""
    words = [w for w in device_name.lower().replace("(", " ").replace(")", " ").split() if w != "nvidia"]
    return "".join(c for c in (words[0] if words else "device") if c.isalnum() or c == "-") or "device"


def section_calibration(cfg) -> dict:
    """Pass curves for the cost model (orchestrator/plan/cost.py, docs/cost.md): dense and mask-training steps
    through TrainLoop at four token counts, eval forward passes at three, in bf16 and fp32 (and compiled dense
    with compile on), the top-k projection per score, and the packing factor when that section ran. Written as
    a calibration file (default: next to the suite's JSON, <device>_<date>.json); the other sizes are derived
    from this one by bench/calibration_format.py's scaling."""
    import calibration_format as cf
    from srnet_core.train import autocast_context, release_memory

    base = "tiny-bert" if cfg.size == "tiny" else cfg.size
    steps = cfg.warmup + cfg.steps

    def step_s(stage, batch, seq, amp, compile=False) -> float:
        loop, _ = workload.make_trial(stage, cfg.size, batch, seq, steps, cfg.device, amp=amp, compile=compile)
        per = workload.timed_steps(loop, None, cfg.device, cfg.warmup)[0]
        del loop
        release_memory(compile, cfg.device)
        return per

    # the projection, timed on its own: a mask pass is the mask step without it (the cost model adds it per
    # re-projection, which full_grid does only at each evaluation)
    model = workload.build_model(cfg.size, device=cfg.device)
    names = workload.prunable_linear_names(model, include_pooler=True, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.7, init="magnitude", scope="local"))
    projection_s = _median_ms(lambda: mask_set.project(1), cfg.device, cfg.iters) / 1000
    scores = sum(mask_set.parametrization(n).scores.numel() for n in names)
    del model, mask_set
    curves: dict = {}
    raw: dict = {}
    for precision, amp in (("bf16", "bf16"), ("fp32", "off")):
        dense = [(b * q, step_s("finetune", b, q, amp)) for b, q in cfg.cal_points]
        # (clamped: on a tiny CPU smoke model the separately timed projection can exceed the step's share)
        mask = [(b * q, max(0.0, step_s("mask_train", b, q, amp) - projection_s)) for b, q in cfg.cal_points]
        model = workload.build_model(cfg.size, device=cfg.device).eval()
        evals = []
        for q in cfg.cal_eval_seqs:
            batch = {k: v.to(cfg.device) for k, v in {
                "input_ids": torch.randint(1000, 30000, (cfg.cal_eval_rows, q)),
                "attention_mask": torch.ones(cfg.cal_eval_rows, q, dtype=torch.long)}.items()}

            def forward(batch=batch):
                with torch.no_grad(), autocast_context(cfg.device, amp):
                    model(**batch)
            evals.append((cfg.cal_eval_rows * q, _median_ms(forward, cfg.device, cfg.iters) / 1000))
        del model
        raw[precision] = {"dense": dense, "mask": mask, "eval": evals}
        fixed, per_token = cf.fit_linear(evals)
        how = (f"measured: bench/gpu_suite.py calibration section, {cfg.size}, amp {amp}, TrainLoop steps at "
               f"{[p[0] for p in cfg.cal_points]} tokens")
        curves[precision] = {"eager": {
            "dense": {**cf.fit_roofline(dense), "provenance": how},
            "mask": {**cf.fit_roofline(mask), "provenance": how + " minus the projection"},
            "eval": {"floor_s": 0.0, "fixed_s": fixed, "per_token_s": per_token, "points": [list(p) for p in evals],
                     "provenance": f"measured: eval forward, {cfg.cal_eval_rows} rows x {cfg.cal_eval_seqs} tokens, "
                                   "least-squares fit"}}}
    if cfg.compile:
        ends = [cfg.cal_points[0], cfg.cal_points[-1]]
        dense_c = [(b * q, step_s("finetune", b, q, "bf16", cfg.compile)) for b, q in ends]
        ratio = dense_c[0][1] / raw["bf16"]["dense"][0][1]
        derived = f"derived: the eager curve x the compiled/eager dense floor ratio {ratio:.3f}"
        for precision in ("bf16", "fp32"):
            e = curves[precision]["eager"]
            curves[precision]["compile"] = {
                "dense": ({**cf.fit_roofline(dense_c), "provenance": "measured: compiled dense TrainLoop steps"}
                          if precision == "bf16" else {**e["dense"], "floor_s": e["dense"]["floor_s"] * ratio,
                                                       "provenance": derived}),
                "mask": {**e["mask"], "floor_s": e["mask"]["floor_s"] * ratio, "provenance": derived},
                "eval": {**e["eval"], "provenance": "assumption: = eager eval (compiled eval not timed)"}}
    packing = cfg.result["sections"].get("packing", {})
    runs = {r["procs"]: r["tokens_per_s"] for r in packing.get("runs", []) if "tokens_per_s" in r}
    today = datetime.date.today().isoformat()
    device_name = torch.cuda.get_device_name(0) if cfg.gpu else f"cpu ({platform.processor() or platform.machine()})"
    name = f"{_slug(device_name)}_{today}" + ("_smoke" if not cfg.gpu else "")
    calibration = {
        "format": 1, "name": name, "kind": "gpu" if cfg.gpu else "cpu", "device": device_name, "measured": today,
        "software": {"torch": torch.__version__, "commit": _commit()}, "form": cf.FORM,
        "sources": ["bench/gpu_suite.py --only ... calibration"],
        "measured_vs_derived": f"measured: {base} (bf16, fp32 eager; compiled dense bf16); derived: other sizes "
                               "(calibration_format.scaled), compiled mask/fp32 (floor ratio)",
        "backbones": cf.BACKBONES, "sizes": cf.SIZES, "curves": cf.derive_sizes(curves, base),
        "projection_s_per_param": projection_s / scores,
        "eval_batch_auto": 1024 if cfg.gpu else 256,
        "overheads": {"node_s": 30.0, "compile_s": 60.0, "host_copy_bytes_per_s": 5e9, "write_bytes_per_s": 1e9},
        "overheads_provenance": "assumption: as h200_2026-11-30.json (not timed by this section)",
    }
    if 1 in runs:
        procs = sorted(runs)
        calibration["packing"] = {"processes": procs, "factor": [runs[n] / runs[1] for n in procs],
                                  "provenance": "measured: this run's packing section (bs32 fine-tuning processes)"}
    path = cfg.calibration_out or os.path.join(os.path.dirname(os.path.abspath(cfg.out_path)), name + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:  # atomic: the cost model never reads half a file
        json.dump(calibration, f, indent=1)
    os.replace(tmp, path)
    return {"calibration_file": path, "projection_s": projection_s, "points": raw,
            "packing_in_file": "packing" in calibration}


SECTIONS = {"projection": section_projection, "steps": section_steps, "packing": section_packing,
            "memory": section_memory, "checkpoints": section_checkpoints, "inference": section_inference,
            "calibration": section_calibration}


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - no git on the box
        return os.environ.get("SRNET_CODE_VERSION", "unknown")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: exercises every section fast")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_suite.json, else bench/results/)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile timings")
    parser.add_argument("--compile-mask", action="store_true", help="also time a compiled mask-training step")
    parser.add_argument("--calibration-out", default=None,
                        help="the calibration section's file (default: next to --out, <device>_<date>.json)")
    parser.add_argument("--size", choices=sorted(workload.SIZES), default=None,
                        help="model shape (default: tiny with --smoke, else bert-base)")
    args = parser.parse_args(argv)

    class Cfg:
        pass

    cfg = Cfg()
    if args.smoke:
        cfg.device, cfg.size, cfg.batch, cfg.seq = torch.device("cpu"), "tiny", 4, 16
        cfg.warmup, cfg.steps, cfg.iters, cfg.procs, cfg.stages = 1, 2, 2, [2], 3
        cfg.compile = False if args.no_compile else "aot_eager"  # the graph capture without a C++ build
        cfg.cal_points, cfg.cal_eval_seqs, cfg.cal_eval_rows = [(2, 8), (4, 16)], [8, 16], 8
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite: no CUDA device visible; run it on the GPU machine, or use --smoke")
        cfg.device, cfg.size, cfg.batch, cfg.seq = torch.device("cuda"), "bert-base", 32, 128
        cfg.warmup, cfg.steps, cfg.iters, cfg.procs, cfg.stages = 10, 30, 10, [1, 4, 8], 10
        cfg.compile = False if args.no_compile else True
        # 1k-16k tokens per step (bucketed MNLI bs32 is ~1.3k, padded bs32 4k); eval at HANS-to-MNLI lengths
        cfg.cal_points, cfg.cal_eval_seqs, cfg.cal_eval_rows = [(32, 32), (32, 64), (32, 128), (128, 128)], \
            [16, 32, 64], 1024
    cfg.size = args.size or cfg.size
    cfg.compile_mask = args.compile_mask or args.smoke
    cfg.gpu = cfg.device.type == "cuda"
    out_path = args.out or os.path.join(os.environ.get("OUT") or os.path.join(HERE, "results"), "gpu_suite.json")
    cfg.out_path, cfg.calibration_out = out_path, args.calibration_out

    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": _commit(), "torch": torch.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name(0) if cfg.gpu else f"cpu ({platform.processor() or platform.machine()})",
              "smoke": args.smoke, "size": cfg.size, "targets": TARGETS, "sections": {}}
    cfg.result = result  # the calibration section reads the packing section's numbers
    started = time.time()
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        try:
            section = fn(cfg)
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
            section = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=6)}
        section["seconds"] = time.time() - t0
        result["sections"][name] = section
        print(f"[{name}] {section['seconds']:.1f} s " + json.dumps({k: v for k, v in section.items()
                                                                    if not isinstance(v, (list, dict))})[:300],
              flush=True)
    result["total_seconds"] = time.time() - started
    result["banned_modules_loaded"] = sorted(m for m in BANNED if m in sys.modules)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {out_path} ({result['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
