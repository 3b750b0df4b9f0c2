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

from .uri import is_uri

MARKER = "_COMPLETE.json"
CHECKPOINT = "_checkpoint"
LEASE = "_LEASE.json"
EVENTS = "_events"  # <root>/_events/<host>-<pid>.jsonl: one file per process, never rewritten by another
LEASE_TTL = float(os.environ.get("SRNET_LEASE_TTL", "120"))  # seconds a lease lives without renewal

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


def _lease_dead(lease: dict) -> bool:
    """Expired, or held by a process of this machine that no longer exists (a killed driver's trial): then
    it is taken over at once instead of after its expiry."""
    if lease.get("expires", 0) <= time.time():
        return True
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
    return False


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

    def mark_complete(self, stage: str, key: str, info: dict, required=()) -> None:
        """Record the node's files (and upload them, for a URI store), then write the marker last. A node that
        lacks one of the ``required`` files (its kind's declared outputs) is refused: nothing is committed."""
        local = self.node_dir(stage, key)
        missing = [name for name in required if not os.path.isfile(os.path.join(local, name))]
        if missing:
            raise MissingOutputError(f"node {stage}/{key} lacks its declared output(s) {', '.join(missing)}; "
                                     "not committed (its stage did not write them: a bug in the stage)")
        files = {name: {"bytes": os.path.getsize(os.path.join(local, name)), "sha256": _sha256(os.path.join(local, name))}
                 for name in _output_names(local)}
        marker = {"files": files, **info}
        if not self.remote:
            write_json(os.path.join(local, MARKER), marker)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(local, ATTEMPTS))  # committed: the attempt count is in the rows
            return
        self.push_outputs(stage, key)  # what push_outputs already sent, unchanged since, is not sent again
        with self.fs.open_output_stream(self._remote_path(stage, key, MARKER)) as f:
            f.write(json.dumps(marker, indent=1, sort_keys=True, default=str).encode())
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

    # -- leases: one driver runs a node at a time ------------------------------------------------------
    def _lease_path(self, stage: str, key: str) -> str:
        return self._remote_path(stage, key, LEASE) if self.remote else os.path.join(self.root, stage, key, LEASE)

    def read_lease(self, stage: str, key: str) -> dict | None:
        try:
            if self.remote:
                with self.fs.open_input_stream(self._lease_path(stage, key)) as f:
                    return json.loads(f.read())
            return read_json(self._lease_path(stage, key))
        except (FileNotFoundError, OSError, ValueError):
            return None  # none, or half-written by a dying holder: treated as free

    @staticmethod
    def _read_json_or_none(path: str) -> dict | None:
        try:
            return read_json(path)
        except (OSError, ValueError):
            return None

    def _write_lease(self, stage: str, key: str, lease: dict, exclusive: bool) -> bool:
        path = self._lease_path(stage, key)
        data = json.dumps(lease).encode()
        if self.remote:  # object stores have no exclusive create: write, then read back who won
            self.fs.create_dir(self._remote_path(stage, key), recursive=True)
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            time.sleep(0.2)
            return (self.read_lease(stage, key) or {}).get("token") == lease["token"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not exclusive:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def try_lease(self, stage: str, key: str, owner: str, ttl: float = LEASE_TTL) -> dict | None:
        """Take the node's lease if it is free, expired, or already ``owner``'s (a retried trial of the same
        driver); returns the lease, or None while another live holder has it."""
        lease = {"owner": owner, "token": uuid.uuid4().hex, "expires": time.time() + ttl, "ttl": ttl,
                 "host": socket.gethostname(), "pid": os.getpid()}
        current = self.read_lease(stage, key)
        if current is not None and current.get("owner") != owner and not _lease_dead(current):
            return None
        if current is not None:
            # expired or ours: move it aside atomically so exactly one contender gets to create the new one
            if not self.remote:
                path = self._lease_path(stage, key)
                aside = f"{path}.stale-{lease['token']}"
                try:
                    os.replace(path, aside)
                except FileNotFoundError:
                    return None  # another contender took it over first
                moved = self._read_json_or_none(aside)
                if (moved or {}).get("token") != current.get("token"):
                    try:  # we moved a contender's fresh lease, not the stale one: give it back
                        os.link(aside, path)
                    except FileExistsError:
                        pass
                    os.unlink(aside)
                    return None
                os.unlink(aside)
            if current.get("owner") != owner:
                self.log_event("lease_expired", stage, key, previous_owner=current.get("owner"))
        return lease if self._write_lease(stage, key, lease, exclusive=True) else None

    def renew_lease(self, stage: str, key: str, lease: dict) -> bool:
        """Extend our lease; False if it was lost (expired and taken by another driver)."""
        current = self.read_lease(stage, key)
        if current is None or current.get("token") != lease["token"]:
            return False
        lease["expires"] = time.time() + lease["ttl"]
        self._write_lease(stage, key, lease, exclusive=False)
        return True

    def release_lease(self, stage: str, key: str, lease: dict) -> None:
        current = self.read_lease(stage, key)
        if current is not None and current.get("token") == lease["token"]:
            try:
                if self.remote:
                    self.fs.delete_file(self._lease_path(stage, key))
                else:
                    os.unlink(self._lease_path(stage, key))
            except (FileNotFoundError, OSError):
                pass


class LeaseKeeper:
    """Hold a node's lease for a block: wait (polling) while another driver holds it, renew it in a
    background thread every ttl/3 while the block runs, release it at the end. ``acquired`` is False when
    the node was completed by the other holder meanwhile (then the caller skips it)."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, owner: str | None = None,
                 ttl: float = LEASE_TTL, poll: float = 1.0):
        self.store, self.stage, self.key = store, stage, key
        self.owner, self.ttl, self.poll = owner or default_owner(), ttl, poll
        self.lease: dict | None = None
        self.waited = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LeaseKeeper":
        start = time.time()
        logged = False
        while True:
            if self.store.is_complete(self.stage, self.key):
                break
            self.lease = self.store.try_lease(self.stage, self.key, self.owner, self.ttl)
            if self.lease is not None:
                break
            if not logged:
                holder = self.store.read_lease(self.stage, self.key) or {}
                self.store.log_event("lease_wait", self.stage, self.key, holder=holder.get("owner"), owner=self.owner)
                logged = True
            time.sleep(self.poll)
        self.waited = time.time() - start
        if self.lease is not None and self.store.is_complete(self.stage, self.key):
            self.store.release_lease(self.stage, self.key, self.lease)  # finished by the other holder just now
            self.lease = None
        if self.lease is not None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{self.key}")
            self._thread.start()
        return self

    @property
    def acquired(self) -> bool:
        return self.lease is not None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.store.renew_lease(self.stage, self.key, self.lease):
                    self.store.log_event("lease_lost", self.stage, self.key, owner=self.owner)
                    return
            except OSError:
                continue  # a transient store error: try again at the next tick

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease is not None:
            self.store.release_lease(self.stage, self.key, self.lease)


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
