"""The report renders from a hand-built results set, and its numbers equal a direct computation."""
from __future__ import annotations

import itertools
import os

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator import figures, report, results
from srnet_core import masks as masks_module

SEEDS = (0, 1, 2)
HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
STEPS = (0, 10, 20)
DATASETS = {  # task -> [(eval dataset, role, metrics)]
    "mnli": [("dev_matched", "id", ["accuracy"]),
             # the names srnet_core.metrics.hans_metrics gives
             ("hans", "ood", ["accuracy", "accuracy_entailment", "accuracy_non-entailment", "hans_subcase_ln_passive"]
              + [f"hans_{h}{lab}" for h in HEURISTICS for lab in ("", "_entailment", "_non-entailment")])],
    "qqp": [("dev", "id", ["accuracy", "f1_duplicate"]), ("paws_qqp", "ood", ["accuracy", "f1_duplicate"])],
}
# (paradigm, stage, loss, sparsities)
SETTINGS = [("full", "finetune", "std", [0.0]), ("full", "finetune", "poe", [0.0]),
            ("a", "mask_train", "std", [0.5, 0.7]), ("a", "mask_train", "poe", [0.5, 0.7]),
            ("a", "imp", "std", [0.5, 0.7]), ("c", "mask_train", "std", [0.5, 0.7])]
MISSING = ("qqp", "c", "mask_train", "std", 0.7, 2)  # a run that has not finished yet
MASK_LAYOUT = {"encoder.layer.0.attention.self.query.weight": (8, 16), "classifier.weight": (3, 8)}


def build_results(output_dir: str) -> pd.DataFrame:
    """Publish a results set by hand (and masks for the mnli mask nodes); returns every row published."""
    rng = np.random.default_rng(7)
    root = results.results_dir(output_dir)
    published = []
    for task, (paradigm, stage, loss, sparsities), seed in itertools.product(DATASETS, SETTINGS, SEEDS):
        # IMP is one node per seed with a row series per level; other settings one node per sparsity
        for levels in ([sparsities] if stage == "imp" else [[s] for s in sparsities]):
            levels = [s for s in levels if (task, paradigm, stage, loss, s, seed) != MISSING]
            if not levels:
                continue
            key = f"{task}-{paradigm}-{stage}-{loss}-{int(levels[0] * 100)}-{seed}"
            rows = []
            for sparsity in levels:
                best = int(rng.choice(STEPS[1:]))
                rows += [{"step": step, "epoch": step / 20, "eval_dataset": dataset, "eval_role": role,
                          "metric": metric, "value": float(rng.uniform(0.3, 0.95)), "selected": step == best,
                          "measured_sparsity": sparsity - 0.0001 * (sparsity > 0), "target_sparsity": sparsity}
                         for step in STEPS for dataset, role, names in DATASETS[task] for metric in names]
            wall = 600.0 + 60 * seed
            frame = pd.DataFrame(rows).assign(
                sweep="paper", task=task, paradigm=paradigm, backbone="tiny-bert", seed=seed, loss=loss,
                upstream_keys="", node_key=key, stage=stage, status="completed",
                wall_seconds=wall, started_at=pd.Timestamp("2026-03-01 10:00") + pd.Timedelta(minutes=seed),
                ended_at=pd.Timestamp("2026-03-01 10:00") + pd.Timedelta(minutes=seed, seconds=wall),
                code_version="0123abcd", hostname=f"gpu-node-{seed % 2}", gpu_type="NVIDIA H100", gpus_used=1.0,
                torch_version="2.13.0", gpu_hours=wall / 3600, **{"cfg.train.lr": 2e-5, "cfg.sparsity": max(levels),
                                                                  "cfg.seed": seed})
            if paradigm in ("a", "full"):  # as the planner sets it: L1 of (a), the own loss of a fine-tuning
                frame["finetune_loss"] = "std" if paradigm == "a" else loss
            results.publish(root, frame)
            published.append(frame)
            if task == "mnli" and stage in ("mask_train", "imp"):
                for sparsity in levels:  # IMP: one file per level, and the classifier is not pruned
                    layout = {n: s for n, s in MASK_LAYOUT.items() if stage != "imp" or "classifier" not in n}
                    kept = {name: torch.from_numpy(rng.random(shape) >= sparsity) for name, shape in layout.items()}
                    name = f"masks_s{sparsity:.2f}.safetensors" if stage == "imp" else "masks.safetensors"
                    masks_module.save_masks(os.path.join(output_dir, "artifacts", stage, key, name), kept,
                                            {"target_sparsity": sparsity})
    failed = pd.DataFrame([{"sweep": "paper", "task": "mnli", "paradigm": "c", "node_key": "broken", "stage":
                            "mask_train", "status": "failed", "error": "CUDA out of memory", "metric": "error",
                            "value": float("nan"), "eval_dataset": "", "eval_role": "", "step": -1,
                            "selected": False, "seed": 3, "loss": "std", "backbone": "tiny-bert",
                            "target_sparsity": 0.9}])
    results.publish(root, failed)
    return pd.concat(published + [failed], ignore_index=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("sweep") / "out")
    truth = build_results(output_dir)
    made = report.build_report(output_dir)
    with open(made.path) as f:
        text = f.read()
    return output_dir, truth, made, text


def direct_curve(truth: pd.DataFrame) -> pd.DataFrame:
    """The expected numbers, straight from the rows with pandas."""
    sel = truth[(truth["status"] == "completed") & truth["selected"]]
    keys = ["task", "backbone", "paradigm", "stage", "loss", "target_sparsity", "eval_role", "eval_dataset",
            "metric"]
    out = sel.groupby(keys).agg(mean=("value", "mean"), std=("value", "std"), n=("seed", "nunique")).reset_index()
    return out.rename(columns={"stage": "method"})  # no planner `method` column here: the stage is the method


def section_table(text: str, heading: str) -> list[dict]:
    """Parse the Markdown table under ``heading`` into dicts."""
    lines = text.split("\n")
    start = lines.index(heading) + 2
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")])))
    return rows


def expected_cell(values: np.ndarray, typical: int = 3) -> str:
    cell = f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
    return cell + (f" (n={len(values)})" if len(values) != typical else "")


def test_curve_table_equals_direct_pandas(built):
    _, truth, made, _ = built
    want = direct_curve(truth)
    got = made.tables["curve"]
    # 10 points (2 dense + 4 settings x 2 sparsities) x (mnli: 1 + 13 metrics, qqp: 2 + 2)
    assert len(got) == len(want) == 10 * (14 + 4)
    merged = want.merge(got, on=list(want.columns[:9]), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_allclose(merged["mean_x"], merged["mean_y"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged["std_x"], merged["std_y"], rtol=0, atol=1e-12)
    assert (merged["n"] == merged["n_seeds"]).all()
    assert sorted(merged["n"].unique()) == [2, 3]


def test_main_tables_in_markdown_show_mean_and_std(built):
    _, truth, _, text = built
    sel = truth[(truth["status"] == "completed") & truth["selected"]]
    checked = 0
    sections = [("mnli", "dev_matched", "accuracy", "ID"), ("mnli", "hans", "accuracy", "OOD"),
                ("qqp", "dev", "f1_duplicate", "ID"), ("qqp", "paws_qqp", "f1_duplicate", "OOD")]
    for task, dataset, metric, role in sections:
        rows = section_table(text, f"### {task}: {dataset} ({role}), {metric}")
        assert len(rows) == len(SETTINGS)
        for row in rows:
            for column, cell in row.items():
                if column in ("paradigm", "method", "loss", "finetune_loss") or cell == "":
                    continue
                values = sel[(sel["task"] == task) & (sel["eval_dataset"] == dataset) & (sel["metric"] == metric)
                             & (sel["paradigm"] == row["paradigm"]) & (sel["stage"] == row["method"])
                             & (sel["loss"] == row["loss"]) & (sel["target_sparsity"] == float(column))]
                assert cell == expected_cell(values.sort_values("seed")["value"].to_numpy()), (task, dataset, row)
                checked += 1
    assert checked == 4 * (2 + 4 * 2)
    assert "(n=2)" in text  # the unfinished run shows, instead of silently averaging fewer seeds


def test_hans_table_per_heuristic_and_label(built):
    _, truth, made, text = built
    sel = truth[(truth["status"] == "completed") & truth["selected"] & truth["metric"].str.startswith("hans_")]
    hans = made.tables["hans"]
    assert len(hans) == 9 * (2 + 4 * 2)  # 3 heuristics x (both labels, entailment, non-entailment); no subcase
    assert set(hans["heuristic"]) == set(HEURISTICS)
    assert set(hans["label"]) == {"all", "entailment", "non-entailment"}
    row = hans[(hans["paradigm"] == "a") & (hans["loss"] == "poe") & (hans["method"] == "mask_train")
               & (hans["target_sparsity"] == 0.7) & (hans["heuristic"] == "subsequence")
               & (hans["label"] == "non-entailment")].iloc[0]
    values = sel[(sel["paradigm"] == "a") & (sel["loss"] == "poe") & (sel["stage"] == "mask_train")
                 & (sel["target_sparsity"] == 0.7) & (sel["metric"] == "hans_subsequence_non-entailment")]["value"]
    assert row["mean"] == pytest.approx(values.mean(), abs=1e-12)
    assert row["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
    table = section_table(text, "### mnli: hans")
    cell = next(r for r in table if (r["paradigm"], r["method"], r["loss"], r["target_sparsity"]) ==
                ("a", "mask_train", "poe", "0.7"))["subsequence non-entailment"]
    assert cell == expected_cell(values.to_numpy())


def test_provenance_failures_and_config_sections(built):
    _, truth, made, text = built
    per_node = truth[truth["status"] == "completed"].drop_duplicates("node_key")
    prov = made.tables["provenance"].iloc[0]
    assert prov["nodes"] == len(per_node) + 1 and prov["completed"] == len(per_node) and prov["failed"] == 1
    assert prov["gpu_hours"] == pytest.approx(per_node["gpu_hours"].sum())
    assert prov["node_hours"] == pytest.approx(per_node["wall_seconds"].sum() / 3600)
    assert prov["wall_hours"] == pytest.approx((2 * 60 + 600 + 120) / 3600)  # 10:00 -> 10:02 + 720 s
    assert prov["code_version"] == f"0123abcd ({len(per_node)})"
    assert "gpu-node-0" in prov["hostname"] and "NVIDIA H100" in prov["gpu_type"]
    assert "| paper | broken | mask_train | c | 3 | CUDA out of memory |" in text
    config = made.tables["config"].set_index(["stage", "setting"])
    assert config.loc[("mask_train", "train.lr"), "value"] == "2e-05"
    assert config.loc[("mask_train", "sparsity"), "value"] == "{0.5, 0.7}"


def test_mask_iou_matches_numpy_and_mask_similarity(built):
    output_dir, truth, made, text = built
    pairs = made.tables["mask_iou"]
    mnli_mask_nodes = truth[(truth["task"] == "mnli") & truth["stage"].isin(["mask_train", "imp"])
                            & (truth["status"] == "completed")].drop_duplicates(["node_key", "target_sparsity"])
    per_sparsity = mnli_mask_nodes.groupby("target_sparsity").size()  # 3 mask settings + IMP, x 3 seeds
    assert per_sparsity.tolist() == [12, 12]
    assert len(pairs) == 2 * 12 * 11 // 2
    files = {"mask_train": lambda s: "masks.safetensors", "imp": lambda s: f"masks_s{s:.2f}.safetensors"}
    stage_of = dict(zip(mnli_mask_nodes["node_key"], mnli_mask_nodes["stage"]))
    for pair in pairs.sample(12, random_state=0).itertuples():
        loaded = [masks_module.load_masks(os.path.join(output_dir, "artifacts", stage_of[key], key,
                                                       files[stage_of[key]](pair.target_sparsity)))[0]
                  for key in (pair.node_a, pair.node_b)]
        common = sorted(set(loaded[0]) & set(loaded[1]))  # IMP masks have no classifier
        assert pair.matrices == len(common)
        a, b = (np.concatenate([m[n].numpy().ravel() for n in common]) for m in loaded)
        assert pair.iou == pytest.approx((a & b).sum() / (a | b).sum(), abs=1e-12)
        assert pair.hamming == pytest.approx((a != b).mean(), abs=1e-12)
        if hasattr(masks_module, "mask_similarity"):
            same = [{n: m[n] for n in common} for m in loaded]
            assert pair.iou == pytest.approx(masks_module.mask_similarity(*same)["iou"], abs=1e-12)
    assert set(pairs.loc[pairs["label_a"].str.contains("imp") | pairs["label_b"].str.contains("imp"),
                         "matrices"]) == {1}
    kinds = set(pairs["differs"])
    assert {"seed", "loss", "loss+seed", "paradigm", "paradigm+seed", "method", "method+seed"} <= kinds
    summary = made.tables["mask_iou_summary"]
    row = summary[(summary["target_sparsity"] == 0.5) & (summary["differs"] == "seed")].iloc[0]
    subset = pairs[(pairs["target_sparsity"] == 0.5) & (pairs["differs"] == "seed")]
    assert row["pairs"] == 4 * 3 and row["mean_iou"] == pytest.approx(subset["iou"].mean())
    # independent random masks at density 0.5 overlap with IoU about 1/3
    assert row["random_iou"] == pytest.approx(1 / 3, abs=0.08) and row["mean_iou"] == pytest.approx(1 / 3, abs=0.1)
    assert "## Mask overlap" in text


def test_figures_are_written_and_linked(built):
    output_dir, _, made, text = built
    names = sorted(os.path.basename(p) for p in made.figures)
    assert names == ["mask_iou.png", "sparsity_a.png", "sparsity_c.png"]
    for path in made.figures:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert f"]({os.path.relpath(path, os.path.dirname(made.path))})" in text
    assert made.path == os.path.join(output_dir, "report", "report.md")
    assert pd.read_csv(os.path.join(output_dir, "report", "curve.csv")).shape[0] == len(made.tables["curve"])


def test_cli_out_option_metric_choice_and_errors(built, tmp_path, capsys):
    output_dir, _, _, _ = built
    out = tmp_path / "elsewhere"
    code = report.main([os.path.join(output_dir, "results"), "--out", str(out), "--metric", "paws_qqp=accuracy",
                        "--no-masks"])
    assert code == 0
    text = (out / "report.md").read_text()
    assert "### qqp: paws_qqp (OOD), accuracy" in text and "### qqp: dev (ID), f1_duplicate" in text
    assert "## Mask overlap" not in text
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "no results under" in capsys.readouterr().err
    assert report.main([output_dir, "--out", str(out), "--metric", "bleu"]) == 2


def test_launch_figure_entry_point_still_draws(built, tmp_path):
    output_dir, _, _, _ = built
    frame = results.load(output_dir)
    path = figures.metric_vs_sparsity(frame[frame["status"] == "completed"], str(tmp_path / "sweep.png"))
    assert matplotlib.image.imread(path).shape[1] > 400


def test_docs_examples_answer_on_real_files(built):
    """Every Python block in docs/results.md runs against a results set; each expression gives a table."""
    import ast

    output_dir, truth, _, _ = built
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "results.md")) as f:
        doc = f.read()
    blocks = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:]]
    assert len(blocks) == 3
    answers = []
    for block in blocks:
        namespace: dict = {}
        for node in ast.parse(block.replace('"results/demo"', repr(output_dir))).body:
            code = ast.unparse(node)
            if isinstance(node, ast.Expr):
                answers.append(eval(code, namespace))
            else:
                exec(code, namespace)
    assert all(isinstance(a, pd.DataFrame) and len(a) for a in answers)
    metadata, hans_pivot, seeds_pivot, cost, duck = answers
    assert len(metadata) == truth["node_key"].nunique()
    sel = truth[truth["selected"] & (truth["metric"] == "accuracy") & (truth["eval_dataset"] == "hans")]
    want = sel[(sel["paradigm"] == "a") & (sel["stage"] == "imp") & (sel["target_sparsity"] == 0.7)]["value"].mean()
    assert hans_pivot.loc[("imp", "std", "std"), 0.7] == pytest.approx(want)
    assert list(seeds_pivot.columns) == [0, 1, 2] and len(seeds_pivot) == 10
    assert cost.loc[("mask_train", "failed"), "nodes"] == 1
    curve = results.sparsity_curve(truth).query("metric == 'accuracy'")
    merged = curve.merge(duck, on=["task", "paradigm", "method", "loss", "target_sparsity", "eval_dataset"])
    assert len(merged) == len(curve) == len(duck)
    np.testing.assert_allclose(merged["mean_x"], merged["mean_y"], rtol=1e-12)
    assert (merged["n_seeds"] == merged["seeds_y"]).all()


def test_figures_choose_their_x_axis_per_paradigm(tmp_path):
    rows = []
    for paradigm, method, sparsity, start in [("full", "finetune", 0.0, None), ("a", "mask_train", 0.5, None),
                                              ("a", "mask_train", 0.7, None), ("timing", "mask_train", 0.7, 0),
                                              ("timing", "mask_train", 0.7, 500), ("timing", "mask_train", 0.7, 1000),
                                              ("bias_model", "bias_model", 0.0, None)]:
        for dataset, role in (("dev", "id"), ("ood", "ood")):
            rows.append({"task": "synthetic", "backbone": "tiny-bert", "paradigm": paradigm, "method": method,
                         "loss": "std", "start_step": start, "target_sparsity": sparsity, "eval_role": role,
                         "eval_dataset": dataset, "metric": "accuracy", "mean": 0.6, "std": 0.01, "n_seeds": 3})
    curve = pd.DataFrame(rows)
    assert figures.x_axis(curve[curve["paradigm"] == "a"]) == "target_sparsity"
    assert figures.x_axis(curve[curve["paradigm"] == "timing"]) == "start_step"
    assert figures.x_axis(curve[curve["paradigm"] == "bias_model"]) is None
    paths = figures.sparsity_figures(curve, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["sparsity_a.png", "sparsity_timing.png"]
    assert all(matplotlib.image.imread(p).shape[1] > 300 for p in paths)
    assert figures._label(["paradigm", "method", "loss", "finetune_loss", "start_step"],
                          ("a", "mask_train", "poe", "std", float("nan"))) == "a/mask_train/poe/ft=std"
