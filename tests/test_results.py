"""The results store: schema round trip, atomic idempotent publishing, queries (pandas, DuckDB), views."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator import results

START = pd.Timestamp("2026-01-02 03:04:05.123456")  # naive UTC, as workers write it


def node_rows(key="n0", sweep="s1", task="synthetic", paradigm="a", stage="mask_train", loss="std", seed=0,
              sparsity=0.5, steps=(0, 10, 20), best=20, values=None, gpus=1.0, **extra) -> pd.DataFrame:
    """One node's rows as a worker writes them: steps x {dev (id), ood} x {accuracy, f1}."""
    rng = np.random.default_rng(abs(hash((key, sweep))) % 2**32)
    rows = []
    for step in steps:
        for dataset, role in (("dev", "id"), ("ood", "ood")):
            for metric in ("accuracy", "f1"):
                value = values[(step, dataset, metric)] if values else float(rng.uniform())
                rows.append({"step": step, "epoch": step / 20, "eval_dataset": dataset, "eval_role": role,
                             "metric": metric, "value": value, "selected": step == best,
                             "measured_sparsity": sparsity})
    frame = pd.DataFrame(rows)
    wall = 3600.0 * (seed + 1)
    frame = frame.assign(sweep=sweep, task=task, backbone="tiny-bert", seed=seed, loss=loss, paradigm=paradigm,
                         target_sparsity=sparsity, upstream_keys="up", **{"cfg.train.lr": 1e-3,
                                                                          "cfg.train.select_from": 0.0},
                         node_key=key, stage=stage, status="completed", wall_seconds=wall,
                         started_at=START, ended_at=START + pd.Timedelta(seconds=wall),
                         code_version="abc123", hostname="host-a", gpu_type="NVIDIA H100" if gpus else "",
                         gpus_used=gpus, torch_version="2.13.0", gpu_hours=wall / 3600 * gpus)
    for name, value in extra.items():
        frame[name] = value
    return frame


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_schema_round_trip_types_values_and_provenance(tmp_path):
    root = str(tmp_path / "results")
    frame = node_rows()
    path = results.publish(root, frame)
    assert path == os.path.join(root, "sweep=s1", "task=synthetic", "paradigm=a", "part-n0.parquet")
    back = results.load(root)
    assert len(back) == 12
    # documented types, partitions as plain strings, times as UTC
    assert str(back["sweep"].dtype) == "str" and str(back["paradigm"].dtype) == "str"
    assert back["seed"].dtype == np.int64 and back["selected"].dtype == bool and back["step"].dtype == np.int64
    assert str(back["started_at"].dtype) == "datetime64[us, UTC]"
    assert back["started_at"].iloc[0] == START.tz_localize("UTC")
    # values unchanged, row for row
    key = ["step", "eval_dataset", "metric"]
    mine = frame.sort_values(key).reset_index(drop=True)
    theirs = back.sort_values(key).reset_index(drop=True)
    for column in ("value", "epoch", "measured_sparsity", "target_sparsity", "cfg.train.lr", "gpu_hours"):
        np.testing.assert_array_equal(theirs[column].to_numpy(), mine[column].to_numpy(), err_msg=column)
    assert (theirs["selected"] == mine["selected"]).all()
    # every core column exists (absent ones as nulls, e.g. `error`), with its documented arrow type
    schema = pq.read_schema(path)
    for name, dtype in results.COLUMNS.items():
        assert schema.field(name).type == dtype, name
    assert back["error"].isna().all()
    # provenance in the key-value metadata and in every row group
    meta = json.loads(schema.metadata[results.METADATA_KEY])
    assert meta["schema_version"] == results.SCHEMA_VERSION and meta["rows"] == 12
    assert {k: meta[k] for k in ("sweep", "task", "paradigm", "node_key", "stage", "code_version", "hostname",
                                 "gpu_type", "gpus_used", "wall_seconds", "gpu_hours")} == {
        "sweep": "s1", "task": "synthetic", "paradigm": "a", "node_key": "n0", "stage": "mask_train",
        "code_version": "abc123", "hostname": "host-a", "gpu_type": "NVIDIA H100", "gpus_used": 1.0,
        "wall_seconds": 3600.0, "gpu_hours": 1.0}
    assert meta["started_at"] == "2026-01-02T03:04:05.123456+00:00"
    assert meta["ended_at"] == "2026-01-02T04:04:05.123456+00:00"
    parquet = pq.ParquetFile(path)
    for i in range(parquet.num_row_groups):
        group = parquet.read_row_group(i, columns=results.PROVENANCE)
        assert group.num_rows > 0 and all(group.column(c).null_count == 0 for c in results.PROVENANCE)
    listed = results.file_metadata(root)
    assert len(listed) == 1 and listed["code_version"].iloc[0] == "abc123"


def test_relaunch_replaces_the_node_file_and_never_duplicates(tmp_path):
    root = str(tmp_path / "results")
    error = pd.DataFrame([{"sweep": "s1", "task": "synthetic", "paradigm": "a", "node_key": "n0",
                           "stage": "mask_train", "status": "failed", "error": "OOM", "metric": "error",
                           "value": float("nan"), "eval_dataset": "", "eval_role": "", "step": -1,
                           "selected": False, "seed": 0, "target_sparsity": 0.5}])
    results.publish(root, error)  # first launch: the node failed
    results.publish(root, node_rows(key="n1", seed=1))
    assert len(results.load(root)) == 1 + 12
    before = files_under(root)
    results.publish(root, node_rows())  # relaunch: n0 succeeds, its error row is replaced
    results.publish(root, node_rows(key="n1", seed=1))  # n1 published again, as a relaunch does
    frame = results.load(root)
    assert len(frame) == 12 + 12
    assert (frame["status"] == "completed").all()
    assert files_under(root) == before  # same two files, no temporaries left behind


def test_publish_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    root = str(tmp_path / "results")
    path = results.publish(root, node_rows())
    original = open(path, "rb").read()

    def broken(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        results.publish(root, node_rows(values={(s, d, m): 0.0 for s in (0, 10, 20) for d in ("dev", "ood")
                                                for m in ("accuracy", "f1")}))
    monkeypatch.undo()
    assert open(path, "rb").read() == original  # readers still see the old, whole file
    assert files_under(root) == [os.path.relpath(path, root)]


def test_hidden_partial_files_are_invisible_to_pyarrow_and_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    root = str(tmp_path / "results")
    path = results.publish(root, node_rows())
    # what a writer killed mid-write leaves behind: a hidden temporary without the .parquet suffix
    with open(os.path.join(os.path.dirname(path), ".part-n9.parquet.1234abcd.partial"), "wb") as f:
        f.write(b"PAR1 truncated")
    assert len(results.load(root)) == 12
    count = duckdb.sql(f"select count(*) from read_parquet('{root}/**/*.parquet', hive_partitioning=true, "
                       "union_by_name=true)").fetchall()[0][0]
    assert count == 12


def test_publish_rejects_bad_frames_with_the_field_named(tmp_path):
    root = str(tmp_path / "results")
    with pytest.raises(ValueError, match=r"lack column\(s\) \['status'\]"):
        results.publish(root, node_rows().drop(columns=["status"]))
    with pytest.raises(ValueError, match="share one 'node_key'"):
        results.publish(root, pd.concat([node_rows(), node_rows(key="n1")]))
    with pytest.raises(ValueError, match="'sweep' value 'a/b'"):
        results.publish(root, node_rows(sweep="a/b"))
    with pytest.raises(ValueError, match="12 duplicate row"):
        results.publish(root, pd.concat([node_rows(), node_rows()]))
    with pytest.raises(ValueError, match="'seed' must be int64"):
        results.publish(root, node_rows().assign(seed="zero"))
    assert not os.path.exists(root) or files_under(root) == []


def test_load_filters_columns_and_unifies_schemas(tmp_path):
    root = str(tmp_path / "out" / "results")
    results.publish(root, node_rows(key="n0", seed=0))
    results.publish(root, node_rows(key="n1", seed=1, paradigm="c", **{"cfg.mask.init": "magnitude"}))
    results.publish(root, node_rows(key="n2", seed=2, sweep="s2"))
    out_dir = str(tmp_path / "out")
    assert len(results.load(out_dir)) == 36  # an output dir works too
    assert len(results.load(root, sweep="s1")) == 24
    assert len(results.load(root, paradigm=["a", "c"], eval_role="ood", selected=True)) == 3 * 2
    picked = results.load(root, seed={1, 2}, metric="accuracy", columns=["seed", "value"])
    assert list(picked.columns) == ["seed", "value"] and sorted(picked["seed"].unique()) == [1, 2]
    frame = results.load(root)
    # a column only one file has is null elsewhere
    assert frame.groupby("node_key")["cfg.mask.init"].apply(lambda s: s.notna().sum()).to_dict() == \
        {"n0": 0, "n1": 12, "n2": 0}
    with pytest.raises(KeyError, match="unknown results column 'sparsity'"):
        results.load(root, sparsity=0.5)
    with pytest.raises(FileNotFoundError, match="no results under"):
        results.load(str(tmp_path / "nowhere"))


def test_remote_uris_and_pyarrow_filesystems(tmp_path):
    uri = "file://" + str(tmp_path / "remote" / "results")
    results.publish(uri, node_rows())
    assert len(results.load(uri, metric="f1")) == 6
    fsspec = pytest.importorskip("fsspec")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    memory = PyFileSystem(FSSpecHandler(fsspec.filesystem("memory")))
    path = results.publish("/bucket/sweeps/results", node_rows(key="m1"), filesystem=memory)
    assert path == "/bucket/sweeps/results/sweep=s1/task=synthetic/paradigm=a/part-m1.parquet"
    results.publish("/bucket/sweeps/results", node_rows(key="m1"), filesystem=memory)
    frame = results.load("/bucket/sweeps", filesystem=memory)
    assert len(frame) == 12 and set(frame["node_key"]) == {"m1"}


def _curve_set(tmp_path) -> tuple[str, pd.DataFrame]:
    """3 seeds x 2 sparsities of paradigm a, plus the dense model; one run still has several evals."""
    root = str(tmp_path / "results")
    frames = []
    for seed in range(3):
        frames.append(node_rows(key=f"ft{seed}", paradigm="full", stage="finetune", sparsity=0.0, seed=seed))
        for sparsity in (0.5, 0.9):
            frames.append(node_rows(key=f"m{seed}{int(sparsity * 10)}", seed=seed, sparsity=sparsity,
                                    best=10 if seed == 1 else 20))
    for frame in frames:
        results.publish(root, frame)
    return root, pd.concat(frames, ignore_index=True)


def test_sparsity_curve_equals_mean_and_sample_std_over_seeds(tmp_path):
    root, truth = _curve_set(tmp_path)
    curve = results.sparsity_curve(results.load(root))
    assert len(curve) == 3 * 2 * 2  # (dense, 0.5, 0.9) x (dev, ood) x (accuracy, f1)
    for (paradigm, sparsity, dataset, metric), row in curve.set_index(
            ["paradigm", "target_sparsity", "eval_dataset", "metric"]).iterrows():
        picked = truth[truth["selected"] & (truth["paradigm"] == paradigm) & (truth["target_sparsity"] == sparsity)
                       & (truth["eval_dataset"] == dataset) & (truth["metric"] == metric)]
        assert len(picked) == 3
        assert row["mean"] == pytest.approx(np.mean(picked["value"]), abs=1e-12)
        assert row["std"] == pytest.approx(np.std(picked["value"], ddof=1), abs=1e-12)
        assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
        assert row["method"] == ("finetune" if paradigm == "full" else "mask_train")
    # the DuckDB answer over the same files is the same
    duckdb = pytest.importorskip("duckdb")
    sql = duckdb.sql(f"""select paradigm, target_sparsity, eval_dataset, metric, avg(value) as mean,
                                stddev_samp(value) as std
                         from read_parquet('{root}/**/*.parquet', hive_partitioning=true, union_by_name=true)
                         where selected and status = 'completed' group by all""").df()
    merged = curve.merge(sql, on=["paradigm", "target_sparsity", "eval_dataset", "metric"], suffixes=("", "_sql"))
    assert len(merged) == len(curve)
    np.testing.assert_allclose(merged["mean"], merged["mean_sql"], rtol=1e-12)
    np.testing.assert_allclose(merged["std"], merged["std_sql"], rtol=1e-12)


def test_curve_refuses_to_average_runs_that_differ_in_more_than_the_seed(tmp_path):
    root, _ = _curve_set(tmp_path)
    results.publish(root, node_rows(key="other-lr", seed=0, sparsity=0.5, **{"cfg.train.lr": 5e-5}))
    with pytest.raises(ValueError, match=r"2 runs of seed 0 .* differ inside it: \['cfg.train.lr'\]"):
        results.sparsity_curve(results.load(root))
    curve = results.sparsity_curve(results.load(root), by=[*results.CURVE_BY, "cfg.train.lr"])
    assert curve.loc[curve["cfg.train.lr"] == 5e-5, "n_seeds"].unique().tolist() == [1]


def test_the_same_node_in_two_sweeps_counts_once(tmp_path):
    root, _ = _curve_set(tmp_path)
    results.publish(root, node_rows(key="m05", seed=0, sparsity=0.5, sweep="s2"))
    frame = results.load(root)
    assert frame["sweep"].nunique() == 2
    curve = results.sparsity_curve(frame)
    assert curve["n_seeds"].unique().tolist() == [3]


def _values(best_id_step: int, best_ood_step: int) -> dict:
    """dev accuracy peaks at best_id_step, ood accuracy at best_ood_step (a trap for OOD selection)."""
    out = {}
    for step in (0, 10, 20):
        out[(step, "dev", "accuracy")] = 0.9 if step == best_id_step else 0.5 + step / 100
        out[(step, "ood", "accuracy")] = 0.99 if step == best_ood_step else 0.1
        out[(step, "dev", "f1")] = 0.3 + step / 100
        out[(step, "ood", "f1")] = 0.2
    return out


def test_reselect_uses_id_dev_only_and_respects_select_from():
    frame = node_rows(values=_values(best_id_step=10, best_ood_step=20), best=10)
    chosen = results.reselect(frame)
    assert chosen["step"].unique().tolist() == [10] and len(chosen) == 4  # all datasets and metrics at step 10
    assert chosen.loc[(chosen["eval_dataset"] == "ood") & (chosen["metric"] == "accuracy"), "value"].item() == 0.1
    assert results.reselect(frame, metric="f1")["step"].unique().tolist() == [20]
    # only evals at epoch >= 0.7 x the last epoch (1.0) are eligible: step 20
    assert results.reselect(frame, select_from=0.7)["step"].unique().tolist() == [20]
    late = frame.assign(**{"cfg.train.select_from": 0.7})
    assert results.reselect(late)["step"].unique().tolist() == [20]
    # ties go to the earliest step, as in training
    tie = node_rows(values={**_values(10, 20), (20, "dev", "accuracy"): 0.9})
    assert results.reselect(tie)["step"].unique().tolist() == [10]
    with pytest.raises(ValueError, match="selection on OOD data is not allowed"):
        results.reselect(frame, id_dataset="ood")
    # by default the flagged checkpoint and the recomputed one agree
    flagged = results.selected(frame).sort_values(results.ROW_KEY).reset_index(drop=True)
    again = chosen.sort_values(results.ROW_KEY).reset_index(drop=True)
    assert flagged[results.ROW_KEY + ["value"]].equals(again[results.ROW_KEY + ["value"]])


def test_curve_of_reselected_rows_uses_the_reselected_step():
    frame = node_rows(values=_values(best_id_step=10, best_ood_step=20), best=10)
    curve = results.sparsity_curve(results.reselect(frame, metric="f1")).set_index(["eval_dataset", "metric"])
    assert curve.loc[("dev", "f1"), "mean"] == pytest.approx(0.5)  # step 20
    assert curve.loc[("ood", "accuracy"), "mean"] == pytest.approx(0.99)
    assert curve.loc[("dev", "accuracy"), "mean"] == pytest.approx(0.7)
    flagged = results.sparsity_curve(frame).set_index(["eval_dataset", "metric"])
    assert flagged.loc[("dev", "accuracy"), "mean"] == pytest.approx(0.9)  # step 10


def test_hans_table_parses_heuristic_and_label():
    rows = []
    cells = {("lexical_overlap", "entailment"): [0.9, 0.8], ("lexical_overlap", "non_entailment"): [0.1, 0.3],
             ("subsequence", "non_entailment"): [0.2, 0.4], ("constituent", "entailment"): [1.0, 0.96]}
    for seed in (0, 1):
        values = {(20, "hans", f"hans_{h}_{lab}"): v[seed] for (h, lab), v in cells.items()}
        values[(20, "hans", "accuracy")] = 0.5
        frame = node_rows(key=f"k{seed}", seed=seed, steps=(20,), task="mnli")
        frame = frame[(frame["eval_dataset"] == "dev") & (frame["metric"] == "accuracy")]
        extra = pd.DataFrame([{**frame.iloc[0].to_dict(), "eval_dataset": d, "eval_role": "ood", "metric": m,
                               "value": v} for (_, d, m), v in values.items()])
        rows += [frame, extra]
    table = results.hans_table(pd.concat(rows, ignore_index=True))
    assert len(table) == 4  # `accuracy` and the dev rows are not HANS cells
    got = {(r.heuristic, r.label): (r.mean, r.std) for r in table.itertuples()}
    for key, values in cells.items():
        assert got[key] == (pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1))), key
    assert re.match(results.HANS_METRIC, "hans_lexical_overlap").group("label") is None


def test_every_column_is_documented():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "results.md")) as f:
        doc = f.read()
    for name in [*results.PARTITIONS, *results.COLUMNS, "cfg.<path>"]:
        assert f"| `{name}` |" in doc, f"docs/results.md lacks a row for column '{name}'"


def test_readers_never_see_a_partial_file_while_a_node_is_republished(tmp_path):
    import threading

    root = str(tmp_path / "results")
    results.publish(root, node_rows(key="n1", seed=1))
    stop = threading.Event()
    errors = []

    def writer():
        i = 0
        while not stop.is_set():
            try:
                results.publish(root, node_rows(key="n0", best=(0, 10, 20)[i % 3]))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        counts = {len(results.load(root)) for _ in range(40)}
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert counts <= {12, 24}  # the first node alone before n0's first publish, both after: never a torn file
    assert len(results.load(root)) == 24


def test_real_worker_rows_round_trip_and_reselect_agrees(tmp_path):
    """Rows exactly as workers/trainable.py writes them (tiny-bert, synthetic task) survive publish + load."""
    from workers.trainable import run_node

    cfg = {"stage": "mask_train", "task": "synthetic", "task_options": {"n_train": 64, "n_dev": 32, "n_ood": 32},
           "backbone": "tiny-bert", "seed": 0, "sparsity": 0.6, "max_length": 32, "device": "cpu",
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 1, "select_from": 0.5}}
    node = {"key": "realnode", "stage": "mask_train", "stage_config": cfg, "inputs": {},
            "artifact_root": str(tmp_path / "artifacts"),
            "columns": {"sweep": "real", "task": "synthetic", "paradigm": "c", "backbone": "tiny-bert", "seed": 0,
                        "loss": "std", "target_sparsity": 0.6, "upstream_keys": ""}}
    written = pd.read_parquet(os.path.join(run_node(node), "rows.parquet"))
    results.publish(str(tmp_path / "results"), written)
    back = results.load(str(tmp_path))
    assert sorted(back.columns) == sorted(set(written.columns) | set(results.COLUMNS))
    key = ["step", "eval_dataset", "metric"]
    written = written.sort_values(key).reset_index(drop=True)
    back = back.sort_values(key).reset_index(drop=True)
    for column in written.columns:
        mine, theirs = written[column], back[column]
        if column in ("started_at", "ended_at"):
            mine, theirs = mine.dt.floor("us"), theirs.dt.tz_convert(None).astype("datetime64[ns]")
        pd.testing.assert_series_equal(theirs, mine, check_dtype=False, check_names=False, obj=column)
    assert back.groupby(["eval_dataset", "metric"])["selected"].sum().eq(1).all()
    flagged = results.selected(back).sort_values(results.ROW_KEY).reset_index(drop=True)
    again = results.reselect(back).sort_values(results.ROW_KEY).reset_index(drop=True)
    assert flagged[results.ROW_KEY + ["value"]].equals(again[results.ROW_KEY + ["value"]])
    assert flagged["epoch"].min() >= 0.5  # cfg.train.select_from from the row, as training applied it


def test_method_and_design_columns_separate_curves():
    frames = []
    for seed in (0, 1):
        frames.append(node_rows(key=f"ft{seed}", paradigm="full", stage="finetune", sparsity=0.0, seed=seed,
                                finetune_loss="std"))
        for l1 in ("std", "poe"):  # paradigm (a) from the std- and from the PoE-fine-tuned model
            frames.append(node_rows(key=f"a-{l1}{seed}", loss="poe", seed=seed, finetune_loss=l1,
                                    method="mask_train"))
        for method in ("imp", "imp_rw"):  # one stage, two methods
            frames.append(node_rows(key=f"{method}{seed}", stage="imp", method=method, seed=seed))
    curve = results.sparsity_curve(pd.concat(frames, ignore_index=True))
    points = curve[(curve["eval_dataset"] == "ood") & (curve["metric"] == "f1")]
    assert sorted(zip(points["method"], points["finetune_loss"].fillna("-"))) == [
        ("finetune", "std"), ("imp", "-"), ("imp_rw", "-"), ("mask_train", "poe"), ("mask_train", "std")]
    assert points["n_seeds"].tolist() == [2] * 5
    # an undeclared dimension is named, not averaged over
    clash = pd.concat([node_rows(key="x0", seed=0, warmup="yes"), node_rows(key="x1", seed=0, warmup="no")])
    with pytest.raises(ValueError, match=r"differ inside it: \['warmup'\]"):
        results.sparsity_curve(clash)


def test_selected_table_is_one_row_per_node_and_dataset(tmp_path):
    root, truth = _curve_set(tmp_path)
    table = results.selected_table(results.load(root))
    assert len(table) == 9 * 2  # 9 nodes x (dev, ood)
    sel = truth[truth["selected"]]
    for row in table.itertuples():
        want = sel[(sel["node_key"] == row.node_key) & (sel["eval_dataset"] == row.eval_dataset)]
        assert (row.accuracy, row.f1) == (want.loc[want["metric"] == "accuracy", "value"].item(),
                                          want.loc[want["metric"] == "f1", "value"].item())


def test_partition_filters_prune_files_before_reading(tmp_path):
    """A filter on sweep/task/paradigm skips other partitions' files unopened (footers included): a report on
    one sweep of a large shared results dir reads only that sweep."""
    root = str(tmp_path / "results")
    results.publish(root, node_rows(key="n0", seed=0))
    other = results.publish(root, node_rows(key="n1", seed=1, sweep="s2"))
    with open(other, "wb") as f:  # unreadable: any read of it would raise
        f.write(b"not parquet")
    frame = results.load(root, sweep="s1", columns=["node_key", "value"])
    assert list(frame.columns) == ["node_key", "value"] and set(frame["node_key"]) == {"n0"} and len(frame) == 12
    assert results.load(root, sweep="s3", columns=["node_key"]).empty
    with pytest.raises(Exception):
        results.load(root)  # without the filter the broken file is read
