"""Gradient clipping: global norm (the protocol) and per tensor (the reference's QQP runs)."""
import pytest
import torch

from srnet_core.train import TrainConfig, clip_gradients


def _params():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.3, 0.4])  # norms 5 and 0.5
    return a, b


def test_per_tensor_clipping_clips_each_tensor_alone():
    a, b = _params()
    clip_gradients([a, b], 1.0, "per_tensor")
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8]), atol=1e-6)
    assert torch.allclose(b.grad, torch.tensor([0.0, 0.3, 0.4]))  # below the limit: unchanged
    a, b = _params()
    clip_gradients([a, b], 1.0, "global")  # total norm sqrt(25.25): both scaled by the same factor
    factor = 1.0 / 25.25 ** 0.5
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0]) * factor, atol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.0, 0.3, 0.4]) * factor, atol=1e-5)
    with pytest.raises(ValueError, match="grad_clip_mode"):
        clip_gradients([a], 1.0, "layer")
    with pytest.raises(ValueError, match="grad_clip_mode"):
        TrainConfig(grad_clip_mode="per-tensor")
