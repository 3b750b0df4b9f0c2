"""What the launch's searcher may hand to Tune now: only trials that can start at once.

Tune starts pending trials in its own order (FIFO; with actor reuse a freed actor goes to any pending trial of
the same shape), so every trial handed out ahead of time is a claim that a critical-path node becoming ready
later cannot overtake. ``Admission`` keeps the hand-out to what fits the cluster's resources now:

    free = the cluster's resources (``ray.cluster_resources()``, re-read every ``refresh_s``)
           - the requests of the trials handed out and not ended (claimed at hand-out, released at the end)

and the searcher hands out the best ready node that fits ``free`` (``DagScheduler.next_ready(fits)``); the
others stay in the ready queue in priority order. When nothing of this launch is in flight the best node is
handed out whatever it asks (a cluster that must scale up first would otherwise never start one; Tune then
waits for the resources as before). The count is over the whole cluster, not per machine: a trial whose
request fits the total but no single node waits in Tune until one frees up, holding its claim.

The ready nodes that were not handed out are signalled to the autoscaler with
``ray.autoscaler.sdk.request_resources(bundles=...)``: one bundle per trial handed out plus one per ready
node, best first, at most ``max_bundles`` (a request is a target for the whole cluster, "this many trials at
once", not an increment); re-sent only when it changes and at most every ``signal_every_s``; cleared by
``close``. Without an autoscaler the request is only a record in the GCS, so it is sent only when
``autoscale`` is set (``orchestrator.tune_run`` sets it for a cluster with an autoscaler or one the driver
joined).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

EPS = 1e-9


def ray_totals() -> dict[str, float]:
    import ray

    return {name: float(value) for name, value in ray.cluster_resources().items()}


def ray_request_resources(bundles: list[dict]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


class Admission:
    """``request_of(node)``: the trial's resources, e.g. ``{"CPU": 2, "GPU": 1}`` (every node of a stage asks
    the same); ``totals()``: the cluster's resources; ``request_resources(bundles)``: the autoscaler hook."""

    def __init__(self, request_of: Callable[[object], dict], totals: Callable[[], dict] | None = None,
                 refresh_s: float = 5.0, autoscale: bool = False, max_bundles: int = 1000,
                 signal_every_s: float = 10.0, request_resources: Callable[[list], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.request_of = request_of
        self._totals_fn = totals or ray_totals
        self.refresh_s, self.autoscale, self.max_bundles = refresh_s, autoscale, max_bundles
        self.signal_every_s = signal_every_s
        self._request_resources = request_resources or ray_request_resources
        self._clock = clock
        self._lock = threading.Lock()
        self.totals: dict[str, float] = {}
        self._read_at: float | None = None
        self.claimed: dict[str, dict[str, float]] = {}  # trial id -> request
        self.signalled: list[dict] | None = None  # the last bundles sent to the autoscaler
        self._signal_at: float | None = None
        self.signal_errors: list[str] = []

    # -- the budget -------------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Re-read the cluster's resources (nodes join and leave), at most every ``refresh_s``."""
        now = self._clock()
        if force or self._read_at is None or now - self._read_at >= self.refresh_s:
            totals = self._totals_fn()
            with self._lock:
                self.totals, self._read_at = dict(totals), now

    def request(self, node) -> dict[str, float]:
        return {name: float(value) for name, value in self.request_of(node).items() if value}

    def free(self) -> dict[str, float]:
        with self._lock:
            free = dict(self.totals)
            for request in self.claimed.values():
                for name, value in request.items():
                    free[name] = free.get(name, 0.0) - value
            return free

    def fits(self, node) -> bool:
        """Whether the node's trial can start now (always, while nothing of this launch is in flight)."""
        if not self.claimed:
            return True
        free = self.free()
        return all(value <= free.get(name, 0.0) + EPS for name, value in self.request(node).items())

    def claim(self, trial_id: str, node) -> None:
        request = self.request(node)
        with self._lock:
            self.claimed[trial_id] = request

    def release(self, trial_id: str) -> None:
        with self._lock:
            self.claimed.pop(trial_id, None)

    # -- the autoscaler ---------------------------------------------------------------------------------------
    def demand(self, scheduler) -> list[dict]:
        """Bundles for the trials in flight and the ready nodes not handed out, best first."""
        with self._lock:
            bundles = [dict(r) for r in self.claimed.values()][: self.max_bundles]
        for node in scheduler.ready_nodes(self.max_bundles - len(bundles)):
            bundles.append(self.request(node))
        return [b for b in bundles if b]

    def signal(self, scheduler, force: bool = False) -> None:
        """Send the demand to the autoscaler when it changed (at most every ``signal_every_s``)."""
        if not self.autoscale:
            return
        now = self._clock()
        if not force and self._signal_at is not None and now - self._signal_at < self.signal_every_s:
            return
        self._signal_at = now
        bundles = self.demand(scheduler)
        if bundles == self.signalled:
            return
        self._send(bundles)

    def _send(self, bundles: list[dict]) -> None:
        try:
            self._request_resources(bundles)
            self.signalled = bundles
        except Exception as err:  # noqa: BLE001 - a hint to the autoscaler must never stop the sweep
            self.signal_errors.append(f"{type(err).__name__}: {err}")

    def close(self) -> None:
        """Withdraw the demand (a request persists until replaced: an idle cluster could not scale down)."""
        if self.autoscale and self.signalled:
            self._send([])
