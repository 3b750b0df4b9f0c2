"""One progress view for a whole sweep: per stage done / running / failed / skipped / waiting, GPU-hours spent
against the plan's estimate, and an ETA.

``LiveProgress`` follows a running launch (``DagScheduler`` state): in place on a TTY (rich Live), as one line
every ``every`` seconds otherwise, when something changed or, as a heartbeat, when nothing was printed for
``heartbeat`` seconds (a node can train for hours: a silent log looks like a hang). ``status_view`` builds the same table for a
sweep running elsewhere, from the artifact store and the results alone (``launch SPEC --status``).

GPU-hours spent count from each node's trial start (``DagScheduler.started_at``, Tune's ``on_trial_start``), not
from its hand-out to Tune: a node waiting in Tune spends none (docs/execution.md).

ETA: the estimated seconds of the nodes not yet ended, scaled by how this launch's finished nodes compared
with their estimates and divided by the concurrency observed so far; shown once a node has finished.
"""
from __future__ import annotations

import os
import threading
import time

from rich.console import Console
from rich.table import Table

from srnet_core.stages import get_kind

from .plan import Plan, calibration, calibration_label, node_seconds
from .scheduler import CACHED, DONE, FAILED, RUNNING, SKIPPED

COLUMNS = ("done", "cached", "running", "failed", "skipped", "to run")


def _bucket(status: str) -> str:
    return status if status in (DONE, CACHED, RUNNING, FAILED, SKIPPED) else "to run"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds >= 86_400:
        return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Tally:
    """Counts per stage and the GPU-hour totals of one moment; both views render it."""

    def __init__(self, plan: Plan, status: dict[str, str], spent_gpu_h: dict[str, float],
                 eta_s: float | None = None, elapsed_s: float | None = None):
        self.rows: dict[str, dict] = {}
        for key, node in plan.nodes.items():
            row = self.rows.setdefault(node.stage, {c: 0 for c in COLUMNS} | {"nodes": 0, "est": 0.0, "spent": 0.0})
            row["nodes"] += 1
            row[_bucket(status.get(key, "waiting"))] += 1
            if get_kind(node.stage).memory != "cpu":  # CPU stages (the bias model) spend no GPU-hours
                row["est"] += node_seconds(node) / 3600
            row["spent"] += spent_gpu_h.get(key, 0.0)
        self.eta_s, self.elapsed_s = eta_s, elapsed_s

    def total(self, column: str):
        return sum(r[column] for r in self.rows.values())

    def table(self, title: str) -> Table:
        table = Table(title=title)
        table.add_column("stage")
        for col in ("nodes", *COLUMNS, "est. GPU-h", "spent GPU-h"):
            table.add_column(col, justify="right")

        def cells(r):
            return [str(r["nodes"]), *(str(r[c]) for c in COLUMNS), f"{r['est']:,.1f}", f"{r['spent']:,.2f}"]
        for stage, r in self.rows.items():
            table.add_row(stage, *cells(r))
        total = {c: self.total(c) for c in ("nodes", *COLUMNS, "est", "spent")}
        table.add_row("all", *cells(total), style="bold")
        table.caption = (f"elapsed {_fmt_duration(self.elapsed_s)}  ETA {_fmt_duration(self.eta_s)}  "
                         f"(estimates: calibration {calibration_label()})")
        return table

    def line(self) -> str:
        ended = self.total("done") + self.total("cached") + self.total("failed") + self.total("skipped")
        return (f"progress: {ended}/{self.total('nodes')} nodes ended (done {self.total('done')}, cached "
                f"{self.total('cached')}, failed {self.total('failed')}, skipped {self.total('skipped')}), "
                f"running {self.total('running')}; GPU-h {self.total('spent'):,.2f} spent of "
                f"{self.total('est'):,.1f} est.; elapsed {_fmt_duration(self.elapsed_s)}, "
                f"ETA {_fmt_duration(self.eta_s)} (calibration {calibration().name})")


class LiveProgress:
    def __init__(self, plan: Plan, scheduler, gpus: dict[str, float], console: Console, every: float = 30.0,
                 live: bool | None = None, heartbeat: float = 300.0):
        self.plan, self.scheduler, self.gpus, self.console = plan, scheduler, gpus, console
        self.every, self.heartbeat = every, heartbeat
        self._printed_at = time.time()
        self.live = console.is_terminal if live is None else live
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = ""

    def tally(self) -> Tally:
        s = self.scheduler
        now = time.time()
        status = s.snapshot()
        spent, actual, estimated = {}, 0.0, 0.0
        busy = 0.0
        with s._lock:
            started, ended = dict(s.started_at), dict(s.ended_at)
        for key, t0 in started.items():
            wall = ended.get(key, now) - t0
            busy += wall
            spent[key] = wall / 3600 * self.gpus.get(key, 0.0)
            if status.get(key) == DONE:
                actual += wall
                estimated += s.duration[key]
        remaining = sum(s.duration[k] for k, st in status.items() if st not in (DONE, CACHED, FAILED, SKIPPED))
        elapsed = now - self.started
        eta = None
        if actual > 0 and estimated > 0 and busy > 0:
            concurrency = busy / max(elapsed, 1e-9)
            eta = remaining * (actual / estimated) / max(concurrency, 1e-9)
        with s._lock:  # the scheduler's nodes: the plan's and any a producer added while the run goes on
            nodes = Plan(dict(s.nodes)) if len(s.nodes) != len(self.plan.nodes) else self.plan
        return Tally(nodes, status, spent, eta_s=eta, elapsed_s=elapsed)

    def _loop(self) -> None:
        if self.live:
            from rich.live import Live

            with Live(self.tally().table("sweep progress"), console=self.console, refresh_per_second=2,
                      transient=False) as live:
                while not self._stop.wait(0.5):
                    live.update(self.tally().table("sweep progress"))
                live.update(self.tally().table("sweep progress"))
            return
        next_at = time.time() + self.every
        while not self._stop.wait(0.5):
            if time.time() >= next_at:
                self._print_line()
                next_at = time.time() + self.every

    def _print_line(self, force: bool = False) -> None:
        line = self.tally().line()
        core = line.split("; elapsed")[0]
        if force or core != self._last_line or time.time() - self._printed_at >= self.heartbeat:
            self.console.print(line, highlight=False, soft_wrap=True)
            self._last_line, self._printed_at = core, time.time()

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.live:
            self._print_line(force=True)
        return False


def status_view(plan: Plan, store, results_root: str) -> Tally:
    """The progress of a sweep from its artifact store and results alone (no scheduler, no Ray): complete
    markers are done, failed/skipped rows are failed/skipped, a node with a training checkpoint is running
    (or was interrupted)."""
    import pandas as pd

    from . import results

    complete = store.list_complete()
    try:
        frame = results.load(results_root, columns=["node_key", "status", "error", "gpu_hours"])
    except FileNotFoundError:
        frame = pd.DataFrame(columns=["node_key", "status", "error", "gpu_hours"])
    failed = frame[frame["status"] == "failed"].drop_duplicates("node_key")
    failed_state = {k: SKIPPED if str(e).startswith("skipped") else FAILED
                    for k, e in zip(failed["node_key"], failed["error"])}
    done_rows = frame[frame["status"] == "completed"].drop_duplicates("node_key")
    spent = {k: float(v) for k, v in zip(done_rows["node_key"], done_rows["gpu_hours"].fillna(0.0))}
    status = {}
    for key, node in plan.nodes.items():
        if (node.stage, key) in complete:
            status[key] = DONE
        elif key in failed_state:
            status[key] = failed_state[key]
        elif not store.remote and os.path.isdir(os.path.join(store.node_dir(node.stage, key), "_checkpoint")):
            status[key] = RUNNING
        else:
            status[key] = "waiting"
    return Tally(plan, status, spent)
