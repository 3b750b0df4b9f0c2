"""The results dataset: long-format Parquet, hive-partitioned by sweep, task and paradigm, and its views.

Layout: ``<root>/sweep=<s>/task=<t>/paradigm=<p>/part-<node_key>.parquet``, one file per stage node.
Row = node x eval dataset x metric x eval step; ``selected`` marks the checkpoint chosen on ID dev.
Every column is documented in docs/results.md (``COLUMNS`` below is the typed core of that list).

* Appends are atomic: a file is written under a hidden temporary name (``.part-*.partial``, which neither
  pyarrow's discovery nor a ``*.parquet`` glob picks up) and renamed into place, so readers see whole
  files only, also while a sweep is still running.
* A relaunch rewrites the same ``part-<node_key>.parquet``: rows are never duplicated.
* ``root`` may be a local path or a pyarrow URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``).
* Each file carries its node's provenance (code version, host, GPU, start/end) both as columns and as
  Parquet key-value metadata under ``srnet.results`` (read with :func:`file_metadata`).
"""
from __future__ import annotations

import json
import os
import re
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
METADATA_KEY = b"srnet.results"
PARTITIONS = ["sweep", "task", "paradigm"]
DENSE_PARADIGM = "full"  # the dense fine-tuned reference model (target sparsity 0)
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TIMESTAMP = pa.timestamp("us", tz="UTC")

# Typed core columns (partition columns live in the path, not in the files). Other columns pass through
# with their inferred types: every stage-config field as ``cfg.<path>`` and whatever a stage adds.
COLUMNS: dict[str, pa.DataType] = {
    "node_key": pa.string(), "stage": pa.string(), "method": pa.string(), "status": pa.string(),
    "error": pa.string(), "backbone": pa.string(), "seed": pa.int64(), "loss": pa.string(),
    "target_sparsity": pa.float64(), "upstream_keys": pa.string(),
    # design columns: set by the planner for the paradigms that vary them, null elsewhere
    "finetune_loss": pa.string(), "mask_source": pa.string(), "base_paradigm": pa.string(),
    "source_task": pa.string(), "start_step": pa.int64(), "s_initial": pa.float64(), "schedule": pa.string(),
    "mask_epochs": pa.float64(),
    "step": pa.int64(), "epoch": pa.float64(), "eval_dataset": pa.string(), "eval_role": pa.string(),
    "metric": pa.string(), "value": pa.float64(), "selected": pa.bool_(), "measured_sparsity": pa.float64(),
    "queued_at": _TIMESTAMP, "started_at": _TIMESTAMP, "ended_at": _TIMESTAMP,
    "wall_seconds": pa.float64(), "gpu_hours": pa.float64(),
    "gpus_used": pa.float64(), "code_version": pa.string(), "hostname": pa.string(), "gpu_type": pa.string(),
    "torch_version": pa.string(), "ray_node_id": pa.string(), "node_ip": pa.string(),
}
REQUIRED = ["node_key", "stage", "status", "metric", "value", "step", "eval_dataset", "selected", *PARTITIONS]
# One row per (node, sparsity level, eval step, eval dataset, metric); IMP writes several levels per node.
ROW_KEY = ["node_key", "target_sparsity", "step", "eval_dataset", "metric"]
PROVENANCE = ["code_version", "hostname", "gpu_type", "gpus_used", "torch_version", "started_at", "ended_at",
              "wall_seconds", "gpu_hours"]
# Node columns that tell runs of one paradigm apart beyond method and loss (L1 of paradigm (a), the mask
# source of (b), the base paradigm of the OOD upper bound, the transfer source, the timing start step, the
# gradual start sparsity, the gradual paradigm's schedule (gradual / fixed) and mask-training epochs). A new one
# must be added here (and to COLUMNS and docs/results.md): until then sparsity_curve refuses to average over it
# and names it.
DESIGN_COLUMNS = ["finetune_loss", "mask_source", "base_paradigm", "source_task", "start_step", "s_initial",
                  "schedule", "mask_epochs"]
# Curves are grouped by these node columns; seeds are averaged over. ``method`` is the pruning method
# (mask_train, imp, imp_rw, gmp, structured, super_tickets, retrain; a Super Ticket's re-training is method retrain
# with mask_source super_tickets); nodes without one (finetune, bias_model) use their stage.
CURVE_BY = ["task", "backbone", "paradigm", "method", "loss", *DESIGN_COLUMNS]
_SEED_COLUMNS = {"seed", "cfg.seed", "cfg.train.seed"}
# Columns that legitimately differ between the seeds of one curve point (outputs, timing, provenance).
_PER_RUN = {"node_key", "value", "step", "epoch", "selected", "measured_sparsity", "status", "error",
            *PROVENANCE, *_SEED_COLUMNS, "ray_node_id", "node_ip", "queued_at"}


# -- writing ------------------------------------------------------------------------------------------------

def results_dir(output_dir: str) -> str:
    """The results dataset root of a sweep output directory (local path or URI)."""
    if "://" in output_dir:
        return output_dir.rstrip("/") + "/results"
    return os.path.join(os.path.abspath(output_dir), "results")


def _resolve(root: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, root
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def _to_table(frame: pd.DataFrame) -> pa.Table:
    """Core columns cast to their documented types (missing ones as nulls); the rest as inferred."""
    frame = frame.drop(columns=PARTITIONS)
    frame = frame.sort_values([c for c in ROW_KEY if c in frame], kind="stable").reset_index(drop=True)
    arrays, fields = [], []
    for name, dtype in COLUMNS.items():
        if name not in frame:
            arrays.append(pa.nulls(len(frame), dtype))
        elif dtype == _TIMESTAMP:
            stamps = pd.to_datetime(frame[name])
            if stamps.dt.tz is None:  # workers write naive UTC (from time.time())
                stamps = stamps.dt.tz_localize("UTC")
            stamps = stamps.dt.tz_convert("UTC").dt.floor("us").astype("datetime64[us, UTC]")
            arrays.append(pa.array(stamps, type=dtype, from_pandas=True))
        else:
            try:
                arrays.append(pa.array(frame[name], type=dtype, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise ValueError(f"results column '{name}' must be {dtype}: {err}") from None
        fields.append(pa.field(name, dtype))
    for name in frame.columns:
        if name not in COLUMNS:
            arrays.append(pa.array(frame[name], from_pandas=True))
            fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _node_metadata(table: pa.Table) -> dict:
    first = table.slice(0, 1).to_pylist()[0]
    meta = {"schema_version": SCHEMA_VERSION, "rows": table.num_rows,
            "published_at": pd.Timestamp.now(tz="UTC").isoformat()}
    for name in ["node_key", "stage", "status", *PROVENANCE]:
        value = first.get(name)
        meta[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return meta


def publish(root: str, frame: pd.DataFrame, filesystem: pafs.FileSystem | None = None) -> str:
    """Write one node's rows to ``<root>/sweep=/task=/paradigm=/part-<node_key>.parquet``, atomically.

    ``frame`` holds the rows of exactly one node and the REQUIRED columns. Publishing the same node again
    replaces its file (idempotent). ``filesystem``: a pyarrow filesystem to write through (default: the one
    ``root`` names). Returns the file path.
    """
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise ValueError(f"results rows lack column(s) {missing}; a node's rows need {REQUIRED}")
    if frame.empty:
        raise ValueError("no rows to publish: a node publishes at least one row (failed nodes: an error row)")
    for column in ["node_key", *PARTITIONS]:
        values = frame[column].unique()
        if len(values) != 1:
            raise ValueError(f"results rows of one file must share one '{column}', got {sorted(map(str, values))}")
        if not _PARTITION_VALUE.match(str(values[0])):
            raise ValueError(f"'{column}' value {values[0]!r} must match {_PARTITION_VALUE.pattern} "
                             "(it becomes a directory or file name)")
    duplicated = frame.duplicated([c for c in ROW_KEY if c in frame])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise ValueError(f"node {row['node_key']}: {int(duplicated.sum())} duplicate row(s) for "
                         f"{ {c: row[c] for c in ROW_KEY if c in frame} }; each (sparsity, step, dataset, "
                         "metric) must appear once")
    first = frame.iloc[0]
    fs, base = _resolve(root, filesystem)
    directory = "/".join([base.rstrip("/"), *(f"{c}={first[c]}" for c in PARTITIONS)])
    name = f"part-{first['node_key']}.parquet"
    table = _to_table(frame)
    meta = {**{c: str(first[c]) for c in PARTITIONS}, **_node_metadata(table)}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    tmp = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.partial"  # hidden, and no .parquet suffix
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as sink:
                pq.write_table(table, sink)
                sink.flush()
                os.fsync(sink.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, final)  # atomic on POSIX: readers see the old file or the new one
        else:
            with fs.open_output_stream(tmp) as sink:
                pq.write_table(table, sink)
            fs.move(tmp, final)  # rename on HDFS-like stores; object stores publish the copy whole
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    return final


# -- reading ------------------------------------------------------------------------------------------------

def _dataset_root(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    fs, base = _resolve(path, filesystem)
    base = base.rstrip("/") or "/"
    if fs.get_file_info(base + "/results").type == pafs.FileType.Directory:
        base += "/results"  # an output directory was given
    return fs, base


def _files(fs: pafs.FileSystem, base: str) -> list[str]:
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith((".", "_")))


def _prune_partitions(files: list[str], base: str, filters: dict) -> list[str]:
    """Drop files whose hive directories (sweep=/task=/paradigm=) cannot match the filters, before any footer
    is read: a report on one sweep of a large shared results dir opens only that sweep's files."""
    wanted = {}
    for column in PARTITIONS:
        if column in filters:
            value = filters[column]
            wanted[column] = {str(v) for v in value} if isinstance(value, (list, tuple, set)) else {str(value)}
    if not wanted:
        return files
    kept = []
    for file in files:
        parts = dict(p.split("=", 1) for p in file[len(base):].strip("/").split("/")[:-1] if "=" in p)
        if all(parts.get(c) in values for c, values in wanted.items()):
            kept.append(file)
    return kept


def load(path: str, *, columns: list[str] | None = None, filesystem: pafs.FileSystem | None = None,
         **filters) -> pd.DataFrame:
    """All rows under ``path`` (a results dir, a sweep output dir, or a URI), filtered by column equality.

    ``load("results/demo", task="synthetic", eval_role="ood", selected=True)``; a list, tuple or set value
    means "is in". ``columns`` reads only those columns. Partition columns come back as ``str``, timestamps as
    UTC. Files of different stages may differ in columns: they are read with one unified schema (a column a
    file lacks is null there). Safe while a sweep is writing: unfinished files are hidden temporaries.
    """
    fs, base = _dataset_root(path, filesystem)
    files = _files(fs, base)
    if not files:
        raise FileNotFoundError(f"no results under '{path}'; run a sweep first (python -m orchestrator.launch)")
    files = _prune_partitions(files, base, filters)
    if not files:  # nothing matches the partition filters: an empty frame with the requested columns
        return pd.DataFrame(columns=columns if columns is not None else [*PARTITIONS])
    partitioning = ds.partitioning(pa.schema([(c, pa.string()) for c in PARTITIONS]), flavor="hive")
    schemas = [pq.read_schema(f, filesystem=fs) for f in files]
    unified = pa.unify_schemas([s.remove_metadata() for s in schemas] + [partitioning.schema],
                               promote_options="permissive")
    dataset = ds.dataset(files, filesystem=fs, format="parquet", partitioning=partitioning,
                         partition_base_dir=base, schema=unified)
    expr = None
    for column, value in filters.items():
        if column not in unified.names:
            raise KeyError(f"unknown results column '{column}' in load(); columns: {unified.names}")
        cond = ds.field(column).isin(list(value)) if isinstance(value, (list, tuple, set)) else \
            ds.field(column) == value
        expr = cond if expr is None else expr & cond
    if columns is not None:
        unknown = [c for c in columns if c not in unified.names]
        if unknown:
            raise KeyError(f"unknown results column(s) {unknown} in load(columns=...); columns: {unified.names}")
    return dataset.to_table(columns=columns, filter=expr).to_pandas()


def file_metadata(path: str, filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    """One row per results file from its ``srnet.results`` key-value metadata (footers only, no data)."""
    fs, base = _dataset_root(path, filesystem)
    records = []
    for file in _files(fs, base):
        meta = pq.read_schema(file, filesystem=fs).metadata or {}
        if METADATA_KEY in meta:
            records.append({"file": file, **json.loads(meta[METADATA_KEY])})
    return pd.DataFrame(records)


# -- views --------------------------------------------------------------------------------------------------

def completed(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of nodes that finished (drops the error rows of failed nodes); ``method`` filled in from ``stage``
    where the planner set none, and the design columns present (as nulls) if the rows lack them."""
    rows = frame[frame["status"] == "completed"] if "status" in frame else frame
    method = rows["method"].fillna(rows["stage"]) if "method" in rows else rows["stage"]
    rows = rows.assign(method=method.astype(str))
    missing = {c: pd.Series(None, index=rows.index, dtype=object) for c in DESIGN_COLUMNS if c not in rows}
    return rows.assign(**missing) if missing else rows


def nodes(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, node): status, error, descriptive columns and provenance."""
    cols = [c for c in [*PARTITIONS, "node_key", "stage", "method", "backbone", "loss", "seed", *DESIGN_COLUMNS,
                        "upstream_keys", "status", "error", *PROVENANCE] if c in frame]
    out = frame[cols].drop_duplicates([c for c in ("sweep", "node_key") if c in frame])
    return out.reset_index(drop=True)


def _dedupe_nodes(frame: pd.DataFrame) -> pd.DataFrame:
    """The same node published by two sweeps is one computation: keep it once."""
    return frame.drop_duplicates([c for c in ROW_KEY if c in frame])


def selected(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at each node's checkpoint selected on ID dev (the ``selected`` flag), completed nodes only."""
    rows = completed(frame)
    return _dedupe_nodes(rows[rows["selected"].astype(bool)])


def reselect(frame: pd.DataFrame, metric: str = "accuracy", id_dataset: str | dict | None = None,
             select_from: float | None = None) -> pd.DataFrame:
    """Re-pick each node's best checkpoint on an ID dev metric; returns all rows at those steps.

    Never looks at OOD rows. ``id_dataset``: the ID eval dataset to select on (a dict maps task -> dataset);
    default: the task's only ID dataset. ``select_from``: only evals at epoch >= select_from x the node's
    last eval epoch are eligible; default: the node's own ``cfg.train.select_from`` (else 0). Ties go to the
    earliest step, as in training. The ``selected`` column of the result is True on the returned rows.
    """
    rows = _dedupe_nodes(completed(frame))
    chosen = []
    for (task, node_key, sparsity), group in rows.groupby(["task", "node_key", "target_sparsity"], observed=True,
                                                          dropna=False, sort=True):
        ids = group[group["eval_role"] == "id"]
        names = sorted(ids["eval_dataset"].unique())
        want = id_dataset.get(task) if isinstance(id_dataset, dict) else id_dataset
        if want is None:
            if len(names) != 1:
                raise ValueError(f"task '{task}' has ID eval datasets {names}: pass reselect(id_dataset=...)")
            want = names[0]
        if want not in names:
            ood = sorted(group.loc[group["eval_role"] == "ood", "eval_dataset"].unique())
            hint = " (selection on OOD data is not allowed)" if want in ood else ""
            raise ValueError(f"'{want}' is not an ID eval dataset of task '{task}'{hint}; ID datasets: {names}")
        cand = ids[(ids["eval_dataset"] == want) & (ids["metric"] == metric)]
        if cand.empty:
            raise ValueError(f"node {node_key}: no '{metric}' rows on '{want}' to select on; metrics: "
                             f"{sorted(ids['metric'].unique())}")
        frac = select_from
        if frac is None:
            col = cand["cfg.train.select_from"] if "cfg.train.select_from" in cand else pd.Series([0.0])
            frac = float(col.iloc[0]) if pd.notna(col.iloc[0]) else 0.0
        eligible = cand[cand["epoch"] >= frac * group["epoch"].max() - 1e-9]
        best = eligible.sort_values(["value", "step"], ascending=[False, True], kind="stable").iloc[0]
        chosen.append(group[group["step"] == best["step"]])
    out = pd.concat(chosen, ignore_index=True)
    out["selected"] = True
    return out


def _one_step_per_node(rows: pd.DataFrame) -> pd.DataFrame:
    """Selected rows if ``rows`` still hold several eval steps per node, else ``rows`` (already chosen)."""
    rows = _dedupe_nodes(completed(rows))
    key = [c for c in ROW_KEY if c != "step"]
    return selected(rows) if rows.duplicated(key).any() else rows


def n_distinct(values: pd.Series) -> int:
    """Distinct values, a null counting as one value of its own."""
    return values.astype(object).map(lambda v: "\0null" if pd.isna(v) else str(v)).nunique()


def _check_one_run_per_seed(rows: pd.DataFrame, keys: list[str]) -> None:
    """Averaging over seeds is only meaningful if nothing else varies inside a group: say what does."""
    ids = rows.groupby([*keys, "seed"], observed=True, dropna=False, sort=False).ngroup()
    sizes = ids.value_counts()
    if sizes.empty or sizes.max() <= 1:
        return
    group = rows[ids == sizes.idxmax()]
    first = group.iloc[0]
    where = {k: first[k] for k in keys if pd.notna(first[k])}
    varying = [c for c in group.columns if c not in _PER_RUN and c not in keys
               and n_distinct(group[c]) > 1]
    raise ValueError(f"{int(sizes.max())} runs of seed {first['seed']} fall in one group {where}; "
                     f"columns that differ inside it: {varying or ['(none: duplicated node keys)']}. "
                     "Filter them in load(...) or add them to by=[...]")


def sparsity_curve(rows: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Metric vs sparsity: mean and std (ddof=1) over seeds at each node's selected checkpoint.

    ``rows``: a results frame (the ``selected`` checkpoint is used), or the output of :func:`reselect`.
    ``by``: the curve dimensions (default ``CURVE_BY``: task, backbone, paradigm, method, loss and the
    ``DESIGN_COLUMNS``; a null design value forms its own group). Each output row is one (by...,
    target_sparsity, eval_role, eval_dataset, metric) with ``mean``, ``std`` (NaN for one seed), ``n_seeds``,
    ``seeds`` ("0,1,2") and ``measured_sparsity`` (mean). Raises if a seed occurs twice in a group, naming the
    columns that differ, instead of silently averaging them.
    """
    rows = _one_step_per_node(rows)
    by = list(CURVE_BY if by is None else by)
    keys = [*by, "target_sparsity", "eval_role", "eval_dataset", "metric"]
    _check_one_run_per_seed(rows, keys)
    grouped = rows.groupby(keys, observed=True, dropna=False, sort=True)
    out = grouped.agg(mean=("value", "mean"), std=("value", "std"), n_seeds=("seed", "nunique"),
                      measured_sparsity=("measured_sparsity", "mean"))
    out["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s.unique())))
    return out.reset_index()


# ``hans_<heuristic>_<label>`` (label ``entailment`` / ``non-entailment``); ``hans_<heuristic>`` (both labels) is
# label "all"; ``hans_subcase_<subcase>`` is not a heuristic cell.
HANS_METRIC = re.compile(r"^hans_(?!subcase_)(?P<group>.+?)(?:_(?P<label>non[_-]entailment|entailment))?$")


def subgroup_table(rows: pd.DataFrame, pattern: re.Pattern, by: list[str] | None = None) -> pd.DataFrame:
    """Per-subgroup metrics (those whose name matches ``pattern`` with groups ``group`` and ``label``)
    at the selected checkpoint, mean and std over seeds; adds ``group`` and ``label`` columns."""
    rows = _one_step_per_node(rows)
    parts = rows["metric"].astype(str).str.extract(pattern)
    rows = rows[parts["group"].notna()]
    curve = sparsity_curve(rows, by=by)
    parts = curve["metric"].str.extract(pattern)
    curve.insert(curve.columns.get_loc("metric") + 1, "group", parts["group"])
    curve.insert(curve.columns.get_loc("group") + 1, "label", parts["label"].fillna("all"))
    return curve


def hans_table(rows: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """HANS accuracy per heuristic x label (metrics ``hans_<heuristic>_<label>``), mean/std over seeds.
    The ``group`` column is named ``heuristic`` here."""
    return subgroup_table(rows, HANS_METRIC, by=by).rename(columns={"group": "heuristic"})


def selected_table(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per node x eval dataset at the ID-selected checkpoint, one column per metric."""
    sel = selected(frame)
    if metrics:
        sel = sel[sel["metric"].isin(metrics)]
    design = [c for c in DESIGN_COLUMNS if sel[c].notna().any()]
    index = [c for c in ("sweep", "task", "paradigm", "backbone", "method", "loss", *design, "target_sparsity",
                         "seed", "node_key", "eval_dataset", "eval_role", "step", "measured_sparsity")
             if c in sel]
    sel = sel.assign(**{c: sel[c].astype(object).where(sel[c].notna(), "") for c in design})
    wide = sel.set_index([*index, "metric"])["value"].unstack("metric")  # rows are unique: no aggregation
    return wide.reset_index().rename_axis(columns=None)
