"""The training order: every epoch has its own permutation, a pure function of (seed, epoch)."""
import numpy as np
import torch

from srnet_core.data import Encoded, epoch_order
from srnet_core.train import TrainConfig, TrainLoop


def test_each_epoch_gets_its_own_permutation_and_covers_every_example():
    n, batch = 20, 4  # 5 steps per epoch
    data = Encoded([str(i) for i in range(n)], [[101, 7, 102]] * n, [[0, 0, 0]] * n, np.arange(n), 0)
    param = torch.nn.Parameter(torch.zeros(1))
    loop = TrainLoop(torch.nn.Linear(1, 1), {"p": param}, data, lambda logits, b: logits.sum(),
                     TrainConfig(epochs=3, batch_size=batch, seed=5), evaluate=dict, selection=lambda m: 0.0,
                     snapshot=dict, device="cpu")
    seen = []
    for b in loop.batches():  # batches() follows loop.step: advance it as train() does
        seen.append(b["labels"].tolist())
        loop.step += 1
    epochs = [sum(seen[e * 5:(e + 1) * 5], []) for e in range(3)]
    for e, order in enumerate(epochs):
        assert order == epoch_order(n, 5, e).tolist()
        assert sorted(order) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # a loop reusing epoch 0's order fails here
    assert epoch_order(n, 5, 1).tolist() == epoch_order(n, 5, 1).tolist()  # pure: resume needs no state
