"""Spot-preemption notices: SIGTERM while a node trains checkpoints it at once and stops it.

A cloud gives a preempted machine a short notice (SIGTERM, then SIGKILL 30 s to 2 min later). While a node
trains in this process, the handler only sets a flag (``srnet_core.train.request_stop``); the training loop
polls it after every optimizer step, hands the state at that step boundary to the node's checkpoint writer
(written and, on a URI store, pushed with the node's outputs, as the periodic checkpoint is) and raises
``srnet_core.train.Preempted``, which ``workers.trainable.retryable`` counts as infrastructure: Tune retries the
node (an attempt of ``resources.max_retries_infra``) from that checkpoint, on any machine. A SIGTERM when no
node trains does what the process's previous handler did (a Ray worker exits).

Python runs signal handlers in the main thread, and only the main thread may set one. Tune runs a function
trainable in a thread of its own, so the handler is set by ``PreemptionNotice.setup``, which runs in the trial
actor's main thread when the actor is created (the launch's trainable carries it as ``__mixins__``); a plain
process calling ``run_node`` from its main thread gets it from ``notice()`` around the run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from srnet_core.train import clear_stop, request_stop

_previous = None  # the handler ours replaced: called for a SIGTERM when no node trains
_running = 0  # nodes training in this process now


def _on_sigterm(signum, frame) -> None:
    if _running:
        request_stop("SIGTERM (preemption notice)")
        return
    previous = _previous
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default action: terminate
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def install() -> bool:
    """Set the SIGTERM handler (idempotent). Only in the main thread; elsewhere returns False, unchanged."""
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return False
    if not installed():
        _previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def uninstall() -> None:
    global _previous
    if installed() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
        _previous = None


@contextlib.contextmanager
def notice():
    """Around one node's run: a SIGTERM meanwhile stops it at a checkpoint. In the main thread the handler is
    set here (and the previous one restored after, with the stop request: the notice was for this run); in
    any other thread the one set earlier in the main thread (``PreemptionNotice``) serves."""
    global _running
    own = not installed() and install()
    _running += 1
    try:
        yield
    finally:
        _running -= 1
        if own:
            uninstall()
            clear_stop()


class PreemptionNotice:
    """Mixin for Tune's function trainable (``fn.__mixins__ = (PreemptionNotice,)``): ``setup`` runs in the
    trial actor's main thread, so the SIGTERM handler is set there before the training thread starts."""

    def setup(self, config):
        install()
        super().setup(config)
