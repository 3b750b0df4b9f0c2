"""When to start mask training, predicted without a search (docs/search.md).

Early-Bird (You et al. 2020): the top-k magnitude mask of a training run stops changing early. At each saved
fine-tuning checkpoint take, per prunable encoder matrix, the mask keeping the largest (1 - s) fraction of
|W|; the normalised Hamming distance between the masks of consecutive checkpoints falls as training settles.
The predicted start is the first checkpoint at which the last ``window`` distances are all below
``threshold``. The fine-tuning stage writes the distances and the pick to ``timing.json``; the search driver
compares that pick with the study's best (orchestrator/search_report.py).

``plateau_step`` is the other cheap predictor: the first ID-dev evaluation of the fine-tuning within
``min_delta`` of its best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

EARLY_BIRD_SPARSITIES = (0.5, 0.7, 0.9)  # masks compared at each; the search reads the one nearest its own


def topk_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Per matrix (local), True for the ``round((1 - sparsity) * n)`` largest |w|; ties broken by index."""
    out = {}
    for name, w in weights.items():
        flat = w.detach().float().abs().flatten()
        keep = int(round((1.0 - sparsity) * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        if keep > 0:
            mask[torch.topk(flat.cpu(), keep, sorted=False).indices] = True
        out[name] = mask.view(w.shape)
    return out


def mask_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Normalised Hamming distance: the fraction of entries (over all matrices) whose mask bit differs."""
    if a.keys() != b.keys():
        raise ValueError(f"masks cover different matrices: {sorted(a.keys() ^ b.keys())[:3]}")
    differ = sum(int((a[n] != b[n]).sum()) for n in a)
    total = sum(a[n].numel() for n in a)
    return differ / max(1, total)


@dataclass
class EarlyBird:
    """Feed checkpoints in step order with ``observe``; ``predicted_step`` is the Early-Bird pick (None until
    the masks have settled)."""

    sparsity: float
    threshold: float = 0.1
    window: int = 2
    steps: list[int] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)  # distances[i]: between steps[i] and steps[i + 1]
    _previous: dict | None = None

    def observe(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"checkpoints must come in increasing step order: {step} after {self.steps[-1]}")
        mask = topk_masks(weights, self.sparsity)
        if self._previous is not None:
            self.distances.append(mask_distance(self._previous, mask))
        self.steps.append(step)
        self._previous = mask

    @property
    def predicted_step(self) -> int | None:
        return settled_step(self.steps, self.distances, self.threshold, self.window)

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "threshold": self.threshold, "window": self.window,
                "steps": list(self.steps), "distances": list(self.distances), "predicted_step": self.predicted_step}


def settled_step(steps: list[int], distances: list[float], threshold: float, window: int) -> int | None:
    """The checkpoint closing the first run of ``window`` consecutive distances below ``threshold``."""
    for end in range(window, len(distances) + 1):
        if all(d < threshold for d in distances[end - window:end]):
            return steps[end]
    return None


def early_bird_report(checkpoints: list[tuple[int, dict[str, torch.Tensor]]], sparsities=EARLY_BIRD_SPARSITIES,
                      threshold: float = 0.1, window: int = 2) -> dict:
    """{"early_bird": {"0.70": EarlyBird.to_dict(), ...}} over (step, weights) checkpoints in step order."""
    birds = {s: EarlyBird(s, threshold, window) for s in sparsities}
    for step, weights in checkpoints:
        for bird in birds.values():
            bird.observe(step, weights)
    return {"early_bird": {f"{s:.2f}": bird.to_dict() for s, bird in birds.items()}}


def pick_early_bird(report: dict, sparsity: float) -> dict:
    """The entry of a ``timing.json`` whose mask sparsity is nearest ``sparsity``."""
    entries = report["early_bird"]
    key = min(entries, key=lambda k: abs(float(k) - sparsity))
    return entries[key]


def plateau_step(history: list[tuple[int, float]], min_delta: float = 0.005) -> int | None:
    """The first eval step whose ID-dev value is within ``min_delta`` of the run's best: where the curve has
    reached its plateau (a flat start at chance is not one, since later evals beat it). None without evals."""
    history = [(int(step), float(v)) for step, v in sorted(history) if not math.isnan(v)]
    if not history:
        return None
    best = max(v for _, v in history)
    return next(step for step, v in history if v >= best - min_delta)
