"""``python -m orchestrator.search SPEC [--runner ray|ray-batches|local] [--address A] [--n-trials N] [--seed S] [--no-report]``"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import pandas as pd

from .. import results
from ..spec import SpecError, load_spec
from . import __doc__ as package_doc
from .objectives import SearchError
from .predictor import predictor_comparison
from .runners import LaunchRunner, LocalRunner, SchedulerRunner
from .setting import build_setting
from .study import run_study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.search", description=package_doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep YAML with a search: section (see sweeps/timing_search.yaml)")
    parser.add_argument("--runner", choices=["ray", "ray-batches", "local"], default="ray",
                        help="ray: the whole study is one Ray Tune run of the launch's scheduler, trials added as "
                             "others end (default); ray-batches: one Tune run per batch of trials and per rung; "
                             "local: nodes in this process, no Ray")
    parser.add_argument("--address", help="Ray cluster address; default: an embedded local Ray")
    parser.add_argument("--n-trials", type=int, help="override search.n_trials (the study's total)")
    parser.add_argument("--seed", type=int, help="override search.seed: the same study for another seed (its own "
                                                 "fine-tuning, trials and study name)")
    parser.add_argument("--no-report", action="store_true", help="skip the figures and tables")
    return parser.parse_args(argv)


@contextlib.contextmanager
def ray_session(address: str | None, job_name: str):
    """An embedded (or the addressed) Ray for the study, shut down on exit; a Ray already started is reused.
    The driver is one Ray job named ``job_name`` (the study's name) on the cluster's dashboard; on a cluster
    the project's code is shipped to the workers as a launch ships it (``cluster.runtime_env``)."""
    import ray

    from .. import cluster as clusterlib

    started = not ray.is_initialized()
    if started:
        job = clusterlib.job_config(job_name)
        if address:
            ray.init(address=address, logging_level="WARNING", job_config=job, runtime_env=clusterlib.runtime_env())
        else:
            ray.init(include_dashboard=False, logging_level="WARNING", job_config=job)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if spec.search is None:
            raise SpecError(f"{args.spec}: no 'search' section; see sweeps/timing_search.yaml and docs/search.md")
        if args.seed is not None:
            spec.search.seed = args.seed
        study = build_setting(spec).study_name
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from workers.store import ArtifactStore

    from ..launch import guard_store

    store = ArtifactStore(spec.artifact_root())
    try:
        guard = guard_store(store, args.spec)  # a store without conditional writes: one driver at a time
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return _search(args, spec, store, study)
    finally:
        if guard is not None:
            guard.stop()


def _search(args, spec, store, study: str) -> int:
    root = results.results_dir(spec.output_dir)
    runner = {"ray": SchedulerRunner, "ray-batches": LaunchRunner, "local": LocalRunner}[args.runner](spec, store, root)
    try:
        with ray_session(args.address, study) if args.runner != "local" else contextlib.nullcontext():
            result = run_study(spec, runner, store, root, n_trials=args.n_trials)
            table = predictor_comparison(result, runner, store, root) if not args.no_report else pd.DataFrame()
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not args.no_report:
        from .. import cluster as clusterlib
        from ..search_report import write_search_report

        # A URI output_dir: the report is written in this machine's scratch space, then copied there.
        local = clusterlib.local_output_dir(spec.output_dir, spec.name)
        path = write_search_report(result, table, root, local)
        clusterlib.upload_outputs(local, spec.output_dir)
        print(f"search report: {clusterlib.join(spec.output_dir, os.path.relpath(path, local))}")
    print(f"study {result.setting.study_name}: {len(result.study.trials)} trial(s); results: {root}")
    return 0
