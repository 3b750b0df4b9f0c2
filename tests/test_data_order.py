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


def test_length_grouped_batches_cover_every_example_once_in_a_seeded_order():
    from srnet_core.data import grouped_epoch_order

    rng = np.random.default_rng(0)
    n, batch = 1_003, 8  # 125 full batches and one of 3
    lengths = rng.integers(5, 120, n)
    data = Encoded([str(i) for i in range(n)], [[101] * int(k) for k in lengths], [[0] * int(k) for k in lengths],
                   np.arange(n), 0)
    param = torch.nn.Parameter(torch.zeros(1))
    loop = TrainLoop(torch.nn.Linear(1, 1), {"p": param}, data, lambda logits, b: logits.sum(),
                     TrainConfig(epochs=2, batch_size=batch, seed=3, group_by_length=True), evaluate=dict,
                     selection=lambda m: 0.0, snapshot=dict, device="cpu")
    seen = []
    for b in loop.batches():
        seen.append(b["labels"].tolist())
        loop.step += 1
    steps = len(seen) // 2
    assert steps == 126 and [len(b) for b in seen[:steps]] == [batch] * 125 + [3]
    for e in range(2):
        order = sum(seen[e * steps:(e + 1) * steps], [])
        assert sorted(order) == list(range(n))  # each example exactly once per epoch
        assert order == grouped_epoch_order(lengths, batch, 3, e).tolist()  # pure: resume needs no state
    assert seen[:steps] != seen[steps:]
    # batches pad to near their own length: padded tokens well under those of random batches
    def padded(order):
        return sum(lengths[order[i:i + batch]].max() * len(order[i:i + batch]) for i in range(0, n, batch))
    grouped, plain = padded(grouped_epoch_order(lengths, batch, 3, 0)), padded(epoch_order(n, 3, 0))
    assert grouped < 0.7 * plain, (grouped, plain)
    # within a pool the batches are length-sorted, so a batch's spread is small
    spreads = [int(lengths[b].max() - lengths[b].min()) for b in map(np.array, seen[:125])]
    assert np.median(spreads) <= 4
