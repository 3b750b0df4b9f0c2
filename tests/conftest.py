"""Test set-up: offline, Ray state in a temp dir, and small shared fixtures."""
from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("SRNET_TOKEN_CACHE", tempfile.mkdtemp(prefix="srnet-tokens-"))  # hermetic, shared by the session
os.environ.setdefault("SRNET_PREFLIGHT_CACHE", os.path.join(os.environ["SRNET_TOKEN_CACHE"], "preflight.json"))
_default_data = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
if os.path.isdir(_default_data):
    os.environ.setdefault("SRNET_DATA_DIR", _default_data)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny test models gain nothing from intra-op threads, and on a 2-core machine OpenMP contention makes
    them several times slower. (Ray trials run in their own processes with their own thread count.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_env(tmp_path_factory):
    """One embedded Ray for the whole session (starting Ray costs seconds and ~640 MiB).

    Ray writes to $HOME/.ray, RAY_TMPDIR and ~/ray_results: all of it goes to temp dirs here.
    """
    import ray

    home = tmp_path_factory.mktemp("home")
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR")}
    os.environ["HOME"], os.environ["RAY_TMPDIR"] = str(home), short
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=short)
    try:
        yield home
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def data_dir():
    path = os.environ.get("SRNET_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("real data not found: set SRNET_DATA_DIR (../shared/data beside the checkout)")
    return path
