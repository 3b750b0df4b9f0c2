"""Forward a machine's termination notice to its Ray workers, and wait for them: a Kubernetes ``preStop`` hook.

A preempted node checkpoints the step it reached and exits when *its own process* gets SIGTERM
(workers/preempt.py). Kubernetes signals a pod's main process only (``ray start --block``), and the raylet under
it does not pass the notice on to the trial processes: without this hook a spot pod's running nodes lose
everything since their last periodic checkpoint. Run as the worker container's preStop hook
(docker/kuberay/raycluster.yaml), it sends SIGTERM to every Ray worker process of the pod's raylet(s) (the
raylet's children titled ``ray::...``, Ray's own agents left alone), then waits until they have exited, at most
``--grace`` seconds (keep it below the pod's ``terminationGracePeriodSeconds``, which counts the hook's time).

    python -m workers.forward_sigterm --grace 100

Linux only (reads /proc); prints one line and exits 0 whatever it finds: a hook that fails only delays the pod.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def _argv0(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace").strip()  # Ray rewrites it: "ray::ImplicitFunc.train"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the name in parentheses may contain spaces
    return fields[0], int(fields[1])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def raylets() -> list[int]:
    return [pid for pid in _pids() if os.path.basename(_argv0(pid)) == "raylet"]


def ray_workers(raylet_pids: list[int]) -> list[int]:
    """The worker processes (tasks, actors, Tune trials; idle ones too) started by these raylets."""
    parents = set(raylet_pids)
    out = []
    for pid in _pids():
        st = _stat(pid)
        if st is None or st[1] not in parents or st[0] == "Z":
            continue
        name = _argv0(pid)
        if name.startswith("ray::") and not name.endswith("Agent"):  # not ray::DashboardAgent / RuntimeEnvAgent
            out.append(pid)
    return sorted(out)


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def forward(grace: float, raylet_pids: list[int] | None = None, poll: float = 0.2) -> dict:
    """SIGTERM every Ray worker of ``raylet_pids`` (default: every raylet on this machine) and wait up to ``grace``
    seconds for them to exit. Returns {"signalled": [pids], "left": [pids still running], "waited_s": seconds}."""
    workers = ray_workers(raylets() if raylet_pids is None else raylet_pids)
    signalled = []
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    start = time.monotonic()
    left = [p for p in signalled if alive(p)]
    while left and time.monotonic() - start < grace:
        time.sleep(poll)
        left = [p for p in left if alive(p)]
    return {"signalled": signalled, "left": left, "waited_s": round(time.monotonic() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.forward_sigterm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grace", type=float, default=100.0,
                    help="seconds to wait for the workers to checkpoint and exit (default 100)")
    ap.add_argument("--raylet-pid", type=int, action="append", default=None,
                    help="only this raylet's workers (repeatable; default: every raylet on this machine)")
    args = ap.parse_args(argv)
    got = forward(args.grace, args.raylet_pid)
    print(f"forward_sigterm: SIGTERM to {len(got['signalled'])} Ray worker(s); "
          f"{len(got['signalled']) - len(got['left'])} exited in {got['waited_s']} s"
          + (f", still running after the grace period: {got['left']}" if got["left"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
