"""bench/gpu_suite.py's logic on CPU (--smoke, tiny shapes): every section runs and reports, the device
projection is bit-identical to the CPU band search, and nothing outside torch/transformers/numpy/safetensors
(+ srnet_core) is imported. The GPU numbers themselves need a GPU run (bench/RESULTS.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *extra):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_suite.py"), "--smoke", "--no-compile",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_smoke_runs_every_section_but_packing(tmp_path):
    result = _run(tmp_path, "--only", "projection", "steps", "memory", "checkpoints", "inference")
    assert result["smoke"] is True and result["banned_modules_loaded"] == []
    sections = result["sections"]
    assert sorted(sections) == ["checkpoints", "inference", "memory", "projection", "steps"]
    assert not [name for name, s in sections.items() if "error" in s]
    assert sections["projection"]["local"]["identical_to_cpu_band"] is True
    assert sections["projection"]["global"]["identical_to_cpu_band"] is True
    assert sections["steps"]["mask_local_ratio"] == sections["steps"]["mask_local_ms"] / sections["steps"]["dense_ms"]
    assert [r["stage"] for r in sections["memory"]["stages"]] == ["finetune", "mask_train", "mask_train"]
    assert sections["checkpoints"]["mask_train"]["checkpoints"] == 3
    # lean: a mask-training checkpoint (scores + 2 moments) is smaller than fine-tuning's (weights + 2 moments)
    assert sections["checkpoints"]["mask_train"]["file_bytes"] < sections["checkpoints"]["finetune"]["file_bytes"]
    kinds = {r["kind"] for r in sections["inference"]["rows"]}
    assert kinds == {"dense", "unstructured", "2:4", "structured"}


@pytest.mark.slow
def test_smoke_packing_runs_processes(tmp_path):
    result = _run(tmp_path, "--only", "packing")
    runs = result["sections"]["packing"]["runs"]
    assert [r["procs"] for r in runs] == [2] and runs[0]["tokens_per_s"] > 0
    assert len(runs[0]["per_process_tokens_per_s"]) == 2


def test_smoke_calibration_section_writes_a_usable_calibration(tmp_path):
    """The calibration section's file loads in the cost model and reproduces its own measured points."""
    from orchestrator.plan import cost

    cal_path = tmp_path / "cal.json"
    result = _run(tmp_path, "--only", "calibration", "--calibration-out", str(cal_path))
    section = result["sections"]["calibration"]
    assert "error" not in section and section["calibration_file"] == str(cal_path)
    cal = cost.load_calibration(str(cal_path))
    assert cal.kind == "cpu" and cal.size_of("bert-base-uncased") == "bert-base"
    for precision in ("bf16", "fp32"):
        for kind in ("dense", "mask"):
            points = section["points"][precision][kind]
            # the roofline's floor is its smallest point's time, and the curve never undershoots a point
            assert cal.curve("tiny-bert", precision, "eager", kind)["floor_s"] == pytest.approx(points[0][1])
            for tokens, seconds in points:
                assert cal.pass_seconds("tiny-bert", precision, "eager", kind, tokens) >= 0.85 * seconds
    # bert-base is derived from the measured tiny shape: x6 layers on the floor
    tiny, base = (cal.curve(b, "bf16", "eager", "dense")["floor_s"] for b in ("tiny-bert", "bert-base-uncased"))
    assert base == pytest.approx(tiny * 12 / 2)
