"""The nli_prune_small recipe run directly through srnet_core (no Ray, no planner), for measuring its numbers.

MiniLM on a fixed 8,000-row split of MNLI dev-matched (ID dev: the other 1,815 rows; OOD: all 30,000 HANS
examples), per seed:
  dense  std (and optionally PoE) fine-tuning (lr 1e-4, bs 16, 1 epoch, 10% warm-up: the nli_small recipe);
  (a)    mask training of the std fine-tuned model at each sparsity with std and with PoE;
  (c)    PoE mask training of the pre-trained model (random classifier, frozen and masked).
Mask training: magnitude_soft init with normalized scores (--init, --score-scale), exact top-k every step, ID dev every
``--eval-every`` steps; selection on ID dev from 70% of training on when starting from the fine-tuned model
(protocol 2), from 0 for (c). HANS is evaluated once, at the ID-selected checkpoint (the protocol reports OOD
there; evaluating 30,000 HANS pairs at every interval would triple the CPU time and change nothing reported).

    SRNET_DATA_DIR=../shared/data nice -n 10 .venv/bin/python bench/nli_prune_direct.py --seeds 0,1

Caveat: all-MiniLM-L6-v2 saw MNLI/SNLI (and QQP) pairs in its own sentence-embedding training.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core import losses  # noqa: E402
from srnet_core.bias import fit_bias_model, read_per_example  # noqa: E402
from srnet_core.cache import encode_cached  # noqa: E402
from srnet_core.masks import MaskConfig, MaskSet  # noqa: E402
from srnet_core.models import load_model, load_tokenizer, prunable_linear_names  # noqa: E402
from srnet_core.tasks import get_task  # noqa: E402
from srnet_core.train import TrainConfig, TrainLoop, predict_logits  # noqa: E402

TASK_OPTIONS = {"train_source": "dev_matched", "train_size": 8000, "split_seed": 0}
CELLS = [f"hans_{h}_{lab}" for h in ("lexical_overlap", "subsequence", "constituent")
         for lab in ("entailment", "non-entailment")]


class Env:
    def __init__(self, args):
        self.args = args
        self.task = get_task("mnli", data_dir=args.data_dir, **TASK_OPTIONS)
        train = self.task.load(self.task.train_split)
        self.splits = {n: self.task.load(n) for n in self.task.eval_splits}
        work = args.work_dir or tempfile.mkdtemp(prefix="nli_prune_")
        self.work = work
        bias = fit_bias_model(self.task)
        self.bias_metrics = bias.metrics
        paths = bias.write(os.path.join(work, "bias"))
        tok = load_tokenizer(args.backbone)
        cache = os.path.join(work, "tokens")
        self.train_enc = encode_cached(tok, train, args.max_length, cache, self.task.cache_key())
        self.eval_enc = {n: encode_cached(tok, s, args.max_length, cache, self.task.cache_key())
                         for n, s in self.splits.items()}
        if args.hans_per_cell:  # a fixed, seeded subset with the same number of pairs in each of the 6 cells
            hans = self.splits["hans"]
            rng = np.random.default_rng(0)
            cells: dict[tuple, list[int]] = {}
            for i, cell in enumerate(zip(hans.extra["heuristic"], hans.extra["hans_label"])):
                cells.setdefault(cell, []).append(i)
            keep = np.sort(np.concatenate([rng.choice(v, size=min(args.hans_per_cell, len(v)), replace=False)
                                           for _, v in sorted(cells.items())]))
            self.splits["hans"] = hans.subset(keep)
            self.eval_enc["hans"] = self.eval_enc["hans"].subset(keep)
        log_probs, kept = read_per_example(paths[self.task.train_split], self.train_enc.ids, self.task.num_labels,
                                           check="log_probs")
        assert len(kept) == len(self.train_enc)
        self.train_enc.with_extra("bias", log_probs)

    def metrics(self, model, names) -> dict:
        out = {}
        for name in names:
            logits = predict_logits(model, self.eval_enc[name], self.args.eval_batch_size, "cpu", amp="off")
            out[name] = self.task.metrics(name, logits, self.splits[name])
        return out


def finetune(env: Env, loss: str, seed: int) -> tuple[dict, dict]:
    a = env.args
    model = load_model(a.backbone, env.task.num_labels, seed=seed)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(lr=a.ft_lr, epochs=1.0, max_steps=a.ft_steps or None, batch_size=a.batch_size,
                      eval_batch_size=a.eval_batch_size, seed=seed, amp="off", eval_at_start=False)
    cfg.warmup_steps = int(0.1 * cfg.total_steps(len(env.train_enc)))
    cfg.eval_every = cfg.total_steps(len(env.train_enc))
    loop = TrainLoop(model, params, env.train_enc, losses.get_loss(loss), cfg,
                     evaluate=lambda: env.metrics(model, ["dev_matched"]),
                     selection=lambda ev: ev["dev_matched"]["accuracy"], snapshot=lambda: {}, device="cpu")
    t0 = time.perf_counter()
    loop.train()
    result = {"kind": "dense", "loss": loss, "seed": seed, "steps": loop.total_steps,
              "train_seconds": loop.train_seconds, "metrics": env.metrics(model, ["dev_matched", "hans"]),
              "wall_seconds": time.perf_counter() - t0}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result, state


def mask_train(env: Env, loss: str, sparsity: float, seed: int, init_state: dict | None) -> dict:
    a = env.args
    model = load_model(a.backbone, env.task.num_labels, seed=seed)
    if init_state is not None:
        model.load_state_dict(init_state)
    for p in model.parameters():
        p.requires_grad_(False)
    names = prunable_linear_names(model, include_pooler=True, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=sparsity, init=a.init, score_scale=a.score_scale))
    params = {f"scores:{n}": mask_set.parametrization(n).scores for n in names}
    cfg = TrainConfig(lr=a.mask_lr, max_steps=a.mask_steps, batch_size=a.batch_size, eval_at_start=False,
                      eval_batch_size=a.eval_batch_size, seed=seed, amp="off", eval_every=a.eval_every or a.mask_steps,
                      warmup_steps=int(0.1 * a.mask_steps), select_from=0.7 if init_state is not None else 0.0)
    loop = TrainLoop(model, params, env.train_enc, losses.get_loss(loss), cfg,
                     evaluate=lambda: env.metrics(model, ["dev_matched"]),
                     selection=lambda ev: ev["dev_matched"]["accuracy"],
                     snapshot=lambda: {f"mask:{n}": m for n, m in mask_set.masks().items()},
                     device="cpu", after_step=mask_set.project,
                     extra_state=(mask_set.state_dict, mask_set.load_state_dict))
    t0 = time.perf_counter()
    loop.train()
    curve = [(r.step, round(r.metrics["dev_matched"]["accuracy"], 4)) for r in loop.history]
    mask_set.load_masks({n: loop.best[f"mask:{n}"] for n in names})
    measured = mask_set.sparsity_report(prunable_linear_names(model, include_pooler=False,
                                                              include_classifier=False))["total"]
    return {"kind": "mask_train", "paradigm": "a" if init_state is not None else "c", "loss": loss,
            "sparsity": sparsity, "measured_sparsity": measured, "seed": seed, "steps": loop.total_steps,
            "best_step": loop.best_step, "dev_curve": curve, "train_seconds": loop.train_seconds,
            "metrics": env.metrics(model, ["dev_matched", "hans"]), "wall_seconds": time.perf_counter() - t0}


def line(r: dict) -> str:
    d, h = r["metrics"]["dev_matched"], r["metrics"]["hans"]
    what = (f"dense {r['loss']}" if r["kind"] == "dense"
            else f"({r['paradigm']}) {r['loss']} s={r['sparsity']} (meas {r['measured_sparsity']:.3f})")
    return (f"seed {r['seed']} {what:<34} dev {d['accuracy']:.4f}  HANS {h['accuracy']:.4f}  "
            + " ".join(f"{c[5:]} {h[c]:.3f}" for c in CELLS) + f"  [{r.get('wall_seconds', 0):.0f}s]")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--mask-lr", type=float, default=5e-5)
    ap.add_argument("--mask-steps", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=0, help="ID dev every N mask steps; 0 = at the end only")
    ap.add_argument("--init", default="magnitude_soft")
    ap.add_argument("--score-scale", default="normalized")
    ap.add_argument("--runs", default="dense,a,c",
                    help="any of dense (std fine-tuning), dense_poe (PoE fine-tuning), a, c")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--hans-per-cell", type=int, default=0,
                    help="evaluate HANS on this many pairs per heuristic x label cell (seeded); 0 = all 30,000")
    ap.add_argument("--ft-steps", type=int, default=0, help="fine-tuning steps; 0 = one epoch")
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "nli_prune_direct.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = Env(args)
    runs_wanted = set(args.runs.split(","))
    sparsities = [float(s) for s in args.sparsities.split(",")]
    result = {"bench": "nli_prune_direct", "args": vars(args), "task_options": TASK_OPTIONS,
              "n_train": len(env.train_enc), "n_dev": len(env.eval_enc["dev_matched"]),
              "n_hans": len(env.eval_enc["hans"]), "bias_model": env.bias_metrics, "runs": [],
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
              "caveat": "all-MiniLM-L6-v2 saw MNLI/SNLI and QQP pairs in its own training"}

    def record(r):
        result["runs"].append(r)
        result["total_wall_seconds"] = time.perf_counter() - started
        print(line(r), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".tmp", args.out)

    seeds = [int(s) for s in args.seeds.split(",")]
    # Most informative first (a partial run is still usable): per seed the dense model and its (a)
    # subnetworks, then (c) for every seed.
    for seed in seeds:
        std_state = None
        if "dense" in runs_wanted or "a" in runs_wanted:
            r, std_state = finetune(env, "std", seed)
            record(r)
        if "dense_poe" in runs_wanted:
            record(finetune(env, "poe", seed)[0])
        if "a" in runs_wanted:
            for s in sparsities:
                for loss in ("std", "poe"):
                    record(mask_train(env, loss, s, seed, std_state))
    if "c" in runs_wanted:
        for seed in seeds:
            for s in sparsities:
                record(mask_train(env, "poe", s, seed, None))
    summarize(result)
    return result


def summarize(result: dict) -> None:
    groups: dict[tuple, list] = {}
    for r in result["runs"]:
        key = ("dense", r["loss"], 0.0) if r["kind"] == "dense" else (r["paradigm"], r["loss"], r["sparsity"])
        groups.setdefault(key, []).append(r)
    print(f"\nmean over seeds ({result['n_train']} train / {result['n_dev']} dev / {result['n_hans']} HANS)")
    table = []
    for key, rs in groups.items():
        mean = lambda f: float(np.mean([f(r) for r in rs]))  # noqa: E731
        row = {"setting": key, "n_seeds": len(rs), "dev": mean(lambda r: r["metrics"]["dev_matched"]["accuracy"]),
               "hans": mean(lambda r: r["metrics"]["hans"]["accuracy"]),
               **{c: mean(lambda r, c=c: r["metrics"]["hans"][c]) for c in CELLS}}
        table.append(row)
        print(f"{str(key):<24} n={len(rs)} dev {row['dev']:.4f} HANS {row['hans']:.4f} "
              + " ".join(f"{c[5:]} {row[c]:.3f}" for c in CELLS))
    result["table"] = table
    out = result["args"]["out"]
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
