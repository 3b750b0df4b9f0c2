"""Inference speed of pruned models (srnet_core.inference) and its column next to accuracy in the report."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from orchestrator import report
from srnet_core.inference import _masked_copy, _structured_copy, measure
from srnet_core.models import load_model, prunable_linear_names


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-bert", 3, seed=0)


def test_structured_copy_is_physically_smaller(tiny):
    small = _structured_copy(tiny, 0.5)
    big_params = sum(p.numel() for p in tiny.parameters())
    layer = small.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (32, 64)  # 1 of 2 heads of size 32 left
    assert layer.intermediate.dense.weight.shape == (64, 64)  # 64 of 128 neurons left
    assert sum(p.numel() for p in small.parameters()) < big_params
    ids = torch.randint(1000, 3000, (2, 10))
    assert small(input_ids=ids).logits.shape == (2, 3)


def test_unstructured_copy_keeps_shapes_and_has_exact_zeros(tiny):
    baked = _masked_copy(tiny, "local", 0.75)
    modules, original = dict(baked.named_modules()), dict(tiny.named_modules())
    for name in prunable_linear_names(baked, include_pooler=True, include_classifier=False):
        w = modules[name].weight
        assert w.shape == original[name].weight.shape
        assert int((w == 0).sum()) == math.floor(w.numel() * 0.75)


def test_measure_reports_every_variant_against_dense(tiny):
    result = measure(tiny, "cpu", batch_sizes=(2,), seq=16, structured=(0.5,), unstructured=(0.9,), iters=1)
    kinds = [(r["kind"], r["sparsity"]) for r in result["rows"]]
    assert kinds == [("dense", 0.0), ("unstructured", 0.9), ("2:4", 0.5), ("structured", 0.5)]
    assert result["rows"][0]["speedup"] == 1.0
    assert all(r["seconds"] > 0 and r["tokens_per_s"] == 32 / r["seconds"] for r in result["rows"])
    assert result["semi_structured_2_4"]["available"] is False
    assert "CPU" in result["semi_structured_2_4"]["reason"]


def test_speed_cells_measured_or_honest():
    speed = {"device": "cuda", "rows": [
        {"kind": "structured", "sparsity": 0.5, "batch": 1, "speedup": 1.3},
        {"kind": "structured", "sparsity": 0.5, "batch": 32, "speedup": 1.8},
        {"kind": "unstructured", "sparsity": 0.9, "batch": 32, "speedup": 0.99}]}
    assert report.speed_cell("structured", 0.5, speed) == "1.80x (measured, cuda, batch 32)"
    assert report.speed_cell("mask_train", 0.9, speed) == "0.99x (measured, cuda, batch 32)"
    assert report.speed_cell("imp", 0.7, speed) == report.UNSTRUCTURED_SPEED
    assert report.speed_cell("structured", 0.7, speed) == "not measured"
    assert report.speed_cell("finetune", 0.0, None) == "1.00x (dense)"


def test_report_shows_speed_next_to_accuracy(tmp_path):
    from test_report import build_results

    output_dir = str(tmp_path / "out")
    build_results(output_dir)
    with open(f"{output_dir}/{report.SPEED_FILE}", "w") as f:
        json.dump({"inference": {"device": "cuda", "rows": [
            {"kind": "unstructured", "sparsity": 0.5, "batch": 32, "speedup": 1.01}]}}, f)
    made = report.build_report(output_dir, masks=False)
    text = open(made.path).read()
    start = text.index("Accuracy next to inference speed (accuracy; speed-up vs the dense model, measured in")
    table = text[start:].split("\n\n")[1].split("\n")
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[-3:] == ["target_sparsity", "accuracy", "inference speed-up"]
    cells = {tuple(c.strip() for c in line.strip("|").split("|"))[1:3] + (line.split("|")[-2].strip(),)
             for line in table[2:]}
    assert ("mask_train", "std", "1.01x (measured, cuda, batch 32)") in cells  # at 0.50
    assert ("mask_train", "std", report.UNSTRUCTURED_SPEED) in cells  # at 0.70: not measured, still honest
    assert ("finetune", "std", "1.00x (dense)") in cells
    rows = pd.DataFrame([line.strip("|").split("|") for line in table[2:]])
    assert len(rows) == 2 + 4 * 2  # dense rows + 4 pruned settings x 2 sparsities
