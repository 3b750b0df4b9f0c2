"""A Tune run that dies of a Ray infrastructure error (an actor killed by Ray's memory monitor while it starts
raises RuntimeError out of Tuner.fit) is started again on the nodes left; anything else still raises."""
from __future__ import annotations

import pytest
import ray.exceptions

from orchestrator import launch


class Store:
    def __init__(self):
        self.listings = 0

    def list_complete(self):
        self.listings += 1
        return {("finetune", f"k{self.listings}")}


def _oom_crash():
    try:
        raise ray.exceptions.OutOfMemoryError("1 worker(s) were killed due to the node running low on memory")
    except ray.exceptions.OutOfMemoryError as err:
        raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed") from err


def test_an_infra_death_restarts_the_run_on_a_fresh_listing():
    calls = []

    def runner(spec, plan, store, root, complete, verbose=False):
        calls.append(set(complete))
        if len(calls) == 1:
            _oom_crash()
        return {"bad": "DivergenceError"}, ["late row"], {"n1", "n2"}

    store = Store()
    errors, failures, finished = launch.run_with_restarts(None, None, store, "root", {("bias_model", "b")},
                                                          runner=runner)
    assert calls == [{("bias_model", "b")}, {("finetune", "k1")}]  # the second run starts from a new listing
    assert (errors, failures, finished) == ({"bad": "DivergenceError"}, ["late row"], {"n1", "n2"})


def test_restarts_are_bounded_and_end_in_one_line():
    calls = []

    def runner(*args, **kwargs):
        calls.append(1)
        _oom_crash()

    with pytest.raises(launch.TuneStopped, match=r"died 3 times .*OutOfMemoryError.*relaunch the same command"):
        launch.run_with_restarts(None, None, Store(), "root", set(), restarts=2, runner=runner)
    assert len(calls) == 3


def test_other_errors_are_not_retried():
    calls = []

    def runner(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("a bug in the driver")

    with pytest.raises(RuntimeError, match="a bug in the driver"):
        launch.run_with_restarts(None, None, Store(), "root", set(), runner=runner)
    assert len(calls) == 1
    assert launch.infra_failure(ValueError("x")) is None
