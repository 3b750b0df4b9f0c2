"""What a launch does about failures: verify stored inputs before they are used, give each failed node a
one-line reason, skip its descendants with that reason, and print a summary: the failure table (a short
reason per node) and each root cause once, in full. (Tune's tracebacks go to the store's events log, not the
console: orchestrator/tune_run.py.)

Used by ``orchestrator.launch.main`` (a few call sites); the launch loop itself stays scheduling only.
"""
from __future__ import annotations

import re

from rich.table import Table

from workers.store import ArtifactStore

from .plan import Node, Plan

# Exception lines worth showing, innermost first: Tune wraps a trial's error in RayTaskError/TuneError text.
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt))(?:\([^)]*\))?: (.+)$")
_WRAPPERS = {"RayTaskError", "TuneError", "RayActorError", "TrialError"}


def reason_of(error) -> str:
    """A failed trial's error as one line: the innermost ``SomeError: message`` of its text (the real cause,
    e.g. ``DivergenceError: training loss is nan ...``), else its last line."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m and m.group(1) not in _WRAPPERS:
            return f"{m.group(1)}: {m.group(2)}"[:500]
    if "ActorDiedError" in text or "died unexpectedly" in text or "SYSTEM_ERROR" in text:
        return "the trial process died (killed or out of memory) and its retries are used up"
    return lines[-1][:500]


def skip_reason(node: Node, errors: dict[str, str]) -> str | None:
    """Why ``node`` cannot run: the first upstream node that failed (or was skipped), with its reason."""
    for up in node.upstream:
        if up.key in errors:
            cause = errors[up.key]
            if cause.startswith("skipped: "):  # keep the root cause, not a chain of "skipped: skipped: ..."
                return cause
            return f"skipped: upstream {up.stage} {up.key} failed: {cause}"
    return None


def verify_inputs(plan: Plan, store: ArtifactStore, published: set[str] | None = None) -> dict[str, str]:
    """Before anything runs, from metadata first: a complete node of the plan with an output modified after its
    marker (``ArtifactStore.changed_since_commit``: one listing of the store, no download) was rewritten after it
    was committed; it is re-opened (marker moved aside, event logged) and so is every complete node downstream of
    it, so the node re-runs and its consumers re-run after it. On an object store that is all (0 bytes
    downloaded, no marker read); each file is verified against its marker's sha256 where it is consumed
    (fetch_verified; a corrupt one re-opens its producer in the running launch). On a local or shared filesystem a
    newer file is first hashed (a rewrite with the same bytes, e.g. a copy that did not keep times, is no
    change), and every complete node whose files will be read this launch (an input of a node that is not
    complete, or a node whose rows are not yet in the results) is checked against its marker's sha256; a corrupt,
    truncated or missing file invalidates that node. Repeats until nothing more breaks (re-running a node makes
    its own inputs needed). Returns {node key: what was wrong}."""
    published = published or set()
    found: dict[str, str] = {}
    _reopen_rewritten(plan, store, found)
    if store.remote:
        return found
    checked: set[str] = set()
    while True:
        done = store.list_complete()  # one pass over the store, not a request per node
        incomplete = {k for k, n in plan.nodes.items() if (n.stage, k) not in done}
        needed = {u.key for k in incomplete for u in plan.nodes[k].upstream}
        needed |= {k for k in plan.nodes if k not in published}
        todo = [plan.nodes[k] for k in sorted(needed - incomplete - checked)]
        if not todo:
            return found
        for node in todo:
            checked.add(node.key)
            problem = store.check(node.stage, node.key, sha256=True)
            if problem:
                store.invalidate(node.stage, node.key, problem)
                found[node.key] = problem


def _reopen_rewritten(plan: Plan, store: ArtifactStore, found: dict[str, str]) -> None:
    """Re-open the plan's complete nodes whose outputs changed after their commit, and everything downstream."""
    changed = store.changed_since_commit()
    if not changed:
        return
    done = store.list_complete()
    consumers: dict[str, list[str]] = {}
    for key, node in plan.nodes.items():
        for up in node.upstream:
            consumers.setdefault(up.key, []).append(key)
    reopened: dict[str, str] = {}
    for key, node in sorted(plan.nodes.items()):
        names = changed.get((node.stage, key))
        if not names:
            continue
        problem = f"{', '.join(names)} changed in the store after the node was committed"
        if not store.remote:  # a local read is cheap: a same-bytes rewrite (mtime only) is no change
            problem = store.check(node.stage, key, sha256=True)
            if problem is None:
                continue
        reopened[key] = problem
    frontier = list(reopened)
    while frontier:  # every complete node downstream re-runs after its re-opened upstream
        up = frontier.pop()
        for key in consumers.get(up, []):
            node = plan.nodes[key]
            if key not in reopened and (node.stage, key) in done:
                reopened[key] = f"upstream {plan.nodes[up].stage} {up} re-runs ({reopened[up]})"
                frontier.append(key)
    for key, problem in reopened.items():
        store.invalidate(plan.nodes[key].stage, key, problem)
        found[key] = problem


def failure_table(plan: Plan, errors: dict[str, str]) -> Table:
    """One row per failed or skipped node: stage, key, what it is, and a short reason (a failed node's error
    type, the full reason printed once below the table by ``print_failures``; a skipped node's failed
    upstream node)."""
    table = Table(title=f"{len(errors)} node(s) did not complete")
    for col in ("stage", "node", "task", "paradigm", "sparsity", "seed", "status", "reason"):
        table.add_column(col, overflow="fold")
    for key, reason in sorted(errors.items(), key=lambda kv: (kv[1].startswith("skipped"), kv[0])):
        node = plan.nodes.get(key)
        cols = node.columns if node is not None else {}
        status = "skipped" if reason.startswith("skipped") else "failed"
        sparsity = cols.get("target_sparsity")
        table.add_row(node.stage if node else "?", key, str(cols.get("task", "")), str(cols.get("paradigm", "")),
                      "" if sparsity is None else f"{sparsity:g}", str(cols.get("seed", "")), status,
                      short_reason(reason))
    return table


def short_reason(reason: str) -> str:
    """A reason as the failure table shows it: ``upstream <stage> <key> failed`` for a skipped node, the
    error type (``DivergenceError``) or the first words of a failed node's reason."""
    if reason.startswith("skipped: "):
        upstream, sep, _ = reason.removeprefix("skipped: ").partition(" failed: ")
        return f"{upstream} failed" if sep else upstream
    m = _ERROR_LINE.match(reason)
    if m:
        return m.group(1)
    return reason if len(reason) <= 40 else reason[:39] + "…"


def print_failures(console, plan: Plan, errors: dict[str, str]) -> None:
    """The failure table, then each failed node's full reason once, unwrapped (the root causes: a skipped
    node's reason is its upstream node's)."""
    console.print(failure_table(plan, errors))
    for key, message in errors.items():
        if not message.startswith("skipped"):
            console.print(f"[red]failed node {key}:[/] {message}", highlight=False, soft_wrap=True)
