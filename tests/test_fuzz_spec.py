"""Fuzzing the spec: every malformed spec exits 2 with one short line, no traceback, no hang; valid specs
next to them still pass. Most cases run in-process (``launch.main``); a few through a real subprocess."""
from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import subprocess
import sys
import time

import pytest
import yaml

from orchestrator import launch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VALID = {
    "name": "fz", "output_dir": "OUT", "max_length": 32,
    "grid": {"tasks": ["synthetic"], "backbones": ["tiny-bert"], "sparsities": [0.5], "seeds": [0]},
    "task_options": {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}},
    "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4},
    "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
}


def _set(spec, path, value):
    spec = copy.deepcopy(spec)
    node = spec
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


_DELETE = object()

# (field path, bad value, text the one-line error must contain)
FIELD_CASES = [
    # training numbers, per stage section and per task override
    ("finetune.lr", 0, "finetune.lr"), ("finetune.lr", -1e-3, "finetune.lr"), ("mask_train.lr", float("nan"), "mask_train.lr"),
    ("finetune.lr", float("inf"), "finetune.lr"), ("mask_train.lr", "fast", "mask_train.lr"),
    ("finetune.epochs", 0, "finetune.epochs"), ("mask_train.epochs", -2, "mask_train.epochs"),
    ("finetune.max_steps", 0, "finetune.max_steps"), ("finetune.batch_size", 0, "finetune.batch_size"),
    ("mask_train.batch_size", -16, "mask_train.batch_size"), ("finetune.batch_size", 1.5, "finetune.batch_size"),
    ("finetune.eval_every", 0, "finetune.eval_every"), ("mask_train.eval_batch_size", 0, "mask_train.eval_batch_size"),
    ("finetune.warmup_steps", -1, "finetune.warmup_steps"), ("mask_train.select_from", 1.5, "mask_train.select_from"),
    ("finetune.amp", "fp8", "finetune.amp"), ("finetune.grad_clip", -1, "finetune.grad_clip"),
    ("finetune.adam_eps", 0, "finetune.adam_eps"), ("retrain.weight_decay", -0.1, "retrain.weight_decay"),
    ("imp.seed", -4, "imp.seed"),
    ("task_overrides", {"synthetic": {"finetune": {"batch_size": 0}}}, "task_overrides.synthetic.finetune.batch_size"),
    ("task_overrides", {"synthetic": {"mask_train": {"lr": "x"}}}, "task_overrides.synthetic.mask_train.lr"),
    # resources (a negative GPU count used to hang the launch)
    ("resources.gpus_per_trial", -1, "resources.gpus_per_trial"), ("resources.gpus_per_trial", 0.3, "does not divide 1"),
    ("resources.gpus_per_trial", 1.5, "resources.gpus_per_trial"), ("resources.gpus_per_trial", 64, "GPUs per trial"),
    ("resources.cpus_per_trial", 0, "resources.cpus_per_trial"), ("resources.cpus_per_trial", -2, "resources.cpus_per_trial"),
    ("resources.cpus_per_trial", 100000, "CPUs per trial but this machine has"),
    ("resources.max_retries_infra", -1, "resources.max_retries_infra"), ("resources.max_concurrent_trials", 0, "max_concurrent_trials"),
    ("resources.stages", {"finetune": {"gpus": -1}}, "resources.stages.finetune.gpus"),
    ("resources.stages", {"mask_train": {"cpus": 0}}, "resources.stages.mask_train.cpus"),
    # task options, checked against the task's own option names
    ("task_options.synthetic.n_trian", 5, "unknown option 'n_trian'; valid options of 'synthetic'"),
    ("task_options.synthetic.n_train", 0, "task_options.synthetic.n_train"),
    ("task_options.synthetic.n_dev", "many", "task_options.synthetic.n_dev"),
    ("task_options.synthetic.spurious_agreement", 2.0, "spurious_agreement"),
    ("task_options.synthetic.ood_mode", "sideways", "ood_mode"),
    ("task_options.synthetic", [1, 2], "task_options.synthetic"),
    # stores and output locations
    ("artifact_store", "foo://bucket/x", "URI scheme 'foo' is not supported"),
    ("artifact_store", "gs:///prefix", "names no bucket"), ("artifact_store", "file://relative/path", "must be absolute"),
    ("artifact_store", "", "artifact_store"), ("output_dir", "", "output_dir"),
    ("output_dir", "/proc/srnet-fuzz/out", "output_dir"), ("output_dir", "FILE/sub", "is a file, not a directory"),
    ("artifact_store", "FILE/store", "artifact_store"),
    # grid and the rest
    ("grid.seeds", [-1], "grid.seeds"), ("grid.sparsities", [0.0], "grid.sparsities"), ("grid.sparsities", [1], "grid.sparsities"),
    ("grid.tasks", [], "grid.tasks"), ("grid.backbones", [" "], "grid.backbones"), ("grid.paradigms", ["z"], "grid.paradigms"),
    ("grid.losses", ["hinge"], "grid.losses"), ("grid.seeds", _DELETE, "missing required field 'grid.seeds'"),
    ("name", "../escape", "name"), ("max_length", 4, "max_length"), ("device", "tpu", "device"),
    ("gmp_options.frequency", 0, "frequency"), ("gmp_options.end", -1.0, "end"),
    ("paradigm_options.gradual.start", -1.0, "start"), ("paradigm_options.timing", {"fractions": [0.0]}, "fraction 0.0"),
    ("mask.reproject_every", "often", "mask.reproject_every"), ("imp_options.rate", 0, "imp_options.rate"),
    ("imp_options.level_steps", 0, "imp_options.level_steps"), ("imp_options.rewind_exclude", ["("], "imp_options.rewind_exclude"),
]

# Raw files: (name, bytes, text the error must contain)
RAW_CASES = [
    ("dup_top", b"name: a\nname: b\noutput_dir: o\n", "duplicate key 'name'"),
    ("dup_nested", b"name: a\noutput_dir: o\ngrid: {tasks: [synthetic], tasks: [mnli]}\n", "duplicate key 'tasks'"),
    ("latin1", "name: caf\u00e9\noutput_dir: o\n".encode("latin-1"), "not UTF-8"),
    ("nul", b"name: a\x00\noutput_dir: o\n", "NUL"),
    ("list_top", b"- 1\n- 2\n", "top level must be a mapping"),
    ("scalar_top", b"42\n", "top level must be a mapping"),
    ("empty", b"", "top level must be a mapping"),
    ("tabs", b"name: a\ngrid:\n\ttasks: [x]\n", "not valid YAML"),
    ("unclosed", b"name: a\ngrid: [unclosed\n", "not valid YAML"),
    ("deep", b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n", "fz_deep.yaml"),
    ("python_tag", b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
]


def _random_bytes_cases(n=6):
    rng = random.Random(1234)
    return [(f"random{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), None) for i in range(n)]


def _call_main(argv) -> tuple[int, str, float]:
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = launch.main(argv)
        except BaseException as err:  # noqa: BLE001 - an escaping exception IS the failure being tested
            pytest.fail(f"{argv}: raised {type(err).__name__}: {err}\n{out.getvalue()}")
    return rc, out.getvalue(), time.perf_counter() - started


def _check_rejected(rc, text, seconds, expect, label):
    lines = [line for line in text.splitlines() if line.strip()]
    assert rc == 2, f"{label}: exit {rc}, output: {text}"
    assert "Traceback" not in text, f"{label}: {text}"
    assert 1 <= len(lines) <= 3, f"{label}: {len(lines)} lines: {text}"
    assert seconds < 30, f"{label}: took {seconds:.1f} s"
    if expect:
        assert expect in text, f"{label}: expected {expect!r} in {text!r}"


def _prepare(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("not a directory")
    return str(tmp_path / "out"), str(afile)


def _materialize(spec, out, afile):
    text = yaml.safe_dump(spec, allow_unicode=True)
    return text.replace("OUT", out).replace("FILE", afile)


def test_malformed_specs_exit_2_in_one_line(tmp_path):
    out, afile = _prepare(tmp_path)
    tried = rejected = 0
    for i, (path, value, expect) in enumerate(FIELD_CASES):
        spec_file = tmp_path / f"field{i}.yaml"
        spec_file.write_text(_materialize(_set(VALID, path, value), out, afile))
        rc, text, seconds = _call_main([str(spec_file), "--dry-run"])
        tried += 1
        _check_rejected(rc, text, seconds, expect, f"{path}={value!r}")
        rejected += 1
    for name, raw, expect in RAW_CASES + _random_bytes_cases():
        spec_file = tmp_path / f"fz_{name}.yaml"
        spec_file.write_bytes(raw)
        rc, text, seconds = _call_main([str(spec_file), "--dry-run"])
        tried += 1
        _check_rejected(rc, text, seconds, expect, name)
        rejected += 1
    assert tried == rejected == len(FIELD_CASES) + len(RAW_CASES) + 6 >= 40
    assert not os.path.exists(out)  # nothing was created for a refused spec
    # the valid spec next to them still passes
    good = tmp_path / "good.yaml"
    good.write_text(_materialize(VALID, out, afile))
    rc, text, _ = _call_main([str(good), "--dry-run"])
    assert rc == 0, text
    print(f"malformed specs tried {tried}, rejected cleanly {rejected}")


LEAVES = [("finetune", "lr"), ("finetune", "batch_size"), ("mask_train", "eval_every"), ("resources", "cpus_per_trial"),
          ("task_options", "synthetic"), ("grid", "sparsities"), ("grid", "seeds"), ("grid", "tasks"), ("max_length", None),
          ("output_dir", None), ("name", None), ("mask_train", "epochs")]
GARBAGE = [-1, 0, -0.5, "x", None, [], {}, 1e309, True, "../..", [None], {"a": 1}]


def test_random_mutations_never_traceback(tmp_path):
    """Seeded random mutations of the valid spec: whatever they are, the answer is exit 0 (still valid) or a
    clean exit 2, never a traceback."""
    out, afile = _prepare(tmp_path)
    rng = random.Random(7)
    outcomes = {0: 0, 2: 0}
    for i in range(40):
        spec = copy.deepcopy(VALID)
        for _ in range(rng.randint(1, 2)):
            section, leaf = rng.choice(LEAVES)
            value = rng.choice(GARBAGE)
            if leaf is None:
                spec[section] = value
            else:
                if not isinstance(spec.get(section), dict):
                    spec[section] = {}
                spec[section][leaf] = value
        path = tmp_path / f"mut{i}.yaml"
        path.write_text(_materialize(spec, out, afile))
        rc, text, seconds = _call_main([str(path), "--dry-run"])
        assert rc in (0, 2), f"mutation {i} {spec}: exit {rc}: {text}"
        if rc == 2:
            _check_rejected(rc, text, seconds, None, f"mutation {i}")
        outcomes[rc] += 1
    assert outcomes[2] >= 30  # almost every garbage value is invalid somewhere
    print(f"random mutations: {outcomes[2]} rejected cleanly, {outcomes[0]} still valid, 0 tracebacks")


SUBPROCESS_CASES = [("resources.gpus_per_trial", -1), ("finetune.batch_size", 0),
                    ("task_options.synthetic.n_trian", 5), ("artifact_store", "foo://x/y")]


@pytest.mark.slow  # a fresh interpreter imports torch, pandas and pyarrow: ~5 s each on 2 busy cores
def test_malformed_specs_in_a_real_launch_subprocess(tmp_path):
    """Without --dry-run, in a fresh interpreter: refused before Ray starts, so nothing hangs. One at a time:
    in parallel the imports alone would compete for the CPUs."""
    out, afile = _prepare(tmp_path)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    paths = []
    for i, (path, value) in enumerate(SUBPROCESS_CASES):
        spec_file = tmp_path / f"sub{i}.yaml"
        spec_file.write_text(_materialize(_set(VALID, path, value), out, afile))
        paths.append(str(spec_file))
    non_utf8 = tmp_path / "sub_latin1.yaml"
    non_utf8.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    paths.append(str(non_utf8))
    for p in paths:
        started = time.perf_counter()
        proc = subprocess.run(["timeout", "30", sys.executable, "-m", "orchestrator.launch", p], cwd=str(tmp_path),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        _check_rejected(proc.returncode, proc.stdout, time.perf_counter() - started, None, p)
    assert not os.path.exists(out)
