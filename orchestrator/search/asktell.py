"""Ask/tell on the running scheduler (issue 21 item 2): a study's trials become nodes added to ONE running
``DagScheduler`` (one Tune run for the whole study) as trials end, instead of one Tune run per batch.

The fine-tuning (and what it needs) is the run's plan; ``AskTell.attach`` is the run's ``on_scheduler`` hook.
It subscribes to node ends and starts one driver thread, the only thread that talks to Optuna:

* once the fine-tuning is done it reads the dense baseline, re-finishes the trials a killed driver left
  RUNNING (with their own parameters), then asks trials until ``parallelism`` are in flight;
* a trial is a chain of nodes: its rung nodes (``search.pruner.rungs``), then its full mask training. When a
  rung node ends the trial reports its value and the pruner decides at once (asynchronously: against the
  trials that reported so far, as ASHA intends); a kept trial's next node is added, a pruned one is told;
* a trial whose node failed (or was skipped) is told FAIL; each told trial frees a slot, and a new trial is
  asked while the study holds fewer than ``n_trials``;
* once every trial is told and none is left to ask it closes the scheduler, and the Tune run ends.

Node ends reach the driver thread through a queue (the scheduler calls back on Tune's thread). A node already
ended, or complete in the store (a trial equal to an earlier one), is answered without running again.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

from .nodes import Node
from .objectives import SearchError, dense_id, node_rows, objective_values, scalarize
from .runners import closure
from .setting import max_cost, suggest, trial_cost, trial_node

DONE_STATES = ("done", "cached")


@dataclass
class _Flow:
    """One trial in flight: its parameters and which of its nodes (rungs, then the full run) it is on."""
    trial: object
    params: dict
    stages: list  # rung fractions, then None (the full run)
    at: int = 0
    node: Node | None = None

    @property
    def rung(self) -> float | None:
        return self.stages[self.at]


@dataclass
class AskTellStats:
    asked: int = 0
    resumed: int = 0
    max_in_flight: int = 0
    nodes_added: list = field(default_factory=list)  # keys of trial nodes handed to the scheduler, in order


class AskTell:
    def __init__(self, loop, target: int, parallelism: int, log: Callable[[str], None] = print):
        self.loop, self.target, self.parallelism, self.log = loop, target, max(1, parallelism), log
        self.setting, self.study, self.store = loop.setting, loop.study, loop.store
        self.events: queue.Queue = queue.Queue()
        self.waiting: dict[str, list[Callable[[str, str], None]]] = {}
        self.ended: dict[str, tuple[str, str]] = {}  # node key -> (status, message), as the driver saw them
        self.in_flight = 0
        self.stats = AskTellStats()
        self.error: BaseException | None = None
        self.ready = False  # the fine-tuning is done: trials may be asked
        self.scheduler = None
        self.thread: threading.Thread | None = None

    # -- the run's hook ----------------------------------------------------------------------------------------
    def attach(self, scheduler) -> None:
        """``run_plan(..., on_scheduler=this)``: called before Tune starts, with the scheduler kept open."""
        self.scheduler = scheduler
        scheduler.on_node_done(lambda node, status, message: self.events.put((node.key, status, message)))
        self.thread = threading.Thread(target=self._main, name="search-ask-tell", daemon=True)
        self.thread.start()

    def join(self) -> None:
        """After the Tune run: wait for the driver thread (told that the run has ended, should it still wait
        for a node: Tune stopped early), and raise what stopped it."""
        if self.thread is not None:
            self.events.put((None, "stopped", ""))
            self.thread.join()
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            self._drive()
        except BaseException as err:  # noqa: BLE001 - handed to the caller by join()
            self.error = err
        finally:
            self.scheduler.close()  # the Tune run ends once the nodes already running end

    # -- the driver thread ---------------------------------------------------------------------------------
    def _drive(self) -> None:
        setting = self.setting
        self._submit(setting.finetune, self._finetune_ended)
        while self.waiting or self.in_flight:
            key, status, message = self.events.get()
            if key is None:
                raise SearchError(f"the Tune run ended while {self.in_flight} trial(s) were in flight (interrupted?)"
                                  "; relaunch the same command to finish them")
            self.ended[key] = (status, message)
            for then in self.waiting.pop(key, []):
                then(status, message)
            self._fill()

    def _finetune_ended(self, status: str, message: str) -> None:
        if status not in DONE_STATES:
            raise SearchError(f"the fine-tuning node {self.setting.finetune.key} failed ({message}); see its "
                              "error row in the results")
        self.loop.dense = dense_id(self.setting, self.store)
        self.ready = True
        leftover = self.loop.unfinished()
        if leftover:
            self.log(f"resuming {len(leftover)} unfinished trial(s): {[t.number for t in leftover]}")
            self.stats.resumed = len(leftover)
        for t in leftover:
            self._start(t)

    def _fill(self) -> None:
        if not self.ready:
            return
        while self.in_flight < self.parallelism and self.loop.asked() < self.target:
            self._start(self.study.ask())
            self.stats.asked += 1

    def _start(self, t) -> None:
        flow = _Flow(t, suggest(t, self.setting), list(self.setting.rungs) + [None])
        self.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)
        self._next_node(flow)

    def _next_node(self, flow: _Flow) -> None:
        flow.node = trial_node(self.setting, flow.params, flow.rung)
        self.stats.nodes_added.append(flow.node.key)
        self._submit(flow.node, lambda status, message: self._node_ended(flow, status, message))

    def _submit(self, node: Node, then: Callable[[str, str], None]) -> None:
        """Run ``then(status, message)`` once ``node`` has ended: at once (through the queue) if it already
        ended or is complete in the store; else the node (and its missing upstream) joins the scheduler."""
        self.waiting.setdefault(node.key, []).append(then)
        sched = self.scheduler
        if node.key in self.ended:
            self.events.put((node.key, *self.ended[node.key]))
        elif node.key not in sched.nodes:
            every = [n for wave in closure([node]) for n in wave]
            complete = {n.key for n in every if n.key not in sched.nodes and self.store.is_complete(n.stage, n.key)}
            sched.add_nodes(every, complete=complete)
            if node.key in complete:
                self.events.put((node.key, "cached", ""))
        elif sched.snapshot().get(node.key) == "cached":  # complete before the run: it never reports
            self.events.put((node.key, "cached", ""))
        # else: known and not ended yet: its end reaches the queue

    def _node_ended(self, flow: _Flow, status: str, message: str) -> None:
        loop, setting, s = self.loop, self.setting, self.setting.search
        t, node, rung = flow.trial, flow.node, flow.rung
        if status not in DONE_STATES:
            self._told(loop.finish, t, flow.params, node, "FAIL", None, rung, message or status)
            return
        values = objective_values(node_rows(self.store, node), setting.task_obj, s.metric)
        if rung is None:
            self._told(loop.finish, t, flow.params, node, "COMPLETE", values, None)
            return
        steps = setting.rung_steps(rung)
        t.report(scalarize(s, values, trial_cost(setting, flow.params, steps), max_cost(setting)), steps)
        if t.should_prune():
            self._told(loop.finish, t, flow.params, node, "PRUNED", values, rung)
            return
        flow.at += 1
        self._next_node(flow)

    def _told(self, finish, *args) -> None:
        finish(*args)
        self.in_flight -= 1
