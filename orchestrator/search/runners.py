"""How a study runs its nodes: a ``NodeRunner`` has ``run_nodes(nodes) -> {key: error or None}`` and runs the
nodes and whatever upstream of them is not complete.

* ``LaunchRunner``: each call is one Ray Tune run through the launch's dependency-driven scheduler
  (``orchestrator.launch.run_plan``): a batch of trials and what they need upstream, rows published as each
  node completes.
* ``SchedulerRunner``: ask/tell on the running scheduler: the whole study is one Tune run, trials added as
  nodes as others end (``orchestrator.search.asktell``); its ``run_nodes`` is ``LaunchRunner``'s.
* ``LocalRunner``: the nodes one after another in this process (no Ray), for tests and debugging.
"""
from __future__ import annotations

import contextlib
import time
from typing import Protocol

from ..spec import SweepSpec
from ..plan import depth_groups
from .nodes import Node


class NodeRunner(Protocol):
    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        """Run the nodes (and whatever upstream of them is not complete); {key: error message or None}."""


def closure(nodes: list[Node]) -> list[list[Node]]:
    """The nodes and their upstream, deduplicated by key, grouped by dependency depth (upstream first)."""
    return depth_groups(nodes)


class _RunnerBase:
    def __init__(self, spec: SweepSpec, store, root: str):
        self.spec, self.store, self.root = spec, store, root
        self.ran: list[str] = []  # keys of nodes this runner actually trained (not reused), in order


class LaunchRunner(_RunnerBase):
    """Ray Tune through the launch's dependency-driven scheduler (``orchestrator.launch.run_plan``): a batch of
    trials and whatever they need upstream in one Tune run, rows published as each node completes."""

    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        from .. import launch
        from ..plan import Plan

        every = [n for wave in closure(nodes) for n in wave]
        complete = {(n.stage, n.key) for n in every if self.store.is_complete(n.stage, n.key)}
        self.ran.extend(n.key for n in every if (n.stage, n.key) not in complete)
        errors = launch.run_plan(self.spec, Plan({n.key: n for n in every}), self.store, self.root, complete)[0]
        return {n.key: errors.get(n.key) for n in nodes}


class SchedulerRunner(LaunchRunner):
    """Ask/tell on the running scheduler (``orchestrator.search.asktell``): the whole study is ONE Tune run of
    the launch's scheduler; trials are added to it as nodes as others end (no per-batch runs, no barriers).
    ``run_nodes`` (the predictor's runs after the study) is ``LaunchRunner``'s."""

    ask_tell = True

    def run_study(self, finetune: Node, driver) -> None:
        """One Tune run: ``finetune`` and its upstream as the plan, ``driver.attach`` as its on_scheduler hook
        (it adds the trials' nodes and closes the scheduler); returns when the run and the driver have ended."""
        from .. import launch
        from ..plan import Plan

        every = [n for wave in closure([finetune]) for n in wave]
        complete = {(n.stage, n.key) for n in every if self.store.is_complete(n.stage, n.key)}
        try:
            finished = launch.run_plan(self.spec, Plan({n.key: n for n in every}), self.store, self.root, complete,
                                       on_scheduler=driver.attach)[2]
        except BaseException:
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                driver.join()
            raise
        self.ran.extend(key for _, key in finished)
        driver.join()


class LocalRunner(_RunnerBase):
    """Nodes one after another in this process (no Ray), upstream first: same store, same rows, same resume.
    A node whose upstream failed is not run (its error says so)."""

    def run_nodes(self, nodes: list[Node]) -> dict[str, str | None]:
        from ..launch import publish_node

        errors: dict[str, str] = {}
        for wave in closure(nodes):
            for node in wave:
                if any(u.key in errors for u in node.upstream):
                    errors[node.key] = "skipped: an upstream node failed"
                elif not self.store.is_complete(node.stage, node.key):
                    self.ran.append(node.key)
                    error = self._run(node)
                    if error:
                        errors[node.key] = error
                        publish_node(node, self.store, self.root, error)
        return {n.key: errors.get(n.key) for n in nodes}

    def _run(self, node: Node) -> str | None:
        from workers.trainable import run_node

        from ..launch import node_payload, publish_node

        from workers.store import HeldElsewhere

        try:
            while True:  # another driver holds it: no Ray resources are held here, so wait for it (bounded runs)
                try:
                    run_node(node_payload(node, self.store))
                    break
                except HeldElsewhere as held:
                    time.sleep(min(max(held.retry_after, 1.0), 30.0))
            publish_node(node, self.store, self.root)
        except Exception as err:  # a failed node is a failed trial, not a crashed study
            last = str(err).strip().splitlines()[-1][:500] if str(err).strip() else ""
            return f"{type(err).__name__}: {last}"
        return None
