"""Faster steps without changing results: torch.compile composes with the mask parametrizations, eval batch
sizing, the optimizer choice. (Fused AdamW and the absence of host syncs need a GPU: bench/gpu_suite.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srnet_core import losses
from srnet_core.masks import MaskConfig, MaskSet
from srnet_core.models import load_model, load_tokenizer, prunable_linear_names
from srnet_core.data import encode
from srnet_core.tasks import get_task
from srnet_core.train import TrainConfig, TrainLoop, make_optimizer, predict_logits


def _data():
    task = get_task("synthetic", n_train=48, n_dev=24, n_ood=24)
    tokenizer = load_tokenizer("tiny-bert")
    return task, encode(tokenizer, task.load(task.train_split), 32), encode(tokenizer, task.load("dev"), 32)


def _mask_training(compile_setting):
    task, train, dev = _data()
    model = load_model("tiny-bert", task.num_labels, seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.6, init="magnitude_soft"))
    params = {n: mask_set.parametrization(n).scores for n in names}
    losses_seen = []

    def loss_fn(logits, batch):
        loss = losses.std_loss(logits, batch)
        losses_seen.append(loss.detach().clone())
        return loss

    config = TrainConfig(lr=1e-2, max_steps=4, batch_size=16, eval_every=2, compile=compile_setting,
                         eval_at_start=False)
    loop = TrainLoop(model, params, train, loss_fn, config,
                     evaluate=lambda: {"dev": {"n": float(predict_logits(model, dev, 8, "cpu").sum())}},
                     selection=lambda m: 0.0, snapshot=lambda: {}, device="cpu", after_step=mask_set.project)
    loop.train()
    return losses_seen, [r.metrics["dev"]["n"] for r in loop.history], {n: p.mask.clone() for n, p in
                                                                         ((n, mask_set.parametrization(n)) for n in names)}


def test_compiled_mask_training_matches_eager():
    """torch.compile traces through the parametrizations and the straight-through Function: same losses,
    same eval logits, same masks as eager ("aot_eager": the graph capture and autograd without codegen)."""
    eager = _mask_training(False)
    compiled = _mask_training("aot_eager")
    assert len(eager[0]) == len(compiled[0]) == 4
    assert all(torch.equal(a, b) for a, b in zip(eager[0], compiled[0]))
    assert eager[1] == compiled[1]
    assert all(torch.equal(eager[2][n], compiled[2][n]) for n in eager[2])
    assert any(not torch.equal(eager[2][n], torch.ones_like(eager[2][n])) for n in eager[2])


def test_eval_batch_size_auto_is_256_rows_on_cpu_and_changes_nothing():
    task, _, dev = _data()
    model = load_model("tiny-bert", task.num_labels, seed=0)
    np.testing.assert_allclose(predict_logits(model, dev, "auto", "cpu"), predict_logits(model, dev, 7, "cpu"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0, -3, "big", 2.5])
def test_eval_batch_size_must_be_positive_or_auto(value):
    with pytest.raises(ValueError, match="eval_batch_size"):
        TrainConfig(eval_batch_size=value)


def test_optimizer_is_plain_adamw_on_cpu():
    p = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([p], TrainConfig(lr=0.1, weight_decay=0.01), "cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert not optimizer.defaults.get("fused") and optimizer.defaults["weight_decay"] == 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused AdamW needs CUDA")
def test_optimizer_is_fused_on_cuda():
    p = torch.nn.Parameter(torch.zeros(3, device="cuda"))
    assert make_optimizer([p], TrainConfig(), "cuda").defaults["fused"] is True
