"""Run a sweep: ``python -m orchestrator.launch sweeps/smoke.yaml [--address ray://...] [--dry-run]``.

spec -> plan (stage DAG, content keys) -> skip complete nodes -> Ray Tune wave by wave -> Parquet rows ->
summary table and figure. Exits 1 if any node failed, 2 on a spec mistake.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from workers.store import ArtifactStore

from . import failures, results
from .plan import Node, Plan, build_plan, estimate_gpu_hours
from .spec import SpecError, SweepSpec, load_spec, preflight

console = Console(width=None if sys.stdout.isatty() else 140)


def node_payload(node: Node, store: ArtifactStore, resources: dict | None = None) -> dict:
    return {"key": node.key, "stage": node.stage, "stage_config": node.stage_config,
            "inputs": {name: [i.node.stage, i.node.key, i.filename] for name, i in node.inputs.items()},
            "artifact_root": store.root, "resources": resources or {},
            "columns": {**node.columns, "upstream_keys": ",".join(u.key for u in node.upstream)}}


def print_plan(spec: SweepSpec, plan: Plan, store: ArtifactStore) -> None:
    hours = estimate_gpu_hours(plan)
    table = Table(title=f"plan for sweep '{spec.name}'")
    for col in ("stage", "nodes", "complete", "to run", "est. GPU-hours"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for stage, count in plan.count_by_stage().items():
        done = sum(store.is_complete(stage, n.key) for n in plan.nodes.values() if n.stage == stage)
        table.add_row(stage, str(count), str(done), str(count - done), f"{hours.get(stage, 0.0):,.1f}")
    console.print(table)
    console.print(f"{len(plan.nodes)} stage nodes; a naive per-trial expansion would run {plan.naive_runs} "
                  f"({plan.naive_runs / max(1, len(plan.nodes)):.1f}x). Estimated {sum(hours.values()):,.1f} "
                  "GPU-hours on one A100/H100-class GPU per trial (planning estimate, see orchestrator/plan.py).")


def node_resources(spec: SweepSpec, stage: str, n_trials: int, cluster: dict) -> dict:
    """CPUs and GPUs of one trial: the stage's override, else the spec's per-trial values; "auto" GPUs = 1 when
    the cluster has any, else 0. Asking for a GPU the cluster lacks fails now instead of pending forever."""
    override = spec.resources.stages.get(stage)
    cpus = override.cpus if override and override.cpus is not None else spec.resources.cpus_per_trial
    gpus = override.gpus if override and override.gpus is not None else (
        0.0 if stage == "bias_model" else spec.resources.gpus_per_trial)
    have_gpu = cluster.get("GPU", 0) > 0
    if gpus == "auto":
        gpus = 1.0 if have_gpu else 0.0
    elif gpus > 0 and not have_gpu:
        field = f"resources.stages.{stage}.gpus" if override and override.gpus is not None else "resources.gpus_per_trial"
        raise SpecError(f"field '{field}': {gpus} GPUs asked but the Ray cluster has none; use 'auto' to run on "
                        "CPU when no GPU exists")
    if cpus == "auto":  # share the cluster's CPUs among the wave's trials; a lone trial gets them all
        cpus = max(1.0, float(int(cluster.get("CPU", 1) // max(1, n_trials))))
    return {"cpu": float(cpus), "gpu": float(gpus)}


def run_wave(spec: SweepSpec, nodes: list[Node], store: ArtifactStore, wave: int, root: str) -> dict[str, str]:
    """Run nodes on Ray Tune; returns {node_key: error message} for failed nodes. Each node's rows are
    published as soon as its trial completes, so a running sweep can be queried."""
    from ray import tune

    by_key = {n.key: n for n in nodes}

    class PublishRows(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            publish_node(by_key[trial.config["node"]["key"]], store, root)

    from workers.trainable import stage_trainable

    def trainable(config):  # a fresh function per wave: tune.with_resources mutates what it wraps
        stage_trainable(config)

    import ray
    from ray.tune import PlacementGroupFactory

    cluster = ray.cluster_resources()
    payloads = []
    for node in nodes:
        res = node_resources(spec, node.stage, len(nodes), cluster)
        node.stage_config["device"] = "cuda" if res["gpu"] > 0 else "cpu"
        payloads.append(node_payload(node, store, res))

    def trial_resources(config):  # per trial: stages of one wave may ask for different resources
        r = config["node"]["resources"]
        return PlacementGroupFactory([{"CPU": r["cpu"], "GPU": r["gpu"]}])

    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources),
        param_space={"node": tune.grid_search(payloads)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            reuse_actors=True,  # a new trial process costs seconds (torch + transformers imports)
            trial_dirname_creator=lambda trial: trial.config["node"]["key"],
            trial_name_creator=lambda trial: f"{trial.config['node']['stage']}-{trial.config['node']['key']}",
        ),
        run_config=tune.RunConfig(
            name=f"wave{wave}-{int(time.time())}",
            storage_path=os.path.join(os.path.abspath(spec.output_dir), "ray"),
            # a retried trial resumes its node from the last checkpoint in the store
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_retries),
            callbacks=[PublishRows()],
            verbose=1,
        ),
    )
    grid = tuner.fit()
    errors = {}
    for result in grid:
        key = result.config["node"]["key"]
        if result.error is not None:
            errors[key] = failures.reason_of(result.error)
    return errors


def error_frame(node: Node, message: str) -> pd.DataFrame:
    row = {**node.columns, "node_key": node.key, "stage": node.stage, "status": "failed", "error": message,
           "metric": "error", "value": float("nan"), "eval_dataset": "", "eval_role": "", "step": -1,
           "selected": False}
    return pd.DataFrame([row])


def publish_node(node: Node, store: ArtifactStore, root: str, error: str | None = None) -> None:
    if error is not None:
        results.publish(root, error_frame(node, error))
    elif store.is_complete(node.stage, node.key):
        results.publish(root, pd.read_parquet(store.fetch(node.stage, node.key, "rows.parquet")))


def collect(plan: Plan, store: ArtifactStore, root: str, errors: dict[str, str]) -> None:
    """Publish every node of the plan not yet in the results: failures, and nodes finished by earlier runs
    (or other sweeps sharing the store). Idempotent: one file per node."""
    try:
        existing = results.load(root, columns=["node_key", "status"])
        done = set(existing.loc[existing["status"] == "completed", "node_key"])
    except FileNotFoundError:
        done = set()
    for node in plan.nodes.values():
        if node.key in errors or node.key not in done:
            publish_node(node, store, root, errors.get(node.key))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep YAML (see sweeps/)")
    parser.add_argument("--address", help="Ray cluster address; default: start an embedded local Ray")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; touches no model")
    parser.add_argument("--no-figure", action="store_true", help="skip the PNG figure")
    parser.add_argument("--no-report", action="store_true", help="skip the Markdown report and its figures")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        preflight(spec, args.spec, local_ray=not args.address)  # what a launch would refuse, before Ray starts
    except SpecError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    try:
        store = ArtifactStore(spec.artifact_root())
    except Exception as err:  # noqa: BLE001 - pyarrow's errors for a store it cannot open: one line, exit 2
        console.print(f"[bold red]error:[/] {args.spec}: field 'artifact_store': cannot open "
                      f"'{spec.artifact_root()}': {' '.join(str(err).split())[:300]}", highlight=False, soft_wrap=True)
        return 2
    try:
        plan = build_plan(spec)
    except SpecError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    print_plan(spec, plan, store)
    if args.dry_run:
        return 0

    import ray

    started = time.time()
    errors: dict[str, str] = {}
    root = results.results_dir(spec.output_dir)
    save_spec_copy(args.spec, spec)
    # stored inputs this launch will read are checked against their sha256 first; bad ones re-run
    for key, problem in failures.verify_inputs(plan, store, _published_keys(root)).items():
        console.print(f"[yellow]re-running {plan.nodes[key].stage} {key}:[/] {problem}", highlight=False)
    started_ray = not ray.is_initialized()  # reuse a Ray the caller already started (notebooks, tests)
    if started_ray and args.address:
        ray.init(address=args.address, log_to_driver=True)
    elif started_ray:  # no dashboard (were one enabled, it would listen on the loopback interface only)
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", logging_level="WARNING")
    try:
        for index, wave in enumerate(plan.waves()):
            blocked = [n for n in wave if any(u.key in errors or not store.is_complete(u.stage, u.key)
                                              for u in n.upstream)]
            for node in blocked:
                errors[node.key] = failures.skip_reason(node, errors) or "skipped: an upstream node is not complete"
            # a node that is not complete re-runs; one interrupted mid-training resumes from its checkpoint
            todo = [n for n in wave if n not in blocked and not store.is_complete(n.stage, n.key)]
            if todo:
                console.print(f"wave {index}: running {len(todo)} node(s) "
                              f"({', '.join(sorted({n.stage for n in todo}))})")
                errors.update(run_wave(spec, todo, store, index, root))
    except SpecError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    finally:
        if started_ray:
            ray.shutdown()

    collect(plan, store, root, errors)
    frame = results.load(root, sweep=spec.name)
    try:
        console.print(summarize(frame))
    except ValueError as err:  # e.g. two configs of one curve point in this output_dir: rows are all saved
        console.print(f"[yellow]no summary table:[/] {err}", highlight=False)
    out_dir = os.path.abspath(spec.output_dir)
    if not args.no_figure:
        from .figures import metric_vs_sparsity
        png = metric_vs_sparsity(frame[frame["status"] == "completed"], os.path.join(out_dir, f"{spec.name}_sparsity.png"))
        console.print(f"figure: {png}")
    if not args.no_report:
        from .report import build_report
        report = build_report(root, sweep=spec.name, masks="://" not in spec.artifact_root())
        console.print(f"report: {report.path} ({len(report.figures)} figures)")
    console.print(f"results: {root}  ({len(frame)} rows, {time.time() - started:.0f} s)")
    if errors:
        console.print(failures.failure_table(plan, errors))
    return 1 if errors else 0


def _published_keys(root: str) -> set[str]:
    try:
        existing = results.load(root, columns=["node_key", "status"])
    except FileNotFoundError:
        return set()
    return set(existing.loc[existing["status"] == "completed", "node_key"])


def save_spec_copy(path: str, spec: SweepSpec) -> None:
    """The spec as run, next to its results (the report embeds it)."""
    from srnet_core.io import atomic_path

    target = os.path.join(os.path.abspath(spec.output_dir), f"{spec.name}.spec.yaml")
    with open(path) as f:
        text = f.read()
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
