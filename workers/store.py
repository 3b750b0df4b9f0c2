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

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid

from srnet_core.io import atomic_path, read_json, sha256_file, write_json

from .leases import (LEASE, LEASE_TTL, DriverGuard, FileLeases, HeldElsewhere, LeaseKeeper, LeaseLost,  # noqa: F401
                     PlainLeases, S3Leases, holder_identity, lease_free, probe_conditional_writes)
from .uri import is_uri

MARKER = "_COMPLETE.json"
CHECKPOINT = "_checkpoint"
EVENTS = "_events"  # <root>/_events/<host>-<pid>.jsonl: one file per process, never rewritten by another

log = logging.getLogger("srnet.store")


class CorruptArtifactError(FileNotFoundError):
    """A file behind a completion marker is missing or differs from its recorded size/sha256."""


_sha256 = sha256_file  # a module name of its own: tests count the hashing through it


# (path, mtime_ns, size) -> sha256: a file is hashed once per process, not at every read. Any rewrite of the
# file changes its mtime, so a cached digest never hides a later change.
_HASHES: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    digest = _HASHES.get(key)
    if digest is None:
        digest = _HASHES[key] = _sha256(path)
    return digest


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _is_output_name(name: str) -> bool:
    """Outputs, not bookkeeping: no marker, checkpoint folder, lease, invalidated marker or partial file."""
    return not (name in (MARKER, CHECKPOINT, ATTEMPTS) or name.startswith((LEASE, "_INVALID.", "."))
                or name.endswith((".partial", ".pulled", ".tmp-upload")))


def _output_names(local: str) -> list[str]:
    return sorted(n for n in os.listdir(local) if _is_output_name(n) and os.path.isfile(os.path.join(local, n)))


ATTEMPTS = "_ATTEMPTS.json"  # beside a node's files until it is committed: how many runs it has had
UPLOAD_CHUNK = 8 * 2**20  # bytes read per write into an upload stream (pyarrow sends parts of its own size)


class MissingOutputError(RuntimeError):
    """A node finished without writing a file its stage kind declares; it is not marked complete."""


class ArtifactStore:
    def __init__(self, root: str, cache_dir: str | None = None):
        self.remote = is_uri(root)
        self._lease_backend = None  # made on first use (an s3:// store's boto3 client: only where leases are used)
        if self.remote:
            import pyarrow.fs as pafs

            self.fs, self.base = pafs.FileSystem.from_uri(root)
            self._pushed: dict[str, tuple[int, int]] = {}  # local path -> (bytes, mtime) the store has
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
        """The marker exists and every file it lists is there with its recorded size (for a local store; one
        stat each). ``verify``: also compare sha256 digests. A node found broken is invalidated (its marker
        moved aside, the event logged), so it re-runs."""
        if not self._exists(stage, key, MARKER):
            return False
        problem = self.check(stage, key, sha256=verify)
        if problem:
            self.invalidate(stage, key, problem)
            return False
        return True

    def check(self, stage: str, key: str, sha256: bool = True) -> str | None:
        """None if the node's files match its marker, else what is wrong."""
        if self.remote and not sha256:
            return None  # no per-file round trips on an object store: files are verified when fetched
        try:
            files = self.marker(stage, key)["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"unreadable marker ({type(err).__name__})"
        for name, meta in files.items():
            if not self.remote and not sha256:
                path = os.path.join(self.root, stage, key, name)
                if not os.path.isfile(path):
                    return f"{name} is missing"
                if os.path.getsize(path) != meta["bytes"]:
                    return f"{name} has {os.path.getsize(path)} bytes, the marker recorded {meta['bytes']}"
                continue
            try:
                self._verified(stage, key, name, meta, refresh=True)
            except CorruptArtifactError as err:
                return str(err)
        return None

    def invalidate(self, stage: str, key: str, reason: str) -> None:
        """Move the marker aside (kept for forensics) so the node counts as incomplete and re-runs."""
        aside = f"_INVALID.{int(time.time())}.{uuid.uuid4().hex[:6]}.json"
        try:
            if self.remote:
                self.fs.move(self._remote_path(stage, key, MARKER), self._remote_path(stage, key, aside))
            else:
                os.replace(os.path.join(self.root, stage, key, MARKER), os.path.join(self.root, stage, key, aside))
        except (FileNotFoundError, OSError):
            pass  # someone else invalidated (or re-ran) it first
        self.log_event("invalidated", stage, key, reason=reason)

    def log_event(self, event: str, stage: str, key: str, **info) -> None:
        """An audit line in <root>/_events/<host>-<pid>.jsonl (local stores; each process appends to its own
        file) and in the log: node runs, resumes, lease waits, corrupt artifacts."""
        entry = {"time": time.time(), "event": event, "stage": stage, "key": key, "host": socket.gethostname(),
                 "pid": os.getpid(), **info}
        log.warning("%s %s/%s %s", event, stage, key, info) if event == "invalidated" else log.info(
            "%s %s/%s %s", event, stage, key, info)
        if self.remote:
            return
        folder = os.path.join(self.root, EVENTS)
        os.makedirs(folder, exist_ok=True)
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        path = os.path.join(folder, f"{socket.gethostname()}-{os.getpid()}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self) -> list[dict]:
        """Every process's events, oldest first."""
        folder = os.path.join(self.root, EVENTS)
        if self.remote or not os.path.isdir(folder):
            return []
        out = []
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                out += [json.loads(line) for line in f if line.strip()]
        return sorted(out, key=lambda e: e["time"])

    def mark_complete(self, stage: str, key: str, info: dict, required=(), lease: dict | None = None) -> None:
        """Record the node's files (and upload them, for a URI store), then write the marker last. A node that
        lacks one of the ``required`` files (its kind's declared outputs) is refused: nothing is committed.
        ``lease`` (the node runner's): fenced commit. The lease is renewed on the store (a conditional write)
        before the upload and again right before the marker, which is created only if absent (``O_EXCL``-like
        link / S3 ``If-None-Match: *``); a lost lease or a marker already there raises ``LeaseLost``."""
        local = self.node_dir(stage, key)
        missing = [name for name in required if not os.path.isfile(os.path.join(local, name))]
        if missing:
            raise MissingOutputError(f"node {stage}/{key} lacks its declared output(s) {', '.join(missing)}; "
                                     "not committed (its stage did not write them: a bug in the stage)")
        if lease is not None:
            self._fence(stage, key, lease)
        files = {name: {"bytes": os.path.getsize(os.path.join(local, name)), "sha256": _sha256(os.path.join(local, name))}
                 for name in _output_names(local)}
        marker = {"files": files, **info}
        if lease is not None:
            marker["lease"] = {"owner": lease["owner"], "token": lease["token"]}
        if self.remote:
            self.push_outputs(stage, key)  # what push_outputs already sent, unchanged since, is not sent again
        if lease is not None:
            self._fence(stage, key, lease)
            data = json.dumps(marker, indent=1, sort_keys=True, default=str).encode()
            if not self.leases.commit(stage, key, MARKER, data):
                self.log_event("stale_commit_refused", stage, key, owner=lease["owner"], reason="marker exists")
                raise LeaseLost(f"node {stage}/{key} was committed by another holder; not committed again")
        elif not self.remote:
            write_json(os.path.join(local, MARKER), marker)
        else:
            with self.fs.open_output_stream(self._remote_path(stage, key, MARKER)) as f:
                f.write(json.dumps(marker, indent=1, sort_keys=True, default=str).encode())
        if not self.remote:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(local, ATTEMPTS))  # committed: the attempt count is in the rows
            return
        self.delete_checkpoint(stage, key)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self._remote_path(stage, key, ATTEMPTS))
        shutil.rmtree(local, ignore_errors=True)  # committed to the store: the scratch copy only fills the disk
        for path in [p for p in self._pushed if p.startswith(local + os.sep)]:
            del self._pushed[path]

    def push_outputs(self, stage: str, key: str) -> list[str]:
        """URI store: upload the node's output files written (or changed) since the last push to their final
        place, so a node resumed on another machine finds them (its local scratch is this machine's). Before
        the marker they count for nothing: the marker, written last, is the commit. Returns the names sent."""
        if not self.remote:
            return []
        local, sent = self.node_dir(stage, key), []
        for name in _output_names(local):
            path = os.path.join(local, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # replaced or removed by the training thread since the listing
                continue
            if self._pushed.get(path) != (stat.st_size, stat.st_mtime_ns):
                if not sent:
                    self.fs.create_dir(self._remote_path(stage, key), recursive=True)
                self._upload(path, self._remote_path(stage, key, name))
                self._pushed[path] = (stat.st_size, stat.st_mtime_ns)
                sent.append(name)
        return sent

    def pull_outputs(self, stage: str, key: str) -> list[str]:
        """URI store, on resume: download the output files an earlier attempt pushed (possibly from another
        machine) that this machine's scratch lacks (one listing). Returns the names pulled."""
        if not self.remote:
            return []
        import pyarrow.fs as pafs

        local, pulled = self.node_dir(stage, key), []
        infos = self.fs.get_file_info(pafs.FileSelector(self._remote_path(stage, key), allow_not_found=True))
        for info in infos:
            name = info.base_name
            if info.type != pafs.FileType.File or not _is_output_name(name):
                continue
            path = os.path.join(local, name)
            if not os.path.exists(path):
                os.makedirs(local, exist_ok=True)
                with atomic_path(path) as tmp:
                    pafs.copy_files(info.path, tmp, source_filesystem=self.fs)
                stat = os.stat(path)
                self._pushed[path] = (stat.st_size, stat.st_mtime_ns)  # the store has exactly this file
                pulled.append(name)
        return pulled


    # -- files --------------------------------------------------------------------------------------------
    def _upload(self, local: str, remote: str) -> None:
        """One file to the store, never half-visible and never copied server-side: on an object store (S3,
        GCS) the object appears only when its (multipart) upload completes, so it is written in place (a
        temp key + move would be a CopyObject, which S3 refuses above 5 GiB: a BERT-large IMP state); on a
        filesystem a temp file is renamed over the target."""
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = remote + ".tmp-upload"
            pafs.copy_files(local, tmp, destination_filesystem=self.fs)
            self.fs.move(tmp, remote)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(remote) as dst:
            shutil.copyfileobj(src, dst, UPLOAD_CHUNK)

    def fetch_verified(self, stage: str, key: str, filename: str) -> str:
        """A local path of a COMPLETE node's file whose sha256 matches the marker (hashed once per process per
        (path, mtime, size)). A missing or different file invalidates the node (it re-runs) and raises
        CorruptArtifactError: nothing downstream consumes a bad file."""
        try:
            meta = self.marker(stage, key)["files"][filename]
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:  # another OSError: a network blip,
            reason = f"no marker entry for {filename} ({type(err).__name__})"  # raised as is (retried)
            raise CorruptArtifactError(f"artifact {stage}/{key}/{filename}: {reason}; the node will re-run") from None
        try:
            return self._verified(stage, key, filename, meta)
        except CorruptArtifactError as err:
            self.invalidate(stage, key, str(err))
            raise CorruptArtifactError(f"{err}; node {stage}/{key} invalidated and will re-run") from None

    def _verified(self, stage: str, key: str, filename: str, meta: dict, refresh: bool = False) -> str:
        try:
            path = self.fetch(stage, key, filename, refresh=refresh)
        except FileNotFoundError:
            raise CorruptArtifactError(f"artifact {stage}/{key}/{filename} is missing") from None
        if os.path.getsize(path) != meta["bytes"] or cached_sha256(path) != meta["sha256"]:
            if self.remote:  # a bad download must not stay in the cache
                os.unlink(path)
                if not refresh:  # only the local cached copy may be bad: download once more first
                    return self._verified(stage, key, filename, meta, refresh=True)
            raise CorruptArtifactError(f"artifact {stage}/{key}/{filename} does not match its recorded sha256")
        return path

    def fetch(self, stage: str, key: str, filename: str, refresh: bool = False) -> str:
        """A local path of a node's file (downloaded into the cache for a URI store); unverified, see
        fetch_verified."""
        if not self.remote:
            path = os.path.join(self.root, stage, key, filename)
            if not os.path.exists(path):
                raise FileNotFoundError(f"artifact {stage}/{key}/{filename} is missing from {self.root}")
            return path
        import pyarrow.fs as pafs

        local = os.path.join(self.cache, "fetched", stage, key, filename)
        if not refresh and os.path.exists(local):
            # its last use, for trim_cache's least-recently-used order: the access time (the mtime keys the
            # sha256 memo, cached_sha256, so it stays)
            os.utime(local, (time.time(), os.stat(local).st_mtime))
        if refresh or not os.path.exists(local):
            remote = self._remote_path(stage, key, filename)
            if self.fs.get_file_info(remote).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"artifact {self.root}/{stage}/{key}/{filename} does not exist")
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with atomic_path(local) as tmp:
                pafs.copy_files(remote, tmp, source_filesystem=self.fs)
        return local

    def trim_cache(self, limit_gb: float | None = None) -> list[str]:
        """Bound the downloaded inputs (URI store): least recently used files out until the cache holds at most
        ``limit_gb`` ($SRNET_CACHE_GB, default 50). Called before a node fetches its inputs, so nothing a
        running stage reads is removed under it. Returns the paths removed."""
        if not self.remote:
            return []
        limit = float(os.environ.get("SRNET_CACHE_GB", "50")) if limit_gb is None else limit_gb
        folder = os.path.join(self.cache, "fetched")
        files = []
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    stat = os.stat(path)
                    files.append((max(stat.st_atime, stat.st_mtime), stat.st_size, path))
        total, removed = sum(f[1] for f in files), []
        recent = time.time() - float(os.environ.get("SRNET_CACHE_KEEP_S", "900"))
        for used, size, path in sorted(files):  # oldest use first (fetch touches a file it serves)
            if total <= limit * 2**30 or used > recent:  # used in the last 15 min: a trial may be loading it
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                total -= size
                removed.append(path)
        return removed

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

    def count_attempt(self, stage: str, key: str) -> int:
        """This run's attempt number for a node (1 for its first): a counter beside the node's files, kept in
        the store so a retry on another machine counts on; removed when the node is committed."""
        local = os.path.join(self.node_dir(stage, key), ATTEMPTS)
        os.makedirs(os.path.dirname(local), exist_ok=True)  # a first run on this machine has no scratch yet
        if self.remote:
            try:
                shutil.copyfile(self.fetch(stage, key, ATTEMPTS, refresh=True), local + ".pulled")
                os.replace(local + ".pulled", local)
            except FileNotFoundError:
                pass
        count = 1 + (int(read_json(local).get("attempts", 0)) if os.path.exists(local) else 0)
        write_json(local, {"attempts": count})
        if self.remote:
            self.fs.create_dir(self._remote_path(stage, key), recursive=True)
            self._upload(local, self._remote_path(stage, key, ATTEMPTS))
        return count

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

    def changed_since_commit(self) -> dict[tuple[str, str], list[str]]:
        """Complete nodes with an output file modified after the node's marker: {(stage, key): [file names]}.

        The marker is written last, after every output is uploaded (or written, locally), so no output of an
        untouched node is newer than its marker; one that is was rewritten after the commit (corrupted, truncated
        or replaced). Read from metadata only: one recursive listing for a URI store (each object's size and
        modification time come with it; no object is downloaded, no marker read), a directory scan per node
        locally. Object stores give whole seconds (S3's LastModified): a rewrite in the same second as the commit
        is not seen here (the consumer still verifies the sha256 of what it fetches)."""
        seen: dict[tuple[str, str], dict[str, int]] = {}  # (stage, key) -> {file name: mtime_ns}
        if not self.remote:
            if not os.path.isdir(self.root):
                return {}
            for stage in os.scandir(self.root):
                if not stage.is_dir() or stage.name.startswith(("_", ".")):
                    continue
                for node in os.scandir(stage.path):
                    if not node.is_dir() or not os.path.exists(os.path.join(node.path, MARKER)):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        seen[(stage.name, node.name)] = {
                            f.name: f.stat().st_mtime_ns for f in os.scandir(node.path)
                            if f.is_file() and (f.name == MARKER or _is_output_name(f.name))}
        else:
            import pyarrow.fs as pafs

            base = self.base.rstrip("/")
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            except (FileNotFoundError, OSError):
                return {}
            for info in infos:
                parts = info.path[len(base):].strip("/").split("/")
                if len(parts) == 3 and info.type == pafs.FileType.File and info.mtime_ns is not None \
                        and (parts[2] == MARKER or _is_output_name(parts[2])):
                    seen.setdefault((parts[0], parts[1]), {})[parts[2]] = info.mtime_ns
        out = {}
        for node, files in seen.items():
            committed = files.pop(MARKER, None)
            if committed is None:
                continue  # not complete
            newer = sorted(name for name, mtime in files.items() if mtime > committed)
            if newer:
                out[node] = newer
        return out

    # -- leases: one holder runs a node at a time (workers/leases.py) ---------------------------------------
    @property
    def leases(self):
        """This store's lease backend: ``FileLeases`` (a directory or file:// URI), ``S3Leases`` (s3://, boto3),
        else ``PlainLeases`` (no conditional writes: one driver at a time, ``DriverGuard``)."""
        if self._lease_backend is None:
            self._lease_backend = self._make_lease_backend()[0]
        return self._lease_backend

    def _make_lease_backend(self):
        if not self.remote:
            return FileLeases(self.root), None
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            return FileLeases(self.base), None
        if self.fs.type_name == "s3":
            try:
                return S3Leases(self.root, self.base), None
            except ImportError:
                return PlainLeases(self.fs, self.base), "boto3 is not installed (pip install 'srnet-sweep[s3]')"
        return PlainLeases(self.fs, self.base), f"no conditional-write client for {self.fs.type_name}:// stores"

    def conditional_writes(self) -> str | None:
        """None if this store's leases are mutual exclusion between drivers (checked on the store itself for
        S3: some S3-compatible servers ignore If-None-Match); else why not."""
        backend, why = self._make_lease_backend()
        self._lease_backend = backend
        return why or probe_conditional_writes(backend)

    def driver_guard(self, owner: str) -> DriverGuard:
        import pyarrow.fs as pafs

        fs, base = (self.fs, self.base) if self.remote else (pafs.LocalFileSystem(), self.root)
        return DriverGuard(fs, base, self.root, owner)

    def read_lease(self, stage: str, key: str) -> dict | None:
        """The node's lease (``_version``: its ETag / generation, ``_age``: seconds since it was last written,
        on the store's clock), or None."""
        state = self.leases.read(stage, key)
        if state is None:
            return None
        return {**state.body, "_version": state.version, "_age": state.age}

    def try_lease(self, stage: str, key: str, owner: str, ttl: float = LEASE_TTL) -> dict | None:
        """Take the node's lease if it is free (none, released, expired on the store's clock, its holder's
        process provably dead) or already ``owner``'s (a retried trial of the same driver); one conditional
        write, so of two contenders exactly one wins. Returns the lease, or None while another holds it."""
        lease = {"owner": owner, "token": uuid.uuid4().hex, "seq": 0, "ttl": ttl, **holder_identity()}
        for _ in range(3):
            current = self.leases.read(stage, key)
            if current is None:
                version = self.leases.create(stage, key, lease)
            else:
                why = lease_free(current, owner)
                if why is None:
                    return None
                version = self.leases.replace(stage, key, lease, current.version)
                if version is not None and why in ("expired", "holder dead"):
                    self.log_event("lease_expired", stage, key, previous_owner=current.body.get("owner"), reason=why,
                                   age=round(current.age, 1))
            if version is not None:
                return {**lease, "_version": version, "_lock": threading.Lock()}
        return None  # lost each race: another contender holds it now

    def renew_lease(self, stage: str, key: str, lease: dict) -> bool:
        """Extend our lease (a conditional write on its current version); False if it is no longer ours."""
        with lease["_lock"]:
            bumped = {**lease, "seq": lease["seq"] + 1}
            version = self.leases.renew(stage, key, bumped, lease["_version"])
            if version is None:
                return False
            lease["seq"], lease["_version"] = bumped["seq"], version
            return True

    def release_lease(self, stage: str, key: str, lease: dict) -> None:
        """Mark our lease released (a conditional write: a successor's lease is never touched)."""
        with lease["_lock"]:
            released = {**lease, "seq": lease["seq"] + 1, "released": True}
            if self.leases.replace(stage, key, released, lease["_version"]) is not None:
                lease["seq"] = released["seq"]

    def _fence(self, stage: str, key: str, lease: dict) -> None:
        """Commit only under a lease we still hold: renewed (so checked on the store) right now."""
        if not self.renew_lease(stage, key, lease):
            self.log_event("stale_commit_refused", stage, key, owner=lease.get("owner"))
            raise LeaseLost(f"node {stage}/{key}: the lease of {lease.get('owner')} was taken over; not committed")


def check_store(node: dict) -> None:
    """Refuse a node when this worker does not see the driver's artifact store: ``<root>/_store.json`` (written
    by the driver, orchestrator/cluster.py) must hold the id in ``node["store_id"]``. Catches a node-local
    directory on a node that joined after the launch-time probe (autoscaling)."""
    expected = node.get("store_id")
    if not expected:
        return
    import pyarrow.fs as pafs

    root = node["artifact_root"]
    fs, base = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
    try:
        with fs.open_input_stream(base.rstrip("/") + "/_store.json") as f:
            seen = json.loads(f.read()).get("id")
    except FileNotFoundError:
        seen = None
    if seen != expected:
        import socket

        raise RuntimeError(
            f"node {node['key']} refused on {socket.gethostname()}: the artifact store '{root}' is not shared with "
            f"this node ({'no' if seen is None else 'another'} store identity file there); set artifact_store (or "
            "output_dir) to a filesystem every node mounts at the same path, or to an s3:// or gs:// URI")
