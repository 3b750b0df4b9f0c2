"""What every run records about where and with what it ran."""
from __future__ import annotations

import functools
import os
import socket
import subprocess

import torch


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """git commit (with -dirty) of the checkout, else the installed package version."""
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


def provenance() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"code_version": code_version(), "hostname": socket.gethostname(), "gpu_type": gpu,
            "torch_version": torch.__version__}
