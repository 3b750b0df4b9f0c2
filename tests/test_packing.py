"""GPU packing: the per-stage memory estimate (model size, batch, length, optimizer state) and the refusal of
GPU fractions whose memory share cannot hold a trial (one line naming the field, exit 2)."""
from __future__ import annotations

import copy

import pytest
import yaml
from transformers import AutoModelForSequenceClassification, BertConfig

from orchestrator.packing import check_packing, main
from orchestrator.plan import build_plan
from orchestrator.spec import SpecError, parse_spec
from srnet_core.memory import ModelShape, activation_bytes, estimate_stage_memory
from srnet_core.models import prunable_linear_names

GIB = 2**30


def test_shape_from_config_numbers_matches_a_built_model():
    config = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=40, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config)
    names = prunable_linear_names(model, include_pooler=True, include_classifier=True)
    built = ModelShape.of(model, names)
    formula = ModelShape.bert(32, 3, 4, 48, vocab=101, positions=40, num_labels=3)
    assert formula.params == built.params == sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    assert formula.masked_params == built.masked_params == sum(modules[n].weight.numel() for n in names)
    # the biggest same-shape group: the 3 x 4 square attention matrices plus the pooler (32 x 32)
    assert formula.largest_masked_group == built.largest_masked_group == 13 * 32 * 32


def test_bert_base_estimate_parts():
    shape = ModelShape.bert()
    assert shape.params == 109_484_547  # bert-base-uncased with a 3-way classifier
    mask = estimate_stage_memory("mask_train", shape, 32, 128)
    dense = estimate_stage_memory("finetune", shape, 32, 128)
    assert mask.weights == dense.weights == 4 * shape.params
    assert mask.training_state == 26 * shape.masked_params  # scores, mask, grads, 2 moments, W*m copies
    assert dense.training_state == 14 * shape.params
    assert mask.activations == dense.activations == activation_bytes(shape, 32, 128)
    # T*h*(34 + 5*a*s/h) per layer: 4096 tokens * 768 * 44 bytes * 12 layers
    assert activation_bytes(shape, 32, 128) == 4096 * 768 * 44 * 12
    assert 3 * GIB < mask.total < 8 * GIB and 3 * GIB < dense.total < 8 * GIB
    assert estimate_stage_memory("finetune", shape, 128, 128).total > dense.total + 4 * GIB


def _spec(tmp_path, fraction, batch=32, seq=128, stage="mask_train"):
    backbone = tmp_path / "bert-base"
    BertConfig().save_pretrained(str(backbone))  # config.json only: the estimate reads no weights
    d = {"name": "p", "output_dir": str(tmp_path / "out"), "max_length": seq,
         "grid": {"tasks": ["synthetic"], "backbones": [str(backbone)], "sparsities": [0.5], "seeds": [0],
                  "losses": ["std"], "paradigms": ["a"]},
         "finetune": {"batch_size": 32}, "mask_train": {"batch_size": batch},
         "resources": {"gpus_per_trial": 1, "stages": {stage: {"gpus": fraction}}}}
    return d


def test_packing_that_fits_is_accepted(tmp_path):
    spec = parse_spec(_spec(tmp_path, 0.125))
    rows = check_packing(spec, build_plan(spec), 141 * GIB)
    by_stage = {r["stage"]: r for r in rows}
    assert set(by_stage) == {"finetune", "mask_train"}
    assert by_stage["mask_train"]["gpu_fraction"] == 0.125
    assert by_stage["mask_train"]["estimate_bytes"] < by_stage["mask_train"]["share_bytes"] == int(141 * GIB / 8)


def test_packing_that_cannot_fit_is_refused_in_one_line(tmp_path):
    spec = parse_spec(_spec(tmp_path, 0.125, batch=64, seq=512))
    with pytest.raises(SpecError) as err:
        check_packing(spec, build_plan(spec), 80 * GIB)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("field 'resources.stages.mask_train.gpus': 0.125 GPU gives a mask_train trial 10.0 GiB")
    assert "batch 64 x 512" in message and message.endswith("use 0.5 or more")
    assert check_packing(spec, build_plan(spec), None) == []  # no GPU size known: nothing to check


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    d = _spec(tmp_path, 0.25, batch=512, seq=512)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main([str(path), "--gpu-memory-gb", "80"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: field 'resources.stages.mask_train.gpus': 0.25 GPU")
    ok = copy.deepcopy(d)
    ok["mask_train"]["batch_size"] = 32
    ok["max_length"] = 128
    path.write_text(yaml.safe_dump(ok))
    assert main([str(path), "--gpu-memory-gb", "80"]) == 0
    assert "mask_train" in capsys.readouterr().out
