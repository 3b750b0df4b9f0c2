"""Artifact store addressed by node key: ``<root>/<stage>/<key>/``, on a local directory or any pyarrow
filesystem URI (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///shared/nfs/path``).

A node is complete only when its ``_COMPLETE.json`` marker exists; the marker lists every file with its size
and sha256 and is written LAST, so a crashed or half-uploaded node is never taken as done, and ``verify``
detects a tampered one. Stages always write to a local directory: for a plain path that is the node directory
itself; for a URI it is a scratch directory whose files are uploaded on completion. Inputs from upstream
nodes are fetched into a local cache. Checkpoints of running nodes live in the store too, so a node resumes
on whichever machine picks it up.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from srnet_core.io import atomic_path, read_json, write_json

MARKER = "_COMPLETE.json"
CHECKPOINT = "_checkpoint"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_uri(root: str) -> bool:
    return "://" in root


class ArtifactStore:
    def __init__(self, root: str, cache_dir: str | None = None):
        self.remote = is_uri(root)
        if self.remote:
            import pyarrow.fs as pafs

            self.fs, self.base = pafs.FileSystem.from_uri(root)
            self.root = root.rstrip("/")
            self.cache = os.path.abspath(cache_dir or os.path.join(
                os.environ.get("SRNET_CACHE", os.path.join(tempfile.gettempdir(), "srnet-cache")),
                hashlib.sha256(self.root.encode()).hexdigest()[:12]))
        else:
            self.fs = None
            self.root = os.path.abspath(os.path.expanduser(root))
            self.base = self.root

    # -- paths ----------------------------------------------------------------------------------------------
    def _remote_path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def node_dir(self, stage: str, key: str) -> str:
        """The LOCAL directory a stage writes into (the node itself, or its scratch copy for a URI store)."""
        if self.remote:
            return os.path.join(self.cache, "nodes", stage, key)
        return os.path.join(self.root, stage, key)

    def node_uri(self, stage: str, key: str) -> str:
        return f"{self.root}/{stage}/{key}" if self.remote else self.node_dir(stage, key)

    # -- completion ---------------------------------------------------------------------------------------
    def _exists(self, *parts: str) -> bool:
        if not self.remote:
            return os.path.exists(os.path.join(self.root, *parts))
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._remote_path(*parts)).type != pafs.FileType.NotFound

    def marker(self, stage: str, key: str) -> dict:
        if not self.remote:
            return read_json(os.path.join(self.root, stage, key, MARKER))
        with self.fs.open_input_stream(self._remote_path(stage, key, MARKER)) as f:
            return json.loads(f.read())

    def is_complete(self, stage: str, key: str, verify: bool = False) -> bool:
        if not self._exists(stage, key, MARKER):
            return False
        if not verify:
            return True
        for name, meta in self.marker(stage, key)["files"].items():
            try:
                path = self.fetch(stage, key, name, refresh=True)
            except FileNotFoundError:
                return False
            if _sha256(path) != meta["sha256"]:
                return False
        return True

    def mark_complete(self, stage: str, key: str, info: dict) -> None:
        """Record the node's files (and upload them, for a URI store), then write the marker last."""
        local = self.node_dir(stage, key)
        files = {}
        for name in sorted(os.listdir(local)):
            path = os.path.join(local, name)
            if name in (MARKER, CHECKPOINT) or name.endswith(".partial") or not os.path.isfile(path):
                continue
            files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
        marker = {"files": files, **info}
        if not self.remote:
            write_json(os.path.join(local, MARKER), marker)
            return
        self.fs.create_dir(self._remote_path(stage, key), recursive=True)
        for name in files:
            self._upload(os.path.join(local, name), self._remote_path(stage, key, name))
        with self.fs.open_output_stream(self._remote_path(stage, key, MARKER)) as f:
            f.write(json.dumps(marker, indent=1, sort_keys=True, default=str).encode())
        self.delete_checkpoint(stage, key)

    # -- files --------------------------------------------------------------------------------------------
    def _upload(self, local: str, remote: str) -> None:
        import pyarrow.fs as pafs

        tmp = remote + ".tmp-upload"  # object stores have no rename guarantees, but the marker comes last
        pafs.copy_files(local, tmp, destination_filesystem=self.fs)
        self.fs.move(tmp, remote)

    def fetch(self, stage: str, key: str, filename: str, refresh: bool = False) -> str:
        """A local path of a node's file (downloaded into the cache for a URI store)."""
        if not self.remote:
            path = os.path.join(self.root, stage, key, filename)
            if not os.path.exists(path):
                raise FileNotFoundError(f"artifact {stage}/{key}/{filename} is missing from {self.root}")
            return path
        import pyarrow.fs as pafs

        local = os.path.join(self.cache, "fetched", stage, key, filename)
        if refresh or not os.path.exists(local):
            remote = self._remote_path(stage, key, filename)
            if self.fs.get_file_info(remote).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"artifact {self.root}/{stage}/{key}/{filename} does not exist")
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with atomic_path(local) as tmp:
                pafs.copy_files(remote, tmp, source_filesystem=self.fs)
        return local

    # -- checkpoints of running nodes -----------------------------------------------------------------------
    def checkpoint_path(self, stage: str, key: str, filename: str) -> str:
        return os.path.join(self.node_dir(stage, key), CHECKPOINT, filename)

    def push_checkpoint(self, stage: str, key: str, filename: str) -> None:
        """After a local checkpoint write: upload it (URI store) so another machine can resume the node."""
        if self.remote:
            self.fs.create_dir(self._remote_path(stage, key, CHECKPOINT), recursive=True)
            self._upload(self.checkpoint_path(stage, key, filename), self._remote_path(stage, key, CHECKPOINT, filename))

    def pull_checkpoint(self, stage: str, key: str, filename: str) -> str | None:
        local = self.checkpoint_path(stage, key, filename)
        if self.remote:
            try:
                fetched = self.fetch(stage, key, f"{CHECKPOINT}/{filename}", refresh=True)
            except FileNotFoundError:
                return None
            os.makedirs(os.path.dirname(local), exist_ok=True)
            shutil.copyfile(fetched, local)
        return local if os.path.exists(local) else None

    def delete_checkpoint(self, stage: str, key: str) -> None:
        shutil.rmtree(os.path.join(self.node_dir(stage, key), CHECKPOINT), ignore_errors=True)
        if self.remote:
            try:
                self.fs.delete_dir(self._remote_path(stage, key, CHECKPOINT))
            except (FileNotFoundError, OSError):
                pass

    # -- listing ----------------------------------------------------------------------------------------------
    def list_complete(self) -> set[tuple[str, str]]:
        """Every complete node as (stage, key), in one pass over the store (one directory listing per stage
        locally; one recursive listing for a URI store) instead of one request per node."""
        out: set[tuple[str, str]] = set()
        if not self.remote:
            if not os.path.isdir(self.root):
                return out
            for stage in os.scandir(self.root):
                if not stage.is_dir():
                    continue
                for node in os.scandir(stage.path):
                    if node.is_dir() and os.path.exists(os.path.join(node.path, MARKER)):
                        out.add((stage.name, node.name))
            return out
        import pyarrow.fs as pafs

        base = self.base.rstrip("/")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except (FileNotFoundError, OSError):
            return out
        for info in infos:
            parts = info.path[len(base):].strip("/").split("/")
            if len(parts) == 3 and parts[2] == MARKER:
                out.add((parts[0], parts[1]))
        return out
