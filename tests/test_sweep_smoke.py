"""End to end on an embedded Ray: spec -> plan -> trials -> Parquet rows; relaunch runs nothing."""
from __future__ import annotations

import os

import pytest
import yaml

from orchestrator import launch, results

pytestmark = pytest.mark.slow

SPEC = {
    "name": "e2e", "max_length": 40,
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5, 0.9], "seeds": [0]},
    "task_options": {"synthetic": {"n_train": 256, "n_dev": 64, "n_ood": 64}},
    "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 4},
    "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "eval_every": 4},
    "resources": {"cpus_per_trial": 1},
}


def _write(tmp_path, **changes):
    spec = {**SPEC, "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec["output_dir"]


def _mtimes(out):
    root = os.path.join(out, "artifacts")
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs}


def test_smoke_sweep_rows_and_idempotent_relaunch(ray_env, tmp_path):
    path, out = _write(tmp_path)
    assert launch.main([path]) == 0
    frame = results.load(out)
    # 3 nodes (dense fine-tune + 2 sparsities) x 3 evals (steps 0, 4, 8) x 2 splits x 3 metrics
    assert len(frame) == 3 * 3 * 2 * 3
    assert set(frame["paradigm"]) == {"full", "a"}
    assert (frame["status"] == "completed").all()
    selected = frame[frame["selected"] & (frame["metric"] == "accuracy")]
    assert len(selected) == 3 * 2  # exactly one selected checkpoint per node and eval split
    # measured sparsity is counted from the masks: floor per matrix, so 0.9 gives just under 0.9
    by_target = selected.groupby("target_sparsity")["measured_sparsity"].first()
    assert by_target[0.0] == 0.0 and by_target[0.5] == 0.5 and 0.8995 < by_target[0.9] <= 0.9
    # mask training from the fine-tuned model selects only evals from 70% of training on
    assert selected[selected["paradigm"] == "a"]["step"].min() >= 0.7 * 8
    for column in ("cfg.train.lr", "code_version", "hostname", "wall_seconds", "node_key", "queued_at", "started_at"):
        assert frame[column].notna().all(), column
    # handed to Tune, then started: the wait between is in neither wall_seconds nor gpu_hours (issue 24)
    assert (frame["queued_at"] <= frame["started_at"]).all()
    assert frame.loc[frame["stage"] == "mask_train", "cfg.mask.init"].eq("magnitude").all()
    assert os.path.exists(os.path.join(out, "e2e_sparsity.png"))
    # --status: the same progress view from the store and the results alone
    tally = _status(path, out)
    assert tally.rows["finetune"]["done"] == 1 and tally.rows["mask_train"]["done"] == 2
    assert tally.total("failed") == tally.total("skipped") == tally.total("to run") == 0
    assert launch.main([path, "--status"]) == 0

    before = _mtimes(out)
    assert launch.main([path]) == 0
    again = results.load(out)
    assert len(again) == len(frame)  # relaunch: nothing re-run, no duplicated rows
    after = _mtimes(out)
    assert before == after

    # widening the finished sweep by one sparsity runs exactly one new node
    wider, _ = _write(tmp_path, grid={**SPEC["grid"], "sparsities": [0.5, 0.7, 0.9]})
    assert launch.main([wider, "--no-figure", "--no-report"]) == 0
    widened = _mtimes(out)
    new_nodes = {os.path.basename(d) for d, _, fs in os.walk(os.path.join(out, "artifacts")) if "_COMPLETE.json" in fs}
    assert len(new_nodes) == 4
    assert {k: v for k, v in widened.items() if k in before} == before  # nothing old was touched
    final = results.load(out)
    assert len(final) == len(frame) + 3 * 2 * 3  # only the new node's rows were added


def test_failed_node_exits_nonzero_and_is_recorded(ray_env, tmp_path):
    # a bad option value is now refused by the spec (exit 2); a diverging fine-tune fails inside its stage
    spec_changes = {"name": "fail", "task_options": {"synthetic": {"n_train": 64}},
                    "finetune": {**SPEC["finetune"], "lr": 1e30}, "resources": {"cpus_per_trial": 1, "max_retries_infra": 0},
                    "grid": {**SPEC["grid"], "sparsities": [0.5]}}
    path, out = _write(tmp_path, **spec_changes)
    assert launch.main([path, "--no-figure"]) == 1
    frame = results.load(out)
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 2  # the fine-tune failed; the mask node that needs it is skipped, not run
    assert failed["error"].str.contains("DivergenceError").all()  # the skipped node names the cause too
    tally = _status(path, out)
    assert tally.total("failed") == 1 and tally.total("skipped") == 1 and tally.total("done") == 0


def _status(path, out):
    from orchestrator.plan import build_plan
    from orchestrator.progress import status_view
    from orchestrator.spec import load_spec
    from workers.store import ArtifactStore

    spec = load_spec(path)
    return status_view(build_plan(spec), ArtifactStore(spec.artifact_root()), results.results_dir(out))
