"""The device projection (``torch.topk``, no host sync) against the projection it replaced, bit for bit.

``_old_keep_top_grouped`` below is a frozen copy of the batched-``kthvalue`` GPU path that ``topk`` replaced
(srnet_core/masks.py before issue 12); ``_keep_top`` (the CPU band search, NumPy or torch) is unchanged and is
the other reference. Every comparison is exact: same masks, same thresholds, ties included.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import srnet_core.masks as masks_module
from srnet_core.masks import (MaskConfig, MaskSet, _keep_top, _keep_top_rows, _keep_top_topk, prune_count)
from srnet_core.models import load_model, prunable_linear_names


def _old_keep_top_grouped(values, sparsity):
    """Frozen copy of the replaced per-shape kthvalue selection (keeps, thresholds)."""
    numel = values[0].numel()
    k = prune_count(numel, sparsity)
    if k <= 0 or k >= numel:
        pairs = [_keep_top([v.reshape(-1)], sparsity) for v in values]
        return [p[0][0] for p in pairs], [p[1] for p in pairs]
    stacked = torch.stack([v.reshape(-1) for v in values])
    kth = stacked.kthvalue(k, dim=1, keepdim=True).values
    keep = stacked > kth
    counts = torch.cat([kth.double(), keep.sum(dim=1, keepdim=True).double()], dim=1).tolist()
    keeps = []
    for i, (threshold, n_greater) in enumerate(counts):
        row = keep[i]
        deficit = (numel - k) - int(n_greater)
        if deficit > 0:
            tied = (stacked[i] == kth[i]).nonzero().squeeze(1)
            row[tied[tied.numel() - deficit:]] = True
        keeps.append(row)
    return keeps, [c[0] for c in counts]


def _lexsort_keep(flat: np.ndarray, sparsity: float) -> np.ndarray:
    """Independent reference: prune the k smallest by (value, index)."""
    k = prune_count(flat.size, sparsity)
    keep = np.ones(flat.size, dtype=bool)
    keep[np.lexsort((np.arange(flat.size), flat))[:k]] = False
    return keep


def _inputs(kind: str, shape, g: torch.Generator) -> torch.Tensor:
    n = int(np.prod(shape))
    if kind == "random":
        return torch.randn(shape, generator=g)
    if kind == "ties":  # ~n/7 entries per value
        return torch.randint(0, 7, shape, generator=g).float()
    if kind == "binary":  # scores right after a magnitude init: 2*phi / 0
        return (torch.rand(shape, generator=g) < 0.3).float() * 0.02
    if kind == "constant":
        return torch.full(shape, 0.5)
    if kind == "signed_zero":  # -0.0 and +0.0 compare equal: one tie class
        x = torch.zeros(n)
        x[torch.rand(n, generator=g) < 0.5] = -0.0
        x[torch.rand(n, generator=g) < 0.2] = 1.0
        return x.view(shape)
    if kind == "inf":
        x = torch.randn(n, generator=g)
        x[torch.rand(n, generator=g) < 0.1] = float("inf")
        x[torch.rand(n, generator=g) < 0.1] = float("-inf")
        return x.view(shape)
    if kind == "descending":  # the worst order for "later index wins"
        return torch.arange(n, 0, -1).float().div(7).floor().view(shape)
    raise ValueError(kind)


KINDS = ["random", "ties", "binary", "constant", "signed_zero", "inf", "descending"]
SPARSITIES = [0.0, 1e-4, 0.1, 0.5, 0.7, 0.9, 0.999, 1.0]


@pytest.mark.parametrize("kind", KINDS)
def test_local_topk_equals_old_kthvalue_and_band_paths(kind, monkeypatch):
    g = torch.Generator().manual_seed(KINDS.index(kind))
    shapes = [(24, 16), (24, 16), (24, 16), (16, 24), (1, 1), (3, 1), (64, 8)]
    values = [_inputs(kind, s, g).reshape(-1) for s in shapes]
    for sparsity in SPARSITIES:
        keeps, thresholds = _keep_top_topk(values, sparsity, "local")
        for i, v in enumerate(values):
            same = [j for j, w in enumerate(values) if w.numel() == v.numel()]
            old_keeps, old_thr = _old_keep_top_grouped([values[j] for j in same], sparsity)
            old = old_keeps[same.index(i)]
            assert keeps[i].dtype == torch.bool and torch.equal(keeps[i], old), (kind, sparsity, i)
            assert float(thresholds[i]) == old_thr[same.index(i)] or (
                math.isnan(old_thr[same.index(i)]) and math.isnan(float(thresholds[i])))
            for numpy_path in (True, False):
                monkeypatch.setattr(masks_module, "NUMPY_ON_CPU", numpy_path)
                band, band_thr, _ = _keep_top([v], sparsity)
                assert torch.equal(keeps[i], band[0]) and float(thresholds[i]) == band_thr, (kind, sparsity, i)
            assert np.array_equal(keeps[i].numpy(), _lexsort_keep(v.numpy(), sparsity)), (kind, sparsity, i)
            assert int((~keeps[i]).sum()) == prune_count(v.numel(), sparsity)


@pytest.mark.parametrize("kind", KINDS)
def test_global_topk_equals_band_path(kind, monkeypatch):
    g = torch.Generator().manual_seed(100 + KINDS.index(kind))
    values = [_inputs(kind, s, g).reshape(-1) for s in [(24, 16), (16, 24), (5, 7), (64, 8)]]
    flat = torch.cat(values).numpy()
    for sparsity in SPARSITIES:
        keeps, thresholds = _keep_top_topk(values, sparsity, "global")
        assert len({float(t) for t in thresholds}) == 1
        for numpy_path in (True, False):
            monkeypatch.setattr(masks_module, "NUMPY_ON_CPU", numpy_path)
            band, band_thr, _ = _keep_top(values, sparsity)
            for a, b in zip(keeps, band):
                assert torch.equal(a, b), (kind, sparsity)
            assert float(thresholds[0]) == band_thr
        assert np.array_equal(torch.cat(keeps).numpy(), _lexsort_keep(flat, sparsity)), (kind, sparsity)


def test_rows_keep_exact_counts_and_write_into_float_buffers():
    g = torch.Generator().manual_seed(7)
    rows = torch.randint(0, 3, (5, 101), generator=g).float()
    keep, kth = _keep_top_rows(rows, 60)
    assert keep.shape == rows.shape and kth.shape == (5, 1)
    assert ((~keep).sum(dim=1) == 60).all()
    out = [torch.full((101,), 7.0) for _ in range(5)]
    written, _ = _keep_top_topk(list(rows), 60 / 101 + 1e-12, "local", out=out)
    assert all(w is o for w, o in zip(written, out))
    assert all(torch.equal(o, k.float()) for o, k in zip(out, keep))


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("init", ["magnitude", "magnitude_soft"])
def test_maskset_topk_and_band_agree_step_after_step(scope, init):
    """Two identical models, one projecting with ``topk`` and one with the band search, through score moves
    of every size (and planted ties at the cut): masks and thresholds stay bit-identical."""
    sets = []
    for selection in ("topk", "band"):
        model = load_model("tiny-bert", 3, seed=0)
        names = prunable_linear_names(model, include_classifier=True)
        mask_set = MaskSet(model, names, MaskConfig(sparsity=0.7, init=init, scope=scope))
        mask_set.selection = selection
        sets.append(mask_set)
    g = torch.Generator().manual_seed(3)
    names = sets[0].names
    for step, scale in enumerate([1e-5, 1e-4, 3e-3, 0.0, 1e-6, 0.5], start=1):
        noise = [torch.randn(s.shape, generator=g) * scale for s in sets[0].score_parameters()]
        for mask_set in sets:
            with torch.no_grad():
                for s, d in zip(mask_set.score_parameters(), noise):
                    s.add_(d)
                if step == 4:  # ties exactly at the cut
                    mask_set.score_parameters()[0][:3] = mask_set.parametrization(names[0]).threshold
            mask_set.project(step)
        for name in names:
            a, b = (m.parametrization(name) for m in sets)
            assert torch.equal(a.mask, b.mask), (step, name)
            assert a.threshold == b.threshold, (step, name)
        state = sets[0].state_dict()  # thresholds as plain floats in checkpoints
        assert all(isinstance(t, float) for t in state["thresholds"].values())


def test_topk_thresholds_stay_on_device_until_read():
    model = load_model("tiny-bert", 3, seed=0)
    names = prunable_linear_names(model)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.5, init="magnitude_soft", reproject_every=2))
    mask_set.selection = "topk"
    mask_set.project(force=True)
    p = mask_set.parametrization(names[0])
    assert isinstance(p.threshold_value, torch.Tensor) and p.threshold_value.dim() == 0
    with torch.no_grad():
        p.scores.add_(1e-3)
    mask_set.project(1)  # between re-projections: m = 1[S > threshold], threshold still a tensor
    assert torch.equal(p.mask.bool(), p.scores > p.threshold_value)
    assert isinstance(p.threshold, float) and isinstance(p.threshold_value, float)  # read once: now a float


@pytest.mark.parametrize("selection", ["band", "topk"])
def test_two_four_keeps_the_top_two_of_every_four(selection):
    model = load_model("tiny-bert", 3, seed=0)
    names = prunable_linear_names(model)  # the 3-label classifier has rows of 64: fine; outputs need no /4
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.5, init="magnitude_soft", scope="2:4"))
    mask_set.selection = selection
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # heavy ties inside groups: the later weight of a group wins
        for s in mask_set.score_parameters():
            s.copy_(torch.randint(0, 3, s.shape, generator=g).float())
    mask_set.project(1)
    for name in names:
        scores = mask_set.parametrization(name).scores.detach().reshape(-1, 4).numpy()
        mask = mask_set.parametrization(name).mask.bool().reshape(-1, 4).numpy()
        expected = np.stack([_lexsort_keep(row, 0.5) for row in scores])
        assert np.array_equal(mask, expected), name
        assert (mask.sum(axis=1) == 2).all()
    assert mask_set.sparsity_report()["total"] == 0.5


def test_two_four_refuses_other_sparsities():
    with pytest.raises(ValueError, match="sparsity 0.5"):
        MaskConfig(sparsity=0.7, scope="2:4")
    model = load_model("tiny-bert", 3, seed=0)
    mask_set = MaskSet(model, prunable_linear_names(model), MaskConfig(sparsity=0.5, scope="2:4"))
    with pytest.raises(ValueError, match="50% sparse"):
        mask_set.set_sparsity(0.9)
