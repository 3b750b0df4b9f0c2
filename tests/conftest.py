"""Test set-up: offline, Ray state in a temp dir, and small shared fixtures."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def s3_server(tmp_path):
    """moto's standalone S3 server on 127.0.0.1; endpoint and dummy credentials as environment variables,
    which pyarrow's S3 filesystem reads (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    import pyarrow.fs as pafs

    port = _free_port()
    recording = str(tmp_path / "moto_recording.jsonl")  # every request, once a test starts the recorder
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": recording})
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True).create_dir("sweeps")
        yield {**env, "MOTO_RECORDER_FILEPATH": recording}
    finally:
        _stop(proc)
