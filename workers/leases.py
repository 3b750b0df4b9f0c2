"""Node leases: one holder runs a node at a time, also across drivers that share one artifact store.

A lease is only as good as the store's atomic primitive, so each kind of store has its own backend, and every
change of a lease is a compare-and-swap on the store, never "write, then read back who won":

* ``FileLeases`` (a directory, or a ``file://`` URI: a local or shared filesystem such as NFS). A lease is a
  sequence of generation files ``_LEASE.json.<n>`` in the node's directory; the highest ``n`` is the lease.
  A file is made complete in a temp file (written and fsynced) and published with ``os.link``, which, like
  ``O_EXCL``, fails if the name exists (the NFS-safe form of an exclusive create). Taking over generation
  ``n`` means creating ``n + 1``: exactly one contender succeeds. No file is ever moved or rewritten by anyone
  but its creator, so there is no put-back race; generations below ``n - 1`` are removed by the holder of
  ``n + 1`` (a late creator of a removed generation sees a higher one and steps back). Renewal touches the
  holder's own file (``os.utime``: the mtime is set by the file server).
* ``S3Leases`` (``s3://`` through boto3): one object ``_LEASE.json``, created with ``If-None-Match: *``;
  renewed, taken over and released with ``If-Match: <ETag>``. Release is a conditional overwrite with
  ``released: true``, not a conditional DELETE: a server that ignored If-Match on DELETE would remove a
  successor's lease without an error, while one that ignores it on PUT fails the launch probe
  (``probe_conditional_writes``).

Expiry is judged on the store's clock, never the writer's: the lease's age is (store "now") - (its last
write, as the store recorded it): S3 ``LastModified`` against the ``Date`` header of the same GET response;
a file's mtime against the mtime of a probe file touched just before (``<root>/_clock/``). A driver whose
clock is minutes off judges every lease exactly as the others do. ``ttl`` is the holder's, from the lease.

The "holder is dead" shortcut (a relaunch on the same machine takes a killed driver's leases at once instead
of after ``ttl``) is keyed on the kernel's boot id, the holder's pid namespace, its pid and the start time
of that process (``/proc``): containers that share a hostname but not a kernel have different boot ids, and
containers on one kernel have different pid namespaces, so a pid is only ever looked up where it means the
same process; a pid reused by another process has another start time. Without ``/proc``: no shortcut.

Stores with no conditional write (``gs://``, ``hdfs://``, ... through pyarrow) get ``PlainLeases`` (write,
read back: enough for retried trials of one driver) and the launch lets only one driver at a time use them
(``DriverGuard``).
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import NamedTuple

LEASE = "_LEASE.json"
LEASE_TTL = float(os.environ.get("SRNET_LEASE_TTL", "120"))  # seconds a lease lives without renewal
CLOCK = "_clock"  # <root>/_clock/<host>-<pid>: touched to read the filesystem's "now"
DRIVER = "_DRIVER.json"  # DriverGuard's heartbeat file, on stores without conditional writes
DRIVER_TTL = float(os.environ.get("SRNET_DRIVER_TTL", "120"))

log = logging.getLogger("srnet.store")


class HeldElsewhere(RuntimeError):
    """The node's lease is held by another live holder and did not come free within the wait bound: the trial
    ends without running it, and the driver hands the node out again later (``retry_after`` seconds)."""

    def __init__(self, message: str, holder: str | None = None, retry_after: float = LEASE_TTL):
        super().__init__(message)
        self.holder, self.retry_after = holder, retry_after


class LeaseLost(HeldElsewhere):
    """This holder's lease was taken over (or could not be renewed for a whole ttl): the node stops at its next
    report or checkpoint and nothing is committed."""


HELD_KEY = "srnet_held"  # a trial's last result: another holder has the node's lease (not run, not failed)
RETRY_KEY = "srnet_retry_after"  # ... and the seconds after which the driver hands the node out again


def held_result(err: HeldElsewhere) -> dict:
    """The last result of a trial that ended with ``HeldElsewhere``: the driver's scheduler puts the node back,
    due again after ``RETRY_KEY`` seconds (``orchestrator.scheduler.DagScheduler.defer``)."""
    return {HELD_KEY: " ".join(str(err).split())[:500], RETRY_KEY: float(err.retry_after)}


class LeaseState(NamedTuple):
    body: dict  # the lease's JSON
    version: str  # S3 ETag / file generation
    age: float  # seconds since its last write, on the store's clock


# -- who holds it ---------------------------------------------------------------------------------------------
def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime (clock ticks since boot)
    except (OSError, IndexError, ValueError):
        return None


def _machine() -> tuple[str, str] | None:
    """(kernel boot id, this process's pid namespace), or None without /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip(), os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def holder_identity() -> dict:
    ident = {"host": socket.gethostname(), "pid": os.getpid()}
    machine, start = _machine(), _start_ticks(os.getpid())
    if machine and start is not None:
        ident["process"] = {"boot_id": machine[0], "pid_ns": machine[1], "pid": os.getpid(), "start": start}
    return ident


def holder_dead(body: dict) -> bool:
    """True only when the holder's process provably no longer exists: same kernel boot, same pid namespace,
    and its pid is gone or belongs to a process started at another time."""
    proc = body.get("process")
    if not isinstance(proc, dict) or _machine() != (proc.get("boot_id"), proc.get("pid_ns")):
        return False  # another machine or container (or no /proc): only expiry frees it
    try:
        return _start_ticks(int(proc["pid"])) != int(proc["start"])
    except (KeyError, TypeError, ValueError):
        return False


def lease_free(state: LeaseState, owner: str) -> str | None:
    """Why ``state`` may be taken by ``owner`` ("released", "ours", "expired", "holder dead"), or None."""
    body = state.body
    if body.get("released"):
        return "released"
    if body.get("owner") == owner:
        return "ours"  # a retried trial of the same driver: its old process, if alive, is fenced
    try:
        ttl = float(body["ttl"])
    except (KeyError, TypeError, ValueError):
        return "expired"  # unreadable: treated as free
    if state.age > ttl:
        return "expired"
    if holder_dead(body):
        return "holder dead"
    return None


def _public(lease: dict) -> dict:
    return {k: v for k, v in lease.items() if not k.startswith("_")}


# -- backends -------------------------------------------------------------------------------------------------
class FileLeases:
    """Leases (and exclusive marker commits) on a local or shared filesystem; ``root`` is the store's path."""

    conditional = True

    def __init__(self, root: str):
        self.root = root

    def _dir(self, stage: str, key: str) -> str:
        return os.path.join(self.root, stage, key)

    def _gens(self, folder: str) -> list[int]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        prefix = LEASE + "."
        return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())

    def _path(self, folder: str, gen: int) -> str:
        return os.path.join(folder, f"{LEASE}.{gen:09d}")

    def now(self) -> float:
        """The filesystem's clock: the mtime of a probe file touched now (set by the file server)."""
        folder = os.path.join(self.root, CLOCK)
        path = os.path.join(folder, f"{socket.gethostname()}-{os.getpid()}")
        try:
            os.utime(path, None)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            with open(path, "a"):
                pass
            os.utime(path, None)
        return os.stat(path).st_mtime

    def read(self, stage: str, key: str) -> LeaseState | None:
        folder = self._dir(stage, key)
        for _ in range(5):
            gens = self._gens(folder)
            if not gens:
                return None
            path = self._path(folder, gens[-1])
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:  # a losing creator removed its file: look again
                continue
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            return LeaseState(body, str(gens[-1]), self.now() - mtime)
        return None

    def _link_new(self, path: str, data: bytes) -> bool:
        """Publish ``data`` at ``path`` only if nothing is there: complete and fsynced before it is visible."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lease.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, path)
            except FileExistsError:
                # NFS: a retransmitted LINK can report EEXIST for our own link; two names on tmp mean it landed
                return os.stat(tmp).st_nlink == 2
            _fsync_dir(folder)
            return True
        finally:
            os.unlink(tmp)

    def _create_gen(self, folder: str, gen: int, lease: dict) -> str | None:
        path = self._path(folder, gen)
        if not self._link_new(path, json.dumps(_public(lease)).encode()):
            return None
        gens = self._gens(folder)
        if gens and gens[-1] > gen:  # we re-created a generation already superseded (and removed): step back
            _unlink(path)
            return None
        for old in gens:
            if old < gen - 1:
                _unlink(self._path(folder, old))
        return str(gen)

    def create(self, stage: str, key: str, lease: dict) -> str | None:
        return self._create_gen(self._dir(stage, key), 1, lease)

    def replace(self, stage: str, key: str, lease: dict, version: str) -> str | None:
        return self._create_gen(self._dir(stage, key), int(version) + 1, lease)

    def renew(self, stage: str, key: str, lease: dict, version: str) -> str | None:
        """Touch our generation file, if it is still the lease and still ours."""
        folder = self._dir(stage, key)
        gens = self._gens(folder)
        if not gens or str(gens[-1]) != version:
            return None
        path = self._path(folder, gens[-1])
        try:
            with open(path, "rb") as f:
                if json.loads(f.read()).get("token") != lease["token"]:
                    return None  # removed and re-created by someone else under the same number
            os.utime(path, None)
        except (FileNotFoundError, ValueError):
            return None
        return version

    def commit(self, stage: str, key: str, name: str, data: bytes) -> bool:
        """Write ``name`` in the node's directory only if it does not exist (the completion marker)."""
        return self._link_new(os.path.join(self._dir(stage, key), name), data)

    def remove(self, stage: str, key: str) -> None:
        """Tests: the lease vanishes (an operator, a lifecycle rule)."""
        folder = self._dir(stage, key)
        for gen in self._gens(folder):
            _unlink(self._path(folder, gen))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(root: str):
    """A boto3 S3 client for ``root`` (``s3://bucket/prefix[?endpoint_override=host:port&scheme=http&region=r]``);
    endpoint and credentials otherwise from the environment pyarrow reads too (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION / AWS_DEFAULT_REGION, ~/.aws). boto3 is optional:
    only s3:// stores need it (``pip install 'srnet-sweep[s3]'``)."""
    from urllib.parse import parse_qs, urlsplit

    import boto3  # noqa: F401 - ImportError: the caller says what to install
    from botocore.config import Config

    query = {k: v[-1] for k, v in parse_qs(urlsplit(root).query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    cache_key = (endpoint, region, os.getpid())
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(cache_key)
        if client is None:
            client = _CLIENTS[cache_key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region,
                config=Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=30))
        return client


def _http_status(err) -> tuple[int, str]:
    response = getattr(err, "response", None) or {}
    return (int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
            str(response.get("Error", {}).get("Code", "")))


def _io_error(err) -> OSError:
    """A boto3 failure as an OSError: the node runner retries I/O errors (``workers.trainable.retryable``)."""
    return OSError(f"S3 lease request failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")


class S3Leases:
    """Leases (and exclusive marker commits) on S3 through boto3's conditional PUTs."""

    conditional = True

    def __init__(self, root: str, base: str):
        self.bucket, _, self.prefix = base.strip("/").partition("/")
        self.client = s3_client(root)

    def _key(self, stage: str, key: str, name: str = LEASE) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), stage, key, name) if p)

    def _get(self, key: str) -> tuple[bytes, str, float] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _http_status(err)[0] == 404 or _http_status(err)[1] in ("NoSuchKey", "404"):
                return None
            raise _io_error(err) from err
        except BotoCoreError as err:
            raise _io_error(err) from err
        body = r["Body"].read()
        date = email.utils.parsedate_to_datetime(r["ResponseMetadata"]["HTTPHeaders"]["date"])
        return body, r["ETag"], (date - r["LastModified"]).total_seconds()  # both the store's clock

    def read(self, stage: str, key: str) -> LeaseState | None:
        got = self._get(self._key(stage, key))
        if got is None:
            return None
        try:
            body = json.loads(got[0])
        except ValueError:
            body = {}
        return LeaseState(body, got[1], got[2])

    def _put(self, key: str, data: bytes, mine, **condition) -> str | None:
        """One conditional PUT; None when the precondition failed. A 412/409 is read back: a request retried by
        botocore after a lost response may find its own first attempt there (``mine(current)``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        for _ in range(3):
            try:
                return self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                              ContentType="application/json", **condition)["ETag"]
            except ClientError as err:
                status, code = _http_status(err)
                gone = status == 404 and "IfMatch" in condition  # If-Match on a key that no longer exists
                if status not in (409, 412) and not gone and code not in ("PreconditionFailed",
                                                                           "ConditionalRequestConflict"):
                    raise _io_error(err) from err
            except BotoCoreError as err:
                raise _io_error(err) from err
            current = self._get(key)
            if current is not None and mine(current[0]):
                return current[1]
            expected = condition.get("IfMatch")
            unchanged = (current is None) if expected is None else (current is not None and current[1] == expected)
            if not (status == 409 and unchanged):  # 409: a concurrent write conflicted and neither landed: again
                return None
        return None

    def _lease_put(self, stage: str, key: str, lease: dict, **condition) -> str | None:
        def mine(raw: bytes) -> bool:
            try:
                got = json.loads(raw)
            except ValueError:
                return False
            return got.get("token") == lease["token"] and got.get("seq") == lease.get("seq")

        return self._put(self._key(stage, key), json.dumps(_public(lease)).encode(), mine, **condition)

    def create(self, stage: str, key: str, lease: dict) -> str | None:
        return self._lease_put(stage, key, lease, IfNoneMatch="*")

    def replace(self, stage: str, key: str, lease: dict, version: str) -> str | None:
        return self._lease_put(stage, key, lease, IfMatch=version)

    def renew(self, stage: str, key: str, lease: dict, version: str) -> str | None:
        return self._lease_put(stage, key, lease, IfMatch=version)  # the caller bumped seq: a new ETag

    def commit(self, stage: str, key: str, name: str, data: bytes) -> bool:
        return self._put(self._key(stage, key, name), data, lambda raw: raw == data, IfNoneMatch="*") is not None

    def remove(self, stage: str, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(stage, key))


def probe_conditional_writes(backend) -> str | None:
    """None if the store refuses a second ``If-None-Match: *`` create of one key (S3); else what it did. Some
    S3-compatible servers accept the header and ignore it: their leases would exclude nobody."""
    if not isinstance(backend, S3Leases):
        return None if getattr(backend, "conditional", False) else "no conditional writes"
    name = f"_probe-{uuid.uuid4().hex[:12]}"
    key = backend._key(CLOCK, name, "probe")
    try:
        first = backend._put(key, b"1", lambda raw: raw == b"1", IfNoneMatch="*")
        second = backend._put(key, b"2", lambda raw: raw == b"2", IfNoneMatch="*")
    except Exception as err:  # noqa: BLE001 - e.g. a server that rejects the header outright
        return f"a conditional PUT failed ({type(err).__name__}: {' '.join(str(err).split())[:160]})"
    finally:
        try:
            backend.client.delete_object(Bucket=backend.bucket, Key=key)
        except Exception:  # noqa: BLE001
            pass
    if first is None or second is not None:
        return "the server ignores If-None-Match on PUT"
    return None


class PlainLeases:
    """A pyarrow filesystem with no conditional write (gs://, hdfs://, ...): write, then read back. Not mutual
    exclusion between drivers (the launch allows one driver at a time on such a store: ``DriverGuard``), only
    between the trials of one driver. Expiry still on the store's clock (its mtime), where it reports one."""

    conditional = False

    def __init__(self, fs, base: str):
        self.fs, self.base = fs, base.rstrip("/")

    def _path(self, stage: str, key: str, name: str = LEASE) -> str:
        return "/".join((self.base, stage, key, name))

    def now(self) -> float | None:
        path = "/".join((self.base, CLOCK, f"{socket.gethostname()}-{os.getpid()}"))
        self.fs.create_dir("/".join((self.base, CLOCK)), recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(b".")
        mtime = self.fs.get_file_info(path).mtime
        return mtime.timestamp() if mtime is not None else None

    def read(self, stage: str, key: str) -> LeaseState | None:
        path = self._path(stage, key)
        try:
            with self.fs.open_input_stream(path) as f:
                body = json.loads(f.read())
            mtime = self.fs.get_file_info(path).mtime
        except (FileNotFoundError, OSError, ValueError):
            return None
        now = self.now()
        age = (now - mtime.timestamp()) if (now is not None and mtime is not None) else 0.0
        return LeaseState(body, f"{body.get('token')}:{body.get('seq')}", age)

    def _write(self, stage: str, key: str, lease: dict) -> str | None:
        self.fs.create_dir("/".join((self.base, stage, key)), recursive=True)
        with self.fs.open_output_stream(self._path(stage, key)) as f:
            f.write(json.dumps(_public(lease)).encode())
        current = self.read(stage, key)
        return current.version if current is not None and current.body.get("token") == lease["token"] else None

    def create(self, stage: str, key: str, lease: dict) -> str | None:
        return self._write(stage, key, lease)

    def replace(self, stage: str, key: str, lease: dict, version: str) -> str | None:
        current = self.read(stage, key)
        if current is not None and current.version != version:
            return None
        return self._write(stage, key, lease)

    renew = replace

    def commit(self, stage: str, key: str, name: str, data: bytes) -> bool:
        with self.fs.open_output_stream(self._path(stage, key, name)) as f:
            f.write(data)
        return True

    def remove(self, stage: str, key: str) -> None:
        self.fs.delete_file(self._path(stage, key))


# -- holding a lease for a block --------------------------------------------------------------------------------
class LeaseKeeper:
    """Hold a node's lease for a block: wait (polling) while another live holder has it, at most ``max_wait``
    seconds (default: the holder's ttl; then ``HeldElsewhere`` is raised, the trial ends, and the driver
    hands the node out again later); renew it in a background thread every ttl/3; release it at the end.
    ``acquired`` is False when the node was completed by the other holder meanwhile (the caller skips it).

    Fencing: when a renewal finds the lease taken (or no renewal succeeds for a whole ttl), ``lost`` is set;
    ``check()`` (called by the node runner at each report and before each checkpoint upload) then raises
    ``LeaseLost``, and ``ArtifactStore.mark_complete(..., lease=keeper.lease)`` re-validates the lease on the
    store itself right before the marker, which is written only if absent."""

    def __init__(self, store, stage: str, key: str, owner: str | None = None, ttl: float | None = None,
                 poll: float = 1.0, max_wait: float | None = None):
        from .store import default_owner

        self.store, self.stage, self.key = store, stage, key
        self.owner, self.poll, self.max_wait = owner or default_owner(), poll, max_wait
        self.ttl = LEASE_TTL if ttl is None else ttl
        self.lease: dict | None = None
        self.waited = 0.0
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LeaseKeeper":
        start, logged, deadline = time.monotonic(), False, None
        while True:
            if self.store.is_complete(self.stage, self.key):
                break
            self.lease = self.store.try_lease(self.stage, self.key, self.owner, self.ttl)
            if self.lease is not None:
                break
            holder = self.store.read_lease(self.stage, self.key) or {}
            holder_ttl = float(holder.get("ttl", self.ttl) or self.ttl)
            if deadline is None:
                deadline = start + (holder_ttl if self.max_wait is None else self.max_wait)
            if not logged:
                self.store.log_event("lease_wait", self.stage, self.key, holder=holder.get("owner"), owner=self.owner)
                logged = True
            if time.monotonic() >= deadline:
                self.waited = time.monotonic() - start
                self.store.log_event("lease_held", self.stage, self.key, holder=holder.get("owner"), owner=self.owner,
                                     waited=round(self.waited, 1))
                raise HeldElsewhere(f"node {self.stage}/{self.key} is held by {holder.get('owner')} (renewed "
                                    f"{holder.get('_age', 0):.0f} s ago); waited {self.waited:.0f} s, check later",
                                    holder=holder.get("owner"), retry_after=holder_ttl)
            time.sleep(self.poll)
        self.waited = time.monotonic() - start
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

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        self.store.log_event("lease_lost", self.stage, self.key, owner=self.owner, reason=reason)

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is gone: the node must stop without committing."""
        if self.lost.is_set():
            raise LeaseLost(f"node {self.stage}/{self.key}: lease lost ({self.lost_reason}); stopped without "
                            "committing", retry_after=self.ttl)

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                ok = self.store.renew_lease(self.stage, self.key, self.lease)
            except Exception as err:  # noqa: BLE001 - a transient store error: try again at the next tick
                ok = None
                log.info("lease renewal of %s/%s failed: %s", self.stage, self.key, err)
            if ok:
                last_ok = time.monotonic()
            elif ok is False:
                self._lose("taken over by another holder")
                return
            elif time.monotonic() - last_ok >= self.ttl:  # others may take it over now: stop first
                self._lose(f"not renewed for {self.ttl:.0f} s")
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease is not None and not self.lost.is_set():
            try:
                self.store.release_lease(self.stage, self.key, self.lease)
            except Exception as err:  # noqa: BLE001 - it expires on its own
                log.info("lease release of %s/%s failed: %s", self.stage, self.key, err)


# -- one driver at a time on a store without conditional writes ------------------------------------------------
class DriverGuard:
    """A launch on a store whose leases cannot exclude a second driver (``PlainLeases``) registers itself in
    ``<root>/_DRIVER.json`` and rewrites it every ``DRIVER_TTL / 4`` seconds; a second launch that finds a
    heartbeat younger than ``DRIVER_TTL`` (on the store's clock) is refused. Best effort by nature (two launches
    in the same second can both pass: the store has no atomic create), it turns the common mistake, a second
    launch while the first runs, into a one-line refusal instead of silent double work."""

    def __init__(self, fs, base: str, root: str, owner: str):
        self.fs, self.path, self.root, self.owner = fs, base.rstrip("/") + "/" + DRIVER, root, owner
        self.clock = PlainLeases(fs, base)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def running(self) -> tuple[dict, float] | None:
        """(the other driver's heartbeat, its age in seconds) if one is live."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                body = json.loads(f.read())
            mtime = self.fs.get_file_info(self.path).mtime
        except (FileNotFoundError, OSError, ValueError):
            return None
        if body.get("owner") == self.owner:
            return None
        now = self.clock.now()
        age = (now - mtime.timestamp()) if (now is not None and mtime is not None) else 0.0
        return (body, age) if age < DRIVER_TTL else None

    def _beat(self) -> None:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps({"owner": self.owner, **holder_identity()}).encode())

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="srnet-driver-guard")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(DRIVER_TTL / 4):
            try:
                self._beat()
            except Exception as err:  # noqa: BLE001
                log.warning("driver heartbeat on %s failed: %s", self.root, err)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self.fs.open_input_stream(self.path) as f:
                if json.loads(f.read()).get("owner") == self.owner:
                    self.fs.delete_file(self.path)
        except (FileNotFoundError, OSError, ValueError):
            pass
