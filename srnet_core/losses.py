"""Training losses, exactly as protocol.md section 5. Each takes (logits, batch) and returns a scalar.

z: model logits [B, C]; y = batch["labels"] [B]; b = batch["bias"] [B, C]: the bias model's
log-probabilities (fixed); t = batch["teacher"] [B, C]: teacher probabilities (fixed).

- std:      mean_i CE(z_i, y_i).
- poe:      mean_i CE(softmax(log_softmax(z_i) + b_i), y_i)  (product of experts; only z is used at test time).
- reweight: w_i = 1 - exp(b_i[y_i]);  L = sum_i w_i CE(z_i, y_i) / sum_i w_i.
- conf_reg: s_ij = t_ij^(1 - exp(b_i[y_i])) / sum_k t_ik^(1 - exp(b_i[y_i]));  L = mean_i -sum_j s_ij log p_ij
            with p = softmax(z) (Utama et al. 2020; no CE term).
- kd:       Sparse*BERT's distillation from the dense fine-tuned teacher (Hinton et al.; hardness 1, temperature
            T = 2): q_ij = t_ij^(1/T) / sum_k t_ik^(1/T) (the teacher's softmax at T, from its probabilities);
            L = T^2 * mean_i sum_j q_ij (log q_ij - log_softmax(z_i / T)_j).
Bias and teacher inputs get no gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_example(name: str, field: str, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    if field not in batch:
        raise ValueError(f"loss '{name}' needs the per-example input '{field}' in each batch "
                         f"({'bias-model log-probabilities' if field == 'bias' else 'teacher probabilities'}, "
                         "joined to the training examples by id); none was given")
    value = batch[field]
    if value.shape != logits.shape:
        raise ValueError(f"loss '{name}': batch['{field}'] has shape {tuple(value.shape)}, the logits "
                         f"{tuple(logits.shape)}; it must hold one row of {logits.shape[-1]} values per example")
    return value.detach().to(device=logits.device, dtype=logits.dtype)


def _gold_bias_prob(bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """exp(b_i[y_i]): the bias model's probability of the gold label."""
    return bias.gather(1, labels.view(-1, 1)).squeeze(1).exp()


def std_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(logits, batch["labels"])


def poe_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    bias = _per_example("poe", "bias", logits, batch)
    # cross_entropy normalises its input, so this is CE(softmax(log_softmax(z) + b), y).
    return F.cross_entropy(F.log_softmax(logits, dim=-1) + bias, batch["labels"])


def reweight_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    bias = _per_example("reweight", "bias", logits, batch)
    weights = 1.0 - _gold_bias_prob(bias, batch["labels"])
    ce = F.cross_entropy(logits, batch["labels"], reduction="none")
    # A batch whose examples the bias model all gets right with probability 1 has zero total weight:
    # its loss is 0 (no signal), not NaN.
    return (weights * ce).sum() / weights.sum().clamp_min(torch.finfo(logits.dtype).tiny)


def conf_reg_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    bias = _per_example("conf_reg", "bias", logits, batch)
    teacher = _per_example("conf_reg", "teacher", logits, batch)
    exponent = (1.0 - _gold_bias_prob(bias, batch["labels"])).unsqueeze(1)
    scaled = teacher.clamp_min(0.0).pow(exponent)  # t^0 = 1 (also for t = 0): a fully biased example -> uniform
    scaled = scaled / scaled.sum(dim=1, keepdim=True)
    return -(scaled * F.log_softmax(logits, dim=-1)).sum(dim=1).mean()


KD_TEMPERATURE = 2.0


def kd_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    teacher = _per_example("kd", "teacher", logits, batch)
    t = KD_TEMPERATURE
    target = F.softmax(teacher.clamp_min(torch.finfo(logits.dtype).tiny).log() / t, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean")
    return kl * t * t


LOSSES = {"std": std_loss, "poe": poe_loss, "reweight": reweight_loss, "conf_reg": conf_reg_loss, "kd": kd_loss}
NEEDS = {"std": (), "poe": ("bias",), "reweight": ("bias",), "conf_reg": ("bias", "teacher"), "kd": ("teacher",)}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; known: {sorted(LOSSES)}")
    return LOSSES[name]
