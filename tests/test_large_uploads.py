"""Uploads to an object store are multipart and never copied server-side (issue 24, item 5): S3's CopyObject
stops at 5 GiB, and a temp key + rename is a CopyObject. Checked on the local S3 server's request log."""
from __future__ import annotations

import json
import os
import urllib.request

import numpy as np

from workers.store import ArtifactStore


def _post(endpoint: str, path: str) -> None:
    urllib.request.urlopen(urllib.request.Request(endpoint + path, method="POST"), timeout=30).read()


def test_a_large_file_uploads_in_parts_with_no_server_side_copy(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    endpoint = s3_server["AWS_ENDPOINT_URL"]
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 24 * 2**20, dtype=np.uint8).tobytes())
    store = ArtifactStore("s3://sweeps/large", cache_dir=str(tmp_path / "cache"))
    _post(endpoint, "/moto-api/recorder/start-recording")
    store._upload(str(big), store._remote_path("finetune", "k", "train_state.safetensors"))
    _post(endpoint, "/moto-api/recorder/stop-recording")
    requests = [json.loads(line) for line in open(s3_server["MOTO_RECORDER_FILEPATH"]) if line.strip()]
    s3 = [r for r in requests if "/sweeps/" in r.get("url", "")]
    assert not [r for r in s3 if any(h.lower() == "x-amz-copy-source" for h in r.get("headers", {}))], \
        "a server-side copy was issued"
    parts = [r for r in s3 if r["method"] == "PUT" and "partNumber=" in r["url"]]
    assert len(parts) >= 2, [(r["method"], r["url"]) for r in s3]  # 24 MiB: more than one part
    assert not [r for r in s3 if ".tmp-upload" in r["url"]]  # written in place: no temp key
    fetched = store.fetch("finetune", "k", "train_state.safetensors")
    assert os.path.getsize(fetched) == big.stat().st_size and open(fetched, "rb").read() == big.read_bytes()
