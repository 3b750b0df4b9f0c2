"""Where a study lives: with the sweep's outputs, so a relaunch on another machine continues it.

``search.storage`` (``storage_for``):

* null: an Optuna journal ``<output_dir>/search/<study>.journal``. For a local ``output_dir`` that is a plain
  ``JournalFileBackend`` file; for a URI (``s3://``, ``gs://``, ``file://``) it is a ``StoreJournalStorage``:
  the journal object is pulled at start into this machine's scratch space (``$SRNET_CACHE``), appended
  locally, and pushed back whole after every change that matters for a resume (study and trial creation,
  parameters, trial states); a trial's attributes, constraint and intermediate values travel with its next
  state change (it comes right after them) and at the end.
* a URI ending ``.journal``: that journal object, as above.
* a path ending ``.journal``: that local journal file.
* an RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``): Optuna's ``RDBStorage``.

A push replaces the whole object: on an object store a single PUT is atomic (readers see the old journal or
the new one, never a part), on a filesystem a temp file is renamed over it. One driver per study: before each
push the object's size is compared with what this driver last pushed (or pulled), and a journal grown by
someone else stops this driver with one line instead of overwriting theirs.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

from workers.uri import is_uri

from .. import cluster as clusterlib
from ..search_spec import RDB_SCHEMES
from .objectives import SearchError


# Journal operations pushed at once (optuna.storages.journal._storage.JournalOperation): what a relaunch needs
# to see a trial (created, its parameters, its state). 2, 3, 7, 8, 9 (attributes, intermediate values) are
# pushed with the next of these: the driver always writes them just before a trial's state changes.
# CREATE_STUDY, DELETE_STUDY, CREATE_TRIAL, SET_TRIAL_PARAM, SET_TRIAL_STATE_VALUES, DISCARD_TRIALS
PUSH_NOW = {0, 1, 4, 5, 6, 10}


def is_rdb_url(url: str) -> bool:
    return is_uri(url) and url.split("://", 1)[0].split("+", 1)[0].lower() in RDB_SCHEMES


def journal_location(output_dir: str, storage: str | None, study: str) -> str | None:
    """The journal's path or URI for ``search.storage``; None for an RDB URL."""
    if storage and is_rdb_url(storage):
        return None
    if storage:
        return storage if is_uri(storage) else os.path.abspath(os.path.expanduser(storage))
    return clusterlib.join(output_dir, "search", f"{study}.journal")


def work_path(remote: str) -> str:
    """This machine's working copy of a remote journal: ``$SRNET_CACHE/studies/<hash of the URI>/<name>``."""
    digest = hashlib.sha256(remote.encode()).hexdigest()[:12]
    return os.path.join(clusterlib.scratch_dir(), "studies", digest, remote.rstrip("/").rsplit("/", 1)[-1])


def _journal_backend():
    from optuna.storages.journal import BaseJournalBackend

    return BaseJournalBackend


class StoreJournalBackend(_journal_backend()):
    """An Optuna journal backend whose file is kept at a URI: pulled at start into ``local``, appended there,
    pushed back (whole, atomically) after each change a relaunch needs. No pickle: the journal is Optuna's
    JSON lines (this class does not implement Optuna's pickled snapshots)."""

    def __init__(self, remote: str, local: str | None = None):
        from optuna.storages.journal import JournalFileBackend

        self.remote, self.local = remote, os.path.abspath(local or work_path(remote))
        self.fs, self.path = clusterlib.filesystem(remote)
        self.pushes = 0
        self._dirty = False
        self._size = self._pull()  # the remote object's size as this driver last saw it (None: absent)
        self._file = JournalFileBackend(self.local)

    def _remote_size(self) -> int | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path)
        return None if info.type == pafs.FileType.NotFound else info.size

    def _pull(self) -> int | None:
        """The remote journal replaces any local copy (the remote is the study; a local file is a cache)."""
        os.makedirs(os.path.dirname(self.local), exist_ok=True)
        for stale in (self.local, self.local + ".pulled"):
            if os.path.exists(stale):
                os.remove(stale)
        size = self._remote_size()
        if size is None:
            return None
        with self.fs.open_input_stream(self.path) as src, open(self.local + ".pulled", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(self.local + ".pulled", self.local)
        return os.path.getsize(self.local)

    def read_logs(self, log_number_from: int):
        return self._file.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._file.append_logs(logs)
        self._dirty = True
        if any(log.get("op_code") in PUSH_NOW for log in logs):
            self.push()

    def flush(self) -> None:
        """Push what is not pushed yet (attributes written after the last state change)."""
        if self._dirty:
            self.push()

    def push(self) -> None:
        import pyarrow.fs as pafs

        now = self._remote_size()
        if now != self._size:
            raise SearchError(
                f"the study journal {self.remote} changed under this driver ({self._size} -> {now} bytes): "
                "another driver is running this study; stop one of them (one driver per study)")
        with open(self.local, "rb") as f:
            data = f.read()
        parent = self.path.rsplit("/", 1)[0]
        if isinstance(self.fs, pafs.LocalFileSystem):  # file://: a temp file renamed over the journal
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{self.path}.tmp-upload"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, self.path)
        else:  # an object store: one PUT, visible only once complete
            with self.fs.open_output_stream(self.path) as out:
                out.write(data)
        self._size, self._dirty = len(data), False
        self.pushes += 1


def _journal_storage():
    from optuna.storages import JournalStorage

    return JournalStorage


class StoreJournalStorage(_journal_storage()):
    """Optuna's ``JournalStorage`` on a :class:`StoreJournalBackend`, with ``flush()``."""

    def __init__(self, remote: str, local: str | None = None):
        self.backend = StoreJournalBackend(remote, local)
        super().__init__(self.backend)

    def flush(self) -> None:
        with self._thread_lock:
            self.backend.flush()


def storage_for(output_dir: str, storage: str | None, study: str):
    """The Optuna storage for ``search.storage`` (see the module docstring): an RDB URL string, a
    ``StoreJournalStorage`` for a journal at a URI, or a ``JournalStorage`` on a local journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    where = journal_location(output_dir, storage, study)
    if where is None:
        return storage  # Optuna builds its RDBStorage from the URL
    if is_uri(where):
        return StoreJournalStorage(where)
    os.makedirs(os.path.dirname(where), exist_ok=True)
    return JournalStorage(JournalFileBackend(where))


def describe(where, location: str | None) -> str:
    """Where the study is, for the driver's log: ``where`` from ``storage_for``, ``location`` from
    ``journal_location`` (an RDB URL's credentials are not printed)."""
    if isinstance(where, StoreJournalStorage):
        return f"{where.backend.remote} (working copy {where.backend.local})"
    return location or f"{str(where).split('://', 1)[0]}://... (RDB)"


def flush(storage) -> None:
    """Push a store-backed journal's last changes (a no-op for other storages)."""
    if isinstance(storage, StoreJournalStorage):
        storage.flush()
