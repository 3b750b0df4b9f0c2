"""Store locations: a local directory or a pyarrow URI. Torch-free: the cluster probe imports it on every node."""
from __future__ import annotations


def is_uri(location: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///nfs/...``: anything with a scheme; else a local directory."""
    return "://" in location
