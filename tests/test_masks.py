"""Masks: exact top-k counts (ties included), straight-through gradients, projection cadences, artifacts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from srnet_core.masks import (MaskConfig, MaskSet, bake_masks, load_masks, mask_similarity, prune_count,
                              save_masks, sparsity_of, topk_mask)
from srnet_core.models import load_model, model_family, prunable_linear_names


def tiny(seed: int = 0, labels: int = 3):
    model = load_model("tiny-bert", labels, seed=seed)
    model.eval()  # no dropout: logits are a pure function of weights and masks
    return model


def inputs(seed: int = 0, batch: int = 4, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
            "attention_mask": torch.ones(batch, length, dtype=torch.long)}


def numpy_topk_keep(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Independent reference: keep the n - floor(n*s) largest; among equal values the later index wins."""
    flat = values.ravel()
    n = flat.size
    k = int(math.floor(n * sparsity + 1e-9))
    order = np.lexsort((np.arange(n), flat))  # ascending by value, then by index
    keep = np.ones(n, dtype=bool)
    keep[order[:k]] = False
    return keep.reshape(values.shape)


# -- exact counts ----------------------------------------------------------------------------------------
def test_topk_ties_keep_the_later_entries():
    values = torch.tensor([0., 0., 0., 1., 1., 1., 2., 2.])
    keep, threshold = topk_mask(values, 0.5)
    assert keep.tolist() == [False, False, False, False, True, True, True, True]
    assert threshold == 1.0


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999, 1.0])
def test_topk_matches_numpy_reference_with_heavy_ties(sparsity):
    g = torch.Generator().manual_seed(1)
    values = torch.randint(0, 7, (33, 29), generator=g).float()  # ~140 ties per value
    keep, _ = topk_mask(values, sparsity)
    assert int((~keep).sum()) == prune_count(values.numel(), sparsity) == math.floor(values.numel() * sparsity)
    assert np.array_equal(keep.numpy(), numpy_topk_keep(values.numpy(), sparsity))


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.7, 0.9])
def test_magnitude_init_is_exact_per_matrix_magnitude_pruning(sparsity):
    model = tiny()
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=sparsity, init="magnitude"))
    for name in names:
        weight = mask_set.original(name).detach()
        mask = mask_set.parametrization(name).mask
        assert int((mask == 0).sum()) == math.floor(weight.numel() * sparsity)
        assert np.array_equal(mask.bool().numpy(), numpy_topk_keep(weight.abs().numpy(), sparsity))
        scores = mask_set.parametrization(name).scores.detach()
        assert torch.equal(scores, mask * 0.02)  # kept = 2*phi, pruned = 0: step 0 is magnitude pruning
    report = mask_set.sparsity_report()
    assert report["zeros"] == sum(math.floor(mask_set.original(n).numel() * sparsity) for n in names)


def test_global_scope_uses_one_threshold():
    model = tiny()
    names = prunable_linear_names(model)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.6, init="magnitude", scope="global"))
    all_abs = np.concatenate([mask_set.original(n).detach().abs().numpy().ravel() for n in names])
    all_keep = np.concatenate([mask_set.parametrization(n).mask.bool().numpy().ravel() for n in names])
    assert int((~all_keep).sum()) == math.floor(all_abs.size * 0.6)
    assert np.array_equal(all_keep, numpy_topk_keep(all_abs, 0.6))
    per = mask_set.sparsity_report()["per_matrix"]
    assert len({round(v, 6) for v in per.values()}) > 1  # matrices differ: the threshold is shared, not the count


@pytest.mark.parametrize("scope,selection,numpy_path", [
    ("local", "band", True), ("local", "band", False), ("local", "grouped", False),
    ("global", "band", True), ("global", "band", False)])
def test_projection_stays_exact_as_scores_move(scope, selection, numpy_path, monkeypatch):
    """The band search around the last threshold (CPU: NumPy or torch) and the batched per-shape kthvalue
    (GPU) must all give exactly the full top-k, step after step, ties included."""
    import srnet_core.masks as masks_module

    monkeypatch.setattr(masks_module, "NUMPY_ON_CPU", numpy_path)
    model = tiny()
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.7, init="magnitude_soft", scope=scope))
    mask_set.selection = selection
    g = torch.Generator().manual_seed(0)
    for step, scale in enumerate([1e-5, 1e-4, 3e-3, 1e-6, 0.5, 1e-4], start=1):
        with torch.no_grad():
            for s in mask_set.score_parameters():
                s.add_(torch.randn(s.shape, generator=g) * scale)
            if step == 4:  # plant ties exactly at the cut
                first = mask_set.score_parameters()[0]
                first[:3] = mask_set.parametrization(names[0]).threshold
        mask_set.project(step)
        scores = {n: mask_set.parametrization(n).scores.detach().numpy() for n in names}
        masks = {n: mask_set.parametrization(n).mask.bool().numpy() for n in names}
        if scope == "local":
            for n in names:
                assert np.array_equal(masks[n], numpy_topk_keep(scores[n], 0.7)), (step, n)
        else:
            flat_keep = np.concatenate([masks[n].ravel() for n in names])
            flat_scores = np.concatenate([scores[n].ravel() for n in names])
            assert np.array_equal(flat_keep, numpy_topk_keep(flat_scores, 0.7)), step


def test_reference_cadence_drifts_between_reprojections():
    model = tiny()
    name = prunable_linear_names(model)[0]
    mask_set = MaskSet(model, [name], MaskConfig(sparsity=0.5, init="magnitude", reproject_every=3))
    p = mask_set.parametrization(name)
    n = p.mask.numel()
    with torch.no_grad():  # push 10 pruned entries above phi and nothing down
        pruned = (p.mask == 0).nonzero()[:10]
        p.scores[pruned[:, 0], pruned[:, 1]] = 0.05
    mask_set.project(1)  # not a re-projection step: m = 1[S > phi], the count drifts
    assert int((p.mask == 0).sum()) == n // 2 - 10
    assert p.threshold == 0.01
    mask_set.project(3)  # re-projection: exact top-k again, threshold = k-th smallest score
    assert int((p.mask == 0).sum()) == n // 2
    assert p.threshold == pytest.approx(0.02)  # n/2 - 10 zeros, so the k-th smallest is a 2*phi score
    assert int((p.mask.bool() & (p.scores == 0.05)).sum()) == 10  # the promoted entries stay kept


def test_set_sparsity_reprojects_exactly():
    model = tiny()
    names = prunable_linear_names(model)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.7, init="magnitude_soft"))
    mask_set.set_sparsity(0.8568)
    for name in names:
        mask = mask_set.parametrization(name).mask
        assert int((mask == 0).sum()) == math.floor(mask.numel() * 0.8568)


# -- straight-through gradient ------------------------------------------------------------------------------
def test_score_gradient_equals_dloss_dmask():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.5, init="magnitude"))
    batch, labels = inputs(), torch.tensor([0, 1, 2, 1])
    loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
    loss.backward()

    # the same network with an explicit mask tensor m (requires grad) in place of each parametrization
    reference = tiny()
    masks = {n: mask_set.parametrization(n).mask.clone().requires_grad_(True) for n in names}
    modules = dict(reference.named_modules())
    weights = {f"{n}.weight": modules[n].weight.detach() * masks[n] for n in names}
    logits = torch.func.functional_call(reference, weights, args=(), kwargs=batch).logits
    ref_loss = torch.nn.functional.cross_entropy(logits, labels)
    grads = torch.autograd.grad(ref_loss, [masks[n] for n in names])
    assert torch.equal(loss.detach(), ref_loss.detach())
    for name, grad in zip(names, grads):
        assert torch.allclose(mask_set.parametrization(name).scores.grad, grad, rtol=1e-5, atol=1e-9), name
        assert grad.abs().sum() > 0
    for name in names:  # weights stay frozen: no gradient reaches them
        assert mask_set.original(name).grad is None


def test_mask_training_step_leaves_weights_bit_identical():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.5))
    optimizer = torch.optim.AdamW(mask_set.score_parameters(), lr=1e-3)
    for step in range(1, 4):
        loss = torch.nn.functional.cross_entropy(model(**inputs(step)).logits, torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mask_set.project(step)
    for name in names:
        key = f"{name}.weight"
        assert torch.equal(mask_set.original(name), before[key])
    assert any(not torch.equal(s, mask_set.parametrization(n).mask * 0.02)
               for n, s in zip(names, mask_set.score_parameters()))


# -- artifacts ---------------------------------------------------------------------------------------------
def _trained_mask_set(seed: int = 0):
    model = tiny(seed)
    names = prunable_linear_names(model, include_classifier=True)
    mask_set = MaskSet(model, names, MaskConfig(sparsity=0.6, init="magnitude_soft"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for s in mask_set.score_parameters():
            s.add_(torch.randn(s.shape, generator=g) * 0.05)
    mask_set.project(1)
    return model, names, mask_set


def test_saved_masks_reload_to_identical_logits_and_bake(tmp_path):
    model, names, mask_set = _trained_mask_set()
    batch = inputs(7)
    with torch.no_grad():
        logits = model(**batch).logits
    path = tmp_path / "masks.safetensors"
    save_masks(str(path), mask_set.masks(), {"backbone": "tiny-bert"}, model_family=model_family(model),
               target_sparsity=0.6, code_version="abc1234")

    masks, meta = load_masks(str(path))
    assert list(masks) == names
    assert all(torch.equal(masks[n], mask_set.masks()[n]) for n in names)
    assert meta["model_family"] == "bert" and meta["backbone"] == "tiny-bert"
    assert meta["target_sparsity"] == 0.6 and meta["code_version"] == "abc1234"
    assert meta["matrices"] == names
    expected = sparsity_of(mask_set.masks())
    assert meta["measured_sparsity"] == expected["total"]
    assert meta["measured_sparsity_per_matrix"] == expected["per_matrix"]
    numel = sum(m.numel() for m in masks.values())
    assert path.stat().st_size < numel / 8 + 20_000  # bit-packed, not one byte per entry

    # a fresh model of the same weights with the loaded masks attached
    fresh = tiny()
    MaskSet(fresh, names, MaskConfig(init="none")).load_masks(masks)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, logits)

    # the masks baked into a plain model: real zeros, same logits, plain state dict
    plain = tiny()
    bake_masks(plain, masks)
    modules = dict(plain.named_modules())
    for n in names:
        assert int((modules[n].weight == 0).sum()) >= int((~masks[n]).sum())
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, logits)

    # MaskSet.bake: the masked model itself becomes plain and loads strictly into a fresh model
    mask_set.bake()
    state = model.state_dict()
    assert not any("parametrizations" in k for k in state)
    again = tiny(seed=9)
    again.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, logits)


def test_bake_masks_rejects_wrong_names_and_shapes():
    model = tiny()
    with pytest.raises(KeyError, match="no weight-bearing module"):
        bake_masks(model, {"bert.nope": torch.ones(2, 2, dtype=torch.bool)})
    name = prunable_linear_names(model)[0]
    with pytest.raises(ValueError, match="shape"):
        bake_masks(model, {name: torch.ones(3, 3, dtype=torch.bool)})


def test_load_masks_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an srnet mask file"):
        load_masks(str(path))
    model, names, mask_set = _trained_mask_set()
    with pytest.raises(KeyError, match="lacks matrices"):
        mask_set.load_masks({names[0]: mask_set.masks()[names[0]]})


SAVE_IN_A_PROCESS = """
import sys, torch
from srnet_core.masks import save_masks
g = torch.Generator().manual_seed(0)
masks = {f"layer.{i}.weight": torch.rand(7, 13, generator=g) > 0.5 for i in (3, 1, 2)}
save_masks(sys.argv[1], masks, {"note": "x", "epoch": 2, "a": [1, 2]}, model_family="bert", target_sparsity=0.5,
           code_version="test")
"""


def test_the_same_masks_give_the_same_bytes_in_every_process(tmp_path):
    """safetensors' own writer orders the header's metadata differently from one process to the next (a Rust
    HashMap), so equal masks had different sha256s; save_masks writes a canonical header. Three processes, one
    sha256; the file is still a valid safetensors file that safetensors and load_masks read back exactly."""
    import hashlib
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = {**os.environ, "PYTHONPATH": repo}
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, p], check=True, env=env)
    digests = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
    assert len(digests) == 1, digests
    raw = open(paths[0], "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and len(raw) == 8 + n + 3 * math.ceil(7 * 13 / 8)  # header padded; 3 bit-packed masks
    with safe_open(paths[0], framework="pt") as f:
        assert sorted(f.keys()) == ["layer.1.weight", "layer.2.weight", "layer.3.weight"]
        assert f.metadata()["model_family"] == '"bert"'
    masks, meta = load_masks(paths[0])
    g = torch.Generator().manual_seed(0)
    expected = {f"layer.{i}.weight": torch.rand(7, 13, generator=g) > 0.5 for i in (3, 1, 2)}
    assert list(masks) == list(expected)  # the saved order, from the header's "matrices"
    assert all(torch.equal(masks[k], expected[k]) for k in expected)
    assert meta["epoch"] == 2 and meta["a"] == [1, 2] and meta["target_sparsity"] == 0.5
    assert meta["measured_sparsity"] == pytest.approx(1 - sum(int(m.sum()) for m in expected.values()) / (3 * 91))


def test_sparsity_of_counts():
    masks = {"a": torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), "b": torch.ones(3, 2, dtype=torch.bool)}
    report = sparsity_of(masks)
    assert report == {"total": 0.3, "zeros": 3, "numel": 10, "per_matrix": {"a": 0.75, "b": 0.0}}


def test_mask_similarity_matches_numpy():
    g = np.random.default_rng(0)
    a = {"x": torch.from_numpy(g.random((40, 30)) < 0.3), "y": torch.from_numpy(g.random(50) < 0.6)}
    b = {"x": torch.from_numpy(g.random((40, 30)) < 0.5), "y": torch.from_numpy(g.random(50) < 0.6)}
    fa = np.concatenate([a[k].numpy().ravel() for k in "xy"])
    fb = np.concatenate([b[k].numpy().ravel() for k in "xy"])
    out = mask_similarity(a, b)
    assert out["iou"] == (fa & fb).sum() / (fa | fb).sum()
    assert out["hamming"] == (fa != fb).sum() / fa.size
    assert mask_similarity(a, a) == {"iou": 1.0, "hamming": 0.0}
    assert mask_similarity(a, {k: ~v for k, v in a.items()}) == {"iou": 0.0, "hamming": 1.0}
    with pytest.raises(KeyError, match="differ in matrices"):
        mask_similarity(a, {"x": a["x"]})
    with pytest.raises(ValueError, match="shape"):
        mask_similarity(a, {"x": a["x"][:10], "y": a["y"]})


def test_mask_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mask.init"):
        MaskConfig(init="random")
    with pytest.raises(ValueError, match="mask.scope"):
        MaskConfig(scope="layer")
    with pytest.raises(ValueError, match="mask.sparsity"):
        MaskConfig(sparsity=1.5)
    with pytest.raises(ValueError, match="reproject_every"):
        MaskConfig(reproject_every=0)


def test_metadata_values_round_trip_as_json(tmp_path):
    path = tmp_path / "m.safetensors"
    save_masks(str(path), {"a": torch.ones(3, dtype=torch.bool)}, {"note": {"k": [1, 2]}})
    _, meta = load_masks(str(path))
    assert meta["note"] == {"k": [1, 2]}
    assert isinstance(meta["code_version"], str) and meta["code_version"]
    assert json.loads(json.dumps(meta["shapes"])) == {"a": [3]}
