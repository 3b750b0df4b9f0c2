"""Artifacts are safetensors, JSON and Parquet only: no code path may unpickle (a pickle runs code on load)."""
from __future__ import annotations

import ast
import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGES = ["srnet_core", "workers", "orchestrator", "bench", "tests", "docker"]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
LOADERS = {"load", "loads", "Unpickler", "open"}  # shelve.open unpickles too


def _sources():
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def unpickling_calls(path: str) -> list[str]:
    """Calls in a file that can unpickle: <pickle-like module>.load(s)/Unpickler, from-imports of them,
    torch.load without weights_only=True, numpy load with allow_pickle=True, pandas read_pickle."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        where = f"{os.path.relpath(path, REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            if any(a.name in LOADERS or a.name == "*" for a in node.names):
                found.append(f"{where} from {node.module} import {[a.name for a in node.names]}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        kwargs = {k.arg: k.value for k in node.keywords}
        if owner in UNSAFE_MODULES and name in LOADERS:
            found.append(f"{where} {owner}.{name}")
        elif owner == "torch" and name == "load" and _const(kwargs.get("weights_only")) is not True:
            found.append(f"{where} torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load" and _const(kwargs.get("allow_pickle")) is not False \
                and "allow_pickle" in kwargs:
            found.append(f"{where} numpy load with allow_pickle")
        elif name == "read_pickle" or name == "from_pickle":
            found.append(f"{where} {name}")
    return found


def test_no_unpickling_anywhere():
    files = list(_sources())
    assert len(files) > 30  # the scan really covers the code
    found = [hit for path in files if os.path.basename(path) != "test_no_pickle.py" for hit in unpickling_calls(path)]
    assert found == [], "unpickling calls: " + "; ".join(found)


def test_the_scanner_catches_each_kind(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, torch, numpy as np, joblib, dill, cloudpickle, pandas as pd\n"
                   "from pickle import loads\n"
                   "pickle.load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                   "np.load(p, allow_pickle=True)\njoblib.load(p)\ndill.loads(b)\ncloudpickle.loads(b)\n"
                   "pd.read_pickle(p)\ntorch.load(p, weights_only=True)\nnp.load(p)\n")
    hits = unpickling_calls(str(bad))
    assert len(hits) == 10, hits  # every unsafe line, and not the two safe ones
