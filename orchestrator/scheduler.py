"""Dependency-driven scheduling of plan nodes inside ONE Ray Tune run per launch.

``DagScheduler`` holds the state of every node (thread-safe): a node becomes *ready* as soon as all its inputs
are complete; ready nodes are handed out longest-remaining-path first (the node's own estimated duration plus
the longest estimated chain of work that waits on it, ``orchestrator.plan.node_seconds``); a failed node marks
every descendant *skipped* at once, naming the failed node, while independent nodes go on.

``NodeSearcher`` is the Tune hook: a ``ray.tune.search.Searcher`` whose ``suggest`` returns the next ready
node's trial config, ``None`` while everything left waits on running nodes (or, with an ``Admission``, while
the ready nodes do not fit the resources free now), and ``Searcher.FINISHED`` once no node is waiting, ready
or running (and the scheduler is closed). The Tuner runs with ``num_samples=-1``, so Tune keeps asking until
FINISHED. bench/scheduler.py replays a plan through the same ``DagScheduler`` (same ordering code) in an event
simulation; bench/tune_order.py runs one through the real Tune path with fake GPUs.

Handing a node to Tune is not starting it: Tune starts its pending trials in its own order (FIFO, and with
actor reuse a freed actor goes to any pending trial of the same shape). So the launch's searcher hands out
only what can start now (``orchestrator.admission.Admission``: the cluster's resources minus those of the
trials handed out and not ended); the rest stays in the ready queue, in priority order, and is signalled to
the autoscaler. A critical-path node that becomes ready later is then the next one handed out.

API for other producers of nodes (e.g. an Optuna study whose trials are ordinary content-keyed nodes):

- ``scheduler.add_nodes(nodes, complete=keys)``: thread-safe; may be called while Tune runs. Each node's
  upstream nodes must be known to the scheduler already (or be in the same call) or have their key in
  ``complete``. A key already known is ignored (identical work runs once). Priorities are recomputed.
- ``scheduler.on_node_done(callback)``: ``callback(node, status, message)`` is called (on Tune's driver thread,
  or the thread that reported the outcome) for every node that ends: status ``done``, ``failed`` or
  ``skipped``. Keep callbacks quick; hand slow work to a thread.
- ``DagScheduler(keep_open=True)`` keeps Tune asking for nodes even when nothing is left; call
  ``scheduler.close()`` once no more nodes will be added, and the run ends when the remaining nodes end.
- ``scheduler.counts()`` / ``scheduler.snapshot()``: status per stage for progress views.
- In a launch: ``orchestrator.launch.run_plan(..., on_scheduler=fn)`` calls ``fn(scheduler)`` before Tune starts,
  with the scheduler kept open; the producer adds nodes (from its callbacks or its own thread) and closes it.
  Nodes it adds are published like the plan's. While nothing is ready or running, Tune polls ``suggest``
  about once a second.

States: ``waiting`` (an input is not complete yet, or deferred: another driver held its lease), ``ready``,
``running`` (handed to Tune: pending or running there), ``done`` (finished in this launch), ``cached``
(complete before the launch: never run again), ``failed``, ``skipped``. Times: ``queued_at`` (handed to
Tune), ``started_at`` (its trial actually started: ``node_started``, from Tune's ``on_trial_start``),
``ended_at``; GPU-hours count from ``started_at``.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, Iterable

WAITING, READY, RUNNING, DONE, CACHED, FAILED, SKIPPED = (
    "waiting", "ready", "running", "done", "cached", "failed", "skipped")
FINAL = {DONE, CACHED, FAILED, SKIPPED}


def remaining_path(nodes: dict, children: dict[str, list[str]], duration: dict[str, float]) -> dict[str, float]:
    """Longest remaining path of every node: its own duration plus the longest chain of descendants.
    ``nodes`` must be in topological order (the plan's insertion order is)."""
    out: dict[str, float] = {}
    for key in reversed(list(nodes)):
        out[key] = duration.get(key, 0.0) + max((out[c] for c in children.get(key, ())), default=0.0)
    return out


class DagScheduler:
    def __init__(self, duration: Callable[[object], float] | None = None, keep_open: bool = False):
        self._duration_of = duration or (lambda node: 1.0)
        self._lock = threading.RLock()
        self.nodes: dict[str, object] = {}  # key -> Node, topological order
        self.status: dict[str, str] = {}
        self.message: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        self.duration: dict[str, float] = {}
        self.priority: dict[str, float] = {}
        self.queued_at: dict[str, float] = {}  # handed to Tune
        self.started_at: dict[str, float] = {}  # its trial started running (node_started)
        self.ended_at: dict[str, float] = {}
        self._missing: dict[str, int] = {}  # key -> inputs not complete yet
        # ready nodes, one heap per stage (a stage's trials all ask the same resources: next_ready's ``fits``
        # is asked once per stage, not once per ready node); entries whose node is no longer ready are dropped
        # when met
        self._heaps: dict[str, list[tuple[float, int, str]]] = {}
        self._seq = itertools.count()
        self._callbacks: list[Callable] = []
        self._open = keep_open
        self._reopened: dict[str, int] = {}  # key -> times re-opened after a consumer found it corrupt
        self._deferred: dict[str, float] = {}  # key -> when it is ready again (held by another driver: defer)

    # -- building ---------------------------------------------------------------------------------------------
    def add_nodes(self, nodes: Iterable, complete: Iterable[str] = ()) -> int:
        """Add nodes (topological order); keys in ``complete`` are taken as done already. Returns how many
        new nodes were added."""
        complete = set(complete)
        with self._lock:
            added = []
            for node in nodes:
                if node.key in self.nodes:
                    continue
                for up in node.upstream:
                    if up.key not in self.nodes and up.key not in complete:
                        raise ValueError(f"node {node.stage}/{node.key}: its input {up.stage}/{up.key} is neither "
                                         "scheduled nor complete; add upstream nodes first")
                self.nodes[node.key] = node
                self.children.setdefault(node.key, [])
                self.duration[node.key] = float(self._duration_of(node))
                added.append(node)
            for node in added:
                ups = {u.key for u in node.upstream}
                for up in ups:
                    if up in self.children:
                        self.children[up].append(node.key)
                if node.key in complete:
                    self.status[node.key] = CACHED
                    continue
                blocked = [u for u in ups if self.status.get(u, CACHED) not in (DONE, CACHED)]
                failed = [u for u in blocked if self.status.get(u) in (FAILED, SKIPPED)]
                if failed:
                    self.status[node.key] = SKIPPED
                    up = failed[0]  # a skipped upstream passes its root cause on unchanged
                    self.message[node.key] = (self.message[up] if self.status[up] == SKIPPED
                                              else self._skip_reason(up))
                    continue
                self._missing[node.key] = len(blocked)
                self.status[node.key] = WAITING if blocked else READY
            self.priority = remaining_path(self.nodes, self.children, self.duration)
            self._heaps = {}
            for k, s in self.status.items():
                if s == READY:
                    self._heaps.setdefault(self.nodes[k].stage, []).append((-self.priority[k], next(self._seq), k))
            for heap in self._heaps.values():
                heapq.heapify(heap)
            skipped_now = [self.nodes[n.key] for n in added if self.status[n.key] == SKIPPED]
        for node in skipped_now:
            self._notify(node, SKIPPED, self.message[node.key])
        return len(added)

    def close(self) -> None:
        """No more nodes will be added: the run may finish once the known nodes end."""
        with self._lock:
            self._open = False

    def on_node_done(self, callback: Callable[[object, str, str], None]) -> None:
        self._callbacks.append(callback)

    # -- running ----------------------------------------------------------------------------------------------
    def _push(self, key: str) -> None:
        heapq.heappush(self._heaps.setdefault(self.nodes[key].stage, []), (-self.priority[key], next(self._seq), key))

    def _tops(self) -> list[tuple[float, int, str, str]]:
        """(-priority, seq, key, stage) of each stage's best ready node, best first (stale entries dropped)."""
        tops = []
        for stage, heap in self._heaps.items():
            while heap and self.status.get(heap[0][2]) != READY:
                heapq.heappop(heap)
            if heap:
                tops.append((*heap[0], stage))
        return sorted(tops)

    def defer(self, key: str, seconds: float, message: str = "") -> None:
        """The node's trial ended without running it because another driver holds its lease (the trial's result
        carries ``workers.trainable.HELD_KEY``): it waits ``seconds``, then is ready again; when handed out
        again it is skipped if the other driver completed it, or run if that driver's lease expired."""
        with self._lock:
            if self.status.get(key) != RUNNING:
                return
            self.status[key] = WAITING
            self._missing[key] = 0
            self._deferred[key] = time.time() + max(0.0, seconds)
            self.message[key] = message

    def _wake_deferred(self) -> None:
        now = time.time()
        for key, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[key]
                if self.status.get(key) == WAITING and self._missing.get(key, 0) == 0:
                    self.status[key] = READY
                    self._push(key)

    def next_ready(self, fits: Callable[[object], bool] | None = None):
        """The ready node with the longest remaining path (now marked running, ``queued_at`` stamped), or None.
        ``fits(node)``: whether the node can start now; the best ready node that fits is returned (a node
        that does not fit stays ready, in its place). It must answer alike for every node of a stage."""
        with self._lock:
            self._wake_deferred()
            for _, _, key, stage in self._tops():
                node = self.nodes[key]
                if fits is None or fits(node):
                    heapq.heappop(self._heaps[stage])
                    self.status[key] = RUNNING
                    self.queued_at[key] = time.time()
                    self.started_at.pop(key, None)  # a re-opened node: its new run's times
                    self.ended_at.pop(key, None)
                    return node
            return None

    def node_started(self, key: str, at: float | None = None) -> None:
        """The node's trial started running (its resources are held from now: GPU-hours count from here). A
        retried trial keeps its first start."""
        with self._lock:
            if self.status.get(key) == RUNNING and key not in self.started_at:
                self.started_at[key] = time.time() if at is None else at

    def ready_nodes(self, limit: int | None = None) -> list:
        """The ready nodes (not handed out), longest remaining path first; at most ``limit``."""
        with self._lock:
            entries = sorted(e for heap in self._heaps.values() for e in heap if self.status.get(e[2]) == READY)
            keys = list(dict.fromkeys(key for _, _, key in entries))  # a node re-readied has two entries
            return [self.nodes[k] for k in keys[:limit]]

    @property
    def finished(self) -> bool:
        with self._lock:
            return not self._open and all(s in FINAL for s in self.status.values())

    @property
    def blocked(self) -> bool:
        """Nothing ready or running, yet nodes wait (cannot happen for a consistent DAG; a guard for callers)."""
        with self._lock:
            return not any(s in (READY, RUNNING) for s in self.status.values()) and \
                any(s == WAITING and k not in self._deferred for k, s in self.status.items())

    def reopen(self, key: str, waiter: str | None = None, limit: int = 2) -> bool:
        """A file of ``key`` (done, or complete from an earlier launch) was found corrupt by ``waiter``, whose
        trial just ended: ``key`` runs again, and every node downstream of it that has not started (and the
        waiter) waits for it. False when it cannot be re-opened (not done, or re-opened ``limit`` times
        already: a store that corrupts every write would loop forever); the caller then fails the waiter."""
        with self._lock:
            if self.status.get(key) in (READY, RUNNING) and key in self._reopened:
                # already being re-run for another consumer: this one waits for it too
                if waiter in self.children.get(key, ()):
                    self.status[waiter] = WAITING
                    self._missing[waiter] = sum(1 for u in self.nodes[waiter].upstream
                                                if self.status.get(u.key, CACHED) not in (DONE, CACHED))
                    return True
                return False
            if self.status.get(key) not in (DONE, CACHED) or self._reopened.get(key, 0) >= limit:
                return False
            self._reopened[key] = self._reopened.get(key, 0) + 1
            self.status[key] = READY
            self._push(key)
            for child in self.children[key]:
                if child == waiter or self.status[child] in (WAITING, READY):
                    self.status[child] = WAITING
                    self._missing[child] = sum(1 for u in self.nodes[child].upstream
                                               if self.status.get(u.key, CACHED) not in (DONE, CACHED))
            return True

    def node_done(self, key: str) -> None:
        with self._lock:
            if self.status.get(key) in FINAL:
                return
            self.status[key] = DONE
            self.ended_at[key] = time.time()
            for child in self.children[key]:
                if self.status[child] == WAITING:
                    self._missing[child] -= 1
                    if self._missing[child] == 0:
                        self.status[child] = READY
                        self._push(child)
            node = self.nodes[key]
        self._notify(node, DONE, "")

    def node_failed(self, key: str, message: str = "failed") -> list[str]:
        """Mark a node failed and every node downstream of it skipped; returns the skipped keys."""
        with self._lock:
            if self.status.get(key) in FINAL:
                return []
            self.status[key] = FAILED
            self.message[key] = message
            self.ended_at[key] = time.time()
            skipped, stack = [], list(self.children[key])
            reason = self._skip_reason(key)
            while stack:
                child = stack.pop()
                if self.status[child] in (WAITING, READY):
                    self.status[child] = SKIPPED
                    self.message[child] = reason
                    skipped.append(child)
                    stack.extend(self.children[child])
            events = [(self.nodes[key], FAILED, message)] + [(self.nodes[k], SKIPPED, reason) for k in skipped]
        for event in events:
            self._notify(*event)
        return skipped

    def set_message(self, key: str, message: str) -> None:
        """Set a node's message; for a failed node whose error text arrived late, its skipped descendants get
        the new root cause too (and are re-announced, so their published rows say it)."""
        with self._lock:
            old_reason = self._skip_reason(key) if self.status.get(key) == FAILED else None
            self.message[key] = message
            events = []
            if old_reason is not None:
                new_reason = self._skip_reason(key)
                for k, m in self.message.items():
                    if self.status.get(k) == SKIPPED and m == old_reason:
                        self.message[k] = new_reason
                        events.append((self.nodes[k], SKIPPED, new_reason))
        for event in events:
            self._notify(*event)

    def _skip_reason(self, failed_key: str) -> str:
        """Names the failed node and its error (the root cause), never a chain of skips."""
        node = self.nodes[failed_key]
        return f"skipped: upstream {node.stage} {failed_key} failed: {self.message.get(failed_key, 'failed')}"

    def _notify(self, node, status: str, message: str) -> None:
        for callback in list(self._callbacks):
            callback(node, status, message)

    # -- views ------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """{stage: {status: count}}"""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for key, status in self.status.items():
                per = out.setdefault(self.nodes[key].stage, {})
                per[status] = per.get(status, 0) + 1
            return out

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.status)


def make_searcher(scheduler: DagScheduler, payload: Callable[[object], dict],
                  error_of: Callable[[str], str] | None = None, admission=None):
    """A Tune Searcher suggesting the scheduler's ready nodes; ``payload(node)`` is the node's trial config and
    ``error_of(trial_id)`` the one-line error of a failed trial (Tune gives a Searcher only the trial id).
    ``admission`` (``orchestrator.admission.Admission``): hand out only nodes that fit the resources free now,
    and signal the ready queue to the autoscaler; None hands out every ready node at once (Tune then decides
    which pending trial starts first)."""
    from ray.tune.search import Searcher

    from workers.trainable import ERROR_KEY, HELD_KEY, REOPEN_KEY, RETRY_KEY

    class NodeSearcher(Searcher):
        def __init__(self):
            super().__init__(metric=None, mode=None)
            self.trial_node: dict[str, str] = {}

        def suggest(self, trial_id: str):
            if admission is None:
                node = scheduler.next_ready()
            else:
                admission.refresh()
                node = scheduler.next_ready(admission.fits)
                if node is not None:
                    admission.claim(trial_id, node)
                admission.signal(scheduler)
            if node is None:
                return Searcher.FINISHED if scheduler.finished else None
            self.trial_node[trial_id] = node.key
            return {"node": payload(node)}

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            key = self.trial_node.pop(trial_id, None)
            if admission is not None:
                admission.release(trial_id)  # its resources are free for the next node handed out
            if key is None:
                return
            if error:
                message = "failed"
                if error_of is not None:
                    try:
                        message = error_of(trial_id) or message
                    except Exception as err:  # a missing error file must not stop the sweep
                        message = f"failed (its error could not be read: {err})"
                scheduler.node_failed(key, message)
            elif isinstance(result, dict) and result.get(HELD_KEY):  # another driver holds it: again later
                scheduler.defer(key, float(result.get(RETRY_KEY) or 60.0), str(result[HELD_KEY]))
            elif isinstance(result, dict) and result.get(ERROR_KEY):  # failed deterministically: not retried
                upstream = result.get(REOPEN_KEY)  # a corrupt input: its producer re-runs, then this node
                if not (upstream and scheduler.reopen(upstream, key)):
                    scheduler.node_failed(key, str(result[ERROR_KEY]))
            else:
                scheduler.node_done(key)

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass  # nothing to save: the artifact store's completion markers are the state of record

        def __reduce__(self):
            # Tune pickles its config (tuner.pkl) for Tuner.restore; a launch never restores (it re-plans from
            # the store), so the pickled searcher is an empty one instead of the live DAG with its locks.
            return (_empty_searcher, ())

    return NodeSearcher()


def _empty_searcher():
    return make_searcher(DagScheduler(), lambda node: {})
