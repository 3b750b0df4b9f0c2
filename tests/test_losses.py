"""Each debiasing loss against an independent numpy computation (values and gradients) on fixed tensors."""
import math

import numpy as np
import pytest
import torch

from srnet_core import losses

Z = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-1.5, 0.0, 1.0], [3.0, 1.0, -2.0]])
Y = np.array([0, 2, 1, 1])
BIAS_P = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.05, 0.9, 0.05], [0.2, 0.5, 0.3]])
B = np.log(BIAS_P)
T = np.array([[0.8, 0.15, 0.05], [0.1, 0.3, 0.6], [0.0, 0.7, 0.3], [0.25, 0.5, 0.25]])


def np_log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def batch(with_teacher=True):
    out = {"labels": torch.tensor(Y), "bias": torch.tensor(B, dtype=torch.float32)}
    if with_teacher:
        out["teacher"] = torch.tensor(T, dtype=torch.float32)
    return out


def run(name, b=None):
    z = torch.tensor(Z, dtype=torch.float32, requires_grad=True)
    loss = losses.get_loss(name)(z, b or batch())
    loss.backward()
    return loss.item(), z.grad.numpy()


def onehot(y, k=3):
    return np.eye(k)[y]


def test_std_matches_numpy():
    value, grad = run("std")
    lp = np_log_softmax(Z)
    assert value == pytest.approx(-lp[np.arange(4), Y].mean(), rel=1e-6)
    np.testing.assert_allclose(grad, (np.exp(lp) - onehot(Y)) / 4, atol=1e-6)


def test_poe_matches_numpy():
    value, grad = run("poe")
    combined = np_log_softmax(np_log_softmax(Z) + B)
    assert value == pytest.approx(-combined[np.arange(4), Y].mean(), rel=1e-6)
    # softmax(log_softmax(z) + b) = softmax(z + b), so dL/dz = (softmax(z + b) - onehot(y)) / B
    np.testing.assert_allclose(grad, (np.exp(np_log_softmax(Z + B)) - onehot(Y)) / 4, atol=1e-6)


def test_poe_hand_value():
    # uniform model, bias p = (0.5, 0.25, 0.25): the product is the bias itself, loss = -log 0.5
    b = {"labels": torch.tensor([0]), "bias": torch.log(torch.tensor([[0.5, 0.25, 0.25]]))}
    assert losses.poe_loss(torch.zeros(1, 3), b).item() == pytest.approx(math.log(2), rel=1e-6)


def test_reweight_matches_numpy():
    value, grad = run("reweight")
    lp = np_log_softmax(Z)
    ce = -lp[np.arange(4), Y]
    w = 1 - BIAS_P[np.arange(4), Y]  # 0.3, 0.6, 0.1, 0.5
    assert value == pytest.approx((w * ce).sum() / w.sum(), rel=1e-6)
    np.testing.assert_allclose(grad, w[:, None] * (np.exp(lp) - onehot(Y)) / w.sum(), atol=1e-6)


def test_reweight_all_weights_zero_gives_zero_not_nan():
    b = {"labels": torch.tensor([1, 0]), "bias": torch.log(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))}
    z = torch.randn(2, 2, requires_grad=True)
    loss = losses.reweight_loss(z, b)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_conf_reg_matches_numpy():
    value, grad = run("conf_reg")
    lp = np_log_softmax(Z)
    exponent = 1 - BIAS_P[np.arange(4), Y]
    scaled = T ** exponent[:, None]  # 0 ** a = 0 for a > 0
    scaled /= scaled.sum(axis=1, keepdims=True)
    assert value == pytest.approx(-(scaled * lp).sum(axis=1).mean(), rel=1e-6)
    np.testing.assert_allclose(grad, (np.exp(lp) - scaled) / 4, atol=1e-6)


def test_conf_reg_fully_biased_example_gets_uniform_target():
    # b[y] = 0 -> exponent 0 -> every class (also a zero-probability one) gets t^0 = 1 -> uniform
    b = {"labels": torch.tensor([0]), "bias": torch.tensor([[0.0, -50.0, -50.0]]),
         "teacher": torch.tensor([[1.0, 0.0, 0.0]])}
    z = torch.tensor([[1.0, 2.0, 3.0]])
    expected = -np_log_softmax(np.array([[1.0, 2.0, 3.0]])).mean()
    assert losses.conf_reg_loss(z, b).item() == pytest.approx(expected, rel=1e-5)


def test_bias_and_teacher_get_no_gradient():
    b = batch()
    b["bias"].requires_grad_(True)
    b["teacher"].requires_grad_(True)
    z = torch.tensor(Z, dtype=torch.float32, requires_grad=True)
    for name in ("poe", "reweight", "conf_reg"):
        losses.get_loss(name)(z, b).backward()
    assert b["bias"].grad is None and b["teacher"].grad is None


def test_missing_input_and_wrong_shape_are_clear_errors():
    with pytest.raises(ValueError, match="loss 'poe' needs the per-example input 'bias'"):
        losses.poe_loss(torch.zeros(2, 3), {"labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="'teacher'"):
        losses.conf_reg_loss(torch.zeros(2, 3), {"labels": torch.tensor([0, 1]), "bias": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        losses.reweight_loss(torch.zeros(2, 3), {"labels": torch.tensor([0, 1]), "bias": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        losses.get_loss("focal")


def test_needs_lists_every_loss_and_what_it_reads():
    assert set(losses.NEEDS) == set(losses.LOSSES) == {"std", "poe", "reweight", "conf_reg", "kd"}
    assert losses.NEEDS == {"std": (), "poe": ("bias",), "reweight": ("bias",), "conf_reg": ("bias", "teacher"),
                            "kd": ("teacher",)}


def test_kd_matches_numpy():
    t = 2.0
    q = T ** (1 / t)
    q = q / q.sum(axis=1, keepdims=True)
    log_p = np_log_softmax(Z / t)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - log_p), 0.0)
    expected = t * t * terms.sum(axis=1).mean()
    grad = t * (np.exp(log_p) - q) / len(Z)  # d/dz of T^2 KL(q || softmax(z / T)), averaged over the batch
    value, g = run("kd", {"labels": torch.tensor(Y), "teacher": torch.tensor(T, dtype=torch.float32)})
    assert value == pytest.approx(expected, rel=1e-5)
    assert np.allclose(g, grad, atol=1e-6)
