"""IMP, gradual (GMP and mask training) and structured pruning: exact levels, schedules, rewinding,
selected-mask sparsity, importance ranking, and masks that build a smaller model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srnet_core.data import Encoded
from srnet_core.io import load_state, save_state
from srnet_core.masks import bake_masks, prune_count
from srnet_core.models import encoder_layers, load_model, prunable_linear_names
from srnet_core.pruning import (CubicSparsitySchedule, GradualOptions, ImpOptions, StructuredOptions,
                                compute_importance, cubic_sparsity, gmp, gradual_mask_train, imp, imp_levels,
                                normalize_per_layer, select_alive, shrink_model, structured_prune,
                                structured_weight_masks)
from srnet_core.train import TrainConfig


def ce(logits, batch):
    return torch.nn.functional.cross_entropy(logits, batch["labels"])


def random_data(n: int = 48, seed: int = 0, length: int = 10) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [[101] + rng.integers(1000, 30000, size=length - 2).tolist() + [102] for _ in range(n)]
    return Encoded([f"x{i}" for i in range(n)], ids, [[0] * length for _ in range(n)],
                   rng.integers(0, 2, size=n).astype(np.int64), 0)


def tiny(seed: int = 0, **config):
    if not config:
        return load_model("tiny-bert", 2, seed=seed)
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    from srnet_core.models import TINY_BERT_CONFIG
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=30522, num_labels=2, **{**TINY_BERT_CONFIG, **config}))


class Counter:
    """An evaluate() whose metric peaks at the ``peak``-th evaluation (0-based)."""

    def __init__(self, peak: int = 10 ** 9):
        self.calls, self.peak = 0, peak

    def __call__(self):
        value = -abs(self.calls - self.peak)
        self.calls += 1
        return {"dev": {"m": float(value)}}


def pick(metrics):
    return metrics["dev"]["m"]


# -- schedule -------------------------------------------------------------------------------------------
def test_cubic_schedule_reference_values():
    values = [cubic_sparsity(t, 0.7, 0.9, 0, 5) for t in range(0, 7)]
    assert values[0] == 0.7
    assert values[1:6] == pytest.approx([0.7976, 0.8568, 0.8872, 0.8984, 0.9], abs=1e-12)
    assert values[6] == 0.9  # clamped after t_f
    assert cubic_sparsity(1.0, 0.0, 0.9, start=2, end=4) == 0.0  # before t0: s_i


class Target:
    def __init__(self, sparsity=0.0):
        self.sparsity, self.calls = sparsity, []

    def set_sparsity(self, s):
        self.sparsity = s
        self.calls.append(s)


def test_schedule_steps_like_an_lr_scheduler():
    target = Target(0.7)
    schedule = CubicSparsitySchedule(target, 0.7, 0.9, start=0, end=5, unit="epoch", steps_per_epoch=10,
                                     frequency=10)
    for _ in range(55):
        schedule.step()
    # one update per epoch boundary, each the cubic value of that epoch
    assert target.calls == pytest.approx([0.7976, 0.8568, 0.8872, 0.8984, 0.9], abs=1e-12)
    assert schedule.value(15) == schedule.value(10) and schedule.reached_final()
    by_step = CubicSparsitySchedule(Target(), 0.0, 0.5, start=2, end=6, unit="step")
    assert [by_step.value(s) for s in (0, 2, 4, 6, 9)] == pytest.approx([0.0, 0.0, 0.4375, 0.5, 0.5])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CubicSparsitySchedule(Target(), 0.7, 0.9, end=3, unit="epoch")
    with pytest.raises(ValueError, match="total_steps"):
        CubicSparsitySchedule(Target(), 0.7, 0.9, unit="step")


# -- gradual mask training and GMP --------------------------------------------------------------------------
def test_gradual_mask_training_saves_the_best_mask_at_the_current_target():
    model = tiny()
    names = prunable_linear_names(model)
    data = random_data(64)  # 8 steps per epoch at batch 8
    config = TrainConfig(lr=1e-2, epochs=3, batch_size=8, eval_every=4, seed=0)
    evaluate = Counter(peak=3)  # evals at steps 0, 4, 8, 12, ...: the best is step 12 = epoch 1.5
    result = gradual_mask_train(model, names, data, ce, config, evaluate=evaluate, selection=pick, device="cpu",
                                options=GradualOptions(initial=0.7, final=0.9, unit="epoch"))
    assert result.best_step == 12
    expected = 0.9 + (0.7 - 0.9) * (1 - 1.5 / 3) ** 3
    assert result.target_sparsity == pytest.approx(expected, abs=1e-12) and expected == pytest.approx(0.875)
    for name in names:  # not re-thresholded at s_i = 0.7 (the reference's bug)
        assert int((~result.masks[name]).sum()) == prune_count(result.masks[name].numel(), expected)
    # every logged sparsity is the exact count at that eval's target (measured over the encoder matrices)
    encoder = [n for n in names if "pooler" not in n]
    numels = [result.masks[n].numel() for n in encoder]
    for record in result.history:
        target = cubic_sparsity(record.step / 8, 0.7, 0.9, 0, 3)
        assert record.sparsity == sum(prune_count(k, target) for k in numels) / sum(numels), record.step
    assert result.history[-1].step == 24 and result.final_sparsity_reached


def test_gmp_prunes_monotonically_on_schedule_with_exact_counts():
    model = tiny()
    names = prunable_linear_names(model)
    data = random_data(48)
    config = TrainConfig(lr=1e-3, max_steps=12, batch_size=8, eval_every=3, seed=0)
    options = GradualOptions(initial=0.0, final=0.8, unit="step", end=9, frequency=3, select="final")
    seen = []

    def report(record, state_fn):
        state = state_fn()
        seen.append((record.step, {n: m.clone() for n, m in state["extra"]["masks"]["masks"].items()}))

    result = gmp(model, names, data, ce, config, evaluate=Counter(), selection=pick, device="cpu",
                 options=options, report=report)
    previous = None
    for step, masks in seen:
        target = cubic_sparsity(step, 0.0, 0.8, 0, 9)
        for name in names:
            assert int((~masks[name]).sum()) == prune_count(masks[name].numel(), target), (step, name)
            if previous is not None:
                assert not (masks[name] & ~previous[name]).any()  # pruned entries stay pruned
        previous = masks
    assert result.target_sparsity == 0.8 and result.best_step >= 9
    assert result.weights and all(k.endswith(".original") or "parametrizations" not in k for k in result.weights)
    for name in names:
        assert int((~result.masks[name]).sum()) == prune_count(result.masks[name].numel(), 0.8)


@pytest.mark.parametrize("method", ["mask", "gmp"])
def test_gradual_run_whose_steps_are_not_a_multiple_of_eval_every_ends_at_final_and_picks_the_best(method):
    """24 steps, eval (and schedule update) every 5: updates at 0, 5, 10, 15, 20 never land on t_f. The run
    must still end at s_f (t_f is an update point) and pick the best ID-dev eval among those at s_f."""
    model = tiny()
    names = prunable_linear_names(model, include_classifier=False)
    data = random_data(64)  # 8 steps per epoch at batch 8; 3 epochs = 24 steps
    config = TrainConfig(lr=1e-2, epochs=3, batch_size=8, eval_every=5, seed=0)
    run = gradual_mask_train if method == "mask" else gmp
    # t_f = the last epoch = step 16: evals at steps 20 and 24 are at s_f; the metric peaks at eval #4 (step 20)
    options = GradualOptions(initial=0.5, final=0.9, unit="epoch", end="last_epoch", frequency=5, select="final")
    result = run(model, names, data, ce, config, evaluate=Counter(peak=4), selection=pick, device="cpu",
                 options=options)
    assert [r.step for r in result.history] == [0, 5, 10, 15, 20, 24]
    assert result.best_step == 20 and result.target_sparsity == 0.9 and result.final_sparsity_reached
    for name in names:
        assert int((~result.masks[name]).sum()) == prune_count(result.masks[name].numel(), 0.9)
    # t_f = the end of training, not on the update grid: the run finishes at s_f (today: no eval eligible)
    model = tiny()
    options = GradualOptions(initial=0.5, final=0.9, unit="epoch", end=None, frequency=5, select="final")
    result = run(model, names, data, ce, config, evaluate=Counter(peak=2), selection=pick, device="cpu",
                 options=options)
    assert result.best_step == 24 and result.target_sparsity == 0.9 and result.final_sparsity_reached
    assert result.history[-2].sparsity < result.history[-1].sparsity


def test_last_epoch_end_and_update_points():
    target = Target(0.7)
    # 5 epochs of 10 steps, t_f = the last epoch = epoch 4; updates every 3 steps, and at step 40 (t_f)
    schedule = CubicSparsitySchedule(target, 0.7, 0.9, end="last_epoch", unit="epoch", steps_per_epoch=10,
                                     total_steps=50, frequency=3)
    assert schedule.end == 4.0
    assert schedule.value(39) == pytest.approx(cubic_sparsity(3.9, 0.7, 0.9, 0, 4))  # 39 is on the grid
    assert schedule.value(40) == 0.9 and schedule.value(41) == 0.9
    assert schedule.value(38) == schedule.value(36) < 0.9
    one_epoch = CubicSparsitySchedule(Target(), 0.7, 0.9, end="last_epoch", unit="step", steps_per_epoch=10,
                                      total_steps=10)
    assert one_epoch.end == 10.0  # a one-epoch run ramps over all of it


# -- IMP ------------------------------------------------------------------------------------------------------
def test_imp_levels_are_exact_and_nested():
    assert imp_levels(ImpOptions()) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    geometric = imp_levels(ImpOptions(schedule="geometric", rate=0.2, final=0.6))
    assert geometric == pytest.approx([0.2, 0.36, 0.488, 0.5904, 0.6])
    model = tiny()
    names = prunable_linear_names(model)  # the classifier is not pruned
    config = TrainConfig(lr=1e-3, max_steps=20, batch_size=8, eval_every=100, seed=0)
    levels = imp(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick, device="cpu")
    assert [lv.target_sparsity for lv in levels] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert [lv.steps for lv in levels] == [2] * 9 and [lv.start_step for lv in levels] == list(range(0, 18, 2))
    for lv, before in zip(levels, [None] + levels[:-1]):
        for name in names:
            mask = lv.masks[name]
            assert int((~mask).sum()) == math.floor(mask.numel() * lv.target_sparsity + 1e-9)
            if before is not None:
                assert not (mask & ~before.masks[name]).any()
        assert lv.final.step == 2 and lv.history[0].step == 0
    assert "classifier" not in levels[-1].masks


def test_imp_global_scope_counts_over_all_matrices():
    model = tiny()
    names = prunable_linear_names(model)
    config = TrainConfig(lr=1e-3, max_steps=6, batch_size=8, eval_every=100)
    levels = imp(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick, device="cpu",
                 options=ImpOptions(rate=0.3, final=0.9, scope="global", intervals=3))
    assert [lv.target_sparsity for lv in levels] == [0.3, 0.6, 0.9]
    for lv in levels:
        assert lv.sparsity["zeros"] == prune_count(lv.sparsity["numel"], lv.target_sparsity)


def test_imp_rewinding_restores_weights_bit_for_bit():
    model = tiny()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = prunable_linear_names(model)
    starts = []

    def report(record, state_fn):
        if record.step == 0:  # every level's first eval: right after prune + rewind
            starts.append({n: p.detach().clone() for n, p in model.named_parameters()})

    config = TrainConfig(lr=1e-2, max_steps=9, batch_size=8, eval_every=100)
    levels = imp(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick, device="cpu",
                 options=ImpOptions(rate=0.3, final=0.9, intervals=3, rewind="start"), report=report)
    assert len(starts) == 3
    modules = dict(model.named_modules())
    for level, weights in zip(levels, starts):
        for name, value in weights.items():
            base = name.replace(".parametrizations.weight.original", ".weight")
            if base.startswith("classifier") or name.endswith(".scores"):
                continue
            assert torch.equal(value, pretrained[base]), name  # the whole tensor, so inside and outside the mask
        for name in names:  # the effective weights are the pre-trained ones, masked
            assert modules[name].parametrizations.weight.original.shape == level.masks[name].shape
    # the classifier is not rewound: it keeps training across levels
    assert not torch.equal(starts[2]["classifier.weight"], pretrained["classifier.weight"])


@pytest.mark.parametrize("rewind", [None, "start"])
def test_imp_prunes_exactly_the_smallest_trained_effective_weights(rewind):
    """Each level prunes the floor(numel * s) smallest |W * m| of the weights as TRAINED in the previous
    level (per matrix), before any rewinding: ranking the rewound (pre-trained) weights is wrong."""
    model = tiny()
    names = prunable_linear_names(model)
    start = {n: w.detach().clone() for n, w in ((n, tiny().get_submodule(n).weight) for n in names)}
    trained = []

    def on_level(level, m):
        trained.append({n: m.get_submodule(n).parametrizations.weight.original.detach().clone() for n in names})

    def smallest_pruned(values, sparsity):
        values = values.abs().flatten()
        keep = torch.ones_like(values, dtype=torch.bool)
        keep[torch.argsort(values, stable=True)[:prune_count(values.numel(), sparsity)]] = False
        return keep

    config = TrainConfig(lr=3e-2, max_steps=12, batch_size=8, eval_every=100, seed=0)
    levels = imp(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick, device="cpu",
                 options=ImpOptions(rate=0.3, final=0.9, intervals=3, rewind=rewind), on_level=on_level)
    assert [lv.target_sparsity for lv in levels] == pytest.approx([0.3, 0.6, 0.9])
    rewound_ranking_differs = False
    for prev, weights, level in zip(levels, trained, levels[1:]):
        for name in names:
            expected = smallest_pruned(weights[name] * prev.masks[name], level.target_sparsity)
            assert torch.equal(level.masks[name].flatten(), expected), (level.level, name)
            mutant = smallest_pruned(start[name] * prev.masks[name], level.target_sparsity)
            rewound_ranking_differs |= not torch.equal(mutant, expected)
    assert rewound_ranking_differs  # a mutant ranking the rewound/pre-trained weights fails this test


def test_imp_rewinds_to_step_k():
    model = tiny()
    names = prunable_linear_names(model)
    snapshots = {}
    level_calls = []

    def report(record, state_fn):
        level_calls.append(record.step)
        if len(level_calls) == 3:  # level 0, after its 2nd step (eval_every=1)
            snapshots["k"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        if record.step == 0 and len(level_calls) > 1:
            snapshots.setdefault("level_starts", []).append(
                {n: p.detach().clone() for n, p in model.named_parameters()})

    config = TrainConfig(lr=1e-2, max_steps=8, batch_size=8, eval_every=1)
    imp(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick, device="cpu",
        options=ImpOptions(rate=0.4, final=0.8, intervals=2, rewind=2), report=report)
    assert level_calls[:3] == [0, 1, 2]
    assert not torch.equal(snapshots["k"]["bert.pooler.dense.parametrizations.weight.original"],
                           tiny().bert.pooler.dense.weight)  # step k differs from the start
    (start,) = snapshots["level_starts"]
    for name, value in start.items():
        if not name.startswith("classifier") and not name.endswith(".scores"):
            assert torch.equal(value, snapshots["k"][name]), name


def test_imp_resumes_exactly(tmp_path):
    names_config = TrainConfig(lr=1e-2, max_steps=9, batch_size=8, eval_every=1)
    options = ImpOptions(rate=0.3, final=0.9, intervals=3, rewind="start")

    def run(resume=None, stop_after=None):
        model = tiny()
        names = prunable_linear_names(model)
        seen = []

        class Stop(Exception):
            pass

        def report(record, state_fn):
            seen.append(record.step)
            if stop_after is not None and len(seen) == stop_after:
                save_state(str(tmp_path / "state.safetensors"), state_fn())
                raise Stop

        try:
            levels = imp(model, names, random_data(), ce, names_config, evaluate=Counter(), selection=pick,
                         device="cpu", options=options, report=report, resume_state=resume)
        except Stop:
            return None, None
        return levels, {n: p.detach().clone() for n, p in model.named_parameters()}

    full_levels, full_weights = run()
    assert run(stop_after=6) == (None, None)  # stopped inside the second level
    levels, weights = run(resume=load_state(str(tmp_path / "state.safetensors")))
    assert [lv.target_sparsity for lv in levels] == [lv.target_sparsity for lv in full_levels]
    for a, b in zip(levels, full_levels):
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    for name in full_weights:
        assert torch.equal(weights[name], full_weights[name]), name


# -- structured ------------------------------------------------------------------------------------------------
def test_head_importance_ranks_a_planted_useless_head_last():
    model = tiny(num_attention_heads=4)
    layers = encoder_layers(model)
    out = dict(model.named_modules())[layers[1].names["attn_out"]]
    with torch.no_grad():  # layer 1, head 2 contributes nothing: its attention-output columns are zero
        out.weight[:, 2 * 16: 3 * 16] = 0
    heads, neurons = compute_importance(model, random_data(), ce, batch_size=8, batches=4, device="cpu")
    assert heads.shape == (2, 4) and neurons.shape == (2, 128)
    assert heads[1, 2] == 0 and (heads.flatten().argsort()[0] == 1 * 4 + 2)
    assert (heads.flatten() > 0).sum() == 7
    normalized = normalize_per_layer(heads)
    assert torch.allclose(normalized.norm(dim=1), torch.ones(2))
    alive = select_alive(normalized, torch.ones(2, 4, dtype=torch.bool), 1 / 8)
    assert alive.flatten().tolist() == [True] * 6 + [False, True]


def test_select_alive_counts_and_floors():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.05, 0.06, 0.9]])
    alive = select_alive(scores, torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert alive.tolist() == [[False, True, True], [False, False, True]]
    floor = select_alive(scores, torch.ones(2, 3, dtype=torch.bool), 0.9, min_per_layer=1)
    assert floor.sum(dim=1).tolist() == [1, 1]
    per_layer = select_alive(scores, torch.ones(2, 3, dtype=torch.bool), 0.34, ranking="layer")
    assert per_layer.tolist() == [[False, True, True], [False, True, True]]


def test_structured_masks_match_a_physically_smaller_model():
    model = tiny(num_attention_heads=4)
    model.eval()
    head_alive = torch.tensor([[True, False, True, True], [False, True, True, False]])
    neuron_alive = torch.ones(2, 128, dtype=torch.bool)
    neuron_alive[0, ::3] = False
    neuron_alive[1, :100] = False
    masks = structured_weight_masks(model, head_alive, neuron_alive)
    layers = encoder_layers(model)
    q = masks[layers[0].names["query"]]
    assert q.shape == (64, 64) and int((~q).sum()) == 16 * 64 and not q[16:32].any()
    assert not masks[layers[1].names["attn_out"]][:, :16].any()
    assert int((~masks[layers[1].names["ffn_out"]]).sum()) == 100 * 64

    batch = random_data(4).batch(range(4))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    bake_masks(model, masks)
    with torch.no_grad():
        masked = model(**inputs).logits
    small = shrink_model(model, head_alive, neuron_alive)
    modules = dict(small.named_modules())
    assert tuple(modules[layers[0].names["query"]].weight.shape) == (48, 64)
    assert tuple(modules[layers[1].names["ffn_in"]].weight.shape) == (28, 64)
    assert tuple(modules[layers[0].names["ffn_out"]].weight.shape) == (64, 128 - 43)
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, masked, atol=1e-6)


def test_structured_prune_reaches_the_targets_iteratively():
    model = tiny(num_attention_heads=4)
    names = prunable_linear_names(model)
    config = TrainConfig(lr=1e-3, max_steps=4, batch_size=8, eval_every=100)
    rounds = structured_prune(model, names, random_data(), ce, config, evaluate=Counter(), selection=pick,
                              device="cpu", options=StructuredOptions(head_sparsity=0.5, neuron_sparsity=0.25,
                                                                      rounds=2, importance_batches=2))
    assert [r.head_sparsity for r in rounds] == [2 / 8, 4 / 8]
    assert [r.neuron_sparsity for r in rounds] == [prune_count(256, 0.125) / 256, 64 / 256]
    assert not (rounds[1].head_mask & ~rounds[0].head_mask).any()
    last = rounds[-1]
    expected = structured_weight_masks(model, last.head_mask, last.neuron_mask)
    for name, mask in expected.items():
        assert torch.equal(last.weight_masks[name], mask)
    assert last.weight_masks["bert.pooler.dense"].all()  # in names, kept whole
    # every pruned head's gate gradient is now zero: pruned units stay ranked last
    heads, _ = compute_importance(model, random_data(), ce, batch_size=8, batches=2, device="cpu")
    assert (heads[~last.head_mask] == 0).all()


def test_structured_pruning_works_on_distilbert_too():
    import transformers
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=30522, max_position_embeddings=64, num_labels=2))
    model.eval()
    data = random_data(16)
    heads, neurons = compute_importance(model, data, ce, batch_size=8, batches=2, device="cpu")
    assert heads.shape == (2, 4) and neurons.shape == (2, 64) and (heads > 0).all()
    head_alive = select_alive(normalize_per_layer(heads), torch.ones(2, 4, dtype=torch.bool), 0.5)
    neuron_alive = select_alive(normalize_per_layer(neurons), torch.ones(2, 64, dtype=torch.bool), 0.5)
    assert int((~head_alive).sum()) == 4 and int((~neuron_alive).sum()) == 64
    batch = data.batch(range(4))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    bake_masks(model, structured_weight_masks(model, head_alive, neuron_alive))
    with torch.no_grad():
        masked = model(**inputs).logits
        small = shrink_model(model, head_alive, neuron_alive)
        assert torch.allclose(small(**inputs).logits, masked, atol=1e-6)


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="rewind"):
        ImpOptions(rewind="later")
    with pytest.raises(ValueError, match="rewind"):
        ImpOptions(rewind=True)
    assert ImpOptions(rewind="pretrained").rewind == "start"
    with pytest.raises(ValueError, match="schedule"):
        ImpOptions(schedule="cubic")
    with pytest.raises(ValueError, match="head_sparsity"):
        StructuredOptions(head_sparsity=1.0)
    with pytest.raises(ValueError, match="select"):
        GradualOptions(select="best")


def test_explicit_zero_head_sparsity_is_honoured():
    from srnet_core.stages import StageConfig, structured_options

    cfg = StageConfig.from_dict({"stage": "structured", "sparsity": 0.5,
                                 "structured": {"head_sparsity": 0.0, "neuron_sparsity": None}})
    options = structured_options(cfg)
    assert options.head_sparsity == 0.0 and options.neuron_sparsity == 0.5
    assert structured_options(StageConfig(stage="structured", sparsity=0.3)).head_sparsity == 0.3
