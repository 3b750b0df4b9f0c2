"""BERT-shaped workloads for the GPU benchmarks: random weights, random tokens, the real training loop.

Only torch, transformers, numpy, safetensors and srnet_core are imported (a GPU box may have nothing
else). ``run_trial`` is one stage's training as the stages run it: ``srnet_core.train.TrainLoop`` (autocast,
loss, backward, clip, AdamW via ``make_optimizer``, the after-step hook), with mask training's MaskSet
projecting after every step.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srnet_core.data import Encoded  # noqa: E402
from srnet_core.losses import std_loss  # noqa: E402
from srnet_core.masks import MaskConfig, MaskSet  # noqa: E402
from srnet_core.models import prunable_linear_names  # noqa: E402
from srnet_core.train import TrainConfig, TrainLoop  # noqa: E402

SIZES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


def build_model(size: str, num_labels: int = 3, seed: int = 0, device="cpu"):
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, num_labels=num_labels, **SIZES[size])
    return AutoModelForSequenceClassification.from_config(config).to(device)


def random_encoded(n: int, seq: int, seed: int = 0, num_labels: int = 3) -> Encoded:
    """n rows of exactly ``seq`` tokens (every batch is batch x seq: tokens/s is well defined)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(n, seq), dtype=np.int32)
    offsets = np.arange(0, n * seq + 1, seq, dtype=np.int64)
    from srnet_core.data import Ragged

    return Encoded([f"r{i}" for i in range(n)], Ragged(ids.ravel(), offsets),
                   Ragged(np.zeros(n * seq, dtype=np.int8), offsets), rng.integers(0, num_labels, n), 0)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_trial(stage: str, size: str, batch: int, seq: int, steps: int, device, *, sparsity: float = 0.7,
               scope: str = "local", compile=False, amp: str = "auto", seed: int = 0, lr: float = 2e-5):
    """(loop, timestamps): a TrainLoop of ``steps`` steps for ``finetune`` (all weights) or ``mask_train``
    (scores of every prunable matrix, weights frozen, exact top-k after each step). ``timestamps`` gets
    (step, time after a device sync) appended at every step."""
    model = build_model(size, seed=seed, device=device)
    model.train()
    timestamps: list[tuple[int, float]] = []
    if stage == "mask_train":
        for p in model.parameters():
            p.requires_grad_(False)
        names = prunable_linear_names(model, include_pooler=True, include_classifier=True)
        mask_set = MaskSet(model, names, MaskConfig(sparsity=sparsity, init="magnitude", scope=scope))
        params = {n: mask_set.parametrization(n).scores for n in names}
        project = mask_set.project
    else:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        project = None

    def after_step(step: int) -> None:
        if project is not None:
            project(step)
        timestamps.append((step, time.perf_counter()))

    data = random_encoded(batch * max(steps, 1), seq, seed)
    config = TrainConfig(lr=lr, max_steps=steps, batch_size=batch, eval_every=10**9, eval_at_start=False,
                         compile=compile, amp=amp, seed=seed)
    loop = TrainLoop(model, params, data, std_loss, config, evaluate=dict, selection=lambda m: 0.0,
                     snapshot=dict, device=device, after_step=after_step)
    return loop, timestamps


def timed_steps(loop: TrainLoop, timestamps, device, warmup: int) -> list[float]:
    """Run the loop; per-step seconds after ``warmup`` steps (device-synchronised at both ends, so the mean
    over the timed span is exact even though single steps are queued asynchronously)."""
    marks: dict[int, float] = {}
    original = loop.after_step

    def after_step(step: int) -> None:
        original(step)
        if step in (warmup, loop.total_steps):
            sync(device)
            marks[step] = time.perf_counter()

    loop.after_step = after_step
    loop.train()
    n = loop.total_steps - warmup
    return [(marks[loop.total_steps] - marks[warmup]) / n] * n if n > 0 else []
