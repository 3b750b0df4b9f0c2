"""Optuna searches (orchestrator/search/): OOD-dev roles, the timing predictor, tiny studies on the synthetic
task with tiny-bert (in-process runner; the Ray adapter and the kill -9 resume are marked slow)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from orchestrator import results, search
from orchestrator.spec import SpecError, parse_spec
from srnet_core.pruning.timing import (EarlyBird, mask_distance, pick_early_bird, plateau_step, settled_step,
                                       topk_masks)
from srnet_core.tasks import get_task

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def spec_dict(out: str, kind: str = "timing", **search_extra) -> dict:
    """Fine-tuning: 64 examples, batch 16, 2 epochs = 8 steps (saves 2, 4, 6); mask training 4 steps."""
    search_block = {"kind": kind, "n_trials": 3, "batch_size": 2, "sampler": "random", "n_startup_trials": 0}
    if kind == "timing":
        search_block["timing"] = {"sparsity": 0.5, "loss": "std"}
    else:
        search_block.update(mode="scalar", weights={"id_dev": 1.0, "ood_dev": 1.0, "cost": 0.0})
    search_block.update(search_extra)
    return {"name": "tiny_search", "output_dir": out, "max_length": 24,
            "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
            "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32, "n_ood_dev": 32}},
            "finetune": {"lr": 2e-3, "epochs": 2, "batch_size": 16, "eval_every": 4, "eval_batch_size": 64},
            "mask_train": {"lr": 1e-2, "epochs": 1, "batch_size": 16, "eval_every": 2, "eval_batch_size": 64},
            "mask": {"init": "magnitude_soft", "scope": "local"},
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
            "search": search_block}


def expected_saved(ft, total: int) -> list[int]:
    """Saved steps by an independent formula: the fixed grid of fractions at max(1, round(F * total))
    (issue 9's scheduler), the end excluded."""
    return sorted({max(1, int(round(f * total))) for f in ft.stage_config["save_fractions"]} - {total})


def local(spec):
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    return search.LocalRunner(spec, store, root), store, root


# -- OOD dev: a role of its own, opt-in, exclusive with OOD training data -----------------------------------
def test_ood_dev_split_role_and_exclusions():
    plain = get_task("synthetic", n_dev=8, n_ood=8, n_ood_dev=8)
    assert plain.eval_splits == ["dev", "ood"]  # not evaluated unless asked: existing sweeps are unchanged
    task = get_task("synthetic", eval_ood_dev=True, n_dev=8, n_ood=8, n_ood_dev=8)
    assert task.eval_splits == ["dev", "ood_dev", "ood"]
    assert [task.eval_role(s) for s in task.eval_splits] == ["id", "ood_dev", "ood"]
    ood, dev = task.load("ood"), task.load("ood_dev")
    assert len(dev) == 8 and set(dev.ids).isdisjoint(ood.ids) and dev.text_b != ood.text_b
    assert not any(dev.extra["high_overlap"][i] == (dev.labels[i] == 0) for i in range(8))  # OOD: reversed
    with pytest.raises(ValueError, match="eval_ood_dev and add_ood_train exclude each other"):
        get_task("synthetic", eval_ood_dev=True, add_ood_train=True)
    from srnet_core.tasks import TASKS
    assert {n: TASKS[n].ood_dev_splits for n in ("mnli", "qqp", "fever")} == {
        "mnli": ["hans_train"], "qqp": ["paws_qqp_train"], "fever": ["symmetric_v2_dev"]}
    for name in ("mnli", "qqp", "fever"):  # never also a reported OOD test split
        assert not set(TASKS[name].ood_dev_splits) & set(TASKS[name].ood_eval_splits)


def test_search_spec_mistakes_are_one_line(tmp_path):
    bad = spec_dict(str(tmp_path), mode="pareto", pruner={"kind": "median"})
    with pytest.raises(SpecError, match="a pruner needs mode: scalar"):
        parse_spec(bad)
    spec = parse_spec(spec_dict(str(tmp_path), enqueue=[{"start_step": 0}]))
    with pytest.raises(SpecError, match=r"start_step 0 is not a candidate \(the fine-tuning runs 8 steps"):
        search.build_setting(spec)
    spec = parse_spec({**spec_dict(str(tmp_path)), "task_options": {"synthetic": {"add_ood_train": True}}})
    with pytest.raises(SpecError, match="add_ood_train"):
        search.build_setting(spec)


def test_checkpoint_files_follow_the_fine_tunes_fraction_grid():
    """Saved steps per fine-tuning node: its fixed fraction grid, at step max(1, round(f * total)) (computed here
    by hand), the first fraction winning a step two share."""
    from types import SimpleNamespace as Node  # only stage_config is read

    grid = Node(stage_config={"save_fractions": [0.1, 0.5, 0.9]})
    assert search.checkpoint_files(grid, 64) == {6: "weights_f0.1.safetensors", 32: "weights_f0.5.safetensors",
                                                 58: "weights_f0.9.safetensors"}
    assert search.saved_steps(grid, 64) == [6, 32, 58]
    short = Node(stage_config={"save_fractions": [0.1, 0.2, 0.5]})  # 6 steps: 0.1 and 0.2 both land on step 1
    assert search.checkpoint_files(short, 6) == {1: "weights_f0.1.safetensors", 3: "weights_f0.5.safetensors"}
    assert search.checkpoint_files(Node(stage_config={}), 64) == {}


# -- the timing predictor -------------------------------------------------------------------------------
def test_early_bird_and_plateau_by_hand():
    w = {"a": torch.tensor([[4.0, -3.0], [2.0, 1.0]])}
    assert topk_masks(w, 0.5)["a"].tolist() == [[True, True], [False, False]]
    w2 = {"a": torch.tensor([[4.0, 0.5], [2.0, 1.0]])}  # |-3| -> 0.5 drops out, 2 comes in
    assert mask_distance(topk_masks(w, 0.5), topk_masks(w2, 0.5)) == 0.5
    bird = EarlyBird(0.5, threshold=0.3, window=2)
    for step, weights in [(2, w), (4, w2), (6, w2), (8, w2)]:
        bird.observe(step, weights)
    assert bird.distances == [0.5, 0.0, 0.0] and bird.predicted_step == 8
    assert settled_step([2, 4, 6, 8], [0.5, 0.0, 0.0], 0.3, 1) == 6
    assert settled_step([2, 4], [0.5], 0.3, 1) is None
    assert plateau_step([(0, 0.5), (4, 0.5), (8, 0.9), (12, 0.897), (16, 0.9)]) == 8
    assert plateau_step([]) is None


# -- tiny studies, in process ---------------------------------------------------------------------------
def test_tiny_timing_study_saved_steps_dedup_rows(tmp_path):
    spec = parse_spec(spec_dict(str(tmp_path), n_trials=4, mode="pareto"))
    runner, store, root = local(spec)
    setting = search.build_setting(spec)
    study = search.open_study(setting)
    study.enqueue_trial({"start_step": 4})
    study.enqueue_trial({"start_step": 4})  # the same parameters twice: one node
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    ft = setting.finetune
    saved = expected_saved(ft, 8)
    assert search.saved_steps(ft, 8) == saved and setting.candidates == saved + [8] and 4 in saved
    for t in trials:  # only saved steps (and the end) are ever proposed, and their files exist
        step = t.params["start_step"]
        assert step in setting.candidates
        assert os.path.exists(store.fetch("finetune", ft.key, setting.start_file(step)))
    assert trials[0].user_attrs["node_key"] == trials[1].user_attrs["node_key"]
    mask_runs = [k for k in runner.ran if k != ft.key and not k.startswith("bias")]
    distinct = {t.user_attrs["node_key"] for t in trials}
    assert sorted(mask_runs) == sorted(distinct) and len(mask_runs) == len(set(mask_runs))
    with pytest.raises(search.SearchError, match="not saved"):
        search.trial_node(setting, {"start_step": 0})
    # trial rows: 4 objective rows per trial, with the study name and trial number
    frame = results.load(root)
    rows = frame[frame["stage"] == "search_trial"]
    assert len(rows) == 16 and sorted(rows["trial"].unique()) == [0, 1, 2, 3]
    assert set(rows["study"]) == {setting.study_name} and set(rows["status"]) == {"trial_complete"}
    assert results.completed(frame)["stage"].isin(["finetune", "mask_train"]).all()  # views skip trial rows
    for t in trials:  # the told values are the node's selected ID-dev / OOD-dev rows, recomputed here
        node_rows = pd.read_parquet(store.fetch("mask_train", t.user_attrs["node_key"], "rows.parquet"))
        sel = node_rows[node_rows["selected"] & (node_rows["metric"] == "accuracy")]
        expect_id = float(sel.loc[sel["eval_dataset"] == "dev", "value"].iloc[0])
        expect_ood_dev = float(sel.loc[sel["eval_dataset"] == "ood_dev", "value"].iloc[0])
        assert t.values == [expect_id, expect_ood_dev, float(t.params["start_step"] + 4)]
        assert t.constraints == {"id_dev_vs_dense": 0.95 * result.dense_id - expect_id}
    # the report: Pareto figure, best trials' curves, the trial table, and the predictor against the search
    from orchestrator.search_report import pareto_front, search_section, trial_table, write_search_report
    table = search.predictor_comparison(result, runner, store, root)
    assert table["method"].tolist() == ["search (best trial)", "early_bird", "id_plateau"]
    assert table.loc[0, "mask_trainings"] == len(distinct)
    assert set(table["start_step"].dropna()) <= set(setting.candidates)
    path = write_search_report(result, table, root, str(tmp_path))
    text = open(path).read()
    assert "Timing predictor" in text and text.count("| complete |") == 4
    wide = trial_table(results.load(root))
    assert len(wide) == 4 and set(pareto_front(wide)["trial"]) <= {0, 1, 2, 3}
    lines, figures = search_section(results.load(root), str(tmp_path / "fig"), str(tmp_path))
    assert len(figures) == 2 and all(os.path.getsize(f) > 1000 for f in figures)
    from orchestrator.report import build_report  # search rows and nodes do not break the sweep report
    assert os.path.exists(build_report(root, out=str(tmp_path / "report"), masks=False).path)
    # the predictor's fine-tuning output: distances between the saved checkpoints and the end
    import json
    with open(store.fetch("finetune", ft.key, "timing.json")) as f:
        timing = json.load(f)
    bird = pick_early_bird(timing, 0.5)
    assert bird["steps"] == saved + [8] and len(bird["distances"]) == len(saved)
    assert all(0.0 <= d <= 1.0 for d in bird["distances"])


def test_objective_never_reads_ood_test_rows(tmp_path):
    """Values come from eval_role id / ood_dev rows only: poisoned OOD test rows change nothing, and missing
    OOD-dev rows are an error rather than a silent fallback to the OOD test set."""
    task = get_task("synthetic", eval_ood_dev=True)
    rows = []
    for step in (0, 2, 4):
        for split in ("dev", "ood_dev", "ood"):
            rows.append({"node_key": "n", "step": step, "eval_dataset": split, "eval_role": task.eval_role(split),
                         "metric": "accuracy", "value": 0.5 + step / 10 + (0.01 if split == "ood_dev" else 0),
                         "selected": step == 2})
    frame = pd.DataFrame(rows)
    clean = search.objective_values(frame, task, "accuracy")
    assert (clean["id_dev"], clean["ood_dev"]) == (0.7, 0.71)
    poisoned = frame.copy()
    poisoned.loc[poisoned["eval_role"] == "ood", "value"] = -123.0
    poisoned.loc[poisoned["eval_role"] == "ood", "selected"] = True  # even a wrong selected flag there
    assert search.objective_values(poisoned, task, "accuracy") == clean
    with pytest.raises(search.SearchError, match="ood_dev split 'ood_dev'"):
        search.objective_values(frame[frame["eval_role"] != "ood_dev"], task, "accuracy")


def test_poisoned_ood_test_split_leaves_the_study_unchanged(tmp_path, monkeypatch):
    """The same tiny study twice, the second with the OOD test split's labels flipped at generation: every
    OOD test row differs, every told value is bit-identical."""
    from srnet_core.tasks import synthetic

    def run(out):
        spec = parse_spec(spec_dict(out, n_trials=2, batch_size=2, enqueue=[{"start_step": 2}, {"start_step": 8}]))
        runner, store, root = local(spec)
        result = search.run_study(spec, runner, store, root, log=lambda m: None)
        frame = results.load(root)
        ood = frame[(frame["eval_role"] == "ood") & (frame["stage"] == "mask_train")]
        return [t.values for t in result.study.trials], ood.sort_values(["node_key", "step", "metric"])

    values, ood = run(str(tmp_path / "clean"))
    real = synthetic.generate

    def poisoned(split, options):
        data = real(split, options)
        if split == "ood":
            data.labels = 1 - data.labels
        return data
    monkeypatch.setattr(synthetic, "generate", poisoned)
    values2, ood2 = run(str(tmp_path / "poisoned"))
    assert values2 == values
    acc = ood["metric"] == "accuracy"
    assert np.allclose(ood2.loc[acc.values, "value"].to_numpy(), 1 - ood.loc[acc.values, "value"].to_numpy())


def test_schedule_study_end_to_end_with_a_rung(tmp_path):
    """Scalar mode with a median pruner fed by a rung at half the mask training, on real nodes: every trial
    reports its rung, none fails (a ramp ending after the last target update would leave nothing to select)."""
    extra = {"n_trials": 2, "batch_size": 2, "min_id_ratio": None,
             "pruner": {"kind": "median", "rungs": [0.5], "n_startup_trials": 1},
             "enqueue": [{"initial": 0.85, "start": 0.4, "end": 1.0, "frequency": 3, "lr": 1e-3}]}
    d = spec_dict(str(tmp_path), kind="schedule", **extra)
    d["mask_train"].update(epochs=2)  # 8 steps; the rung runs 4
    spec = parse_spec(d)
    runner, store, root = local(spec)
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    trials = result.study.trials
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and len(trials) == 2
    assert all(4 in t.intermediate_values for t in trials)
    node = search.trial_node(result.setting, search.suggest_fixed(trials[0].params))
    assert node.stage_config["gradual"] == {"initial": 0.85, "unit": "step", "start": 3, "end": 6,
                                            "frequency": 3, "select": "final"}


class ScriptedRunner:
    """A NodeRunner whose mask-training 'results' are a known function of the mask lr, written as real rows
    into the store: tests the driver's pruning decisions exactly."""

    def __init__(self, store, fail_lr=None):
        self.store, self.ran, self.fail_lr = store, [], fail_lr

    def run_nodes(self, nodes):
        errors = {}
        for wave in search.closure(nodes):
            for node in wave:
                if not self.store.is_complete(node.stage, node.key):
                    error = self.run_one(node)
                    if error:
                        errors[node.key] = error
        return {n.key: errors.get(n.key) for n in nodes}

    def run_one(self, node) -> str | None:
        self.ran.append(node.key)
        lr = node.stage_config["train"]["lr"]
        if lr == self.fail_lr:
            return "RuntimeError: out of memory"
        good = 0.9 if lr > 1e-6 else 0.3
        rows = [{"node_key": node.key, "step": 2, "eval_dataset": split, "eval_role": role,
                 "metric": "accuracy", "value": good if role != "ood" else 0.0, "selected": True}
                for split, role in (("dev", "id"), ("ood_dev", "ood_dev"), ("ood", "ood"))]
        out = self.store.node_dir(node.stage, node.key)
        os.makedirs(out, exist_ok=True)
        pd.DataFrame(rows).to_parquet(os.path.join(out, "rows.parquet"))
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump({"wall_seconds": 1.0}, f)
        self.store.mark_complete(node.stage, node.key, {})
        return None


class ScriptedScheduler(ScriptedRunner):
    """An ask/tell runner without Ray, like one Tune run: one DagScheduler kept open, its ready nodes run by
    ``workers`` threads (ScriptedRunner's rows, ``seconds`` each); records how many trial nodes ran at once."""

    ask_tell = True

    def __init__(self, store, fail_lr=None, workers=3, seconds=0.05):
        super().__init__(store, fail_lr)
        self.workers, self.seconds, self.runs, self.most, self._now = workers, seconds, 0, 0, 0
        import threading

        self._lock = threading.Lock()

    def run_study(self, finetune, driver):
        import threading

        from orchestrator.scheduler import DagScheduler

        self.runs += 1
        sched = DagScheduler(keep_open=True)
        every = [n for wave in search.closure([finetune]) for n in wave]
        sched.add_nodes(every, complete={n.key for n in every if self.store.is_complete(n.stage, n.key)})
        driver.attach(sched)

        def work():
            while True:
                node = sched.next_ready()
                if node is None:
                    if sched.finished:
                        return
                    time.sleep(0.005)
                    continue
                with self._lock:
                    self._now += node.stage == "mask_train"
                    self.most = max(self.most, self._now)
                time.sleep(self.seconds)
                error = self.run_one(node)
                with self._lock:
                    self._now -= node.stage == "mask_train"
                sched.node_failed(node.key, error) if error else sched.node_done(node.key)

        threads = [threading.Thread(target=work) for _ in range(self.workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        driver.join()


def test_a_failed_node_is_a_failed_trial_not_a_crashed_study(tmp_path):
    enqueue = [{"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.005},
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.0025}]
    spec = parse_spec(spec_dict(str(tmp_path), kind="schedule", n_trials=2, batch_size=2, enqueue=enqueue))
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    result = search.run_study(spec, ScriptedRunner(store, fail_lr=0.0025), store, root, log=lambda m: None)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE", "FAIL"]
    rows = results.load(root)
    failed = rows[(rows["stage"] == "search_trial") & (rows["trial"] == 1)]
    assert set(failed["status"]) == {"trial_fail"} and set(failed["error"]) == {"RuntimeError: out of memory"}


@pytest.mark.parametrize("kind", ["median", "asha"])
def test_pruner_stops_a_hopeless_trial_after_its_rung(tmp_path, kind):
    enqueue = [{"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.5},
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.3},
               {"initial": 0.7, "start": 0.1, "end": 0.6, "frequency": 1, "lr": 1e-9}]
    spec = parse_spec(spec_dict(str(tmp_path), kind="schedule", n_trials=3, batch_size=1, min_id_ratio=None,
                                schedule={"lr": {"low": 1e-9, "high": 1.0, "log": True}}, enqueue=enqueue,
                                pruner={"kind": kind, "rungs": [0.5], "n_startup_trials": 1,
                                        "reduction_factor": 2}))
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    runner = ScriptedRunner(store)
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2].intermediate_values == {2: 0.6}  # rung = 2 of the 4 mask steps; 0.3 + 0.3 - 0 cost
    assert trials[0].intermediate_values == {2: 1.8, 4: 1.8} and trials[0].value == 1.8
    setting = result.setting
    full = search.trial_node(setting, search.suggest_fixed(trials[2].params))
    rung = search.trial_node(setting, search.suggest_fixed(trials[2].params), 0.5)
    assert rung.key in runner.ran and full.key not in runner.ran  # stopped early: the full run never started
    rows = results.load(root)
    rows = rows[rows["stage"] == "search_trial"]
    assert rows.groupby("trial")["status"].first().to_dict() == {0: "trial_complete", 1: "trial_complete",
                                                                  2: "trial_pruned"}
    assert rows.loc[rows["trial"] == 2, "rung_fraction"].unique().tolist() == [0.5]


# -- the Ray adapter and the kill -9 resume --------------------------------------------------------------
@pytest.mark.slow
def test_study_through_ray_tune(tmp_path, ray_env):
    from workers.store import ArtifactStore

    spec = parse_spec(spec_dict(str(tmp_path), n_trials=2, batch_size=2,
                                enqueue=[{"start_step": 2}, {"start_step": 6}]))
    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    runner = search.LaunchRunner(spec, store, root)
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE", "COMPLETE"]
    assert len(set(runner.ran)) == len(runner.ran) == 3  # the fine-tuning and two mask trainings


@pytest.mark.slow
def test_resume_after_kill_9_repeats_and_loses_nothing(tmp_path):
    import optuna

    spec_path = tmp_path / "spec.yaml"
    d = spec_dict(str(tmp_path / "out"), n_trials=4, batch_size=2, sampler="random")
    spec_path.write_text(yaml.safe_dump(d))
    spec = parse_spec(d)
    setting = search.build_setting(spec)
    journal = os.path.join(str(tmp_path / "out"), "search", f"{setting.study_name}.journal")
    cmd = [sys.executable, "-m", "orchestrator.search", str(spec_path), "--runner", "local", "--no-report"]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed_running = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(journal):
            study = optuna.load_study(study_name=setting.study_name,
                                      storage=search.storage_for(spec, setting.study_name))
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            if "COMPLETE" in states and "RUNNING" in states:
                os.kill(proc.pid, signal.SIGKILL)
                killed_running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
                break
        time.sleep(0.1)
    proc.wait(timeout=30)
    assert killed_running, "the driver finished before a trial was caught running"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    import re
    resumed = re.search(r"resuming (\d+) unfinished trial\(s\)", out.stdout)  # those RUNNING at the kill
    assert resumed and 1 <= int(resumed.group(1)) <= len(killed_running), out.stdout
    study = optuna.load_study(study_name=setting.study_name, storage=search.storage_for(spec, setting.study_name))
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    rows = results.load(os.path.join(str(tmp_path / "out"), "results"))
    rows = rows[rows["stage"] == "search_trial"]
    assert len(rows) == 16 and sorted(rows.groupby("trial").size().to_dict().items()) == [(i, 4) for i in range(4)]


@pytest.mark.parametrize("name", ["timing_search", "schedule_search"])
def test_shipped_search_specs_build(name, tmp_path):
    from orchestrator.spec import load_spec

    spec = load_spec(os.path.join(REPO, "sweeps", f"{name}.yaml"))
    setting = search.build_setting(spec)
    assert setting.study_name.startswith(f"{name}.{spec.search.kind}.")
    if spec.search.kind == "timing":  # 512 examples / batch 32 = 16 fine-tuning steps
        saved = expected_saved(setting.finetune, 16)
        assert search.saved_steps(setting.finetune, 16) == saved and setting.candidates == saved + [16]
    else:
        assert setting.mask_steps == 16 and spec.search.schedule.final_sparsity == 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timing_search", "schedule_search"])
def test_shipped_search_specs_run_end_to_end(name, tmp_path):
    """Each shipped search spec (MiniLM, small synthetic task) end to end, two trials, in process."""
    with open(os.path.join(REPO, "sweeps", f"{name}.yaml")) as f:
        d = yaml.safe_load(f)
    d["output_dir"] = str(tmp_path)
    spec = parse_spec(d)
    runner, store, root = local(spec)
    result = search.run_study(spec, runner, store, root, log=lambda m: None, n_trials=2)
    assert len(result.study.trials) == 2
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in result.study.trials)


# -- issue 21: the study's storage lives with the outputs; dashboards ---------------------------------------
def _uri_store_env(monkeypatch, s3_server, tmp_path, machine):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / machine))  # each "machine" has its own scratch space


def test_a_uri_output_dirs_journal_is_kept_in_the_store_not_in_a_local_s3_folder(s3_server, monkeypatch, tmp_path):
    """The bug of issue 21: output_dir s3://... wrote the journal to a local folder named 's3:'. Now the
    journal is an object beside the outputs; a second machine (another scratch dir) sees every trial."""
    import optuna
    from orchestrator.search.storage import StoreJournalStorage, work_path

    _uri_store_env(monkeypatch, s3_server, tmp_path, "machine-a")
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(spec_dict("s3://sweeps/study21"))
    name = search.build_setting(spec).study_name
    where = search.storage_for(spec, name)
    assert isinstance(where, StoreJournalStorage)
    assert where.backend.remote == f"s3://sweeps/study21/search/{name}.journal"
    assert where.backend.local == work_path(where.backend.remote)
    assert where.backend.local.startswith(str(tmp_path / "machine-a") + os.sep)
    study = optuna.create_study(storage=where, study_name=name, directions=["maximize", "maximize"])
    trials = [study.ask() for _ in range(3)]
    xs = [t.suggest_int("x", 0, 100) for t in trials]
    study.tell(trials[0], [0.5, 0.25])
    trials[1].set_user_attr("node_key", "abc")  # pushed with the next state change
    study.tell(trials[1], state=optuna.trial.TrialState.FAIL)
    trials[2].set_user_attr("late", 1)  # written after the last state change: pushed by flush()
    pushes = where.backend.pushes
    search.storage.flush(where)
    assert where.backend.pushes == pushes + 1
    search.storage.flush(where)  # nothing new: no request
    assert where.backend.pushes == pushes + 1
    assert not os.path.exists(tmp_path / "s3:") and not os.path.exists(os.path.join(REPO, "s3:"))
    from optuna.storages.journal._storage import JournalOperation

    assert sorted(JournalOperation(op).name for op in search.storage.PUSH_NOW) == [
        "CREATE_STUDY", "CREATE_TRIAL", "DELETE_STUDY", "DISCARD_TRIALS", "SET_TRIAL_PARAM", "SET_TRIAL_STATE_VALUES"]

    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "machine-b"))
    again = optuna.load_study(study_name=name, storage=search.storage_for(spec, name))
    got = again.get_trials(deepcopy=False)
    assert [t.state.name for t in got] == ["COMPLETE", "FAIL", "RUNNING"]
    assert [t.params["x"] for t in got] == xs and got[0].values == [0.5, 0.25]
    assert got[1].user_attrs == {"node_key": "abc"} and got[2].user_attrs == {"late": 1}
    assert os.path.isfile(tmp_path / "machine-b" / os.path.relpath(where.backend.local, tmp_path / "machine-a"))


def test_a_second_driver_on_the_same_study_is_stopped_not_merged(s3_server, monkeypatch, tmp_path):
    import optuna
    from orchestrator.search.storage import StoreJournalStorage

    _uri_store_env(monkeypatch, s3_server, tmp_path, "m")
    remote = "s3://sweeps/two/search/s.journal"
    first = StoreJournalStorage(remote, local=str(tmp_path / "a" / "s.journal"))
    study_a = optuna.create_study(storage=first, study_name="s")
    second = StoreJournalStorage(remote, local=str(tmp_path / "b" / "s.journal"))
    study_b = optuna.load_study(storage=second, study_name="s")
    study_b.ask()  # the second driver pushes first
    with pytest.raises(search.SearchError, match="another driver is running this study"):
        study_a.ask()
    final = optuna.load_study(storage=StoreJournalStorage(remote, local=str(tmp_path / "c" / "s.journal")),
                              study_name="s")
    assert len(final.trials) == 1  # the second driver's trial; the first driver's never overwrote it


def test_a_file_uri_journal_is_replaced_by_rename_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "scratch"))
    spec = parse_spec(spec_dict(f"file://{tmp_path}/out"))
    name = search.build_setting(spec).study_name
    study = optuna.create_study(storage=search.storage_for(spec, name), study_name=name, direction="maximize")
    for i in range(3):
        study.tell(study.ask(), float(i))
    folder = tmp_path / "out" / "search"
    assert sorted(os.listdir(folder)) == [f"{name}.journal"]
    monkeypatch.setenv("SRNET_CACHE", str(tmp_path / "other"))
    assert [t.value for t in optuna.load_study(study_name=name, storage=search.storage_for(spec, name)).trials] \
        == [0.0, 1.0, 2.0]


def test_search_storage_mistake_is_one_line(tmp_path):
    with pytest.raises(SpecError, match=r"storage 'redis://h:6379/0' is neither an RDB URL .* nor a journal "
                                        r"ending \.journal") as err:
        parse_spec(spec_dict(str(tmp_path), storage="redis://h:6379/0"))
    assert "\n" not in str(err.value)
    for ok in ("sqlite:///x.db", "postgresql+psycopg2://u@h/db", "s3://b/x.journal", str(tmp_path / "x.journal")):
        assert parse_spec(spec_dict(str(tmp_path), storage=ok)).search.storage == ok


def test_trials_carry_dashboard_attributes(tmp_path):
    """optuna-dashboard shows user attributes per trial: node keys, rows path, params, objective values."""
    import optuna

    enqueue = [{"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.5},
               {"initial": 0.7, "start": 0.1, "end": 0.6, "frequency": 1, "lr": 1e-9},
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.25}]
    spec = parse_spec(spec_dict(str(tmp_path), kind="schedule", n_trials=3, batch_size=1, min_id_ratio=None,
                                schedule={"lr": {"low": 1e-9, "high": 1.0, "log": True}}, enqueue=enqueue,
                                pruner={"kind": "median", "rungs": [0.5], "n_startup_trials": 1}))
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    result = search.run_study(spec, ScriptedRunner(store, fail_lr=0.25), store, root, log=lambda m: None)
    setting = result.setting
    study = optuna.load_study(study_name=setting.study_name, storage=search.storage_for(spec, setting.study_name))
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    for t in trials:
        params = search.suggest_fixed(t.params)
        full, rung = search.trial_node(setting, params), search.trial_node(setting, params, 0.5)
        attrs = t.user_attrs
        assert attrs["params"] == t.params and attrs["finetune_key"] == setting.finetune.key
        assert attrs["results"] == root
        node = full if t.state.name == "COMPLETE" else rung
        assert attrs["node_key"] == node.key
        assert attrs["rows"] == os.path.join(store.root, node.stage, node.key, "rows.parquet")
        assert attrs["node_keys"] == ([rung.key, full.key] if t.state.name == "COMPLETE" else [rung.key])
    assert os.path.isfile(trials[0].user_attrs["rows"])
    assert trials[0].user_attrs["id_dev"] == 0.9 and trials[0].user_attrs["ood_dev"] == 0.9
    full_cost = search.trial_cost(setting, search.suggest_fixed(trials[0].params), setting.mask_steps)
    assert trials[0].user_attrs["cost"] == full_cost and trials[0].user_attrs["scalar"] == 1.8
    assert trials[1].user_attrs["id_dev"] == 0.3 and trials[1].user_attrs["rung"] == 0.5
    assert trials[2].user_attrs["error"] == "RuntimeError: out of memory" and "id_dev" not in trials[2].user_attrs


def test_each_launch_is_one_ray_job_named_for_the_dashboard(tmp_path):
    """The Ray dashboard's Jobs page names a driver job by its metadata 'job_name': the search driver's job is
    named after its study, the launch's after its sweep (read back from the cluster's job table)."""
    script = """
import argparse, json, ray
from orchestrator import launch
from orchestrator.search.cli import ray_session
from orchestrator.spec import parse_spec
def name():
    w = ray._private.worker.global_worker
    return dict(w.gcs_client.get_all_job_info()[w.current_job_id].config.metadata).get("job_name")
names = []
with ray_session(None, "tiny_search.timing.abc"):
    names.append(name())
spec = parse_spec(json.loads(%r))
args = argparse.Namespace(address=None, verbose=False, no_ship_code=True)
with launch.ray_session(args, spec):
    names.append(name())
print(json.dumps(names))
""" % __import__("json").dumps(spec_dict(str(tmp_path / "out")))
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "PYTHONPATH": REPO, "RAY_TMPDIR": short, "HOME": str(tmp_path)})
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["tiny_search.timing.abc", "tiny_search"]


@pytest.mark.slow
def test_a_study_in_the_store_survives_its_driver_across_machines(s3_server, monkeypatch, tmp_path):
    """Issue 21 item 1 on the local S3 server: the driver (output_dir s3://...) is killed with SIGKILL while a
    trial runs, after at least one completed; a relaunch on another 'machine' (its own working directory and
    scratch space) continues the study from the journal in the store: no trial repeated, none lost."""
    import optuna
    from orchestrator.search.storage import StoreJournalStorage

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    d = spec_dict("s3://sweeps/resume21", n_trials=4, batch_size=2, sampler="random")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    spec = parse_spec(d)
    name = search.build_setting(spec).study_name
    remote = f"s3://sweeps/resume21/search/{name}.journal"

    def machine(tag):
        (tmp_path / tag).mkdir()
        env = {**os.environ, **s3_server, "PYTHONPATH": REPO, "SRNET_CACHE": str(tmp_path / tag / "scratch")}
        return dict(cwd=str(tmp_path / tag), env=env)

    def trials_in_store(i):
        local = str(tmp_path / "probe" / f"{i}.journal")
        return optuna.load_study(study_name=name, storage=StoreJournalStorage(remote, local=local)).get_trials()

    cmd = [sys.executable, "-m", "orchestrator.search", str(spec_path), "--runner", "local", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **machine("a"))
    at_kill, polls, deadline = None, 0, time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            polls += 1
            # Freeze the driver while reading the store: otherwise it can finish the running trial between our
            # read and the kill (seen in CI on a slow machine), and there is nothing left to resume.
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                trials = trials_in_store(polls)
            except KeyError:  # the study is not created yet
                trials = []
            states = [t.state.name for t in trials]
            if "COMPLETE" in states and "RUNNING" in states:
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.3)
        proc.wait(timeout=30)
        time.sleep(1.0)  # a request the driver had fully sent before it froze lands; then the store is final
        at_kill = trials_in_store("at-kill") if proc.returncode == -signal.SIGKILL else None
    finally:
        if proc.poll() is None and at_kill is None:
            proc.kill()
        proc.wait(timeout=30)
    assert at_kill, "the driver finished before a trial was caught running: " + proc.stdout.read().decode()[-2000:]
    running = [t.number for t in at_kill if t.state.name == "RUNNING"]
    done = {t.number: (t.params, t.values) for t in at_kill if t.state.name == "COMPLETE"}

    out = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=400, **machine("b"))  # with the report
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = f"s3://sweeps/resume21/search/{name}.md"
    assert f"search report: {report}" in out.stdout  # written in scratch, uploaded beside the journal
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(report)
    with fs.open_input_stream(path) as f:
        assert f.read().decode().startswith(f"# Search {name}")
    import re
    resumed = re.search(r"resuming (\d+) unfinished trial\(s\): \[([\d, ]*)\]", out.stdout)
    assert resumed and [int(n) for n in resumed.group(2).split(",")] == running, out.stdout
    trials = trials_in_store("final")
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {t.number: (t.params, t.values) for t in trials if t.number in done} == done  # kept, not re-run
    assert all(t.params for t in trials)
    rows = results.load("s3://sweeps/resume21/results")
    rows = rows[rows["stage"] == "search_trial"]
    assert len(rows) == 16 and sorted(rows.groupby("trial").size().to_dict().items()) == [(i, 4) for i in range(4)]
    for tag in ("a", "b"):  # each machine's working copy in its own scratch space; no local 's3:' folder
        assert not os.path.exists(tmp_path / tag / "s3:")
    assert any(f.endswith(".journal") for _, _, fs in os.walk(tmp_path / "b" / "scratch" / "studies") for f in fs)


def test_launch_refuses_a_search_section_in_one_line(tmp_path, capsys):
    """Issue 21 item 3, decided: launch runs grids; a spec with a search: section is refused (exit 2) with
    one line naming the study's driver, before anything is planned or started."""
    from orchestrator import launch

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(str(tmp_path / "out"))))
    assert launch.main([str(spec_path)]) == 2
    text = capsys.readouterr()
    lines = [line for line in (text.out + text.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "field 'search'" in lines[0]
    assert f"python -m orchestrator.search {spec_path}" in lines[0]
    assert not os.path.exists(tmp_path / "out")


# -- issue 21 item 2: ask/tell on the running scheduler -----------------------------------------------------
def _schedule_spec(tmp_path, n_trials, parallelism, enqueue):
    return parse_spec(spec_dict(str(tmp_path), kind="schedule", n_trials=n_trials, batch_size=1,
                                parallelism=parallelism, min_id_ratio=None, enqueue=enqueue,
                                schedule={"lr": {"low": 1e-9, "high": 1.0, "log": True}},
                                pruner={"kind": "median", "rungs": [0.5], "n_startup_trials": 1}))


def test_ask_tell_study_runs_on_one_scheduler_within_its_parallelism(tmp_path):
    """One run for the whole study: trials join the running scheduler as others end, never more than
    ``parallelism`` at once; the pruner judges each rung as it ends; a failed node fails only its trial."""
    enqueue = [{"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.5},
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.3},
               {"initial": 0.7, "start": 0.1, "end": 0.6, "frequency": 1, "lr": 1e-9},
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.25},
               {"initial": 0.5, "start": 0.1, "end": 0.5, "frequency": 1, "lr": 0.1}]
    spec = _schedule_spec(tmp_path, 5, 2, enqueue)
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    runner = ScriptedScheduler(store, fail_lr=0.25, workers=4)
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert runner.runs == 1 and 1 <= runner.most <= 2  # one run; never more than `parallelism` trial nodes
    setting = result.setting
    fulls = {t.number: search.trial_node(setting, search.suggest_fixed(t.params)).key for t in trials}
    rungs = {t.number: search.trial_node(setting, search.suggest_fixed(t.params), 0.5).key for t in trials}
    assert len(runner.ran) == len(set(runner.ran)) == 1 + 5 + 3  # fine-tune, five rungs, three full runs
    assert fulls[2] not in runner.ran and fulls[3] not in runner.ran and rungs[3] in runner.ran
    assert trials[2].intermediate_values == {2: 0.6} and trials[0].intermediate_values == {2: 1.8, 4: 1.8}
    assert result.trial_nodes == {0: fulls[0], 1: fulls[1], 4: fulls[4]}
    rows = results.load(root)
    rows = rows[rows["stage"] == "search_trial"]
    assert rows.groupby("trial")["status"].first().to_dict() == {
        0: "trial_complete", 1: "trial_complete", 2: "trial_pruned", 3: "trial_fail", 4: "trial_complete"}
    assert len(rows) == 20


def test_ask_tell_resumes_a_killed_drivers_running_trial_and_reuses_equal_nodes(tmp_path):
    enqueue = [{"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.5},
               {"initial": 0.5, "start": 0.0, "end": 0.5, "frequency": 1, "lr": 0.5},  # equal to trial 0
               {"initial": 0.6, "start": 0.0, "end": 0.5, "frequency": 2, "lr": 0.3}]
    spec = _schedule_spec(tmp_path, 3, 3, enqueue)
    setting = search.build_setting(spec)
    study = search.open_study(setting, search.storage_for(spec, setting.study_name))
    for params in enqueue:
        study.enqueue_trial(params)
    left = study.ask()  # a killed driver's trial: RUNNING, its parameters set
    search.suggest(left, setting)
    from workers.store import ArtifactStore

    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    runner, logged = ScriptedScheduler(store, workers=2), []
    result = search.run_study(spec, runner, store, root, log=logged.append)
    assert "resuming 1 unfinished trial(s): [0]" in logged
    trials = result.study.trials
    assert [t.number for t in trials] == [0, 1, 2] and [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == trials[1].params == enqueue[0]
    assert len(runner.ran) == len(set(runner.ran)) == 1 + 2 * 2  # trials 0 and 1 share their rung and full node


@pytest.mark.slow
def test_ask_tell_study_through_one_ray_tune_run(tmp_path, ray_env, monkeypatch):
    from orchestrator import launch
    from workers.store import ArtifactStore

    calls = []
    real = launch.run_plan
    monkeypatch.setattr(launch, "run_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    starts = [2, 6, 4]
    spec = parse_spec(spec_dict(str(tmp_path), n_trials=3, batch_size=1, parallelism=2,
                                enqueue=[{"start_step": s} for s in starts]))
    store = ArtifactStore(spec.artifact_root())
    root = results.results_dir(spec.output_dir)
    runner = search.SchedulerRunner(spec, store, root)
    result = search.run_study(spec, runner, store, root, log=lambda m: None)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and [t.params["start_step"] for t in trials] == starts
    assert calls == [1]  # the whole study, fine-tuning included, in one Tune run
    setting = result.setting
    expected = [setting.finetune.key] + [search.trial_node(setting, {"start_step": s}).key for s in starts]
    assert len(runner.ran) == 4 and sorted(runner.ran) == sorted(expected)
    assert result.trial_nodes == dict(enumerate(expected[1:]))


def test_timing_search_mnli_is_one_study_per_seed_and_the_predictor_settings_do_not_rename_it(data_dir):
    """The real-data timing spec: 200 fine-tuning steps, saved at 20, 40, ..., 180, so its candidates are those
    and the end; `--seed` gives each seed its own fine-tuning and study; calibrating Early-Bird's threshold
    afterwards keeps the study (the predictors only read the fine-tuning's outputs)."""
    from orchestrator.search.cli import parse_args
    from orchestrator.spec import load_spec

    spec = load_spec(os.path.join(REPO, "sweeps", "timing_search_mnli.yaml"))
    spec.data_dir = data_dir
    names, fts = set(), set()
    for seed in (0, 1, 2):
        spec.search.seed = seed
        setting = search.build_setting(spec)
        assert setting.candidates == list(range(20, 201, 20)) and setting.mask_steps == 100
        names.add(setting.study_name)
        fts.add(setting.finetune.key)
    assert len(names) == 3 and len(fts) == 3
    before = setting.study_name
    spec.search.early_bird_threshold, spec.search.early_bird_window = 0.002, 3
    assert search.build_setting(spec).study_name == before
    spec.search.timing.sparsity = 0.7  # what a trial means: a new study
    assert search.build_setting(spec).study_name != before
    assert parse_args(["s.yaml", "--seed", "2", "--runner", "local"]).seed == 2
