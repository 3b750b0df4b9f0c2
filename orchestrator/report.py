"""The sweep report: ``python -m orchestrator.report RESULTS_DIR [--out DIR] [--metric M] [--sweep NAME]``.

Reads the results Parquet (a results dir or a sweep output dir, also while the sweep is still running) and
writes into ``--out`` (default ``<results_dir>/../report``):

* ``report.md``: the tables (mean ± std over seeds at each node's checkpoint selected on ID dev), per-heuristic
  HANS tables when present, failed nodes, the sweep's configuration (from the ``cfg.*`` columns, plus the spec
  file ``<output_dir>/<sweep>.spec.yaml`` when it exists), code version, hardware, wall time and GPU-hours;
* ``figures/sparsity_<paradigm>.png``: metric vs sparsity per paradigm, shaped like the paper's Figures 2-8;
* ``figures/mask_iou.png``: IoU between the masks of different seeds, losses, paradigms at equal sparsity;
* ``curve.csv``, ``hans.csv``, ``mask_iou.csv``: the numbers behind the tables.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import figures
from .results import DENSE_PARADIGM, DESIGN_COLUMNS, completed, hans_table, load, nodes, sparsity_curve

# Where a node keeps the mask of a sparsity level: one file per level (IMP series), else one per node.
MASK_FILES = ("masks_s{sparsity:.2f}.safetensors", "masks.safetensors")
# Node attributes compared between two masks to name what differs between them.
MASK_FACTORS = ["paradigm", "method", "loss", "seed", *DESIGN_COLUMNS]


@dataclass
class Report:
    path: str  # report.md
    figures: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


# -- formatting ---------------------------------------------------------------------------------------------

def mean_std(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``0.812 ± 0.004``; one seed has no std (``0.812``); a missing point is empty."""
    if pd.isna(mean):
        return ""
    if n <= 1 or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` as it is (no index)."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _cells(frame: pd.DataFrame, digits: int = 3) -> pd.Series:
    """Formatted cells; a point with fewer seeds than the most common count says so, e.g. ``(n=2)``."""
    typical = frame["n_seeds"].mode().max() if len(frame) else 0
    text = [mean_std(m, s, n, digits) + (f" (n={n})" if n != typical else "")
            for m, s, n in zip(frame["mean"], frame["std"], frame["n_seeds"])]
    return pd.Series(text, index=frame.index)


def _dense_first(wide: pd.DataFrame) -> pd.DataFrame:
    """The dense reference rows (paradigm ``full``) on top, as in the paper's tables."""
    order = (wide["paradigm"] != DENSE_PARADIGM).astype(int)
    return wide.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")


def _row_keys(part: pd.DataFrame) -> list[str]:
    """Table rows: (backbone if several,) paradigm, method, loss, and the design columns this table uses."""
    design = [c for c in DESIGN_COLUMNS if c in part and part[c].notna().any()]
    return (["backbone"] if part["backbone"].nunique() > 1 else []) + ["paradigm", "method", "loss", *design]


def _pivot(part: pd.DataFrame, index: list[str], columns) -> pd.DataFrame:
    """Pivot formatted cells; null keys (a design column a row has no value for) show as empty."""
    shown = part.assign(cell=_cells(part))
    shown[index] = shown[index].astype(object).where(shown[index].notna(), "")
    wide = shown.pivot_table(index=index, columns=columns, values="cell", aggfunc="first", sort=True)
    return wide


def sparsity_pivot(curve: pd.DataFrame, task: str, dataset: str, metric: str) -> pd.DataFrame:
    """Rows = (backbone,) paradigm, method, loss (, design columns); columns = target sparsity; cells
    ``mean ± std``."""
    part = curve[(curve["task"] == task) & (curve["eval_dataset"] == dataset) & (curve["metric"] == metric)]
    wide = _pivot(part, _row_keys(part), "target_sparsity")
    wide.columns = [f"{s:.2f}" for s in wide.columns]
    return _dense_first(wide.fillna("").reset_index())


# Measured inference speed of pruned models (srnet_core.inference.measure; bench/gpu_suite.py writes it under
# "inference"): put it as <output_dir>/inference_speed.json and the report shows it next to accuracy.
SPEED_FILE = "inference_speed.json"
UNSTRUCTURED_SPEED = "none (masks baked into dense weights)"


def load_speed(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, SPEED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return data.get("inference", data) if isinstance(data, dict) else None


def speed_cell(method: str, sparsity, speed: dict | None) -> str:
    """Inference speed-up vs dense of what ``method`` produces at ``sparsity``: measured when ``speed`` has
    that variant (largest batch measured), else what is known without measuring: unstructured masks are
    dense matrices with zeros, so no speed-up; structured tickets need a measurement (Super Tickets remove
    whole FFN sublayers, which the ``structured`` measurements do not cover: their own kind, ``super_tickets``)."""
    if sparsity is None or pd.isna(sparsity) or float(sparsity) == 0.0:
        return "1.00x (dense)"
    from srnet_core.stages import REGISTRY

    structured = method in REGISTRY and REGISTRY[method].structured  # removes whole heads / sublayers
    kind = method if structured else "unstructured"
    rows = [r for r in (speed or {}).get("rows", []) if r.get("kind") == kind
            and abs(float(r.get("sparsity", -1)) - float(sparsity)) < 1e-6]
    if rows:
        best = max(rows, key=lambda r: r["batch"])
        return f"{best['speedup']:.2f}x (measured, {speed.get('device', '?')}, batch {best['batch']})"
    return UNSTRUCTURED_SPEED if kind == "unstructured" else "not measured"


def accuracy_speed_table(curve: pd.DataFrame, task: str, dataset: str, metric: str,
                         speed: dict | None) -> pd.DataFrame:
    """One row per (run kind, target sparsity): the metric (mean ± std over seeds) and the inference speed-up."""
    part = curve[(curve["task"] == task) & (curve["eval_dataset"] == dataset) & (curve["metric"] == metric)]
    keys = _row_keys(part)
    out = part.assign(**{metric: _cells(part)})
    out[keys] = out[keys].astype(object).where(out[keys].notna(), "")
    out["inference speed-up"] = [speed_cell(m, s, speed) for m, s in zip(out["method"], out["target_sparsity"])]
    out["target_sparsity"] = [f"{v:.2f}" if pd.notna(v) else "" for v in out["target_sparsity"]]
    return _dense_first(out[[*keys, "target_sparsity", metric, "inference speed-up"]].reset_index(drop=True))


def _all_metrics_pivot(curve: pd.DataFrame, task: str, dataset: str) -> pd.DataFrame:
    part = curve[(curve["task"] == task) & (curve["eval_dataset"] == dataset)]
    wide = _pivot(part, [*_row_keys(part), "target_sparsity"], "metric")
    return _dense_first(wide.fillna("").reset_index().rename_axis(columns=None))


# -- provenance and config ----------------------------------------------------------------------------------

def provenance_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per sweep: nodes, code versions, hosts, GPUs, first start, last end, wall span, compute and GPU hours."""
    node_rows = nodes(frame)
    out = []
    for sweep, group in node_rows.groupby("sweep", sort=True):
        done = group[group["status"] == "completed"]

        def values(column: str) -> str:
            counts = done[column].fillna("").replace("", "none").value_counts()
            return ", ".join(f"{v} ({c})" for v, c in counts.items()) if len(counts) else ""
        start, end = done["started_at"].min(), done["ended_at"].max()
        out.append({
            "sweep": sweep, "nodes": len(group), "completed": len(done),
            "failed": int((group["status"] == "failed").sum()),
            "code_version": values("code_version"), "hostname": values("hostname"),
            "gpu_type": values("gpu_type"), "torch_version": values("torch_version"),
            "first_start": start, "last_end": end,
            "wall_hours": (end - start).total_seconds() / 3600 if pd.notna(start) else np.nan,
            "node_hours": done["wall_seconds"].sum() / 3600, "gpu_hours": done["gpu_hours"].sum(),
        })
    return pd.DataFrame(out)


def config_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ``cfg.*`` setting per stage: one value if all nodes of the stage share it, else the set."""
    cfg = [c for c in frame.columns if c.startswith("cfg.")]
    per_node = completed(frame).drop_duplicates("node_key")
    out = []
    for stage, group in per_node.groupby("stage", sort=True):
        for column in cfg:
            values = group[column]
            if values.isna().all():  # a setting other stages have, or None everywhere
                continue
            # an integer setting that some file lacks (failed nodes) was read as float: show it as an int
            promoted = frame[column].isna().any() and values.dropna().map(
                lambda v: isinstance(v, float) and v.is_integer()).all()
            shown = sorted({str(int(v)) if promoted and pd.notna(v) else str(v) for v in values})
            out.append({"stage": stage, "setting": column.removeprefix("cfg."),
                        "value": shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}",
                        "varies": len(shown) > 1})
    return pd.DataFrame(out, columns=["stage", "setting", "value", "varies"])


# -- mask analysis ------------------------------------------------------------------------------------------

def _packed_masks(path: str) -> dict[str, tuple[tuple, np.ndarray, int]]:
    """name -> (shape, packed bits, kept count) of one mask file: 1/8 of the memory of bool tensors."""
    from srnet_core.masks import load_masks

    masks, _ = load_masks(path)
    out = {}
    for name, mask in masks.items():
        flat = mask.numpy().ravel().astype(bool)
        out[name] = (tuple(mask.shape), np.packbits(flat), int(flat.sum()))
    return out


def _overlap(a: dict, b: dict) -> dict | None:
    """Counts over the matrices both masks cover with the same shape (IMP leaves the classifier out)."""
    common = sorted(n for n in set(a) & set(b) if a[n][0] == b[n][0])
    if not common:
        return None
    inter = union = differ = kept_a = kept_b = numel = 0
    for name in common:
        (shape, bits_a, k_a), (_, bits_b, k_b) = a[name], b[name]
        inter += int(np.bitwise_count(bits_a & bits_b).sum())
        union += int(np.bitwise_count(bits_a | bits_b).sum())
        differ += int(np.bitwise_count(bits_a ^ bits_b).sum())
        kept_a, kept_b, numel = kept_a + k_a, kept_b + k_b, numel + int(np.prod(shape))
    return {"inter": inter, "union": union, "differ": differ, "numel": numel, "density_a": kept_a / numel,
            "density_b": kept_b / numel, "matrices": len(common)}


def _mask_path(artifacts_root: str, node) -> str | None:
    for pattern in MASK_FILES:
        path = os.path.join(artifacts_root, node["stage"], node["node_key"],
                            pattern.format(sparsity=node["target_sparsity"]))
        if os.path.exists(path):
            return path
    return None


def mask_iou(frame: pd.DataFrame, artifacts_root: str) -> pd.DataFrame:
    """IoU of the kept weights between every two masks of the same task, backbone and target sparsity.

    Masks come from ``<artifacts_root>/<stage>/<node_key>/`` of completed nodes: ``masks_s<sparsity>.safetensors``
    (one per IMP level) or ``masks.safetensors``; nodes without one (dense models, re-trained subnetworks) are
    skipped. IoU = |A ∩ B| / |A ∪ B| over all matrices both masks cover (``matrices`` counts them; IMP does not
    mask the classifier), 1.0 when both keep nothing, as in ``srnet_core.masks.mask_similarity``; ``hamming``
    is the fraction of entries that disagree. ``differs`` names the node attributes (``MASK_FACTORS``) that
    differ between the two runs; ``random_iou`` is the expectation for two independent random masks of the same
    densities, d_a d_b / (d_a + d_b - d_a d_b). Masks are held bit-packed, so dozens of BERT-base masks fit.
    """
    columns = ["task", "backbone", "target_sparsity", "differs", "label_a", "label_b", "node_a", "node_b",
               "matrices", "iou", "hamming", "random_iou"]
    node_rows = completed(frame).drop_duplicates(["node_key", "target_sparsity"])
    node_rows = node_rows[node_rows["target_sparsity"] > 0]
    pairs = []
    for (task, backbone, sparsity), group in node_rows.groupby(["task", "backbone", "target_sparsity"],
                                                                sort=True):
        loaded = []
        for _, node in group.sort_values(MASK_FACTORS, na_position="first").iterrows():
            path = _mask_path(artifacts_root, node)
            if path:
                loaded.append((node, _packed_masks(path)))
        for (a, masks_a), (b, masks_b) in itertools.combinations(loaded, 2):
            counts = _overlap(masks_a, masks_b)
            if counts is None:
                continue
            d_a, d_b = counts["density_a"], counts["density_b"]
            # a design column a run does not have (null) is implied by its paradigm: not a difference
            differs = [f for f in MASK_FACTORS if str(a[f]) != str(b[f])
                       and (f not in DESIGN_COLUMNS or (pd.notna(a[f]) and pd.notna(b[f])))]
            pairs.append({"task": task, "backbone": backbone, "target_sparsity": sparsity,
                          "differs": "+".join(differs) or "other config",
                          "label_a": _mask_label(a), "label_b": _mask_label(b),
                          "node_a": a["node_key"], "node_b": b["node_key"], "matrices": counts["matrices"],
                          "iou": counts["inter"] / counts["union"] if counts["union"] else 1.0,
                          "hamming": counts["differ"] / counts["numel"],
                          "random_iou": d_a * d_b / (d_a + d_b - d_a * d_b) if d_a + d_b else np.nan})
    return pd.DataFrame(pairs, columns=columns)


def _mask_label(node) -> str:
    keys = [k for k in ("paradigm", "method", "loss", *DESIGN_COLUMNS) if pd.notna(node.get(k))]
    return figures._label(keys, tuple(node[k] for k in keys)) + f"/s{node['seed']}"


def mask_iou_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean/min/max IoU per (task, backbone, sparsity, what differs), beside the random-mask expectation."""
    return (pairs.groupby(["task", "backbone", "target_sparsity", "differs"], sort=True)
            .agg(pairs=("iou", "size"), mean_iou=("iou", "mean"), min_iou=("iou", "min"),
                 max_iou=("iou", "max"), random_iou=("random_iou", "mean")).reset_index())


def _iou_matrices(pairs: pd.DataFrame) -> list[tuple[str, list[str], np.ndarray]]:
    groups = []
    for (task, backbone, sparsity), group in pairs.groupby(["task", "backbone", "target_sparsity"], sort=True):
        labels = list(dict.fromkeys([*group["label_a"], *group["label_b"]]))
        index = {label: i for i, label in enumerate(labels)}
        matrix = np.eye(len(labels))
        for a, b, iou in zip(group["label_a"], group["label_b"], group["iou"]):
            matrix[index[a], index[b]] = matrix[index[b], index[a]] = iou
        groups.append((f"{task} {backbone} sparsity {sparsity:.2f}", labels, matrix))
    return groups


# -- the report ---------------------------------------------------------------------------------------------

def build_report(results: str, out: str | None = None, metric: str | dict | None = None,
                 sweep: str | list[str] | None = None, masks: bool = True) -> Report:
    """Write the report for the results under ``results`` (a results dir or a sweep output dir).

    ``results`` may also be a URI (``s3://...``; then ``out`` is required and the mask analysis is skipped).
    ``out``: report directory (default ``<results_dir>/../report``). ``metric``: the metric of the main tables
    and figures (see :func:`orchestrator.figures.pick_metrics`). ``sweep``: only these sweeps. ``masks``: run
    the mask-IoU analysis (reads the artifact store next to the results). Returns the written files and the
    tables behind them (``curve``, ``hans``, ``provenance``, ``config``, ``nodes``, ``mask_iou``,
    ``mask_iou_summary``).
    """
    results = results.removeprefix("file://")
    remote = "://" in results  # s3://, gs://...: read the rows there, write the report locally
    if remote:
        if out is None:
            raise ValueError(f"results '{results}' are remote: pass --out DIR for the report")
        results = results.rstrip("/")
        output_dir = results.removesuffix("/results")
        masks = False  # the artifact store is read from local disk only
    else:
        if os.path.isdir(os.path.join(results, "results")):
            results = os.path.join(results, "results")
        output_dir = os.path.dirname(os.path.abspath(results))  # results live in <output_dir>/results
    out = os.path.abspath(out or os.path.join(output_dir, "report"))
    frame = load(results, **({"sweep": sweep} if sweep else {}))
    curve = sparsity_curve(frame)
    metrics = figures.pick_metrics(curve, metric) if len(curve) else {}
    hans = hans_table(frame)
    report = Report(path=os.path.join(out, "report.md"),
                    tables={"curve": curve, "hans": hans, "provenance": provenance_table(frame),
                            "config": config_table(frame), "nodes": nodes(frame)})
    fig_dir = os.path.join(out, "figures")
    if len(curve):
        report.figures += figures.sparsity_figures(curve, fig_dir, metric)
    if masks:
        pairs = mask_iou(frame, os.path.join(output_dir, "artifacts"))
        report.tables["mask_iou"] = pairs
        report.tables["mask_iou_summary"] = mask_iou_summary(pairs)
        if len(pairs):
            report.figures.append(figures.mask_iou_figure(_iou_matrices(pairs), os.path.join(fig_dir,
                                                                                              "mask_iou.png")))
    os.makedirs(out, exist_ok=True)
    for name in ("curve", "hans", "mask_iou"):
        if name in report.tables and len(report.tables[name]):
            _write_text(os.path.join(out, f"{name}.csv"), report.tables[name].to_csv(index=False))
    _write_text(report.path, _markdown(report, frame, curve, metrics, output_dir, out))
    return report


def _write_text(path: str, text: str) -> None:
    from srnet_core.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
        figures.readable(tmp)


def _markdown(report: Report, frame: pd.DataFrame, curve: pd.DataFrame, metrics: dict, output_dir: str,
              out: str) -> str:
    sweeps = sorted(frame["sweep"].unique())
    t = report.tables
    speed = load_speed(output_dir)
    lines = [f"# SRNet sweep report: {', '.join(sweeps)}", "",
             f"Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC from `{output_dir}`. Every number is the "
             "mean ± std (sample std, ddof=1) over seeds, at each run's checkpoint selected on the ID dev set "
             "(never on OOD data). `(n=k)` marks a point with fewer seeds than the rest of its table "
             "(for example while the sweep is still running). Sparsity columns are target sparsities; the "
             "measured sparsity is in `curve.csv`.", ""]
    shown = t["provenance"].copy()
    for column in ("first_start", "last_end"):
        shown[column] = [f"{v:%Y-%m-%d %H:%M:%S}" if pd.notna(v) else "" for v in shown[column]]
    lines += ["## Runs, code version, hardware, time", "", markdown_table(shown), "",
              "Times are UTC. `wall_hours`: last node end minus first node start (includes queueing and pauses between "
              "relaunches); `node_hours`: the sum of the nodes' own wall times; `gpu_hours`: node hours x GPUs "
              "per node.", ""]
    failed = t["nodes"][t["nodes"]["status"] == "failed"]
    if len(failed):
        show = [c for c in ("sweep", "node_key", "stage", "paradigm", "seed", "error") if c in failed]
        lines += ["### Failed nodes", "", markdown_table(failed[show]), ""]
    lines += ["## Results", ""]
    if not metrics:
        lines += ["No completed runs yet.", ""]
    for (task, dataset), name in metrics.items():
        role = curve.loc[(curve["task"] == task) & (curve["eval_dataset"] == dataset), "eval_role"].iloc[0]
        lines += [f"### {task}: {dataset} ({role.upper()}), {name}", "",
                  markdown_table(sparsity_pivot(curve, task, dataset, name)), ""]
        if role == "id":
            lines += [f"Accuracy next to inference speed ({name}; speed-up vs the dense model, "
                      + (f"measured in `{SPEED_FILE}`" if speed else f"no `{SPEED_FILE}` measured yet")
                      + "; unstructured masks give no speed-up with dense kernels, docs/pruning.md):", "",
                      markdown_table(accuracy_speed_table(curve, task, dataset, name, speed)), ""]
    for fig in report.figures:
        lines += [f"![{os.path.basename(fig)}]({os.path.relpath(fig, out)})", ""]
    if len(t["hans"]):
        lines += ["## HANS per heuristic and label", ""]
        for (task, dataset), part in t["hans"].groupby(["task", "eval_dataset"], sort=True):
            wide = _pivot(part, [*_row_keys(part), "target_sparsity"], ["heuristic", "label"])
            wide.columns = [f"{h} {lab}" for h, lab in wide.columns]
            wide = _dense_first(wide.fillna("").reset_index())
            lines += [f"### {task}: {dataset}", "", markdown_table(wide), ""]
    if "mask_iou_summary" in t:
        lines += ["## Mask overlap", ""]
        if len(t["mask_iou_summary"]):
            lines += ["IoU of the kept weights between masks at equal target sparsity, grouped by what differs "
                      "between the two runs; `random_iou` is the expectation for independent random masks of the "
                      "same densities.", "", markdown_table(t["mask_iou_summary"]), ""]
        else:
            lines += ["No two masks at equal sparsity were found in the artifact store.", ""]
    lines += ["## Detailed metrics per eval dataset", ""]
    for task, dataset in sorted({(a, b) for a, b in zip(curve["task"], curve["eval_dataset"])}):
        lines += [f"### {task}: {dataset}", "", markdown_table(_all_metrics_pivot(curve, task, dataset)), ""]
    lines += ["## Configuration", ""]
    for sweep in sweeps:
        spec = os.path.join(output_dir, f"{sweep}.spec.yaml")
        if os.path.exists(spec):
            with open(spec) as f:
                lines += [f"Sweep spec `{spec}`:", "", "```yaml", f.read().rstrip(), "```", ""]
    lines += ["Settings per stage, read from the result rows (`cfg.*` columns):", "",
              markdown_table(t["config"]), ""]
    from .search_report import search_section  # Optuna studies among the rows: Pareto front, predictor table

    lines += search_section(frame, os.path.join(out, "figures"), output_dir)[0]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", metavar="RESULTS_DIR", help="a results dir or a sweep output dir")
    parser.add_argument("--out", help="report directory (default: <results_dir>/../report)")
    parser.add_argument("--metric", action="append", default=[], metavar="[DATASET=]METRIC",
                        help="metric of the main tables and figures, for every dataset or one (repeatable); "
                             "default: f1_duplicate where reported, else accuracy")
    parser.add_argument("--sweep", action="append", help="only this sweep (repeatable)")
    parser.add_argument("--no-masks", action="store_true", help="skip the mask-IoU analysis")
    args = parser.parse_args(argv)
    metric: str | dict | None = None
    for item in args.metric:
        if "=" in item:
            metric = metric if isinstance(metric, dict) else {}
            dataset, name = item.split("=", 1)
            metric[dataset] = name
        elif len(args.metric) > 1:
            parser.error("--metric: give one METRIC for all datasets, or DATASET=METRIC items")
        else:
            metric = item
    try:
        report = build_report(args.results, args.out, metric, args.sweep, masks=not args.no_masks)
    except (OSError, KeyError, ValueError) as err:  # FileNotFoundError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report.path}")
    for fig in report.figures:
        print(f"figure: {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
