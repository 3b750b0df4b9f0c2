"""Super Tickets (srnet_core.pruning.super_tickets): importance checked against finite differences computed on
the weights (no hooks), the whole training set, exact masks, the planner's two nodes per sparsity, and an
end-to-end stage run on tiny-bert."""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from srnet_core.data import Encoded
from srnet_core.masks import bake_masks, load_masks
from srnet_core.models import encoder_layers, load_model
from srnet_core.pruning.super_tickets import (SublayerGates, SuperTicketOptions, check_head_budget,
                                              gate_importance, normalize_ffn, select_ticket, super_ticket,
                                              ticket_weight_masks)
from srnet_core.pruning.structured import normalize_per_layer

HIDDEN, HEADS, LAYERS, FFN = 32, 4, 3, 48
HEAD_SIZE = HIDDEN // HEADS


def ce(logits, batch):
    return torch.nn.functional.cross_entropy(logits, batch["labels"])


def data(n: int, seed: int = 0, length: int = 9) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [[101] + rng.integers(1000, 30000, size=length - 2).tolist() + [102] for _ in range(n)]
    return Encoded([f"x{i}" for i in range(n)], ids, [[0] * length for _ in range(n)],
                   rng.integers(0, 2, size=n).astype(np.int64), 0)


def tiny(seed: int = 0, dtype=torch.float64):
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=64, num_labels=2)
    config._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(config).to(dtype)
    with torch.no_grad():  # larger weights than the init's 0.02: gate gradients well above float noise
        for name, p in model.named_parameters():
            if name.endswith(".bias") and "LayerNorm" not in name:
                p.normal_(0.0, 0.1)  # the init's zero biases would hide what the FFN gate does with them
            else:
                p.mul_(5.0)
    return model


def batch_loss(model, batch) -> float:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return float(ce(model(**inputs).logits, batch))


@torch.no_grad()
def fd_importance(model, train: Encoded, batch_size: int, eps: float = 1e-5):
    """|dL/dgate| by central differences, gating by scaling WEIGHTS (no hooks): a head's gate scales its
    attention-output columns; an FFN gate scales the FFN-out weight and bias. Summed over batches 0..n-1."""
    model.eval()
    layers = encoder_layers(model)
    modules = dict(model.named_modules())
    heads, ffn = torch.zeros(LAYERS, HEADS, dtype=torch.float64), torch.zeros(LAYERS, dtype=torch.float64)
    for start in range(0, len(train), batch_size):
        batch = train.batch(range(start, min(len(train), start + batch_size)))
        for i, layer in enumerate(layers):
            out = modules[layer.names["attn_out"]]
            for h in range(HEADS):
                cols = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
                original = out.weight[:, cols].clone()
                out.weight[:, cols] = original * (1 + eps)
                up = batch_loss(model, batch)
                out.weight[:, cols] = original * (1 - eps)
                down = batch_loss(model, batch)
                out.weight[:, cols] = original
                heads[i, h] += abs(up - down) / (2 * eps)
            f = modules[layer.names["ffn_out"]]
            w, b = f.weight.clone(), f.bias.clone()
            f.weight.copy_(w * (1 + eps)), f.bias.copy_(b * (1 + eps))
            up = batch_loss(model, batch)
            f.weight.copy_(w * (1 - eps)), f.bias.copy_(b * (1 - eps))
            down = batch_loss(model, batch)
            f.weight.copy_(w), f.bias.copy_(b)
            ffn[i] += abs(up - down) / (2 * eps)
    return heads, ffn


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_importance_equals_finite_differences_over_the_whole_training_set(model):
    train = data(37)  # 37 examples at batch 8: 5 batches, the last one of 5
    got = gate_importance(model, train, ce, batch_size=8, device="cpu")
    assert got.batches == math.ceil(37 / 8) == 5 and got.examples == 37
    heads, ffn = fd_importance(model, train, 8)
    assert torch.allclose(got.heads.double(), heads, rtol=1e-3, atol=1e-6)
    assert torch.allclose(got.ffn.double(), ffn, rtol=1e-3, atol=1e-6)
    assert (heads > 1e-4).all() and (ffn > 1e-4).all()  # a real check, not zeros against zeros
    first = gate_importance(model, data(37).subset(range(8)), ce, batch_size=8, device="cpu")
    assert first.batches == 1 and not torch.allclose(first.heads, got.heads, rtol=1e-2)  # the first batch only


def test_importance_leaves_the_model_as_it_was(model):
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gate_importance(model, data(16), ce, batch_size=8, device="cpu")
    assert model.training and flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_pruned_units_are_exactly_the_lowest_by_an_independent_computation(model):
    train = data(24, seed=3)
    heads, ffn = fd_importance(model, train, 8)
    options = SuperTicketOptions(head_sparsity=0.25, ffn_sparsity=0.34)  # 3 of 12 heads, 1 of 3 FFN sublayers
    ticket = super_ticket(model, train, ce, batch_size=8, device="cpu", options=options)
    head_norm = heads / heads.norm(dim=1, keepdim=True)  # Michel et al.: L2 per layer
    lowest = set(head_norm.flatten().argsort()[:3].tolist())
    assert lowest == {i for i, alive in enumerate(ticket.head_mask.flatten().tolist()) if not alive}
    assert (~ticket.ffn_mask).nonzero().flatten().tolist() == [int(ffn.argmin())]
    assert torch.allclose(ticket.ffn_scores.double(), ffn / ffn.norm(), rtol=1e-3)  # L2 over layers
    assert ticket.head_sparsity == 0.25 and ticket.ffn_sparsity == pytest.approx(1 / 3)


def test_a_planted_dead_ffn_sublayer_and_head_are_pruned_first():
    model = tiny(seed=1)
    modules = dict(model.named_modules())
    layers = encoder_layers(model)
    with torch.no_grad():
        modules[layers[1].names["ffn_out"]].weight.zero_()
        modules[layers[1].names["ffn_out"]].bias.zero_()
        modules[layers[2].names["attn_out"]].weight[:, HEAD_SIZE: 2 * HEAD_SIZE] = 0  # layer 2, head 1
    imp = gate_importance(model, data(16), ce, batch_size=8, device="cpu")
    assert imp.ffn[1] == 0 and imp.heads[2, 1] == 0 and (imp.ffn[[0, 2]] > 0).all()
    head_mask, ffn_mask = select_ticket(normalize_per_layer(imp.heads), normalize_ffn(imp.ffn),
                                        SuperTicketOptions(head_sparsity=1 / 12, ffn_sparsity=1 / 3))
    assert ffn_mask.tolist() == [True, False, True]
    assert (~head_mask).nonzero().tolist() == [[2, 1]]


def test_global_ranking_keeps_one_head_per_layer_and_refuses_too_much():
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 7.0, 8.0], [0.01, 0.02, 0.03, 9.0]])
    head_mask, ffn_mask = select_ticket(scores, torch.tensor([3.0, 1.0, 2.0]),
                                        SuperTicketOptions(head_sparsity=0.5, ffn_sparsity=0.5))
    # 6 heads: the 3 lowest of layer 2 would leave 1; layer 0 gives its 3 lowest (keeps 1)
    assert head_mask.tolist() == [[False, False, False, True], [True] * 4, [False, False, False, True]]
    assert ffn_mask.tolist() == [True, False, True]  # floor(3 * 0.5) = 1: the lowest
    with pytest.raises(ValueError, match=r"field 'super_tickets_options.head_sparsity'.*at most 9"):
        select_ticket(scores, torch.ones(3), SuperTicketOptions(head_sparsity=0.9, ffn_sparsity=0.0))
    with pytest.raises(ValueError, match="ffn_sparsity must be in"):
        SuperTicketOptions(ffn_sparsity=1.0)
    check_head_budget(3, 4, 0.75)  # exactly 9 = 12 - 3: allowed


def test_masks_zero_exactly_the_pruned_rows_and_columns(model):
    head_mask = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    head_mask[0, 2] = head_mask[2, 0] = head_mask[2, 3] = False
    ffn_mask = torch.tensor([True, False, True])
    masks = ticket_weight_masks(model, head_mask, ffn_mask)
    layers = encoder_layers(model)
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == 3 * 4 * HEAD_SIZE * HIDDEN + 1 * 2 * HIDDEN * FFN  # heads: Q, K, V rows + output columns
    for role in ("query", "key", "value"):
        m = masks[layers[0].names[role]]
        assert not m[2 * HEAD_SIZE: 3 * HEAD_SIZE].any() and m[:2 * HEAD_SIZE].all() and m[3 * HEAD_SIZE:].all()
    out = masks[layers[2].names["attn_out"]]
    assert not out[:, :HEAD_SIZE].any() and not out[:, 3 * HEAD_SIZE:].any() and out[:, HEAD_SIZE: 3 * HEAD_SIZE].all()
    assert not masks[layers[1].names["ffn_in"]].any() and not masks[layers[1].names["ffn_out"]].any()
    assert masks[layers[0].names["ffn_in"]].all() and masks[layers[2].names["ffn_out"]].all()


def test_masks_remove_what_the_gates_remove_but_the_ffn_out_bias(model):
    """Masked weights = gates at 0, once the pruned FFN sublayer's FFN-out bias (masks never cover biases) is
    zeroed too: the documented difference, and the only one."""
    head_mask = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    head_mask[1, 1] = False
    ffn_mask = torch.tensor([True, True, False])
    batch = data(6).batch(range(6))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    gated = copy.deepcopy(model).eval()
    gates = SublayerGates(gated, encoder_layers(gated), "cpu")
    with torch.no_grad():
        gates.heads.copy_(head_mask.double()), gates.ffn.copy_(ffn_mask.double())
        expected = gated(**inputs).logits
    masked = copy.deepcopy(model).eval()
    bake_masks(masked, ticket_weight_masks(masked, head_mask, ffn_mask))
    ffn_out = dict(masked.named_modules())[encoder_layers(masked)[2].names["ffn_out"]]
    with torch.no_grad():
        assert not torch.allclose(masked(**inputs).logits, expected, atol=1e-8)  # the FFN-out bias remains
        ffn_out.bias.zero_()
        assert torch.allclose(masked(**inputs).logits, expected, atol=1e-8)


# -- planner --------------------------------------------------------------------------------------------------
def _spec(**grid):
    g = {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.1, 0.25, 0.5], "seeds": [0, 1],
         "methods": ["mask_train", "super_tickets"], **grid}
    return {"name": "st", "output_dir": "/tmp/srnet-st-plan", "grid": g}


def _plan(d):
    from orchestrator.plan import build_plan
    from orchestrator.spec import parse_spec

    return build_plan(parse_spec(d))


def test_planner_one_ticket_and_one_rewound_retrain_per_cell_and_sparsity():
    plan = _plan(_spec())
    tickets = [n for n in plan.nodes.values() if n.stage == "super_tickets"]
    retrains = [n for n in plan.nodes.values() if n.stage == "retrain"]
    assert len(tickets) == len(retrains) == 2 * 3
    assert {(n.columns["seed"], n.columns["target_sparsity"]) for n in tickets} == {
        (s, x) for s in (0, 1) for x in (0.1, 0.25, 0.5)}
    for t in tickets:
        (ft,) = [i.node for i in t.inputs.values()]
        assert ft.stage == "finetune" and ft.stage_config["loss"] == "std" and t.stage_config["loss"] == "std"
        assert t.inputs["init_weights"].filename == "weights.safetensors"
        read = ("batch_size", "eval_batch_size", "amp")  # the importance pass: the fine-tune's batches
        assert t.stage_config["train"] == {k: ft.stage_config["train"][k] for k in read}
    for r in retrains:
        assert set(r.inputs) == {"mask_file"}  # no init_weights: starts from the pre-trained weights
        assert r.inputs["mask_file"].node.stage == "super_tickets"
        assert r.inputs["mask_file"].filename == "masks.safetensors"
        assert r.columns["method"] == "retrain" and r.columns["mask_source"] == "super_tickets"
        assert r.columns["target_sparsity"] == r.inputs["mask_file"].node.columns["target_sparsity"]
    assert len({r.inputs["mask_file"].node.key for r in retrains}) == 6


def test_adding_super_tickets_rekeys_nothing_and_options_rekey_only_tickets():
    base = _plan(_spec(methods=["mask_train"]))
    wider = _plan(_spec())
    assert set(base.nodes) <= set(wider.nodes)
    new = [n for k, n in wider.nodes.items() if k not in base.nodes]
    assert sorted(n.stage for n in new) == ["retrain"] * 6 + ["super_tickets"] * 6
    d = _spec()
    d["super_tickets_options"] = {"ffn_sparsity": 0.0}
    changed = _plan(d)
    moved = [n for k, n in changed.nodes.items() if k not in wider.nodes]
    assert sorted(n.stage for n in moved) == ["retrain"] * 6 + ["super_tickets"] * 6  # retrain keyed on the masks


def test_planner_refuses_a_sparsity_that_empties_layers():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match=r"field 'grid.sparsities'.*tiny-bert"):
        _plan(_spec(sparsities=[0.8]))  # tiny-bert: 2 layers x 2 heads, at most 2 may go
    d = _spec(sparsities=[0.1])
    d["super_tickets_options"] = {"head_sparsity": 0.9}
    with pytest.raises(SpecError, match="super_tickets_options.head_sparsity"):
        _plan(d)
    d["super_tickets_options"] = {"min_heads_per_layer": 0}
    with pytest.raises(SpecError, match="super_tickets_options.min_heads_per_layer"):
        _plan(d)


# -- end to end -----------------------------------------------------------------------------------------------
BASE = {"task": "synthetic", "task_options": {"n_train": 100, "n_dev": 48, "n_ood": 48}, "backbone": "tiny-bert",
        "seed": 1, "max_length": 32, "device": "cpu",
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4}}


def test_stage_end_to_end_ticket_then_retrain(tmp_path):
    from srnet_core.stages import run_stage

    ft = str(tmp_path / "ft")
    run_stage({**BASE, "stage": "finetune"}, ft)
    st = str(tmp_path / "st")
    rows = run_stage({**BASE, "stage": "super_tickets", "sparsity": 0.5, "init_weights": f"{ft}/weights.safetensors",
                      "train": {"batch_size": 16, "eval_batch_size": 64, "amp": "auto"}, "super_tickets": {}}, st)
    summary = json.load(open(f"{st}/summary.json"))
    assert summary["importance_batches"] == math.ceil(100 / 16) and summary["importance_examples"] == 100
    assert summary["head_sparsity"] == 0.5 and summary["ffn_sparsity"] == 0.5  # 2 of 4 heads, 1 of 2 FFNs
    assert [len(h) for h in summary["pruned_heads"]] == [1, 1] and len(summary["pruned_ffn"]) == 1
    masks, meta = load_masks(f"{st}/masks.safetensors")
    model = load_model("tiny-bert", 2)
    layers = encoder_layers(model)
    hidden, ffn_width, head_size = 64, 128, layers[0].head_size
    encoder = [n for n in masks if "pooler" not in n]
    zeros = sum(int((~masks[n]).sum()) for n in encoder)
    assert zeros == 2 * 4 * head_size * hidden + 1 * 2 * hidden * ffn_width
    assert summary["measured_sparsity"] == pytest.approx(zeros / sum(masks[n].numel() for n in encoder))
    assert masks["bert.pooler.dense"].all()
    pruned_ffn = summary["pruned_ffn"][0]
    assert not masks[layers[pruned_ffn].names["ffn_in"]].any() and not masks[layers[pruned_ffn].names["ffn_out"]].any()
    side = load_file(f"{st}/super_tickets.safetensors")
    assert side["ffn_mask"].tolist() == [int(i != pruned_ffn) for i in range(2)]
    assert rows and {r["step"] for r in rows} == {0} and all(r["selected"] for r in rows)
    assert [r["measured_sparsity"] for r in rows] == pytest.approx([summary["measured_sparsity"]] * len(rows))

    rt = str(tmp_path / "rt")
    rows = run_stage({**BASE, "stage": "retrain", "mask_file": f"{st}/masks.safetensors"}, rt)
    weights = load_file(f"{rt}/weights.safetensors")
    for name in encoder:
        assert (weights[f"{name}.weight"][~masks[name]] == 0).all()
    assert any(r["selected"] for r in rows)
    assert [r["measured_sparsity"] for r in rows] == pytest.approx([summary["measured_sparsity"]] * len(rows))


def test_stage_refuses_without_fine_tuned_weights_or_with_too_many_heads(tmp_path):
    from srnet_core.stages import run_stage

    with pytest.raises(ValueError, match="init_weights"):
        run_stage({**BASE, "stage": "super_tickets", "sparsity": 0.5}, str(tmp_path / "x"))
    weights = str(tmp_path / "w.safetensors")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in load_model("tiny-bert", 2).state_dict().items()}, weights)
    with pytest.raises(ValueError, match=r"^field 'grid.sparsities': 0.8 of 4 heads"):
        run_stage({**BASE, "stage": "super_tickets", "sparsity": 0.8, "init_weights": weights}, str(tmp_path / "y"))
    with pytest.raises(ValueError, match=r"^field 'super_tickets_options.head_sparsity'"):
        run_stage({**BASE, "stage": "super_tickets", "sparsity": 0.1, "init_weights": weights,
                   "super_tickets": {"head_sparsity": 0.9}}, str(tmp_path / "z"))


def test_docs_and_registries_know_the_stage():
    from orchestrator.plan import STAGE_FIELDS
    from srnet_core.memory import estimate_stage_memory, ModelShape
    from srnet_core.stages import STAGE_VERSION, STAGES

    assert "super_tickets" in STAGES and "super_tickets" in STAGE_VERSION and "super_tickets" in STAGE_FIELDS
    shape = ModelShape.bert()
    assert (estimate_stage_memory("evaluate", shape, 32, 128).total
            < estimate_stage_memory("super_tickets", shape, 32, 128).total
            < estimate_stage_memory("finetune", shape, 32, 128).total)
    root = os.path.join(os.path.dirname(__file__), "..", "docs")
    assert "super_tickets_options" in open(os.path.join(root, "spec.md")).read()
    assert "not implemented" not in open(os.path.join(root, "pruning.md")).read()
