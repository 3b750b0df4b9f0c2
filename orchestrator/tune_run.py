"""The Ray Tune side of a launch: one Tune run whose Searcher hands out a ``DagScheduler``'s nodes as their
inputs complete (``orchestrator.launch.run_plan`` drives it).

* ``TuneRun``: trial configs (node payloads sized per stage), per-trial resources, each failed trial's
  one-line error, and the ``tune.Tuner`` built from them. Its searcher hands out only what can start now
  (``orchestrator.admission``) and each node's ``started_at`` is stamped when its trial starts (Tune's
  ``on_trial_start``), not when it is handed out (``queued_at``).
* ``tune_env()``: what every launch turns off in Tune (per-trial loggers, frequent experiment-state rewrites).
* ``no_metrics_files_warning()``: Tune's end-of-run warning about the logger files it did not write, dropped.
* ``env_vars(**changes)``: environment variables set for a block and restored on exit.
* ``tune_logs_to_events(store)``: Tune's log records (the "Trial task failed" tracebacks among them) go to
  the artifact store's events log instead of the console, so a failed node reads as one line there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

from ray import tune
from ray.tune import PlacementGroupFactory

from workers.preempt import PreemptionNotice

from . import cluster as clusterlib

# Loggers whose records a quiet launch sends to the events log (Tune and the Train/AIR layers under it)
TUNE_LOGGERS = ("ray.tune", "ray.train", "ray.air")


# Tune's experiment state (every trial's config and last result, rewritten whole) is disposable here: completion
# lives in the artifact store, and a relaunch never restores a Tune run. Rewritten at most this often (seconds;
# Tune's default "auto" rewrites it every 10 s or more, costing O(trials) each time), and at the end.
EXPERIMENT_STATE_EVERY_S = "900"


def tune_env() -> dict[str, str]:
    """Environment a launch's Tune run needs for what it does not use to be off:

    * ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: no CSV, JSON or TensorBoard logger per trial (progress.csv,
      result.json, params.json/.pkl, events.out.tfevents: nothing reads them; rows go to the results dataset).
      The TensorBoard one also warned "NaN or Inf found in input tensor" for a NaN metric of a trial.
    * ``TUNE_GLOBAL_CHECKPOINT_S``: the experiment state rewritten every ``EXPERIMENT_STATE_EVERY_S`` seconds
      instead of Tune's adaptive 10 s+ (the caller's value, if set, wins).
    """
    return {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
            "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_EVERY_S)}


class _NoMetricsFiles(logging.Filter):
    """Drops Tune's end-of-run "Failed to fetch metrics for N trial(s)" warning: with the per-trial loggers
    off (``tune_env``) there is no result.json or progress.csv to build its ResultGrid from, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to fetch metrics for")


@contextlib.contextmanager
def no_metrics_files_warning():
    """For the block, Tune does not warn that the per-trial metrics files it was told not to write are missing."""
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    quiet = _NoMetricsFiles()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextlib.contextmanager
def env_vars(**changes: str | None):
    """Set each named environment variable for the block (None: leave it as it is); on exit every one is
    back to its value before, or unset if it was unset."""
    saved = {name: os.environ.get(name) for name, value in changes.items() if value is not None}
    try:
        for name in saved:
            os.environ[name] = str(changes[name])
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EventsLogHandler(logging.Handler):
    """Log records as events of the artifact store's events log (``<root>/_events/<host>-<pid>.jsonl``;
    for a URI store, the local cache's): event ``log``, with the level, the logger and the message, its
    traceback included."""

    def __init__(self, store, level: int = logging.INFO):
        super().__init__(level)
        if store.remote:  # a URI store keeps no events: this process's go to its local cache
            from workers.store import ArtifactStore

            store = ArtifactStore(store.cache)
        self.store = store
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.store.log_event("log", "", "", level=record.levelname, logger=record.name,
                                 message=self.format(record))
        except Exception:  # noqa: BLE001 - logging must never stop the sweep
            self.handleError(record)


@contextlib.contextmanager
def tune_logs_to_events(store, loggers: tuple[str, ...] = TUNE_LOGGERS):
    """For the block, the records of ``loggers`` go to the events log only (not to Ray's console handler)."""
    handler = EventsLogHandler(store)
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


def trial_error(trial) -> str:
    """A failed trial's error as one line: the innermost ``SomeError: message`` of its text ("" if none)."""
    from . import failures

    text = ""
    if trial is not None:
        text = trial.get_error() or (open(trial.error_file).read() if trial.error_file and
                                     os.path.exists(trial.error_file) else "")
    return failures.reason_of(text) if str(text).strip() else ""


def trainable(config: dict) -> None:
    from workers.trainable import stage_trainable

    stage_trainable(config)


# Tune builds the trial actor's class from the function and these mixins: PreemptionNotice sets the SIGTERM
# handler in the actor's main thread (the function runs in a thread of its own, where none can be set)
trainable.__mixins__ = (PreemptionNotice,)


def trial_resources(config: dict) -> PlacementGroupFactory:
    """Per trial: stages ask for different resources (fractional GPUs too)."""
    r = config["node"]["resources"]
    return PlacementGroupFactory([{"CPU": r["cpu"], "GPU": r["gpu"]}])


def trial_dirname(trial) -> str:
    return trial.config["node"]["key"]


def trial_name(trial) -> str:
    return f"{trial.config['node']['stage']}-{trial.config['node']['key']}"


class _TrackTrials(tune.Callback):
    def __init__(self, run: "TuneRun"):
        self.run = run

    def on_trial_add(self, iteration, trials, trial, **info):
        self.run.trials[trial.trial_id] = trial

    def on_trial_start(self, iteration, trials, trial, **info):
        # its actor holds the trial's resources from now (a new actor, or a reused one after its reset)
        self.run.scheduler.node_started(trial.config["node"]["key"])

    def on_trial_error(self, iteration, trials, trial, **info):
        self.run.late_error(trial)

    def __reduce__(self):  # Tune pickles its run config (tuner.pkl): leave the live scheduler out
        return (tune.Callback, ())


class TuneRun:
    """One Tune run over a scheduler's nodes. ``resources``: {stage: trial resources} (a stage only a
    producer's nodes use is sized when its first node comes up); ``publisher``: the launch's RowPublisher.
    ``trainable_fn``: the function each trial runs (default: the stage trainable; bench/tune_order.py passes a
    sleep). ``admission``: an ``orchestrator.admission.Admission`` (default: one over the Ray cluster's
    resources, signalling the autoscaler when the cluster has one); False hands out every ready node at once
    (the behaviour before issue 24, kept for measuring it)."""

    def __init__(self, spec, store, scheduler, publisher, resources: dict, cluster: dict, trainable_fn=None,
                 admission=None):
        self.spec, self.store, self.scheduler, self.publisher = spec, store, scheduler, publisher
        self.resources, self.cluster = resources, cluster
        self.trainable = trainable_fn or trainable
        if admission is None:
            from .admission import Admission

            autoscale = cluster.get("node_types") is not None or bool(cluster.get("joined"))
            admission = Admission(self.request, autoscale=autoscale,
                                  max_bundles=spec.resources.max_concurrent_trials or 1000)
        self.admission = admission or None
        self.trials: dict = {}  # trial id -> Trial, for its error text

    def stage_resources(self, stage: str) -> dict:
        from .launch import node_resources

        if stage not in self.resources:
            self.resources[stage] = node_resources(self.spec, stage, 1, self.cluster)
        return self.resources[stage]

    def request(self, node) -> dict:
        """The node's trial resources as Ray names them (what ``trial_resources`` asks Tune for)."""
        res = self.stage_resources(node.stage)
        return {"CPU": res["cpu"], "GPU": res["gpu"]}

    def payload(self, node) -> dict:
        from .launch import node_payload

        res = self.stage_resources(node.stage)
        node.stage_config["device"] = "cuda" if res["gpu"] > 0 else "cpu"
        return {**node_payload(node, self.store, res), "queued_at": self.scheduler.queued_at.get(node.key)}

    def error_of(self, trial_id: str) -> str:
        return trial_error(self.trials.get(trial_id)) or "failed"

    def late_error(self, trial) -> None:
        """Tune tells the Searcher of a failure before its callbacks; if the error text was not readable then,
        record it now and publish the node's error row again (same file: idempotent)."""
        key = trial.config["node"]["key"]
        if self.scheduler.message.get(key) == "failed":
            message = trial_error(trial)
            if message:
                self.scheduler.set_message(key, message)
                self.publisher.submit(self.scheduler.nodes[key], "failed", message)

    def tuner(self, verbose: bool = False) -> tune.Tuner:
        from .scheduler import make_searcher

        spec = self.spec
        return tune.Tuner(
            tune.with_resources(self.trainable, trial_resources),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(self.scheduler, self.payload, self.error_of, self.admission),
                num_samples=-1,  # the searcher says when it is done (Searcher.FINISHED)
                max_concurrent_trials=spec.resources.max_concurrent_trials,
                reuse_actors=True,  # a new trial process costs seconds (torch + transformers imports)
                trial_dirname_creator=trial_dirname,
                trial_name_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=f"{spec.name}-{int(time.time())}",
                storage_path=clusterlib.tune_storage(spec.output_dir, spec.name),
                # a retried trial resumes its node from the last checkpoint in the store
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_retries_infra),
                callbacks=[_TrackTrials(self)],
                verbose=1 if verbose else 0,
            ),
        )

    def close(self) -> None:
        """After the run: the autoscaler's demand is withdrawn."""
        if self.admission is not None:
            self.admission.close()

    def outcome(self) -> tuple[dict[str, str], set[tuple[str, str]]]:
        """({node key: error} of failed, skipped and never-run nodes, (stage, key) of the nodes done)."""
        status = self.scheduler.snapshot()
        errors = {k: self.scheduler.message.get(k, s) for k, s in status.items() if s in ("failed", "skipped")}
        for key, s in status.items():
            if s in ("waiting", "ready", "running"):  # Tune stopped early (e.g. interrupted)
                errors[key] = f"not run: the Tune run ended while it was {s}"
        return errors, {(self.scheduler.nodes[k].stage, k) for k, s in status.items() if s == "done"}
