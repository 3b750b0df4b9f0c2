"""Checkpoints written off the training thread.

The training thread only takes a snapshot (every tensor copied to host memory, so training may go on
changing the live ones); a background thread serialises it (srnet_core.io.save_state: safetensors, atomic)
and uploads it. Boolean tensors (masks) are stored bit-packed (8x smaller; ``load_checkpoint`` restores
them). Only the latest snapshot matters: one that arrives while another is still being written
replaces any snapshot still waiting, so a slow store never queues up stale checkpoints or memory.
Each checkpoint's timings are kept in ``stats`` (snapshot seconds = what training waited for).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import torch

from .io import load_state, save_state
from .masks import pack_bits, unpack_bits

PACKED = "__packed_bool__"


def snapshot(state):
    """A copy of a nested state whose tensors share nothing with the live ones (host memory); bool tensors
    become bit-packed entries."""
    if isinstance(state, torch.Tensor):
        t = state.detach()
        if t.dtype == torch.bool:
            return {PACKED: pack_bits(t), "shape": list(t.shape)}
        return t.clone() if t.device.type == "cpu" else t.to("cpu")
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return state


def unpack(state):
    """Inverse of the packing in ``snapshot``."""
    if isinstance(state, dict):
        if PACKED in state:
            return unpack_bits(state[PACKED], state["shape"])
        return {k: unpack(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(unpack(v) for v in state)
    return state


def save_checkpoint(path: str, state: dict) -> None:
    """Synchronous write of a state (packed like the background writer's)."""
    save_state(path, snapshot(state))


def load_checkpoint(path: str) -> dict:
    """A state written by ``AsyncCheckpointWriter`` / ``save_checkpoint`` (or plain ``save_state``)."""
    return unpack(load_state(path))


def state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


class AsyncCheckpointWriter:
    """``submit(state_fn)`` snapshots on the caller's thread and returns; a worker thread writes ``path``
    and then calls ``upload()`` (e.g. push to a remote artifact store). ``close()`` waits for the last one
    and re-raises a write error; an error also surfaces at the next ``submit``."""

    def __init__(self, path: str, upload: Callable[[], None] | None = None):
        self.path, self.upload = path, upload
        self.stats: list[dict] = []
        self._pending: tuple[dict, dict] | None = None
        self._error: BaseException | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="srnet-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state_fn: Callable[[], dict]) -> float:
        """Snapshot now, write in the background; returns the seconds the caller spent (the snapshot)."""
        self._raise()
        t0 = time.perf_counter()
        state = snapshot(state_fn())
        seconds = time.perf_counter() - t0
        info = {"snapshot_s": seconds, "bytes": state_bytes(state), "replaced": False}
        with self._cond:
            if self._pending is not None:
                self._pending[1]["replaced"] = True  # never written: a newer one supersedes it
                self.stats.append(self._pending[1])
            self._pending = (state, info)
            self._cond.notify_all()
        return seconds

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                state, info = self._pending
                self._pending, self._busy = None, True
            try:
                t0 = time.perf_counter()
                save_state(self.path, state)
                info["write_s"] = time.perf_counter() - t0
                if self.upload is not None:
                    t0 = time.perf_counter()
                    self.upload()
                    info["upload_s"] = time.perf_counter() - t0
            except BaseException as err:  # noqa: BLE001 - handed to the training thread
                self._error = err
            finally:
                del state
                with self._cond:
                    self.stats.append(info)
                    self._busy = False
                    self._cond.notify_all()

    def wait(self) -> None:
        """Block until every submitted snapshot is written (or replaced)."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()
        self._raise()

    def close(self) -> None:
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def summary(self) -> dict:
        """Seconds per checkpoint: what the training thread waited (snapshot) and what the writer spent."""
        written = [s for s in self.stats if not s["replaced"] and "write_s" in s]

        def mean(key, rows):
            values = [r[key] for r in rows if key in r]
            return sum(values) / len(values) if values else None

        return {"checkpoints": len(written), "replaced": sum(s["replaced"] for s in self.stats),
                "snapshot_s_mean": mean("snapshot_s", self.stats), "write_s_mean": mean("write_s", written),
                "upload_s_mean": mean("upload_s", written), "bytes_last": written[-1]["bytes"] if written else 0}

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing checkpoint {self.path} failed: {err}") from err
