"""launch --simulate: a rehearsal through the real launch path, kept apart from real results; Tune's per-trial
loggers off."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from orchestrator import launch, results
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec
from srnet_core.stages import get_kind
from workers.simulate import PLACEHOLDER, SIMULATED_MARKER, SIMULATED_METRIC, is_simulated, mark_simulated
from workers.store import ArtifactStore

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LOGGER_FILES = ("progress.csv", "result.json", "params.json", "params.pkl")


def _launch(tmp_path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The launch in its own process (its own local Ray with fake GPUs, shut down when it exits), with HOME,
    Ray's temp dir and the scratch space in temp dirs, run from ``tmp_path`` (relative output dirs land there)."""
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_TMPDIR": short, "SRNET_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    os.makedirs(env["HOME"], exist_ok=True)
    try:
        return subprocess.run([sys.executable, "-m", "orchestrator.launch", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _tree(path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def _check_rehearsal(tmp_path, spec_file: str, out: str, proc: subprocess.CompletedProcess) -> set[str]:
    """Every node done with its kind's declared outputs as placeholders, rows and metadata marked simulated,
    nothing in the sweep's real output directory, no per-trial logger files; returns the stage kinds run."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rehearsal (simulated, not results)" in proc.stdout
    spec = load_spec(spec_file)
    plan = build_plan(spec)
    # every node done, in the rehearsal's own store
    store = ArtifactStore(os.path.join(out, "artifacts"))
    assert store.list_complete() == {(n.stage, n.key) for n in plan.nodes.values()}
    # each kind's declared outputs exist, as placeholders (never loadable as weights)
    kinds = set()
    for node in plan.nodes.values():
        kinds.add(node.stage)
        for name in get_kind(node.stage).declared_outputs(node.stage_config) + ["rows.parquet"]:
            path = os.path.join(store.node_dir(node.stage, node.key), name)
            assert os.path.isfile(path), path
            if name != "rows.parquet":
                with open(path, "rb") as f:
                    assert f.read() == PLACEHOLDER
        assert store.marker(node.stage, node.key)["simulated"] is True
    # rows: one per published node, every one marked simulated, no invented accuracy
    frame = results.load(os.path.join(out, "results"))
    published = {n.key for n in plan.nodes.values() if get_kind(n.stage).publishes}
    assert set(frame["node_key"]) == published and len(frame) == len(published)
    assert frame["simulated"].all() and (frame["metric"] == SIMULATED_METRIC).all()
    assert (frame["gpu_type"] == "simulated").all() and (frame["status"] == "completed").all()
    # the run's metadata says so too
    assert is_simulated(os.path.join(out, "artifacts")) and is_simulated(os.path.join(out, "results"))
    with open(os.path.join(out, "rehearsal.json")) as f:
        summary = json.load(f)
    assert summary["run"] == len(plan.nodes) and 0 < summary["utilisation"] <= 1
    # nothing in the sweep's real output directory (relative to the launch's working directory, tmp_path)
    real = tmp_path / os.path.relpath(spec.output_dir, os.getcwd())
    assert not real.exists(), real
    # Tune's per-trial loggers are off: no progress.csv / result.json / params / TensorBoard files
    tune_files = _tree(os.path.join(out, "ray"))
    assert tune_files, "Tune wrote no experiment state at all (wrong storage dir?)"
    assert not [p for p in tune_files if os.path.basename(p) in LOGGER_FILES or "tfevents" in p]
    assert "NaN or Inf found in input tensor" not in proc.stdout + proc.stderr
    events = "".join(open(p).read() for p in _tree(os.path.join(out, "artifacts", "_events")))
    assert '"event": "run"' in events and "Failed to fetch metrics" not in events  # no_metrics_files_warning
    return kinds


@pytest.mark.slow
def test_simulated_smoke_launch(tmp_path):
    """The default output dir is <output_dir>-simulated (relative to the launch's working directory); about
    35 s: three launches (the rehearsal, its relaunch, a real launch refused)."""
    spec_file = os.path.join(REPO, "sweeps", "smoke.yaml")
    proc = _launch(tmp_path, spec_file, "--simulate", "--simulate-gpus", "2", "--time-scale", "0.002")
    out = str(tmp_path / "results" / "smoke-simulated")
    _check_rehearsal(tmp_path, spec_file, out, proc)
    # relaunched: nothing left to run, and a real launch refuses the rehearsal's store (one line, exit 2)
    again = _launch(tmp_path, spec_file, "--simulate", "--simulate-gpus", "2")
    assert again.returncode == 0 and "rehearsal (simulated, not results): 0 nodes" in again.stdout
    real = _launch(tmp_path, spec_file, "--output-dir", out, "--skip-input-checks")
    assert real.returncode == 2 and "is a rehearsal's" in real.stdout
    assert "Traceback" not in real.stdout + real.stderr


@pytest.mark.slow
def test_simulated_paper_small_every_kind(tmp_path):
    """paper_small: 42 nodes of eight stage kinds (bias models on CPU beside the fake GPUs)."""
    spec_file = os.path.join(REPO, "sweeps", "paper_small.yaml")
    out = str(tmp_path / "rehearsal")
    proc = _launch(tmp_path, spec_file, "--simulate", "--simulate-gpus", "4", "--time-scale", "0.002",
                   "--output-dir", out)
    kinds = _check_rehearsal(tmp_path, spec_file, out, proc)
    assert len(kinds) >= 5, kinds


# -- flags and the separation of rehearsals from real results (no Ray) ------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--simulate-gpus", "4"], "--simulate-gpus needs --simulate"),
    (["--time-scale", "0.1"], "--time-scale needs --simulate"),
    (["--simulate", "--simulate-gpus", "x"], "--simulate-gpus x: not a number"),
    (["--simulate", "--simulate-gpus", "0"], "--simulate-gpus 0: give a whole number"),
    (["--simulate", "--time-scale", "0"], "--time-scale 0: give a factor in (0, 1]"),
    (["--simulate", "--simulate-noise", "1.5"], "--simulate-noise 1.5: give a fraction"),
    (["--simulate", "--address", "auto"], "drop --address"),
])
def test_bad_simulate_flags_one_line_exit_2(args, message, capsys):
    assert launch.main([os.path.join(REPO, "sweeps", "smoke.yaml"), *args]) == 2
    out = capsys.readouterr().out.strip()
    assert message in out and len(out.splitlines()) == 1, out


def test_simulate_refuses_real_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    smoke = os.path.join(REPO, "sweeps", "smoke.yaml")
    # the spec's own output dir
    assert launch.main([smoke, "--simulate", "--output-dir", "results/smoke"]) == 2
    assert "would write placeholder files into the sweep's real output" in capsys.readouterr().out
    # a directory holding a real sweep's results
    (tmp_path / "other" / "results").mkdir(parents=True)
    (tmp_path / "other" / "results" / "part-x.parquet").write_bytes(b"x")
    assert launch.main([smoke, "--simulate", "--output-dir", "other", "--dry-run"]) == 2
    assert "holds a real sweep's files" in capsys.readouterr().out
    # a rehearsal's own earlier output is fine (dry run: plan only)
    mark_simulated(str(tmp_path / "again" / "results"), {})
    assert launch.main([smoke, "--simulate", "--output-dir", "again", "--dry-run"]) == 0


def test_real_launch_refuses_a_rehearsal_store(tmp_path, capsys):
    mark_simulated(str(tmp_path / "out" / "artifacts"), {"sweep": "smoke"})
    assert os.path.isfile(tmp_path / "out" / "artifacts" / SIMULATED_MARKER)
    argv = [os.path.join(REPO, "sweeps", "smoke.yaml"), "--output-dir", str(tmp_path / "out"),
            "--skip-input-checks"]
    assert launch.main(argv) == 2
    assert "is a rehearsal's" in capsys.readouterr().out
    assert launch.main([*argv, "--dry-run"]) == 0  # viewing its plan is fine


def test_tune_env_turns_off_per_trial_loggers():
    """With the launch's Tune environment, Tune adds no CSV, JSON or TensorBoard logger (it does without)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from orchestrator.tune_run import env_vars, tune_env

    loggers = (CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback)
    with env_vars(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="0"):
        assert any(isinstance(c, loggers) for c in _create_default_callbacks([]))
    with env_vars(**tune_env()):
        assert not any(isinstance(c, loggers) for c in _create_default_callbacks([]))
        assert float(os.environ["TUNE_GLOBAL_CHECKPOINT_S"]) >= 600


def test_missing_metrics_files_warning_dropped(caplog):
    """Tune's end-of-run warning about the logger files it was told not to write is dropped; others are not."""
    import logging

    from orchestrator.tune_run import no_metrics_files_warning

    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    with caplog.at_level(logging.WARNING), no_metrics_files_warning():
        logger.warning("Failed to fetch metrics for 2 trial(s):\n- a\n- b")
        logger.warning("something else")
    logger.warning("Failed to fetch metrics for 1 trial(s): after the block")
    messages = [r.getMessage() for r in caplog.records]
    assert "something else" in messages and "Failed to fetch metrics for 2 trial(s):\n- a\n- b" not in messages
    assert any("after the block" in m for m in messages)
