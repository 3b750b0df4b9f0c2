"""Run a sweep: ``python -m orchestrator.launch sweeps/smoke.yaml [--address ray://...] [--dry-run] [--status]``.
Rehearse one: ``... --simulate [--simulate-gpus 64] [--time-scale 0.001]`` (placeholders, not results; below).

spec -> plan (stage DAG, content keys) -> skip complete nodes -> ONE Ray Tune run whose Searcher hands out nodes
as their inputs complete (orchestrator.scheduler) -> Parquet rows published per node -> summary table, figure
and report. A live progress view replaces Tune's reporter, and Tune's log (failed trials' tracebacks) goes to
the store's events log (``--verbose`` brings both back to the console). Exits 1 if any node failed (after a
table of failed and skipped nodes and each root cause once), 2 on a spec mistake.

``--simulate`` rehearses the sweep: the real plan through the real launch path (scheduler, admission, one Tune
run, leases, artifact store, row publisher, progress view) on a local Ray given ``--simulate-gpus`` fake GPUs,
each node's stage replaced by a sleep of its planned duration (orchestrator/plan/estimates.py) times
``--time-scale`` that writes its declared outputs as placeholder files (workers/simulate.py). Everything goes
to ``<output_dir>-simulated`` (or ``--output-dir``), marked as a rehearsal; rows say ``simulated = True``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from srnet_core.stages import get_kind
from srnet_core.stages.registry import plugin_list
from workers.store import ArtifactStore

from . import cluster as clusterlib
from . import failures, results
from .plan import Node, Plan, build_plan, calibration_label, estimate_gpu_hours, use_calibration
from .plan.cost import CostModelError
from .preflight import check_launch
from .spec import SpecError, SweepSpec, load_spec

console = Console(width=None if sys.stdout.isatty() else 140)


def node_payload(node: Node, store: ArtifactStore, resources: dict | None = None) -> dict:
    return {"key": node.key, "stage": node.stage, "stage_config": node.stage_config,
            "inputs": {name: [i.node.stage, i.node.key, i.filename] for name, i in node.inputs.items()},
            "artifact_root": store.root, "resources": resources or {},
            "plugins": plugin_list(),  # the spec's plugins: the worker imports them (their stage kinds) first
            # checked by the worker before it runs: same code, and the driver's store (not a node-local copy)
            "versions": clusterlib.driver_versions(node.stage), "store_id": clusterlib.store_identity(store.root),
            "columns": {**node.columns, "upstream_keys": ",".join(u.key for u in node.upstream)}}


def print_plan(spec: SweepSpec, plan: Plan, complete: set[tuple[str, str]]) -> None:
    hours = estimate_gpu_hours(plan)
    table = Table(title=f"plan for sweep '{spec.name}'")
    for col in ("stage", "nodes", "complete", "to run", "est. GPU-hours"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for stage, count in plan.count_by_stage().items():
        done = sum((stage, n.key) in complete for n in plan.nodes.values() if n.stage == stage)
        table.add_row(stage, str(count), str(done), str(count - done), f"{hours.get(stage, 0.0):,.1f}")
    console.print(table)
    console.print(f"{len(plan.nodes)} stage nodes; a naive per-trial expansion would run {plan.naive_runs} "
                  f"({plan.naive_runs / max(1, len(plan.nodes)):.1f}x). Estimated {sum(hours.values()):,.1f} "
                  f"GPU-hours, one device per node, calibration {calibration_label()} (orchestrator/plan/cost.py, "
                  "docs/cost.md).", highlight=False, soft_wrap=True)


def node_resources(spec: SweepSpec, stage: str, n_trials: int, cluster: dict | None = None) -> dict:
    """CPUs and GPUs of one trial (orchestrator/cluster.py trial_resources). ``cluster``: a
    ``clusterlib.shape()``, or a resource total such as ``ray.cluster_resources()`` taken as one node."""
    if cluster is None:
        cluster = clusterlib.shape()
    if "nodes" not in cluster:
        cluster = {"nodes": [{"CPU": float(cluster.get("CPU", 0)), "GPU": float(cluster.get("GPU", 0))}],
                   "node_types": None}
    return clusterlib.trial_resources(spec, stage, n_trials, cluster["nodes"], cluster["node_types"],
                                      cluster.get("joined", False))


def validate_resources(spec: SweepSpec, plan: Plan, todo: list[Node], cluster: dict) -> dict[str, dict]:
    """Every stage's trial resources, checked before anything runs (a GPU the cluster lacks fails now, for
    every stage at once rather than when its first node comes up). "auto" CPUs are shared among the trials
    that can run at once: the widest wave of remaining nodes (capped by max_concurrent_trials)."""
    width = concurrent_width(spec, plan, todo)
    return {stage: node_resources(spec, stage, width, cluster) for stage in plan.count_by_stage()}


def concurrent_width(spec: SweepSpec, plan: Plan, todo: list[Node]) -> int:
    """How many of the remaining nodes can run at once: the widest wave (capped by max_concurrent_trials)."""
    todo_keys = {n.key for n in todo}
    width = max((sum(n.key in todo_keys for n in wave) for wave in plan.waves()), default=1)
    if spec.resources.max_concurrent_trials:
        width = min(width, spec.resources.max_concurrent_trials)
    return max(1, width)


class RowPublisher:
    """Publishes each ended node's rows from a worker thread, off Tune's event loop. A failed publish is
    caught and reported (the final ``collect`` publishes whatever is still missing)."""

    def __init__(self, store: ArtifactStore, root: str):
        import queue
        import threading

        self.store, self.root = store, root
        self.failures: list[str] = []
        self.published = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="publish-rows", daemon=True)
        self._thread.start()

    def submit(self, node: Node, status: str, message: str) -> None:
        self._queue.put((node, None if status == "done" else message))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            node, error = item
            try:
                publish_node(node, self.store, self.root, error, known_complete=error is None)
                self.published += 1
            except Exception as err:  # never kill the sweep for a row file; report it at the end
                self.failures.append(f"{node.stage} {node.key}: {type(err).__name__}: {err}")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def run_plan(spec: SweepSpec, plan: Plan, store: ArtifactStore, root: str, complete: set[tuple[str, str]],
             verbose: bool = False, on_scheduler=None, trainable_fn=None,
             observe=None) -> tuple[dict[str, str], list[str], set[tuple[str, str]]]:
    """Run every incomplete node of the plan in ONE Tune run, dependency-driven (orchestrator.scheduler).
    Returns ({node_key: error} for failed and skipped nodes, row-publishing failures, (stage, key) of the
    nodes completed by this run). Unless ``verbose``, Tune's own output is off and its log records (failed
    trials' tracebacks) go to the store's events log (orchestrator/tune_run.py).

    ``on_scheduler(scheduler)``: for producers of more nodes (e.g. a search): called before Tune starts with
    the run's ``DagScheduler``, opened (``keep_open``) so the run waits for nodes it adds until it calls
    ``scheduler.close()``. ``trainable_fn``: what each trial runs (default: the stage; a rehearsal passes
    ``workers.simulate.simulated_trainable``). ``observe(run)``: called with the ``TuneRun`` before Tune starts,
    e.g. to read every node's times from ``run.scheduler`` afterwards."""
    from .plan import node_seconds
    from .progress import LiveProgress
    from .scheduler import DagScheduler
    from .tune_run import TuneRun, env_vars, no_metrics_files_warning, tune_env, tune_logs_to_events

    todo = [n for n in plan.nodes.values() if (n.stage, n.key) not in complete]
    if not todo and on_scheduler is None:
        return {}, [], set()
    cluster = clusterlib.shape()
    resources = validate_resources(spec, plan, todo, cluster)
    scheduler = DagScheduler(duration=node_seconds, keep_open=on_scheduler is not None)
    publisher = RowPublisher(store, root)
    scheduler.on_node_done(publisher.submit)
    scheduler.add_nodes(plan.nodes.values(), complete={key for _, key in complete})
    if on_scheduler is not None:
        on_scheduler(scheduler)
    run = TuneRun(spec, store, scheduler, publisher, resources, cluster, trainable_fn=trainable_fn)
    if observe is not None:
        observe(run)
    gpus = {n.key: resources[n.stage]["gpu"] for n in plan.nodes.values() if n.stage in resources}
    every = float(os.environ.get("SRNET_PROGRESS_EVERY", "30"))
    env = {
        **tune_env(),  # no per-trial loggers, rare experiment-state rewrites (orchestrator/tune_run.py)
        # Tune's new console output prints its experiment header even at verbose=0; the legacy one is silent
        "RAY_AIR_NEW_OUTPUT": None if verbose else "0",
        # With a custom Searcher Tune keeps ONE pending trial unless told otherwise: ready nodes would then
        # start one at a time. Tune may ask for up to this many per step; the searcher hands out only what
        # fits the free resources (orchestrator/admission.py), so pending trials never queue behind each other
        # and a critical-path node that becomes ready later is the next to start. The autoscaler learns the
        # rest of the ready queue from request_resources, not from pending trials (unless the caller set it).
        "TUNE_MAX_PENDING_TRIALS_PG": os.environ.get("TUNE_MAX_PENDING_TRIALS_PG",
                                                     str(min(200, concurrent_width(spec, plan, todo)))),
    }
    quiet = contextlib.nullcontext() if verbose else tune_logs_to_events(store)
    try:
        with env_vars(**env), no_metrics_files_warning(), quiet, LiveProgress(plan, scheduler, gpus, console,
                                                                               every=every):
            run.tuner(verbose).fit()
    finally:
        run.close()
        publisher.close()
    errors, finished = run.outcome()
    return errors, publisher.failures, finished


# Tune itself can die of what kills one worker: Ray's memory monitor killing a trial actor while it starts
# raises RuntimeError out of Tuner.fit (ray.air actor_manager: "Caught unexpected exception"), which ended a
# 22-node sweep 47 minutes in (2026-12-03). Nodes are content-keyed and resume from their checkpoints, so the
# launch starts a new Tune run on what is left instead of ending with a traceback.
TUNE_RESTARTS = 3
_INFRA_ERRORS = ("OutOfMemoryError", "RayActorError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError",
                 "ObjectLostError", "RaySystemError", "GetTimeoutError")


class TuneStopped(Exception):
    """The Tune run kept dying of infrastructure errors after TUNE_RESTARTS restarts."""


def infra_failure(err: BaseException) -> str | None:
    """The Ray infrastructure error behind ``err`` (its cause chain), as one line; None for anything else."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ in _INFRA_ERRORS and type(err).__module__.startswith("ray"):
            return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        err = err.__cause__ or err.__context__
    return None


def run_with_restarts(spec, plan, store, root, complete, verbose=False, restarts: int = TUNE_RESTARTS, runner=None):
    """``run_plan``, started again (from a fresh listing of the store) when Tune dies of an infrastructure
    error; errors, publish failures and finished nodes are merged over the runs."""
    runner = runner or run_plan
    errors, publish_failures, finished = {}, [], set()
    for attempt in range(restarts + 1):
        try:
            e, p, f = runner(spec, plan, store, root, complete, verbose=verbose)
        except (SpecError, clusterlib.ClusterError):
            raise
        except Exception as err:  # noqa: BLE001 - only Ray infrastructure errors are retried; others re-raise
            why = infra_failure(err)
            if why is None:
                raise
            if attempt == restarts:
                raise TuneStopped(f"the Tune run died {restarts + 1} times of infrastructure errors, last: {why}. "
                                  "Nothing finished is lost: relaunch the same command to continue") from None
            console.print(f"[yellow]the Tune run died ({why}); restarting it on the nodes left (finished nodes "
                          f"are kept, interrupted ones resume from their checkpoints)[/]", highlight=False)
            complete = store.list_complete()
            continue
        errors.update(e)
        publish_failures += p
        finished |= f
        return errors, publish_failures, finished


def error_frame(node: Node, message: str) -> pd.DataFrame:
    row = {**node.columns, "node_key": node.key, "stage": node.stage, "status": "failed", "error": message,
           "metric": "error", "value": float("nan"), "eval_dataset": "", "eval_role": "", "step": -1,
           "selected": False}
    return pd.DataFrame([row])


def publish_node(node: Node, store: ArtifactStore, root: str, error: str | None = None,
                 known_complete: bool = False) -> None:
    if error is not None:
        results.publish(root, error_frame(node, error))
    # an internal node (StageKind.publishes False, e.g. the teacher: one row, its accuracy on the training
    # data, which curves and checkpoint re-selection must not see) keeps its rows in the store; failures publish
    elif not get_kind(node.stage).publishes:
        return
    elif known_complete or store.is_complete(node.stage, node.key):
        results.publish(root, pd.read_parquet(store.fetch(node.stage, node.key, "rows.parquet")))


def collect(plan: Plan, store: ArtifactStore, root: str, errors: dict[str, str],
            complete: set[tuple[str, str]] | None = None) -> None:
    """Publish every node of the plan not yet in the results: failures, and nodes finished by earlier runs
    (or other sweeps sharing the store). Idempotent: one file per node."""
    try:
        existing = results.load(root, columns=["node_key", "status"])
        done = set(existing.loc[existing["status"] == "completed", "node_key"])
        failed = set(existing.loc[existing["status"] == "failed", "node_key"])
    except FileNotFoundError:
        done, failed = set(), set()
    if complete is None:
        complete = store.list_complete()
    for node in plan.nodes.values():
        if node.key in errors:
            if node.key not in failed:  # the launch's publisher wrote it already, unless it failed to
                publish_node(node, store, root, errors[node.key])
        elif node.key not in done and (node.stage, node.key) in complete and get_kind(node.stage).publishes:
            publish_node(node, store, root, known_complete=True)


def summarize(frame: pd.DataFrame) -> Table:
    """The selected-checkpoint accuracy per curve point (the same numbers as the report: ddof=1)."""
    curve = results.sparsity_curve(frame[frame["status"] == "completed"])
    curve = curve[curve["metric"] == "accuracy"]
    table = Table(title="accuracy at the checkpoint selected on ID dev: mean ± std over seeds")
    for col in ("task", "backbone", "paradigm", "method", "loss", "sparsity", "measured", "dataset", "accuracy",
                "seeds"):
        table.add_column(col)
    for row in curve.itertuples(index=False):
        std = "" if pd.isna(row.std) else f" ± {row.std:.3f}"
        table.add_row(str(row.task), str(row.backbone), str(row.paradigm), str(row.method), str(row.loss),
                      f"{row.target_sparsity:.2f}", f"{row.measured_sparsity:.4f}", str(row.eval_dataset),
                      f"{row.mean:.3f}{std}", str(row.n_seeds))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep YAML (see sweeps/)")
    parser.add_argument("--address", help="Ray cluster address; default: start an embedded local Ray")
    parser.add_argument("--output-dir", help="override the spec's output_dir: a directory every node shares or "
                                             "an s3:// / gs:// URI (the usual choice on a cluster)")
    parser.add_argument("--no-ship-code", action="store_true",
                        help="with --address: use the code installed on the nodes (a pinned image) instead of "
                             "shipping this checkout's packages; nodes still refuse a version mismatch")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; touches no model")
    parser.add_argument("--skip-input-checks", action="store_true", help="do not check data files and backbones "
                        "first (e.g. to view a plan on a machine without the data); orchestrator/preflight.py")
    parser.add_argument("--status", action="store_true",
                        help="print the sweep's progress from its artifact store and results, and exit (works "
                             "while the sweep runs elsewhere)")
    parser.add_argument("--verbose", action="store_true",
                        help="on the console too: Tune's trial tables, its log (failed trials' tracebacks; "
                             "otherwise in the events log <artifact_store>/_events/) and the workers' logs")
    parser.add_argument("--no-figure", action="store_true", help="skip the PNG figure")
    parser.add_argument("--no-report", action="store_true", help="skip the Markdown report and its figures")
    parser.add_argument("--calibration", help="the cost model's calibration for the estimates, the scheduler's "
                        "ordering and the ETA: a file in bench/calibration/ or a path (default: the spec's "
                        "cost_calibration, else $SRNET_CALIBRATION, else the H200 file)")
    sim = parser.add_argument_group("rehearsal", "rehearse the sweep on this machine before renting the cluster")
    sim.add_argument("--simulate", action="store_true",
                     help="run the plan through the real launch path on a local Ray with fake GPUs, each node a "
                          "sleep of its planned duration x --time-scale writing placeholder outputs; output to "
                          "<output_dir>-simulated (or --output-dir), rows marked simulated")
    sim.add_argument("--simulate-gpus", metavar="N", help="fake GPUs of the local Ray (default 8)")
    sim.add_argument("--simulate-cpus", metavar="N", help="its CPUs (default 8 per fake GPU; Ray only counts them)")
    sim.add_argument("--time-scale", metavar="F", help="simulated seconds per planned second (default 0.001: a "
                                                      "planned GPU-hour sleeps 3.6 s)")
    sim.add_argument("--simulate-noise", metavar="F", help="each duration times U(1-F, 1+F), like bench/scheduler.py "
                                                          "(default 0: the planned durations)")
    sim.add_argument("--seed", metavar="N", help="the noise's seed (default 0)")
    return parser.parse_args(argv)


SIM_DEFAULTS = {"simulate_gpus": "8", "time_scale": "0.001", "simulate_noise": "0", "seed": "0"}


def simulate_options(args: argparse.Namespace) -> dict | None:
    """The rehearsal's settings from the flags (None without --simulate); a bad flag raises SpecError."""
    # getattr: callers that build their own Namespace (the search CLI, tests) have no rehearsal flags
    given = [name for name in ("simulate_gpus", "simulate_cpus", "time_scale", "simulate_noise", "seed")
             if getattr(args, name, None) is not None]
    if not getattr(args, "simulate", False):
        if given:
            raise SpecError(f"--{given[0].replace('_', '-')} needs --simulate")
        return None
    if args.address:
        raise SpecError("--simulate runs on a local Ray with fake GPUs; drop --address")

    def number(name: str, kind, check, what: str):
        text = getattr(args, name)
        text = SIM_DEFAULTS.get(name) if text is None else text
        flag = "--" + name.replace("_", "-")
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise SpecError(f"{flag} {text}: not a number; give {what}") from None
        if not check(value):
            raise SpecError(f"{flag} {text}: give {what}")
        return value

    gpus = number("simulate_gpus", int, lambda v: 1 <= v <= 4096, "a whole number of GPUs from 1 to 4096")
    cpus = (number("simulate_cpus", int, lambda v: 1 <= v <= 65536, "a whole number of CPUs from 1 to 65536")
            if args.simulate_cpus is not None else 8 * gpus)
    scale = number("time_scale", float, lambda v: 0 < v <= 1, "a factor in (0, 1], e.g. 0.001")
    noise = number("simulate_noise", float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    seed = number("seed", int, lambda v: True, "a whole number")
    return {"gpus": gpus, "cpus": cpus, "time_scale": scale, "noise": noise, "seed": seed}


def simulated_output_dir(spec: SweepSpec, output_dir: str | None) -> str:
    """Where a rehearsal writes: ``--output-dir``, else ``<output_dir>-simulated`` (a local
    ``results/<name>-simulated`` when the spec's output_dir is a URI: a rehearsal runs on this machine)."""
    if output_dir:
        return clusterlib.resolve_path(output_dir)
    if "://" in spec.output_dir:
        return os.path.abspath(os.path.join("results", f"{spec.name}-simulated"))
    return spec.output_dir.rstrip("/" + os.sep) + "-simulated"


def check_simulated_target(spec: SweepSpec, real_output: str, real_store: str, source: str) -> None:
    """A rehearsal writes placeholders: refuse the spec's own output directory and artifact store, and any
    results or store that hold something and are not a rehearsal's."""
    import pyarrow.fs as pafs

    from workers.simulate import is_simulated

    def same(a: str, b: str) -> bool:
        norm = (lambda p: p.rstrip("/") if "://" in p else os.path.abspath(p))
        return norm(a) == norm(b)

    if same(spec.output_dir, real_output) or same(spec.artifact_root(), real_store):
        raise SpecError(f"{source}: --simulate would write placeholder files into the sweep's real output "
                        f"'{real_output}'; give --output-dir another directory (default: <output_dir>-simulated)")
    for root in (spec.artifact_root(), results.results_dir(spec.output_dir)):
        fs, base = clusterlib.filesystem(root)
        try:
            entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (OSError, ValueError):
            continue  # not there (or not listable): nothing to mix with
        if entries and not is_simulated(root):
            raise SpecError(f"{source}: --simulate: '{root}' holds a real sweep's files; give --output-dir an "
                            "empty directory or an earlier rehearsal's")


def load(args: argparse.Namespace) -> tuple[SweepSpec, Plan, ArtifactStore]:
    """The spec, its plan and its store, with everything a launch would refuse checked before Ray starts;
    a mistake raises SpecError (one line)."""
    sim = simulate_options(args)
    spec = load_spec(args.spec)
    if sim is not None:  # placeholders never go to the real output: their own directory and store
        real_output, real_store = spec.output_dir, spec.artifact_root()
        spec.output_dir, spec.artifact_store = simulated_output_dir(spec, args.output_dir), None
        check_simulated_target(spec, real_output, real_store, args.spec)
    else:
        clusterlib.override_output_dir(spec, args.output_dir)
    # what a launch would refuse, before Ray starts: the spec's resources, then every file and backbone it names
    # (a rehearsal reads no data or model, and its Ray is the fake cluster, checked when it starts)
    check_launch(spec, args.spec, local_ray=not (args.address or sim),
                 inputs=not (args.skip_input_checks or args.status or sim))
    if sim is None and not (args.status or args.dry_run):
        from workers.simulate import is_simulated

        for root in (spec.artifact_root(), results.results_dir(spec.output_dir)):
            if is_simulated(root):
                raise SpecError(f"{args.spec}: '{root}' is a rehearsal's (launch --simulate: placeholder files and "
                                "simulated rows); a real launch needs another output_dir / artifact_store")
    plan = build_plan(spec)
    try:  # before anything runs: the scheduler's ordering and the ETA read it
        use_calibration(args.calibration or spec.cost_calibration)
    except CostModelError as err:
        raise SpecError(str(err)) from None
    from .packing import check_packing, detect_gpu_memory  # a GPU fraction must fit its stage

    check_packing(spec, plan, detect_gpu_memory())
    try:
        store = ArtifactStore(spec.artifact_root())
    except Exception as err:  # noqa: BLE001 - pyarrow's errors for a store it cannot open: one line, exit 2
        raise SpecError(f"{args.spec}: field 'artifact_store': cannot open '{spec.artifact_root()}': "
                        f"{' '.join(str(err).split())[:300]}") from None
    return spec, plan, store


@contextlib.contextmanager
def ray_session(args: argparse.Namespace, spec: SweepSpec):
    """Ray for the launch (a Ray the caller already started is reused: notebooks, tests), the cluster checked
    (a multi-node cluster must share the store; paths the spec names must exist on every node), and shut down
    on exit if started here. Worker logs reach the console only with --verbose."""
    import ray

    started = not ray.is_initialized()
    sim = simulate_options(args)
    if started and sim is not None:  # the fake cluster: Ray only counts these GPUs and CPUs
        ray.init(num_cpus=sim["cpus"], num_gpus=sim["gpus"], include_dashboard=False, logging_level="WARNING",
                 log_to_driver=args.verbose, job_config=clusterlib.job_config(spec.name))
    elif started and args.address:
        ray.init(address=args.address, log_to_driver=args.verbose, job_config=clusterlib.job_config(spec.name),
                 runtime_env=None if args.no_ship_code else clusterlib.runtime_env())
    elif started:  # no dashboard (were one enabled, it would listen on the loopback interface only)
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", logging_level="WARNING",
                 log_to_driver=args.verbose, job_config=clusterlib.job_config(spec.name))
    try:
        clusterlib.check_cluster(spec.artifact_root(), clusterlib.local_paths(spec), clusterlib.alive_nodes())
        yield
    finally:
        if started:
            ray.shutdown()


def guard_store(store: ArtifactStore, source: str):
    """On a store whose leases cannot keep two drivers apart (no conditional writes: gs://, hdfs://, an S3
    server that ignores If-None-Match, s3:// without boto3), register this driver and refuse a second one
    (SpecError: one line, exit 2). Returns the running ``DriverGuard`` (``stop()`` it at the end), or None
    where leases are mutual exclusion (a local or shared filesystem, S3 with conditional writes)."""
    problem = store.conditional_writes()
    if problem is None:
        return None
    from workers.store import default_owner  # host:pid:random, unique per launch

    guard = store.driver_guard(default_owner())
    other = guard.running()
    if other is not None:
        body, age = other
        raise SpecError(f"{source}: artifact store '{store.root}' has no conditional writes ({problem}), so its node "
                        f"leases cannot keep two drivers apart, and driver {body.get('owner')} is running on it "
                        f"(heartbeat {age:.0f} s ago); wait for it to end, or use an s3:// store with boto3 or a "
                        "shared-filesystem directory")
    guard.start()
    return guard


def error(message) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec, plan, store = load(args)
    except SpecError as err:
        error(err)
        return 2
    root = results.results_dir(spec.output_dir)
    if args.status:
        from .progress import status_view

        tally = status_view(plan, store, root)
        console.print(tally.table(f"sweep '{spec.name}': status from {store.root}"))
        console.print(tally.line(), highlight=False, soft_wrap=True)
        return 0
    try:  # before anything is read or run: a second driver on a store that cannot keep drivers apart
        guard = None if args.dry_run else guard_store(store, args.spec)
    except SpecError as err:
        error(err)
        return 2
    try:
        return _launch(args, spec, plan, store, root)
    finally:
        if guard is not None:
            guard.stop()


def _launch(args, spec: SweepSpec, plan: Plan, store: ArtifactStore, root: str) -> int:
    if not args.dry_run:
        # stored inputs this launch will read are checked against their sha256 first; bad ones re-run
        for key, problem in relaunch_check(plan, store, root).items():
            console.print(f"[yellow]re-running {plan.nodes[key].stage} {key}:[/] {problem}", highlight=False)
    complete = store.list_complete()  # one listing per launch; the scheduler tracks completions from here on
    print_plan(spec, plan, complete)
    if args.dry_run:
        return 0
    started = time.time()
    save_spec_copy(args.spec, spec)
    sim = simulate_options(args)
    rehearsal = Rehearsal(args.spec, spec, plan, sim) if sim is not None else None
    try:
        with ray_session(args, spec):
            # a node that is not complete runs; one interrupted mid-training resumes from its checkpoint
            runner = None
            if rehearsal is not None:
                rehearsal.mark(store.root, root)
                runner = functools.partial(run_plan, trainable_fn=rehearsal.trainable(), observe=rehearsal.observe)
            errors, publish_failures, finished = run_with_restarts(spec, plan, store, root, complete, args.verbose,
                                                                   runner=runner)
    except (SpecError, clusterlib.ClusterError) as err:
        error(err)
        return 2
    except TuneStopped as err:
        error(err)
        return 1
    for failure in publish_failures:
        console.print(f"[yellow]publishing rows failed (retried below):[/] {failure}", highlight=False)
    collect(plan, store, root, errors, complete | finished)  # no second listing of the store
    if rehearsal is None:
        report_outputs(args, spec, root, started)
    else:  # no accuracy to tabulate, plot or report: the rehearsal's own summary instead
        rehearsal.finish(clusterlib.local_output_dir(spec.output_dir, spec.name), root, started)
    if errors:
        failures.print_failures(console, plan, errors)
    return 1 if errors else 0


class Rehearsal:
    """A ``--simulate`` launch: every node's sleep (planned seconds x time scale x the noise draw), the run's
    markers, and afterwards its summary (``rehearsal.json``: each node's hand-out, start and end, the makespan
    and the GPU utilisation achieved = GPU sleep-seconds / (fake GPUs x makespan))."""

    def __init__(self, source: str, spec: SweepSpec, plan: Plan, sim: dict):
        import random

        from .plan import node_seconds

        self.source, self.spec, self.plan, self.sim = source, spec, plan, sim
        rng = random.Random(sim["seed"])  # bench/scheduler.py's draw: one uniform per node, in plan order
        noise = sim["noise"]
        self.seconds = {k: node_seconds(n) * sim["time_scale"] * (rng.uniform(1 - noise, 1 + noise) if noise else 1.0)
                        for k, n in plan.nodes.items()}
        self.run = None

    def info(self) -> dict:
        return {"spec": os.path.abspath(self.source), "sweep": self.spec.name, "nodes": len(self.plan.nodes),
                **{k: self.sim[k] for k in ("gpus", "cpus", "time_scale", "noise", "seed")}}

    def mark(self, store_root: str, results_root: str) -> None:
        from workers.simulate import mark_simulated

        for root in (store_root, results_root):
            mark_simulated(root, self.info())

    def trainable(self):
        from workers.simulate import simulated_trainable

        return simulated_trainable({k: (self.seconds[k], get_kind(n.stage).declared_outputs(n.stage_config))
                                    for k, n in self.plan.nodes.items()})

    def observe(self, run) -> None:
        self.run = run

    def summary(self) -> dict:
        """Every node run by this launch: its times (seconds from the first hand-out), sleep and GPUs; the
        makespan and the GPU utilisation achieved."""
        if self.run is None:  # nothing left to run (a finished rehearsal relaunched)
            return {**self.info(), "run": 0, "makespan_s": 0.0, "gpu_seconds": 0.0, "utilisation": None,
                    "node_times": {}}
        s, resources = self.run.scheduler, self.run.resources
        ran = [k for k in self.plan.nodes if k in s.ended_at and k in s.started_at and k in s.queued_at]
        t0 = min((s.queued_at[k] for k in ran), default=0.0)
        span = max((s.ended_at[k] for k in ran), default=t0) - t0
        gpu = {k: float(resources.get(self.plan.nodes[k].stage, {}).get("gpu", 0.0)) for k in ran}
        work = sum(self.seconds[k] * gpu[k] for k in ran)
        return {**self.info(), "run": len(ran), "makespan_s": span, "gpu_seconds": work,
                "utilisation": work / (self.sim["gpus"] * span) if span > 0 else None,
                "node_times": {k: {"stage": self.plan.nodes[k].stage, "seconds": self.seconds[k], "gpu": gpu[k],
                                   "queued": s.queued_at[k] - t0, "started": s.started_at[k] - t0,
                                   "ended": s.ended_at[k] - t0} for k in ran}}

    def finish(self, out_dir: str, results_root: str, started: float) -> dict:
        """Write ``<out_dir>/rehearsal.json`` (atomically) and print the rehearsal's line."""
        import json

        from srnet_core.io import atomic_path

        summary = self.summary()
        path = os.path.join(out_dir, "rehearsal.json")
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=1)
        util = "n/a" if summary["utilisation"] is None else f"{summary['utilisation']:.1%}"
        console.print(f"rehearsal (simulated, not results): {summary['run']} nodes on {self.sim['gpus']} fake GPUs "
                      f"in {summary['makespan_s']:.0f} s (time scale {self.sim['time_scale']:g}); GPU utilisation "
                      f"{util}; placeholders and rows marked simulated under {self.spec.output_dir}; times: {path}",
                      highlight=False, soft_wrap=True)
        console.print(f"results: {results_root}  ({time.time() - started:.0f} s)", highlight=False)
        return summary


def report_outputs(args: argparse.Namespace, spec: SweepSpec, root: str, started: float) -> None:
    """The summary table, figure and report of the sweep's results, uploaded for a URI output_dir."""
    frame = results.load(root, sweep=spec.name)
    try:
        table = summarize(frame)
        if table.row_count:  # nothing completed (a failed launch): no empty table
            console.print(table)
    except ValueError as err:  # e.g. two configs of one curve point in this output_dir: rows are all saved
        console.print(f"[yellow]no summary table:[/] {err}", highlight=False)
    out_dir = clusterlib.local_output_dir(spec.output_dir, spec.name)
    if not args.no_figure:
        from .figures import metric_vs_sparsity
        png = metric_vs_sparsity(frame[frame["status"] == "completed"],
                                 os.path.join(out_dir, f"{spec.name}_sparsity.png"))
        console.print(f"figure: {png}")
    if not args.no_report:
        from .report import build_report
        report = build_report(root, out=os.path.join(out_dir, "report"), sweep=spec.name,
                              masks="://" not in spec.artifact_root())
        console.print(f"report: {report.path} ({len(report.figures)} figures)")
    clusterlib.upload_outputs(out_dir, spec.output_dir)
    console.print(f"results: {root}  ({len(frame)} rows, {time.time() - started:.0f} s)")


def relaunch_check(plan: Plan, store: ArtifactStore, root: str) -> dict[str, str]:
    """failures.verify_inputs before a launch. Which nodes' rows are published matters only where files are
    hashed (a local or shared filesystem); on an object store the results dataset is not read here (at 2,595
    nodes it is thousands of GETs, and collect and the report read it after the run anyway)."""
    return failures.verify_inputs(plan, store, set() if store.remote else _published_keys(root))


def _published_keys(root: str) -> set[str]:
    try:
        existing = results.load(root, columns=["node_key", "status"])
    except FileNotFoundError:
        return set()
    return set(existing.loc[existing["status"] == "completed", "node_key"])


def save_spec_copy(path: str, spec: SweepSpec) -> None:
    """The spec as run, next to its results (the report embeds it)."""
    from srnet_core.io import atomic_path

    target = os.path.join(clusterlib.local_output_dir(spec.output_dir, spec.name), f"{spec.name}.spec.yaml")
    with open(path) as f:
        text = f.read()
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
