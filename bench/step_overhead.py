"""Mask-training step vs dense fine-tuning step, same model, batch and sequence length, side by side.

Both steps are the body of ``srnet_core.train.TrainLoop`` (autocast forward, loss, backward, global-norm
clip, AdamW step, the after-step hook): dense trains every weight; mask training trains the scores of the
prunable matrices (pooler and classifier included, as the mask_train stage does) with the weights frozen and
re-projects the masks to exact top-k after every step (``MaskSet.project``). They are timed in
alternating blocks in one process (the order flips every round), so machine load hits both alike; the
ratio is median(mask step) / median(dense step) after warm-up. A third variant, dense with the
embeddings frozen, is shown for reference (mask training never touches the embeddings, so part of its
advantage over the dense step is that; this column isolates the masking overhead itself). Weights are randomly initialised from a
config (timing does not depend on the values).

    python bench/step_overhead.py                                   # MiniLM-size on CPU
    python bench/step_overhead.py --device cuda --model bert-base --batch 32 --seq 128 --amp bf16

Targets: ratio <= 1.15 on CPU, <= 1.10 on GPU.

On CPU the default is one thread and the process's CPU-time clock: on a shared machine, wall time with
several OpenMP threads mostly measures the other tenants (we saw a dense step with frozen embeddings
"slower" than the full dense step). ``--clock wall --threads 0`` measures wall time with all threads.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core.masks import MaskConfig, MaskSet  # noqa: E402
from srnet_core.models import prunable_linear_names  # noqa: E402
from srnet_core.train import TrainConfig, autocast_context, forward_logits, make_optimizer  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

MODEL_SIZES = {
    # all-MiniLM-L6-v2's shape (22.7M parameters)
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    # bert-base-uncased's shape (110M parameters)
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # a tiny one for a smoke run of this script
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


def build_model(size: str, num_labels: int, seed: int, device):
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, num_labels=num_labels, **MODEL_SIZES[size])
    return AutoModelForSequenceClassification.from_config(config).to(device)


def make_stepper(model, params, device, amp, clock, after_step=None, timings=None):
    """One TrainLoop step; returns the function. ``timings`` collects after-step seconds when given."""
    optimizer = make_optimizer(params, TrainConfig(lr=2e-5), device)  # what TrainLoop uses: fused on CUDA

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(batch, step_index):
        with autocast_context(device, amp):
            logits = forward_logits(model, batch, device)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if after_step is not None:
            sync()
            t0 = clock()
            after_step(step_index)
            sync()
            if timings is not None:
                timings.append(clock() - t0)
    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_SIZES), default="minilm")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per variant (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps per variant first (the first ~8 steps after a magnitude init are "
                             "tie-heavy and project slower)")
    parser.add_argument("--block", type=int, default=2, help="steps per variant before switching")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--scope", choices=["local", "global"], default="local")
    parser.add_argument("--reproject-every", type=int, default=1)
    parser.add_argument("--amp", default="auto", help="auto (bf16 on a GPU that has it), off, bf16")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (0 = leave as is); default 1 on CPU, as is on CUDA")
    parser.add_argument("--clock", choices=["wall", "cpu"], default=None,
                        help="wall: perf_counter; cpu: this process's CPU time, which with one thread ignores "
                             "time lost to other processes on a shared machine. Default: cpu on CPU, wall on "
                             "CUDA. On a dedicated machine use --clock wall --threads 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "step_overhead.json"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads is None:
        args.threads = 1 if device.type == "cpu" else 0
    if args.clock is None:
        args.clock = "cpu" if device.type == "cpu" else "wall"
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible here; run on a GPU machine or use --device cpu")
    if args.clock == "cpu" and device.type == "cuda":
        raise SystemExit("--clock cpu measures host CPU time; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    dense = build_model(args.model, 3, args.seed, device)
    dense.train()
    dense_params = [p for p in dense.parameters() if p.requires_grad]
    # a reference point, not the target: dense with the embeddings frozen (mask training never updates the
    # embeddings, so this isolates the cost of the masked forward/backward and the projection)
    frozen = build_model(args.model, 3, args.seed, device)
    frozen.train()
    for name, p in frozen.named_parameters():
        p.requires_grad_(".embeddings." not in name)
    frozen_params = [p for p in frozen.parameters() if p.requires_grad]

    masked = build_model(args.model, 3, args.seed, device)
    masked.train()
    for p in masked.parameters():
        p.requires_grad_(False)
    names = prunable_linear_names(masked, include_pooler=True, include_classifier=True)
    mask_set = MaskSet(masked, names, MaskConfig(sparsity=args.sparsity, init="magnitude", scope=args.scope,
                                                 reproject_every=args.reproject_every))
    scores = mask_set.score_parameters()
    project_seconds: list[float] = []

    g = torch.Generator().manual_seed(args.seed)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq), generator=g),
             "token_type_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
             "labels": torch.randint(0, 3, (args.batch,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}

    steppers = {"dense": make_stepper(dense, dense_params, device, args.amp, clock),
                "mask": make_stepper(masked, scores, device, args.amp, clock, mask_set.project, project_seconds),
                "dense_noemb": make_stepper(frozen, frozen_params, device, args.amp, clock)}
    kinds = list(steppers)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    counters = {k: 0 for k in kinds}

    def run(kind: str, n: int, record: bool) -> None:
        for _ in range(n):
            counters[kind] += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            steppers[kind](batch, counters[kind])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if record:
                times[kind].append(clock() - t0)

    started = time.time()
    for kind in kinds:
        run(kind, args.warmup, record=False)
    project_seconds.clear()
    rounds = max(1, -(-args.steps // args.block))
    for r in range(rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):  # flip the order every round
            run(kind, min(args.block, args.steps - len(times[kind])), record=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "clock": args.clock, "batch": args.batch, "seq": args.seq, "amp": args.amp,
        "sparsity": args.sparsity, "scope": args.scope, "reproject_every": args.reproject_every,
        "steps_timed": len(times["dense"]), "warmup": args.warmup,
        "masked_matrices": len(names), "score_params": sum(s.numel() for s in scores),
        "dense_params": sum(p.numel() for p in dense_params),
        "dense_step_s_median": med["dense"], "mask_step_s_median": med["mask"],
        "ratio_median": med["mask"] / med["dense"],
        "ratio_mean": statistics.fmean(times["mask"]) / statistics.fmean(times["dense"]),
        "dense_noemb_step_s_median": med["dense_noemb"],
        "ratio_vs_dense_noemb_median": med["mask"] / med["dense_noemb"],
        "projection_s_median": statistics.median(project_seconds) if project_seconds else 0.0,
        "target": 1.10 if device.type == "cuda" else 1.15,
        "measured_sparsity": mask_set.sparsity_report()["total"],
        "torch": torch.__version__, "wall_s": time.time() - started,
        "dense_step_s": times["dense"], "mask_step_s": times["mask"], "dense_noemb_step_s": times["dense_noemb"],
    }
    result["meets_target"] = result["ratio_median"] <= result["target"]

    print(f"{'variant':<12} {'median s/step':>14} {'mean s/step':>12}")
    for kind in kinds:
        print(f"{kind:<12} {med[kind]:>14.4f} {statistics.fmean(times[kind]):>12.4f}")
    print(f"projection (inside mask step): median {result['projection_s_median']:.4f} s")
    print(f"ratio mask/dense: median {result['ratio_median']:.3f}, mean {result['ratio_mean']:.3f} "
          f"(target <= {result['target']:.2f}: {'met' if result['meets_target'] else 'MISSED'})")
    print(f"reference: mask / dense-with-frozen-embeddings = {result['ratio_vs_dense_noemb_median']:.3f}")
    print(f"{args.model} on {result['device']} ({result['threads']} threads, {args.clock} clock), batch {args.batch} x {args.seq}, "
          f"amp {args.amp}, sparsity {args.sparsity} {args.scope}, {len(times['dense'])} timed steps each")

    return write_result(args.out, result)


if __name__ == "__main__":
    main()
