"""The preStop hook that forwards a pod's termination notice to its Ray workers (workers/forward_sigterm.py), on
the session's real local Ray: the actor process gets SIGTERM, finishes what its handler does (a stand-in for the
checkpoint push: a file written after 1 s) and exits, the hook waits for it, and Ray's own agents are left alone.
The hook is pointed at this Ray's raylet, so no other Ray on the machine is touched."""
from __future__ import annotations

import os
import signal
import time

import pytest

from workers import forward_sigterm


def _raylet_pid() -> int:
    import ray

    node = ray._private.worker._global_node  # the raylet this test's ray.init started
    (info,) = node.all_processes["raylet"]
    return info.process.pid


def test_a_preStop_hook_gets_sigterm_to_the_ray_workers_and_waits_for_them(ray_env, tmp_path):
    import ray

    @ray.remote(num_cpus=0)
    class Training:
        def __init__(self, flag: str):
            def on_term(signum, frame):  # as workers/preempt.py: finish the step, push the checkpoint, exit
                time.sleep(1.0)
                with open(flag, "w") as f:
                    f.write(str(os.getpid()))
                os._exit(1)

            signal.signal(signal.SIGTERM, on_term)  # sync actors run in the worker's main thread

        def pid(self) -> int:
            return os.getpid()

    flag = str(tmp_path / "checkpointed")
    actor = Training.remote(flag)
    pid = ray.get(actor.pid.remote())
    raylet = _raylet_pid()
    workers = forward_sigterm.ray_workers([raylet])
    assert pid in workers
    agents = [p for p in forward_sigterm._pids() if forward_sigterm._argv0(p).endswith("Agent")
              and forward_sigterm._stat(p)[1] == raylet]
    assert not set(agents) & set(workers)

    got = forward_sigterm.forward(grace=30, raylet_pids=[raylet])
    assert pid in got["signalled"] and got["left"] == [] and 0.5 <= got["waited_s"] < 30  # it waited for the 1 s
    assert open(flag).read() == str(pid)  # the handler ran to its end before the hook returned
    assert not forward_sigterm.alive(pid)
    assert all(forward_sigterm.alive(p) for p in agents)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.pid.remote(), timeout=60)
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=120) == 1  # the raylet still runs tasks


def test_the_hook_prints_one_line_and_never_fails(capsys):
    """No raylet (or none of the given pid): nothing to signal, exit 0, one line."""
    assert forward_sigterm.main(["--grace", "0", "--raylet-pid", str(os.getpid())]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["forward_sigterm: SIGTERM to 0 Ray worker(s); 0 exited in 0.0 s"]
