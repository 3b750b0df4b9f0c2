"""Binary weight masks as ``torch.nn.utils.parametrize`` parametrizations.

Each masked Linear computes ``W * m``. ``m`` is a buffer recomputed from real-valued scores ``S`` by
``MaskSet.project`` (after each optimizer step): exact per-matrix top-k by default, a fixed strict
threshold between re-projections as in the reference (``reproject_every > 1``), or one global threshold.
The backward pass is straight-through: dL/dS = dL/dm = dL/d(W*m) * W (protocol.md section 2).

Masks are also the artifact of every pruning method (IMP, GMP, structured): ``save_masks`` / ``load_masks``
store them bit-packed in safetensors, ``bake_masks`` writes them into a plain model's weights.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

PHI = 0.01
MASK_FORMAT = "srnet-mask-v1"


class _MaskedProduct(torch.autograd.Function):
    """W * m with the straight-through gradient to the scores.

    A custom Function (rather than ``m + S - S.detach()``) keeps the step cost at one multiply forward and
    one per input backward, which is what keeps mask training close to a dense step (bench/step_overhead.py).
    """

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class MaskedWeight(nn.Module):
    """Parametrization holding the scores and the current binary mask of one matrix.

    ``mask`` is stored in the weight's float dtype (0.0/1.0) so the forward is one plain multiply.
    ``threshold``: the strict threshold of the last projection (used between re-projections). The GPU
    projection leaves it as a 0-dim device tensor so that no step waits for the device; reading
    ``threshold`` converts it to a float then (``threshold_value`` gives it as stored).
    """

    def __init__(self, scores: torch.Tensor, mask: torch.Tensor, threshold: float = PHI):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.register_buffer("mask", mask.to(scores.dtype))
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        if isinstance(self._threshold, torch.Tensor):
            self._threshold = float(self._threshold)  # the host sync happens here, when someone needs the number
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        self._threshold = value

    @property
    def threshold_value(self):
        """The threshold as stored: a float or a 0-dim tensor on the scores' device (no sync)."""
        return self._threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _MaskedProduct.apply(weight, self.scores, self.mask.to(weight.dtype))


# -- exact top-k selection ------------------------------------------------------------------------------
def prune_count(numel: int, sparsity: float) -> int:
    """How many entries a matrix of ``numel`` loses at ``sparsity``: floor(numel * s) (float-noise safe)."""
    return int(math.floor(numel * sparsity + 1e-9))


# NumPy's comparisons, counts and boolean indexing run several times faster than torch's on CPU tensors
# (views, no copies); the selection is the same. Tests switch this off to cover the torch path too.
NUMPY_ON_CPU = True


def _as_numpy(parts: list[torch.Tensor]):
    if NUMPY_ON_CPU and all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in parts):
        return [p.numpy() for p in parts]
    return None


def _kth_smallest(parts: list[torch.Tensor], k: int, hint: float | None, width: float | None):
    """Exact k-th smallest (1-based) over flat ``parts`` and how many entries are strictly greater.

    With a ``hint`` (the previous threshold) it counts the entries below/above a band around the hint and
    runs the selection only inside the band: after one optimizer step the threshold moves little, so this
    replaces a full selection (several passes with random access) by two comparisons and a small selection.
    The result is exact either way; the band only changes the speed. Returns (kth, n_greater, next_width).
    """
    arrays = _as_numpy(parts)
    n = sum(p.numel() for p in parts)
    if hint is not None and width is not None and math.isfinite(hint):
        w = width
        for _ in range(5):
            lo, hi = hint - w, hint + w
            if arrays is not None:
                n_below = sum(int(np.count_nonzero(a < lo)) for a in arrays)
                n_above = sum(int(np.count_nonzero(a > hi)) for a in arrays)
            else:
                n_below = sum(int((p < lo).sum(dtype=torch.int32)) for p in parts)  # int32: 2x faster than int64
                n_above = sum(int((p > hi).sum(dtype=torch.int32)) for p in parts)
            if n_below < k <= n - n_above:
                if arrays is not None:
                    band = np.concatenate([a[(a >= lo) & (a <= hi)] for a in arrays])
                    kth = float(np.partition(band, k - n_below - 1)[k - n_below - 1])
                    n_greater = n_above + int(np.count_nonzero(band > kth))
                else:
                    band = torch.cat([p[(p >= lo) & (p <= hi)] for p in parts])
                    kth = float(band.kthvalue(k - n_below).values)
                    n_greater = n_above + int((band > kth).sum())
                # next band: wide enough for the threshold's last move, shrinking when it was too generous
                next_w = max(2.0 * abs(kth - hint), w / 4.0, 1e-12 * (1.0 + abs(kth)))
                return kth, n_greater, next_w
            w *= 8.0
    if arrays is not None:
        full = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        kth = float(np.partition(full, k - 1)[k - 1])
        n_greater = int(np.count_nonzero(full > kth))
    else:
        full_t = torch.cat(parts) if len(parts) > 1 else parts[0]
        kth = float(full_t.kthvalue(k).values)
        n_greater = int((full_t > kth).sum())
    return kth, n_greater, 1e-3 * (abs(kth) + 1e-6)


def _keep_top(parts: list[torch.Tensor], sparsity: float, hint: float | None = None,
              width: float | None = None, out: list[torch.Tensor] | None = None):
    """Keep-masks over flat ``parts`` that keep exactly n - floor(n*s) largest values in total.

    Ties at the cut go to the later index (over the concatenation), deterministically. ``out``: flat float
    buffers to write 1.0/0.0 into (the live mask buffers; saves a bool tensor and a copy per matrix);
    without it, new bool tensors are returned.
    Returns (keeps, threshold = k-th smallest value or -inf when nothing is pruned, next band width).
    """
    n = sum(p.numel() for p in parts)
    k = prune_count(n, sparsity)
    if k <= 0 or k >= n:
        keep_all = k <= 0
        keeps = [torch.full_like(p, keep_all, dtype=torch.bool) for p in parts]
        if out is not None:
            for o, keep in zip(out, keeps):
                o.copy_(keep)
            keeps = out
        thr = float("-inf") if keep_all else float(max(float(p.max()) for p in parts))
        return keeps, thr, None
    kth, n_greater, next_w = _kth_smallest(parts, k, hint, width)
    if out is not None:
        keeps = [torch.gt(p, kth, out=o) for p, o in zip(parts, out)]
    else:
        keeps = [p > kth for p in parts]
    deficit = (n - k) - n_greater
    if deficit > 0:  # values tied at the threshold: keep the last `deficit` of them
        for p, keep in zip(reversed(parts), reversed(keeps)):
            tied = (p == kth).nonzero().squeeze(1)
            take = tied[max(0, tied.numel() - deficit):]
            keep[take] = True
            deficit -= take.numel()
            if deficit <= 0:
                break
    return keeps, kth, next_w


def _kth_smallest_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1 <= k <= n) of each row of ``rows`` [R, n], as an [R, 1] tensor.

    One unsorted ``topk`` on the smaller side: the k-th smallest is the largest of the k smallest, and also
    the smallest of the n - k + 1 largest. ``kthvalue`` is 10x slower on CUDA (a per-row sort); ``topk`` is a
    radix select there. No host sync.
    """
    n = rows.shape[1]
    if k <= n - k + 1:
        return torch.topk(rows, k, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    return torch.topk(rows, n - k + 1, dim=1, largest=True, sorted=False).values.amin(dim=1, keepdim=True)


def _keep_top_rows(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row keep masks [R, n] (bool) pruning exactly ``k`` entries of each row, and the thresholds [R, 1].

    The tie rule of ``_keep_top``: values tied at the k-th smallest are kept from the end of the row, as many
    as the count needs (``deficit``). The tied entries are ranked by a cumulative count, so the whole
    selection stays on the device with no host sync (and no ``nonzero``).
    """
    n = rows.shape[1]
    if k <= 0:
        return torch.ones_like(rows, dtype=torch.bool), torch.full_like(rows[:, :1], float("-inf"))
    if k >= n:
        return torch.zeros_like(rows, dtype=torch.bool), rows.amax(dim=1, keepdim=True)
    kth = _kth_smallest_rows(rows, k)
    keep = rows > kth
    tied = rows == kth
    # keep - k entries must survive; those strictly above kth do; the rest are the LAST `deficit` tied ones
    deficit = (n - k) - keep.sum(dim=1, keepdim=True, dtype=torch.int32)
    rank = tied.cumsum(dim=1, dtype=torch.int32)  # 1-based rank of each tied entry within its row
    keep |= tied & (rank > rank[:, -1:] - deficit)
    return keep, kth


def _keep_top_topk(values: list[torch.Tensor], sparsity: float, scope: str,
                   out: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list]:
    """Exact top-k keep masks for ``values`` (flat tensors) with the same result and tie rule as ``_keep_top``,
    computed on their device with ``topk`` and no host sync: the GPU path.

    local: each tensor on its own, same-numel tensors batched into one [R, n] selection; global: one
    selection over their concatenation (ties go to the later index of the concatenation).
    Returns (keeps: bool tensors, or ``out`` filled with 1.0/0.0; thresholds: 0-dim tensors, per tensor).
    """
    keeps: list = [None] * len(values)
    thresholds: list = [None] * len(values)
    if scope == "global":
        n = sum(v.numel() for v in values)
        flat = torch.cat(values) if len(values) > 1 else values[0]
        keep, kth = _keep_top_rows(flat.view(1, -1), prune_count(n, sparsity))
        for i, part in enumerate(keep.view(-1).split([v.numel() for v in values])):
            keeps[i], thresholds[i] = part, kth[0, 0]
    else:
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(values):
            groups.setdefault((v.numel(), v.dtype), []).append(i)
        for (numel, _), index in groups.items():
            rows = (torch.stack([values[i] for i in index]) if len(index) > 1 else values[index[0]].view(1, -1))
            keep, kth = _keep_top_rows(rows, prune_count(numel, sparsity))
            for j, i in enumerate(index):
                keeps[i], thresholds[i] = keep[j], kth[j, 0]
    if out is not None:
        for o, keep in zip(out, keeps):
            o.copy_(keep)
        keeps = list(out)
    return keeps, thresholds


def topk_mask(values: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, float]:
    """Keep exactly numel - floor(numel * sparsity) largest entries; ties at the cut go to the later index.

    Returns (bool mask, threshold = the k-th smallest value, or -inf when nothing is pruned).
    """
    keeps, thr, _ = _keep_top([values.detach().flatten()], sparsity)
    return keeps[0].view_as(values), thr


@dataclass
class MaskConfig:
    """How masks are initialised and kept at their target sparsity.

    sparsity: target fraction of zeros (per matrix when local, over all masked matrices when global).
    init: ``magnitude`` (kept scores = 2*phi, pruned = 0: step 0 is magnitude pruning) or ``magnitude_soft``
        (scores = |W|, the gradual runs). ``none``: all kept, scores 2*phi (masks loaded later, or set by
        IMP/GMP/structured pruning).
    scope: ``local`` (per matrix, the protocol), ``global`` (one threshold over all masked matrices) or
        ``2:4`` (the top 2 of every 4 consecutive weights of a row: the semi-structured pattern sparse GPU
        kernels accept; sparsity must be 0.5, see docs/pruning.md for what it buys in speed).
    reproject_every: 1 = exact top-k after every step (default); N > 1 = the reference cadence, where
        ``m = 1[S > threshold]`` with the threshold fixed between re-projections, so sparsity drifts;
        ``"eval"`` (in a spec only): every evaluation, i.e. the node's ``train.eval_every``, which the planner
        writes into the node's config (the reference re-thresholds at each evaluation: every 1,000 steps on
        MNLI/QQP, 500 on FEVER).
    phi: the binarizer threshold of the reference (strict >); kept/pruned init scores are 2*phi / 0.
    score_scale: how ``magnitude_soft`` scores are scaled. ``normalized`` (default): S = |W| * 2*phi / mean|W|
        per matrix, so the scores have the same scale (mean 2*phi, the ``magnitude`` init's kept value) on
        every backbone and an Adam step of ``lr`` moves them by the same fraction of that scale whatever |W|
        is (Adam's step is ~lr in absolute units; with raw |W| ~0.05 for MiniLM, lr 1e-3 reshuffled the
        mask and 70% mask training collapsed to chance on MNLI). Top-k selection is scale-invariant, so the
        step-0 mask is the same. ``raw``: S = |W|, the reference's literal init (for replication).
    """

    sparsity: float = 0.5
    init: Literal["magnitude", "magnitude_soft", "none"] = "magnitude"
    scope: Literal["local", "global", "2:4"] = "local"
    reproject_every: int | Literal["eval"] = 1
    phi: float = PHI
    score_scale: Literal["normalized", "raw"] = "normalized"

    def __post_init__(self):
        if not 0.0 <= float(self.sparsity) <= 1.0:
            raise ValueError(f"mask.sparsity must be in [0, 1], got {self.sparsity}")
        if self.init not in ("magnitude", "magnitude_soft", "none"):
            raise ValueError(f"mask.init must be 'magnitude', 'magnitude_soft' or 'none', got {self.init!r}")
        if self.scope not in ("local", "global", "2:4"):
            raise ValueError(f"mask.scope must be 'local', 'global' or '2:4', got {self.scope!r}")
        if self.reproject_every == "eval":
            return  # a spec value: the planner replaces it with the node's train.eval_every
        if self.scope == "2:4" and (float(self.sparsity) != 0.5 or int(self.reproject_every) != 1):
            raise ValueError(f"mask.scope '2:4' keeps 2 of every 4 weights: it needs sparsity 0.5 and "
                             f"reproject_every 1 (got sparsity {self.sparsity}, reproject_every {self.reproject_every})")
        if int(self.reproject_every) < 1:
            raise ValueError(f"mask.reproject_every must be >= 1 (1 = every step), got {self.reproject_every}")
        if self.score_scale not in ("normalized", "raw"):
            raise ValueError(f"mask.score_scale must be 'normalized' or 'raw', got {self.score_scale!r}")


class MaskSet:
    """All masks of one model: attach, project, read, load, bake. An optimizer-like controller.

    ``train_scores=False`` leaves the scores out of autograd: the masks are then set from outside
    (``prune_magnitude``, ``load_masks``), as IMP, GMP and structured pruning do while the weights train.
    """

    def __init__(self, model: nn.Module, names: list[str], config: MaskConfig, train_scores: bool = True):
        self.model = model
        self.config = config
        if config.reproject_every == "eval":
            raise ValueError("mask.reproject_every 'eval' is a spec value the planner resolves to the node's "
                             "train.eval_every; give a number of steps here")
        self.sparsity = float(config.sparsity)
        self.names = list(names)
        if not self.names:
            raise ValueError("MaskSet needs at least one matrix name (see srnet_core.models.prunable_linear_names)")
        modules = dict(model.named_modules())
        unknown = [n for n in self.names if n not in modules]
        if unknown:
            raise KeyError(f"model has no modules named {unknown[:3]}; use prunable_linear_names(model)")
        self.modules = {n: modules[n] for n in self.names}
        if config.scope == "2:4":
            odd = [n for n in self.names if modules[n].weight.shape[-1] % 4]
            if odd:
                raise ValueError(f"mask.scope '2:4' needs rows divisible by 4; {odd[0]} has "
                                 f"{modules[odd[0]].weight.shape[-1]} inputs")
        # Where the last k-th smallest score was and how wide a band to search around it next time (speed
        # only: the selection is exact whatever these are). "*" is the global scope's entry.
        self._hints: dict[str, float] = {}
        self._widths: dict[str, float | None] = {}
        # How top-k is computed (bit-identical masks either way, tests/test_projection.py): ``band`` = a
        # search near the last threshold with NumPy (fastest on CPU, but host-driven: several syncs per
        # matrix on a GPU); ``topk`` = ``torch.topk`` on the device, same-shape matrices batched, no host sync
        # (the GPU path; ``grouped`` is its old name); ``auto`` = topk on CUDA, band elsewhere.
        self.selection: Literal["auto", "band", "topk", "grouped"] = "auto"
        for name, module in self.modules.items():
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"'{name}' already carries a parametrization (a MaskSet is already attached)")
            weight = module.weight.detach()
            scores = torch.full_like(weight, 2 * config.phi)
            mask = torch.ones_like(weight, dtype=torch.bool)
            parametrize.register_parametrization(module, "weight", MaskedWeight(scores, mask, config.phi))
            self.parametrization(name).scores.requires_grad_(train_scores)
        if config.init != "none":
            self._init_from_magnitude(config.init)

    # -- access ---------------------------------------------------------------------------------------
    def parametrization(self, name: str) -> MaskedWeight:
        return self.modules[name].parametrizations.weight[0]

    def original(self, name: str) -> torch.Tensor:
        """The unmasked weight (a Parameter: trained by IMP/GMP, frozen in mask training)."""
        return self.modules[name].parametrizations.weight.original

    def score_parameters(self) -> list[nn.Parameter]:
        return [self.parametrization(n).scores for n in self.names]

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: self.parametrization(n).mask.bool().cpu() for n in self.names}

    # -- projection -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_from_magnitude(self, init: str) -> None:
        phi = self.config.phi
        for name in self.names:
            p = self.parametrization(name)
            p.scores.copy_(self._soft_scores(name) if init == "magnitude_soft" else torch.zeros_like(p.scores))
        if init == "magnitude":
            # rank by |W|, then kept = 2*phi, pruned = 0 (strictly below phi)
            keeps = self._select({n: self.original(n).abs() for n in self.names}, use_hints=False)
            for name, keep in keeps.items():
                p = self.parametrization(name)
                p.scores.copy_(keep.to(p.scores.dtype) * 2 * phi)
                p.mask.copy_(keep)
                p.threshold = phi
            self._binary_scores_hints()
        else:
            self.project(force=True)

    def _soft_scores(self, name: str) -> torch.Tensor:
        """``magnitude_soft`` init scores of one matrix: |W|, scaled to mean 2*phi unless score_scale is raw."""
        magnitude = self.original(name).detach().abs()
        if self.config.score_scale == "raw":
            return magnitude
        mean = float(magnitude.mean())
        return magnitude * (2 * self.config.phi / mean) if mean > 0 else magnitude

    def _binary_scores_hints(self) -> None:
        """After scores were set to 2*phi / 0: the next k-th smallest score starts near 0, and one optimizer
        step moves it by about the learning rate, so search a narrow band there first."""
        for key in list(self.names) + ["*"]:
            self._hints[key] = 0.0
            self._widths[key] = 2e-3 * self.config.phi

    def _strategy(self, values: dict[str, torch.Tensor]) -> str:
        if self.selection != "auto":
            return "topk" if self.selection == "grouped" else self.selection
        return "topk" if next(iter(values.values())).device.type == "cuda" else "band"

    def _select(self, values: dict[str, torch.Tensor], use_hints: bool = True,
                write_masks: bool = False) -> dict[str, torch.Tensor]:
        """Exact top-k keep masks of ``values`` at ``self.sparsity``; records each matrix's threshold.

        use_hints: search near the last thresholds (scores after a step); write_masks: write straight into
        the live mask buffers (and return them) instead of new bool tensors.
        """
        def buffers(names):
            return [self.parametrization(n).mask.view(-1) for n in names] if write_masks else None

        if self.config.scope == "2:4":
            out = {}
            for name, v in values.items():
                keep, _ = _keep_top_rows(v.detach().reshape(-1, 4), 2)  # ties: the later weight of a group
                if write_masks:
                    self.parametrization(name).mask.view(-1, 4).copy_(keep)
                    out[name] = self.parametrization(name).mask
                else:
                    out[name] = keep.view_as(v)
            return out
        if self._strategy(values) == "topk":
            names = list(values)
            keeps, thresholds = _keep_top_topk([values[n].detach().reshape(-1) for n in names], self.sparsity,
                                               self.config.scope, out=buffers(names))
            out = {}
            for name, keep, thr in zip(names, keeps, thresholds):
                out[name] = keep.view_as(values[name])
                self.parametrization(name).threshold = thr  # a 0-dim device tensor: read lazily
            return out
        if self.config.scope == "local":
            out = {}
            for name, v in values.items():
                p = self.parametrization(name)
                hint, width = (self._hints.get(name), self._widths.get(name)) if use_hints else (None, None)
                keeps, thr, self._widths[name] = _keep_top([v.detach().reshape(-1)], self.sparsity, hint, width,
                                                           out=buffers([name]))
                out[name] = keeps[0].view_as(v)
                p.threshold = self._hints[name] = thr
            return out
        hint, width = (self._hints.get("*"), self._widths.get("*")) if use_hints else (None, None)
        flats = [values[n].detach().reshape(-1) for n in values]
        keeps, thr, self._widths["*"] = _keep_top(flats, self.sparsity, hint, width, out=buffers(list(values)))
        self._hints["*"] = thr
        out = {}
        for name, keep in zip(values, keeps):
            out[name] = keep.view_as(values[name])
            self.parametrization(name).threshold = thr
        return out

    @torch.no_grad()
    def project(self, step: int | None = None, force: bool = False) -> None:
        """Recompute masks from scores. Call after every optimizer step with the global step."""
        every = self.config.reproject_every
        if force or every <= 1 or (step is not None and step % every == 0):
            self._select({n: self.parametrization(n).scores for n in self.names}, write_masks=True)
            return
        for name in self.names:  # reference cadence: the threshold stays, the count drifts
            p = self.parametrization(name)
            torch.gt(p.scores, p.threshold_value, out=p.mask)

    def set_sparsity(self, sparsity: float, reproject: bool = True) -> None:
        """New target sparsity (sparsity schedules call this); re-projects the masks at once by default."""
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        if self.config.scope == "2:4" and float(sparsity) != 0.5:
            raise ValueError(f"mask.scope '2:4' is 50% sparse by construction; cannot set sparsity {sparsity}")
        self.sparsity = float(sparsity)
        if reproject:
            self.project(force=True)

    @torch.no_grad()
    def prune_magnitude(self, sparsity: float | None = None) -> None:
        """Magnitude pruning of the effective weights |W * m| (IMP, GMP): local or global per config.scope.

        Ranking the masked weights makes pruning monotone: an entry pruned earlier (value 0) stays pruned
        when the sparsity grows. Scores are set to 2*phi / 0 so a later ``project`` keeps the same mask.
        """
        if sparsity is not None:
            self.sparsity = float(sparsity)
        values = {n: (self.original(n) * self.parametrization(n).mask).abs() for n in self.names}
        keeps = self._select(values, use_hints=False)
        for name, keep in keeps.items():
            p = self.parametrization(name)
            p.mask.copy_(keep)
            p.scores.copy_(keep.to(p.scores.dtype) * 2 * self.config.phi)
            p.threshold = self.config.phi
        self._binary_scores_hints()

    @torch.no_grad()
    def load_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Set every mask from ``masks`` (e.g. ``load_masks(path)[0]``); scores follow (2*phi / 0)."""
        missing = set(self.names) - set(masks)
        if missing:
            raise KeyError(f"mask file lacks matrices {sorted(missing)[:3]} (of {len(missing)} missing); "
                           "was it saved for another backbone or prunable set?")
        for name in self.names:
            p = self.parametrization(name)
            keep = masks[name].to(p.mask.device).bool()
            if keep.shape != p.mask.shape:
                raise ValueError(f"mask for {name} has shape {tuple(keep.shape)}, model has {tuple(p.mask.shape)}")
            p.mask.copy_(keep)
            p.scores.copy_(keep.to(p.scores.dtype) * 2 * self.config.phi)
            p.threshold = self.config.phi
        self._binary_scores_hints()

    def state_dict(self) -> dict:
        """What a checkpoint needs beyond the scores: the live masks, thresholds and target sparsity."""
        return {"sparsity": self.sparsity,
                "thresholds": {n: self.parametrization(n).threshold for n in self.names},
                "masks": self.masks()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.sparsity = float(state["sparsity"])
        for name in self.names:
            p = self.parametrization(name)
            p.threshold = float(state["thresholds"][name])
            p.mask.copy_(state["masks"][name].to(p.mask.device))

    # -- reporting ------------------------------------------------------------------------------------
    def sparsity_report(self, names: list[str] | None = None) -> dict:
        masks = self.masks()
        return sparsity_of({n: masks[n] for n in (names or self.names)})

    def bake(self) -> None:
        """Replace every parametrization by a plain weight W*m: the model saves/loads as a plain HF model."""
        for module in self.modules.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self.modules = {}


@torch.no_grad()
def bake_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply a plain (unparametrized) model's weights by ``masks`` in place: the zeros become real.

    ``masks`` maps Linear module names to bool tensors of the weight's shape (what ``load_masks`` returns).
    The result computes exactly what the masked model computes and saves as a plain HF model.
    """
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise KeyError(f"mask '{name}' names no weight-bearing module of {type(model).__name__}")
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"'{name}' is parametrized (a MaskSet is attached): use MaskSet.bake() instead")
        if tuple(keep.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(keep.shape)}, weight has {tuple(module.weight.shape)}")
        module.weight.mul_(keep.to(device=module.weight.device, dtype=module.weight.dtype))


def sparsity_of(masks: dict[str, torch.Tensor]) -> dict:
    """Per-matrix and total sparsity, counted from the masks (never assumed).

    Returns {"total": zeros / numel, "zeros", "numel", "per_matrix": {name: fraction of zeros}}.
    """
    per = {}
    zeros = total = 0
    for name, m in masks.items():
        z = int(m.numel() - int(m.bool().sum()))
        per[name] = z / m.numel()
        zeros += z
        total += m.numel()
    return {"total": zeros / total if total else 0.0, "zeros": zeros, "numel": total, "per_matrix": per}


def mask_similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """How alike two mask sets are, over all their matrices together.

    iou: |kept in a AND kept in b| / |kept in a OR kept in b| (1.0 when both keep nothing).
    hamming: fraction of entries where the masks disagree (0.0 = identical).
    Both mask sets must hold the same matrix names with the same shapes.
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise KeyError(f"mask sets differ in matrices: only in first {only_a[:3]}, only in second {only_b[:3]}")
    inter = union = differ = total = 0
    for name in a:
        x, y = a[name].detach().cpu().bool(), b[name].detach().cpu().bool()
        if x.shape != y.shape:
            raise ValueError(f"mask '{name}' has shape {tuple(x.shape)} in the first set, {tuple(y.shape)} in the second")
        inter += int((x & y).sum())
        union += int((x | y).sum())
        differ += int((x ^ y).sum())
        total += x.numel()
    return {"iou": inter / union if union else 1.0, "hamming": differ / total if total else 0.0}


# -- artifacts ----------------------------------------------------------------------------------------
def package_version() -> str:
    """The installed srnet-sweep version (a default code version for artifacts; callers may pass a git sha)."""
    try:
        from importlib.metadata import version

        return version("srnet-sweep")
    except Exception:  # noqa: BLE001 - not installed (running from a plain checkout)
        return "unknown"


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as bit-packed uint8 (8x smaller); ``unpack_bits`` needs its shape back."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().astype(bool).ravel()))


def unpack_bits(bits: torch.Tensor, shape) -> torch.Tensor:
    numel = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.cpu().numpy())[:numel].astype(bool).reshape(tuple(shape)))


def pack_masks(masks: dict[str, torch.Tensor]) -> dict:
    """Masks in a compact checkpointable form (``srnet_core.io.save_state`` stores it as it is)."""
    return {"bits": {n: pack_bits(m) for n, m in masks.items()}, "shapes": {n: list(m.shape) for n, m in masks.items()}}


def unpack_masks(packed: dict) -> dict[str, torch.Tensor]:
    return {n: unpack_bits(bits, packed["shapes"][n]) for n, bits in packed["bits"].items()}


def save_masks(path: str, masks: dict[str, torch.Tensor], metadata: dict | None = None, *,
               model_family: str | None = None, target_sparsity: float | None = None,
               code_version: str | None = None) -> None:
    """Bit-packed masks in safetensors (8x smaller than bool), shapes and metadata in the header. Atomic.

    The header always records: ``matrices`` (names, in order), ``shapes``, ``measured_sparsity`` (total) and
    ``measured_sparsity_per_matrix``, counted from the masks; ``code_version`` (given, else the installed
    package version). ``model_family`` / ``target_sparsity`` and any ``metadata`` entries are stored as
    given; every value is JSON-encoded and ``load_masks`` decodes it.
    """
    from .io import save_safetensors

    if not masks:
        raise ValueError(f"save_masks({path!r}): no masks to save")
    tensors = {name: pack_bits(m) for name, m in masks.items()}
    shapes = {name: list(m.shape) for name, m in masks.items()}
    report = sparsity_of({n: m.detach().cpu() for n, m in masks.items()})
    fields = dict(metadata or {})
    if model_family is not None:
        fields["model_family"] = model_family
    if target_sparsity is not None:
        fields["target_sparsity"] = float(target_sparsity)
    fields["code_version"] = code_version or fields.get("code_version") or package_version()
    fields.update(matrices=list(masks), measured_sparsity=report["total"],
                  measured_sparsity_per_matrix=report["per_matrix"])
    meta = {key: json.dumps(value) for key, value in fields.items()}
    meta.update(format=MASK_FORMAT, shapes=json.dumps(shapes))
    save_safetensors(tensors, path, metadata=meta)  # the same masks give the same bytes (and sha256)


def load_masks(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(masks as bool tensors in saved order, metadata with JSON values decoded)."""
    from safetensors import safe_open

    masks = {}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MASK_FORMAT:
            raise ValueError(f"{path} is not an srnet mask file (format={meta.get('format')!r}); "
                             "write mask files with srnet_core.masks.save_masks")
        shapes = json.loads(meta["shapes"])
        decoded = {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}
        for name in decoded.get("matrices") or list(f.keys()):
            masks[name] = unpack_bits(f.get_tensor(name), shapes[name])
    return masks, decoded
