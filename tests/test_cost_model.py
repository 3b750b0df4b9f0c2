"""The calibrated cost model (orchestrator/plan/cost.py, docs/cost.md): padded tokens per batch under each
batching, one node's seconds against a hand computation, the OOD cadence, packing, the planner's use of the
calibration, the one-line errors, and bench/predict_wall.py's logic. No Ray, no model, < 10 s."""
from __future__ import annotations

import copy
import importlib
import json
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest

from orchestrator.plan import build_plan, estimates
from orchestrator.plan import cost
from orchestrator.plan.cost import Calibration, CostModelError, Scenario, TokenLengths, padded_tokens_per_batch
from orchestrator.plan.graph import Node
from orchestrator.spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def bench_module(name: str):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module(name)


# -- padded tokens ------------------------------------------------------------------------------------------

def test_padded_tokens_known_lengths():
    lengths = [10] * 32 + [20] * 32  # two batches of 32
    assert padded_tokens_per_batch(lengths, 32, 128, "max_length") == 32 * 128
    # grouped: one pool holds both batches, sorted: a batch of 10s and a batch of 20s
    assert padded_tokens_per_batch(lengths, 32, 128, "grouped") == (32 * 10 + 32 * 20) / 2
    assert padded_tokens_per_batch(lengths, 32, 128, "sorted") == 480.0
    # random batches of 32 out of 32 short + 32 long: both batches hold a 20 (odds of one all-10 batch: ~1e-18)
    assert padded_tokens_per_batch(lengths, 32, 128, "dynamic", epochs=3) == 640.0
    # truncation at max_length: every row counts as 15
    assert padded_tokens_per_batch(lengths, 32, 15, "dynamic") == 32 * 15
    # a last partial batch pads only its own rows: (3,4) (5,6) (7) -> 8, 12, 7 tokens
    assert padded_tokens_per_batch([7, 3, 5, 4, 6], 2, 128, "sorted") == pytest.approx((8 + 12 + 7) / 3)
    with pytest.raises(CostModelError, match="unknown batching"):
        padded_tokens_per_batch(lengths, 32, 128, "bucketz")


def test_grouped_pools_are_50_batches():
    # 200 batches of 2 rows, lengths rising: a pool of 50 batches (100 rows) sorted pairs rows of near lengths,
    # so the grouped mean is far below the dynamic one but above the fully sorted one
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=400)
    grouped = padded_tokens_per_batch(lengths, 2, 128, "grouped", epochs=4)
    assert padded_tokens_per_batch(lengths, 2, 128, "sorted") < grouped < \
        padded_tokens_per_batch(lengths, 2, 128, "dynamic", epochs=4)
    # the default pool is srnet_core.train's 50 batches (a pool of 10 batches pads differently)
    assert grouped == padded_tokens_per_batch(lengths, 2, 128, "grouped", epochs=4, pool_batches=50) != \
        padded_tokens_per_batch(lengths, 2, 128, "grouped", epochs=4, pool_batches=10)
    # a pool as large as the set is the sorted order
    assert padded_tokens_per_batch(lengths, 2, 128, "grouped", pool_batches=200) == \
        padded_tokens_per_batch(lengths, 2, 128, "sorted")


def test_token_length_stats_on_a_small_file(tmp_path):
    tl = bench_module("token_lengths")
    path = tmp_path / "pairs.tsv"
    # words per pair: a + b; the fake tokenizer gives one token per word + [CLS] [SEP] [SEP]
    rows = [("a b c", "d"), ("a", "b"), ("a b c d e f", "g h"), ("x y", "z w")]
    path.write_text("s1\ts2\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    text_a, text_b = tl.read_tsv(str(path), "s1", "s2")

    def tokenizer(a, b, truncation):
        assert truncation is False  # lengths before truncation: the cost model truncates per max_length
        return {"input_ids": [[0] * (len(x.split()) + len(y.split()) + 3) for x, y in zip(a, b)]}
    lengths = tl.pair_lengths(tokenizer, text_a, text_b)
    assert lengths.tolist() == [7, 5, 11, 7]
    s = tl.stats(lengths)
    assert s["n"] == 4 and s["mean"] == 7.5 and s["max"] == 11 and s["p50"] == 7.0
    assert s["histogram"] == [[5, 1], [7, 2], [11, 1]]
    at16 = s["padded_tokens_per_batch_at_128"]["16"]
    assert at16["max_length"] == 4 * 128 and at16["dynamic"] == at16["grouped"] == 4 * 11  # one batch of 4
    assert at16["grouped_vs_max_length"] == pytest.approx(1 - 44 / 512, abs=1e-4)


# -- one node by hand ---------------------------------------------------------------------------------------

def hand_calibration(tmp_path=None, scale: float = 1.0) -> Calibration:
    curve = {"floor_s": 0.005 * scale, "fixed_s": 0.002 * scale, "per_token_s": 1e-5 * scale}
    ev = {"floor_s": 0.0, "fixed_s": 0.001 * scale, "per_token_s": 1e-6 * scale}
    data = {"name": "hand", "kind": "gpu", "backbones": {"toy": "toy"},
            "sizes": {"toy": {"layers": 2, "total_params": 1_000_000, "prunable_params": 500_000}},
            "curves": {"toy": {"bf16": {"eager": {"dense": curve, "mask": curve, "eval": ev}}}},
            "projection_s_per_param": 1e-8,
            "packing": {"processes": [1, 2], "factor": [1.0, 1.6]},
            "overheads": {"node_s": 1.0, "host_copy_bytes_per_s": 1.6e9, "write_bytes_per_s": 4e8}}
    return Calibration("hand", "/nowhere/hand.json", data)


def hand_lengths() -> TokenLengths:
    sets = {"synthetic:train": {"histogram": [[20, 1000]]}, "synthetic:dev": {"histogram": [[20, 100]]},
            "synthetic:ood": {"histogram": [[30, 50]]}}
    return TokenLengths("/nowhere/lengths.json", {"sets": sets})


def toy_config(**train) -> dict:
    return {"task": "synthetic", "task_options": {"n_train": 1000, "n_dev": 100, "n_ood": 50}, "backbone": "toy",
            "max_length": 128, "train": {"batch_size": 32, "epochs": 2, "eval_every": 20, "eval_batch_size": 64,
                                         "amp": "bf16", **train}}


def test_one_node_against_a_hand_computation():
    c = cost.node_cost("finetune", toy_config(), "weights", 1000, 150, hand_calibration(), hand_lengths())
    # 1000 rows / 32 = 32 batches per epoch (31 x 32 rows + 8), 2 epochs
    assert c.steps == 64
    assert c.tokens_per_step == pytest.approx((31 * 32 * 20 + 8 * 20) / 32)  # 625: every row is 20 tokens
    step = max(0.005, 0.002 + 1e-5 * 625)
    assert c.step_s == pytest.approx(step) and c.train_s == pytest.approx(64 * step)
    # evaluations at step 0, 20, 40, 60 and the last (64): 5; dev = batches of 64 + 36 rows x 20 tokens,
    # ood = 50 rows x 30 tokens, each batch 1 ms + 1 us per token
    dev = (0.001 + 1e-6 * 64 * 20) + (0.001 + 1e-6 * 36 * 20)
    ood = 0.001 + 1e-6 * 50 * 30
    assert c.evals == 5 and c.eval_s == pytest.approx(5 * (dev + ood))
    # a state snapshot per evaluation (16 bytes x 1M params at 1.6 GB/s) + one weights file (4 MB at 400 MB/s)
    assert c.checkpoint_s == pytest.approx(5 * 0.01 + 0.01)
    assert c.seconds == pytest.approx(1.0 + 64 * step + 5 * (dev + ood) + 0.06)
    # packing 2 per GPU: the busy part / 1.6 unless the per-token (compute) part is larger; load shared
    packed = cost.node_cost("finetune", toy_config(), "weights", 1000, 150, hand_calibration(), hand_lengths(),
                            Scenario(packing=2))
    compute = 64 * 1e-5 * 625 + 5 * 1e-6 * (64 * 20 + 36 * 20 + 50 * 30)
    assert packed.compute_s == pytest.approx(compute)
    assert packed.gpu_seconds == pytest.approx(max((c.seconds - 1.0) / 1.6, compute) + 1.0 / 2)
    assert packed.wall_packed == pytest.approx(2 * packed.gpu_seconds)


def test_ood_cadence_counts_the_other_splits():
    args = ("finetune", None, "weights", 1000, 150, hand_calibration(), hand_lengths())
    dev = (0.001 + 1e-6 * 64 * 20) + (0.001 + 1e-6 * 36 * 20)
    ood = 0.001 + 1e-6 * 50 * 30

    def eval_s(**train):
        return cost.node_cost(args[0], toy_config(**train), *args[2:]).eval_s
    assert eval_s(ood_eval_every=None) == pytest.approx(5 * (dev + ood))
    assert eval_s(ood_eval_every=0) == pytest.approx(5 * dev + 1 * ood)  # once, at the selected checkpoint
    # k = 40: steps 0 and 40, plus the selected checkpoint
    assert eval_s(ood_eval_every=40) == pytest.approx(5 * dev + 3 * ood)


def test_total_steps_and_eval_points_match_the_training_loop():
    from srnet_core.train import TrainConfig

    for n, train in ((1000, {"batch_size": 32, "epochs": 2}), (392_702, {"batch_size": 32, "epochs": 3}),
                     (100, {"batch_size": 32, "epochs": 0.5}), (500, {"batch_size": 16, "max_steps": 7})):
        assert cost.total_steps(train, n) == TrainConfig(**train).total_steps(n)
    # TrainLoop.train evaluates at 0 (eval_at_start), at every multiple of eval_every and at the last step
    assert cost.eval_points(64, 20, True) == len({0, 20, 40, 60, 64})
    assert cost.eval_points(60, 20, False) == len({20, 40, 60})


def test_mask_node_pays_the_projection_and_bucketing_cuts_tokens():
    cfg = toy_config()
    cfg["mask"] = {"reproject_every": 4}
    c = cost.node_cost("mask_train", cfg, "mask", 1000, 150, hand_calibration(), hand_lengths())
    assert c.parts["projection_s"] == pytest.approx(16 * 1e-8 * 500_000)  # 64 steps / 4, 500k scores
    # mixed lengths: grouped batches pad less than random ones
    lengths = TokenLengths("/x", {"sets": {**hand_lengths().data["sets"],
                                           "synthetic:train": {"histogram": [[10, 500], [60, 500]]}}})
    plain = cost.node_cost("finetune", toy_config(), "weights", 1000, 150, hand_calibration(), lengths)
    grouped = cost.node_cost("finetune", toy_config(group_by_length=True), "weights", 1000, 150,
                             hand_calibration(), lengths)
    assert grouped.tokens_per_step < 0.75 * plain.tokens_per_step
    assert cost.node_cost("finetune", toy_config(), "weights", 1000, 150, hand_calibration(), lengths,
                          Scenario(group_by_length=True)).tokens_per_step == grouped.tokens_per_step


# -- errors -------------------------------------------------------------------------------------------------

def test_missing_calibration_and_unknown_backbone_are_one_line(tmp_path):
    with pytest.raises(CostModelError) as err:
        cost.load_calibration(str(tmp_path / "gone.json"))
    msg = str(err.value)
    assert "\n" not in msg and "gone.json" in msg and cost.CALIBRATION_ENV in msg
    cfg = toy_config()
    cfg["backbone"] = "my-encoder"
    with pytest.raises(CostModelError) as err:
        cost.node_cost("finetune", cfg, "weights", 1000, 150, hand_calibration(), hand_lengths())
    msg = str(err.value)
    assert "\n" not in msg and "'backbones'" in msg and "my-encoder" in msg and "/nowhere/hand.json" in msg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad"}))
    with pytest.raises(CostModelError, match="has no field 'backbones'"):
        cost.load_calibration(str(bad))


# -- the planner uses the calibration -----------------------------------------------------------------------

@pytest.fixture()
def demo_plan():
    plan = build_plan(load_spec(os.path.join(ROOT, "sweeps", "demo.yaml")))
    yield plan
    estimates.use_calibration(None)


def test_node_seconds_names_and_uses_the_calibration(demo_plan, tmp_path):
    node = next(n for n in demo_plan.nodes.values() if n.stage == "mask_train")
    h200 = cost.load_calibration(None)
    assert estimates.calibration_label().startswith("h200_2026-11-30 (bench/calibration/h200_2026-11-30.json)")
    base = estimates.node_cost(node)
    assert estimates.node_seconds(node) == pytest.approx(base.seconds)
    # a calibration with every pass twice as slow: training and evaluation double, the rest stays
    data = copy.deepcopy(h200.data)
    for size in data["curves"].values():
        for precision in size.values():
            for mode in precision.values():
                for curve in mode.values():
                    for k in ("floor_s", "fixed_s", "per_token_s"):
                        curve[k] *= 2
    data["projection_s_per_param"] *= 2
    data["name"] = "slow2x"
    path = tmp_path / "slow2x.json"
    path.write_text(json.dumps(data))
    estimates.use_calibration(str(path))
    assert estimates.calibration_label().startswith("slow2x (")
    assert estimates.node_seconds(node) == pytest.approx(
        base.overhead_s + 2 * (base.train_s + base.eval_s) + base.checkpoint_s)


def test_unknown_backbone_falls_back_to_the_old_table(demo_plan):
    node = next(n for n in demo_plan.nodes.values() if n.stage == "finetune")
    cfg = copy.deepcopy(node.stage_config)
    cfg["backbone"] = "my-encoder"
    custom = Node(node.stage, cfg, node.inputs)
    steps = math.ceil(2048 / 32) * 3  # demo fine-tuning: 2,048 rows, batch 32, 3 epochs
    steps_per_s, eval_per_s = estimates.FALLBACK_THROUGHPUT["bert-base-uncased"]
    evals = math.ceil(steps / 192) + 1
    assert estimates.node_seconds(custom) == pytest.approx(30.0 + steps / steps_per_s + evals * 1024 / eval_per_s)


def test_dry_run_prints_the_calibration(tmp_path, capsys):
    from orchestrator import launch

    assert launch.main([os.path.join(ROOT, "sweeps", "demo.yaml"), "--dry-run", "--skip-input-checks",
                        "--output-dir", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "calibration h200_2026-11-30 (bench/calibration/h200_2026-11-30.json)" in out
    assert launch.main([os.path.join(ROOT, "sweeps", "demo.yaml"), "--dry-run", "--skip-input-checks",
                        "--output-dir", str(tmp_path / "out"), "--calibration", "nope"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "nope.json not found" in out and "SRNET_CALIBRATION" in out
    # the spec's cost_calibration, when no --calibration is given
    data = dict(cost.load_calibration(None).data, name="from_spec")
    (tmp_path / "from_spec.json").write_text(json.dumps(data))
    spec = tmp_path / "demo.yaml"
    spec.write_text(open(os.path.join(ROOT, "sweeps", "demo.yaml")).read()
                    + f"\ncost_calibration: {tmp_path / 'from_spec.json'}\n")
    assert launch.main([str(spec), "--dry-run", "--skip-input-checks", "--output-dir", str(tmp_path / "out")]) == 0
    assert "calibration from_spec (" in " ".join(capsys.readouterr().out.split())
    estimates.use_calibration(None)


# -- bench/predict_wall.py ----------------------------------------------------------------------------------

def test_predict_wall_slots_and_serial_makespan(demo_plan, monkeypatch):
    pw = bench_module("predict_wall")
    spec = load_spec(os.path.join(ROOT, "sweeps", "demo.yaml"))
    cal = estimates.use_calibration(None)
    slots, per_stage = pw.trial_slots(spec, demo_plan, 2)
    assert slots == 2 and set(per_stage.values()) == {1.0}  # demo: cpus_per_trial 1 on 2 CPUs
    # one CPU: the nodes run one after another, so the makespan is their sum
    one = pw.predict(spec, demo_plan, cal, 1)
    assert one["slots"] == 1 and one["makespan_s"] == pytest.approx(one["node_seconds_sum"])
    assert one["wall_s"] == pytest.approx(one["makespan_s"] + one["launch_s"])
    two = pw.predict(spec, demo_plan, cal, 2)
    longest_chain = max(sum(estimates.node_cost(n, cal=cal, threads=1).seconds for n in (up, node))
                        for node in demo_plan.nodes.values() for up in node.upstream if up.stage == "finetune")
    assert longest_chain <= two["makespan_s"] < one["makespan_s"]


def test_predict_wall_measured_span_and_ratio(monkeypatch, tmp_path, capsys):
    pw = bench_module("predict_wall")
    from orchestrator import results

    t = pd.Timestamp("2026-12-03 10:00:00", tz="UTC")
    frame = pd.DataFrame({"node_key": ["a", "a", "b", "c"], "stage": ["finetune", "finetune", "mask_train", "mask_train"],
                          "started_at": [t, t, t + pd.Timedelta(seconds=100), t + pd.Timedelta(seconds=110)],
                          "ended_at": [t + pd.Timedelta(seconds=100)] * 2 + [t + pd.Timedelta(seconds=160),
                                                                           t + pd.Timedelta(seconds=200)],
                          "wall_seconds": [100.0, 100.0, 60.0, 90.0]})
    monkeypatch.setattr(results, "load", lambda root, columns=None: frame)
    m = pw.measured(str(tmp_path))
    assert m["span_s"] == 200.0 and m["node_seconds_sum"] == 250.0 and m["nodes"] == 3
    assert m["by_stage"]["mask_train"] == {"nodes": 2, "mean_s": 75.0}
    out = pw.main([os.path.join(ROOT, "sweeps", "demo.yaml"), "--calibration", "h200_2026-11-30.json",
                   "--measured", str(tmp_path), "--out", str(tmp_path / "pw.json")])
    assert out["measured"]["ratio_predicted_over_measured"] == pytest.approx(out["predicted"]["makespan_s"] / 200.0)
    out = pw.main([os.path.join(ROOT, "sweeps", "demo.yaml"), "--calibration", "h200_2026-11-30.json",
                   "--measured-wall", "400", "--out", str(tmp_path / "pw.json")])
    assert out["measured"]["ratio_predicted_over_measured"] == pytest.approx(out["predicted"]["wall_s"] / 400.0)
    assert json.loads((tmp_path / "pw.json").read_text())["measured"]["wall_s"] == 400
    estimates.use_calibration(None)
