"""Reading task files: locate a file among known layouts, parse TSV / JSONL by column name, and fail with
one message that names the file, the layout expected and where to get it.

TSVs are read with ``quoting=csv.QUOTE_NONE``: MNLI text contains stray quote characters, and default CSV
quoting silently merges rows (pandas returns 9,714 instead of 9,815 rows for dev-matched).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import zlib
from dataclasses import dataclass, fields

import numpy as np

from .base import PairSplit

DATA_DIR_ENV = "SRNET_DATA_DIR"


class DataFileError(ValueError):
    """A task file is missing or malformed; the message says which file, what layout, and where to get it."""


@dataclass(frozen=True)
class FileSpec:
    """Where one split's file may live (paths relative to the data directory, first match wins), which
    columns/keys it needs (each a tuple of accepted names), and where a user gets it."""

    what: str  # e.g. "MNLI dev-matched"
    candidates: tuple[str, ...]
    text_a: tuple[str, ...]
    text_b: tuple[str, ...]
    label: tuple[str, ...]
    source: str  # where to get it
    id: tuple[str, ...] = ()  # id column(s); without one, the 0-based row number is the id
    id_required: bool = True
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (extra name, accepted columns), optional columns
    fmt: str = "tsv"  # "tsv" (header line) or "jsonl"

    def layout(self) -> str:
        need = [self.text_a, self.text_b, self.label] + ([self.id] if self.id and self.id_required else [])
        cols = ", ".join("/".join(c) for c in need)
        kind = "tab-separated with a header line" if self.fmt == "tsv" else "one JSON object per line"
        return f"{kind}; needs {'columns' if self.fmt == 'tsv' else 'keys'} {cols}"


def resolve_data_dir(data_dir: str | None, task: str) -> str:
    path = data_dir or os.environ.get(DATA_DIR_ENV)
    if not path:
        raise DataFileError(
            f"task '{task}' reads files but no data directory was given: set the spec field data_dir or the "
            f"environment variable {DATA_DIR_ENV} (the Makefile sets it to ../shared/data); see docs/tasks.md")
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise DataFileError(f"task '{task}': data directory '{path}' does not exist; see docs/tasks.md")
    return path


def find_file(data_dir: str, spec: FileSpec, override: str | None = None) -> str:
    if override:
        path = override if os.path.isabs(override) else os.path.join(data_dir, override)
        if not os.path.isfile(path):
            raise DataFileError(f"{spec.what}: file '{path}' (from the task option 'paths') does not exist. "
                                f"Expected layout: {spec.layout()}. Get it from {spec.source}")
        return path
    for rel in spec.candidates:
        path = os.path.join(data_dir, rel)
        if os.path.isfile(path):
            return path
    tried = ", ".join(spec.candidates)
    raise DataFileError(
        f"{spec.what}: no file found under '{data_dir}' (looked for {tried}). Expected layout: {spec.layout()}. "
        f"Get it from {spec.source}; or point the task option 'paths' at the file")


def _pick(names, accepted: tuple[str, ...]):
    return next((a for a in accepted if a in names), None)


def read_rows(path: str, spec: FileSpec, skip_malformed: float = 0.0) -> list[dict]:
    """Rows as dicts holding the columns the spec names. ``skip_malformed``: the largest fraction of rows
    with a wrong field count that may be skipped (the GLUE QQP reader skips such rows); 0 = strict."""
    if spec.fmt == "jsonl":
        return _read_jsonl(path, spec)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataFileError(f"{spec.what}: file '{path}' is empty. Expected layout: {spec.layout()}. "
                                f"Get it from {spec.source}")
        header = [h.strip() for h in header]
        _check_columns(path, spec, header)
        width, rows, bad = len(header), [], []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != width:
                if row == [] or row == [""]:
                    continue  # a trailing empty line
                bad.append(line_no)
                continue
            rows.append(dict(zip(header, row)))
    if bad and len(bad) > skip_malformed * (len(rows) + len(bad)):
        raise DataFileError(
            f"{spec.what}: file '{path}' line {bad[0]} has a different number of tab-separated fields than its "
            f"header ({width}){f' ({len(bad)} such lines)' if len(bad) > 1 else ''}. Expected layout: "
            f"{spec.layout()}; read with quoting=csv.QUOTE_NONE. Get a fresh copy from {spec.source}")
    if bad:
        print(f"[srnet] {spec.what}: skipped {len(bad)} malformed line(s) of '{path}' (first: line {bad[0]}), "
              "as the reference GLUE reader does", file=sys.stderr)
    return rows


def _check_columns(path: str, spec: FileSpec, names) -> None:
    for accepted in (spec.text_a, spec.text_b, spec.label) + ((spec.id,) if spec.id and spec.id_required else ()):
        if _pick(names, accepted) is None:
            raise DataFileError(
                f"{spec.what}: file '{path}' has no column {'/'.join(accepted)} (it has: {', '.join(names)}). "
                f"Expected layout: {spec.layout()}. Get it from {spec.source}")


def _read_jsonl(path: str, spec: FileSpec) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{spec.what}: file '{path}' line {line_no} is not valid JSON ({err.msg}). "
                                    f"Expected layout: {spec.layout()}. Get it from {spec.source}") from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{spec.what}: file '{path}' line {line_no} is not a JSON object. "
                                    f"Expected layout: {spec.layout()}")
            if not rows:
                _check_columns(path, spec, list(obj))
            rows.append(obj)
    if not rows:
        raise DataFileError(f"{spec.what}: file '{path}' is empty. Expected layout: {spec.layout()}. "
                            f"Get it from {spec.source}")
    return rows


def rows_to_split(name: str, path: str, spec: FileSpec, rows: list[dict], label_map: dict[str, int],
                  id_prefix: str = "") -> PairSplit:
    """Build a PairSplit; unknown labels fail naming the line. Ids: the id column, or the row number."""
    names = list(rows[0]) if rows else []
    a_key, b_key, y_key = _pick(names, spec.text_a), _pick(names, spec.text_b), _pick(names, spec.label)
    id_key = _pick(names, spec.id) if spec.id else None
    extras = [(extra, _pick(names, cols)) for extra, cols in spec.extra]
    extras = [(extra, key) for extra, key in extras if key is not None]
    ids, text_a, text_b, labels = [], [], [], []
    extra = {e: [] for e, _ in extras}
    first_line = 2 if spec.fmt == "tsv" else 1
    for i, row in enumerate(rows):
        raw = str(row.get(y_key, "")).strip()
        if raw not in label_map:
            raise DataFileError(
                f"{spec.what}: file '{path}' row {i + first_line}: label {raw!r} is not one of "
                f"{sorted(label_map)}. Expected layout: {spec.layout()}. Get it from {spec.source}")
        a, b = row.get(a_key), row.get(b_key)
        if not isinstance(a, str) or not isinstance(b, str):
            raise DataFileError(f"{spec.what}: file '{path}' row {i + first_line}: '{a_key}' and '{b_key}' "
                                f"must be strings. Expected layout: {spec.layout()}")
        ids.append(id_prefix + (str(row[id_key]) if id_key else str(i)))
        text_a.append(a)
        text_b.append(b)
        labels.append(label_map[raw])
        for e, key in extras:
            extra[e].append(str(row.get(key, "")))
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for x in ids:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise DataFileError(f"{spec.what}: file '{path}' has the id {dup!r} more than once; ids must be unique "
                            "(bias and teacher files are joined by id)")
    return PairSplit(name, ids, text_a, text_b, np.asarray(labels, dtype=np.int64), extra)


def load_file_split(name: str, data_dir: str, spec: FileSpec, label_map: dict[str, int],
                    override: str | None = None, skip_malformed: float = 0.0, id_prefix: str = "") -> PairSplit:
    path = find_file(data_dir, spec, override)
    return rows_to_split(name, path, spec, read_rows(path, spec, skip_malformed), label_map, id_prefix)


def subsample(split: PairSplit, max_rows: int | None, seed: int) -> PairSplit:
    """A seeded subset of at most ``max_rows`` examples, in file order, ids unchanged (bias joins by id)."""
    if max_rows is None or len(split) <= max_rows:
        return split
    rng = np.random.default_rng([seed, zlib.crc32(split.name.encode())])
    keep = np.sort(rng.choice(len(split), size=max_rows, replace=False))
    return split.subset(keep)


def parse_options(cls, task: str, options: dict):
    """Build an options dataclass; an unknown option fails naming it and listing the known ones."""
    known = {f.name for f in fields(cls)}
    for key in options:
        if key not in known:
            raise ValueError(f"task '{task}': unknown option '{key}'; known options: {sorted(known)}")
    return cls(**options)
