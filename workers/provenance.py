"""What every run records about where and with what it ran."""
from __future__ import annotations

import functools
import hashlib
import os
import socket
import subprocess

# The code that runs a node: what the driver and every worker must agree on (orchestrator is driver-only).
_NODE_PACKAGES = ("srnet_core", "workers")


def code_version() -> str:
    """$SRNET_CODE_VERSION (set by the driver when it ships its code to the workers, whose copy has no .git),
    else the git commit (with -dirty) of the checkout, else the installed package version."""
    return os.environ.get("SRNET_CODE_VERSION") or _checkout_version()


@functools.lru_cache(maxsize=1)
def _checkout_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return "srnet-sweep==" + version("srnet-sweep")
        except PackageNotFoundError:
            return "unknown"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (12 hex) of the node-running sources (every .py of srnet_core and workers, by path inside the
    package): equal on the driver and a worker exactly when they run the same code, whether it came from a
    git checkout, an image or Ray's py_modules (one directory per package, no .git)."""
    import importlib.util

    h = hashlib.sha256()
    for package in _NODE_PACKAGES:
        top = importlib.util.find_spec(package).submodule_search_locations[0]
        parent = os.path.dirname(top)
        files = sorted(os.path.relpath(os.path.join(d, f), parent).replace(os.sep, "/")
                       for d, dirs, fs in os.walk(top) if "__pycache__" not in d for f in fs if f.endswith(".py"))
        for rel in files:
            with open(os.path.join(parent, rel), "rb") as f:
                h.update(rel.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def ray_node() -> dict:
    """The Ray node this process runs on (empty outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return {"ray_node_id": ray.get_runtime_context().get_node_id(),
                    "node_ip": ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - provenance must never fail a finished node
        pass
    return {"ray_node_id": "", "node_ip": ""}


def host_provenance() -> dict:
    """Where and with what code this runs, without importing torch (a rehearsal's workers)."""
    return {"code_version": code_version(), "hostname": socket.gethostname(), **ray_node()}


def provenance() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"code_version": code_version(), "hostname": socket.gethostname(), "gpu_type": gpu,
            "torch_version": torch.__version__, **ray_node()}
