"""Stage outputs: fine-tuning checkpoints and teacher, re-training a fixed mask, evaluation."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from srnet_core.masks import load_masks, save_masks
from srnet_core.models import load_model, prunable_linear_names
from srnet_core.stages import run_stage

BASE = {"task": "synthetic", "task_options": {"n_train": 128, "n_dev": 64, "n_ood": 64}, "backbone": "tiny-bert",
        "seed": 1, "max_length": 40, "device": "cpu",
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4}}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ft"))
    rows = run_stage({**BASE, "stage": "finetune", "save_fractions": [0.4, 0.8]}, out)  # 8 steps: 3 and 6
    return out, rows


def test_finetune_saves_step_checkpoints_and_teacher(finetuned, tmp_path):
    out, rows = finetuned
    assert sorted(f for f in os.listdir(out) if f.startswith("weights")) == [
        "weights.safetensors", "weights_f0.4.safetensors", "weights_f0.8.safetensors"]
    step3, step6 = load_file(f"{out}/weights_f0.4.safetensors"), load_file(f"{out}/weights_f0.8.safetensors")
    assert any(not torch.equal(step3[k], step6[k]) for k in step3)  # really different moments of training
    teacher = str(tmp_path / "teacher")
    run_stage({k: v for k, v in BASE.items() if k not in ("seed", "train")} |
              {"stage": "teacher", "init_weights": f"{out}/weights.safetensors",
               "train": {"eval_batch_size": 64, "amp": "auto"}}, teacher)
    table = pq.read_table(f"{teacher}/teacher.parquet").to_pandas()
    assert len(table) == 128 and table["id"].is_unique
    probs = np.stack(table["probs"].to_numpy())
    assert probs.shape == (128, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert {r["step"] for r in rows} == {0, 4, 8}
    assert sum(r["selected"] for r in rows if r["metric"] == "accuracy") == 2  # one checkpoint, two eval sets


def test_finetuned_weights_load_as_plain_model(finetuned):
    out, _ = finetuned
    model = load_model("tiny-bert", 2, seed=123)
    model.load_state_dict(load_file(f"{out}/weights.safetensors"), strict=True)


def test_retrain_keeps_the_fixed_mask_and_bakes_it(tmp_path):
    model = load_model("tiny-bert", 2, seed=0)
    names = prunable_linear_names(model, include_pooler=True, include_classifier=False)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(dict(model.named_modules())[n].weight.shape, generator=gen) > 0.7 for n in names}
    save_masks(str(tmp_path / "m.safetensors"), masks)
    out = str(tmp_path / "retrain")
    train = {**BASE["train"], "epochs": 4, "lr": 3e-3}
    rows = run_stage({**BASE, "train": train, "task_options": {"n_train": 256, "n_dev": 64, "n_ood": 64},
                      "stage": "retrain", "mask_file": str(tmp_path / "m.safetensors")}, out)
    import json
    assert json.load(open(f"{out}/summary.json"))["best_step"] > 0  # it learned: a trained checkpoint won
    weights = load_file(f"{out}/weights.safetensors")
    assert not any(".parametrizations." in k for k in weights)  # a plain HF state dict
    for name, m in masks.items():
        w = weights[f"{name}.weight"]
        assert (w[~m] == 0).all()  # pruned entries stay exactly zero after training
        assert (w[m] != 0).float().mean() > 0.99
    pretrained = load_model("tiny-bert", 2, seed=BASE["seed"]).state_dict()
    changed = [n for n in masks if not torch.equal(weights[f"{n}.weight"], pretrained[f"{n}.weight"] * masks[n])]
    assert changed  # the kept weights were trained
    measured = {r["measured_sparsity"] for r in rows}
    encoder = [n for n in names if "pooler" not in n]
    expected = sum(int((~masks[n]).sum()) for n in encoder) / sum(masks[n].numel() for n in encoder)
    assert len(measured) == 1 and measured.pop() == pytest.approx(expected)


def test_evaluate_with_mask(finetuned, tmp_path):
    out, _ = finetuned
    model = load_model("tiny-bert", 2)
    names = prunable_linear_names(model, include_classifier=True)
    masks = {n: torch.ones_like(dict(model.named_modules())[n].weight, dtype=torch.bool) for n in names}
    save_masks(str(tmp_path / "ones.safetensors"), masks)
    dense = run_stage({**BASE, "stage": "evaluate", "init_weights": f"{out}/weights.safetensors"}, str(tmp_path / "a"))
    masked = run_stage({**BASE, "stage": "evaluate", "init_weights": f"{out}/weights.safetensors",
                        "mask_file": str(tmp_path / "ones.safetensors")}, str(tmp_path / "b"))
    assert [r["value"] for r in dense] == [r["value"] for r in masked]  # an all-ones mask changes nothing
    # the saved weights are the checkpoint fine-tuning selected on ID dev: evaluating them reproduces its rows
    _, ft_rows = finetuned
    selected = {(r["eval_dataset"], r["metric"]): r["value"] for r in ft_rows if r["selected"]}
    assert {(r["eval_dataset"], r["metric"]): r["value"] for r in dense} == pytest.approx(selected, abs=1e-9)


def test_loss_needing_bias_without_file_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="needs a bias file .*'bias_file'"):
        run_stage({**BASE, "stage": "finetune", "loss": "poe"}, str(tmp_path))


def test_bias_model_then_poe_finetune(tmp_path):
    """The bias model's log-probs join the training examples by id and drive the PoE loss."""
    bias_dir = str(tmp_path / "bias")
    rows = run_stage({"stage": "bias_model", "task": "synthetic",
                      "task_options": {"n_train": 400, "n_dev": 200, "n_ood": 200}}, bias_dir)
    acc = {r["eval_dataset"]: r["value"] for r in rows if r["metric"] == "accuracy"}
    assert acc["dev"] > 0.8 and acc["ood"] < 0.5  # the overlap features ARE the bias: good ID, below chance OOD
    table = pq.read_table(f"{bias_dir}/bias_train.parquet").to_pandas()
    assert len(table) == 400
    lp = np.stack(table["log_probs"].to_numpy())
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-4)
    # issue 19 item 10: its training-set accuracy and confidence are rows too (role "train")
    train = {r["metric"]: r["value"] for r in rows if r["eval_role"] == "train"}
    assert {r["eval_dataset"] for r in rows if r["eval_role"] == "train"} == {"train"}
    from srnet_core.tasks import get_task
    gold = np.asarray(get_task("synthetic", n_train=400, n_dev=200, n_ood=200).load("train").labels)
    ids = list(get_task("synthetic", n_train=400, n_dev=200, n_ood=200).load("train").ids)
    assert list(table["id"]) == ids
    assert train["gold_confidence"] == pytest.approx(float(np.exp(lp[np.arange(400), gold]).mean()), rel=1e-5)
    assert train["max_confidence"] == pytest.approx(float(np.exp(lp.max(1)).mean()), rel=1e-5)
    assert train["accuracy"] == pytest.approx(float((lp.argmax(1) == gold).mean()))
    out = str(tmp_path / "poe")
    cfg = {**BASE, "task_options": {"n_train": 400, "n_dev": 200, "n_ood": 200}, "stage": "finetune", "loss": "poe",
           "bias_file": f"{bias_dir}/bias_train.parquet"}
    poe_rows = run_stage(cfg, out)
    assert {r["step"] for r in poe_rows} >= {0, 4}


def test_imp_gmp_structured_stages_write_their_artifacts(finetuned, tmp_path):
    """Each pruning method runs as a stage from the fine-tuned weights and saves masks at exact sparsity."""
    out, _ = finetuned
    common = {**BASE, "init_weights": f"{out}/weights.safetensors",
              "train": {**BASE["train"], "epochs": 1, "eval_every": 2}}
    imp_dir = str(tmp_path / "imp")
    rows = run_stage({**common, "stage": "imp", "sparsity": 0.9,
                      "imp": {"schedule": "reference", "rate": 0.3, "final": 0.9, "intervals": 3,
                              "rewind": "none"}}, imp_dir)
    levels = sorted({r["target_sparsity"] for r in rows})
    assert levels == [0.3, 0.6, 0.9]
    for level in levels:
        masks, meta = load_masks(f"{imp_dir}/masks_s{level:.2f}.safetensors")
        for name, m in masks.items():  # local L1 magnitude: exactly floor(numel * s) zeros per matrix
            assert int((~m).sum()) == int(np.floor(m.numel() * level + 1e-9)), (level, name)
        selected = [r for r in rows if r["target_sparsity"] == level and r["selected"] and r["metric"] == "accuracy"]
        assert len(selected) == 2  # one result per level (its last eval) on each eval set

    gmp_dir = str(tmp_path / "gmp")
    run_stage({**common, "stage": "gmp", "sparsity": 0.5, "gradual": {"initial": 0.0, "frequency": 1}}, gmp_dir)
    import json
    summary = json.load(open(f"{gmp_dir}/summary.json"))
    assert summary["target_sparsity_at_best"] == pytest.approx(0.5)  # selected AT the final sparsity, not dense
    masks, _ = load_masks(f"{gmp_dir}/masks.safetensors")
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros / sum(m.numel() for m in masks.values()) == pytest.approx(summary["target_sparsity_at_best"], abs=2e-3)
    weights = load_file(f"{gmp_dir}/weights.safetensors")
    for name, m in masks.items():
        assert (weights[f"{name}.weight"][~m] == 0).all()

    st_dir = str(tmp_path / "structured")
    run_stage({**common, "stage": "structured", "sparsity": 0.5,
               "structured": {"rounds": 1, "importance_batches": 2}}, st_dir)
    heads = load_file(f"{st_dir}/structured.safetensors")
    assert int(heads["head_mask"].sum()) == heads["head_mask"].numel() // 2  # half of all heads kept


def test_finetune_saves_absolute_step_checkpoints(tmp_path):
    """save_steps (issue 19 item 9): weights_step<N> at each absolute step below the end (the reference's
    timing runs start from steps 5,000 ... 20,000); a step at or past the end is skipped."""
    out = str(tmp_path / "ft")
    run_stage({**BASE, "stage": "finetune", "save_fractions": [0.5], "save_steps": [2, 5, 8, 20]}, out)  # 8 steps
    assert sorted(f for f in os.listdir(out) if f.startswith("weights")) == [
        "weights.safetensors", "weights_f0.5.safetensors", "weights_step2.safetensors", "weights_step5.safetensors"]
    step2, step5 = load_file(f"{out}/weights_step2.safetensors"), load_file(f"{out}/weights_step5.safetensors")
    assert any(not torch.equal(step2[k], step5[k]) for k in step2)
