"""Tokenization cache: one Arrow IPC file per (task, split, task options, tokenizer, max length, data).

Every stage of a sweep that reads the same split with the same tokenizer reuses one file, memory-mapped.
The key also holds a fingerprint of the split's content (ids, texts, labels), so an edited data file
can never be served stale tokens. Writes are atomic (a crashed writer leaves no partial file).

Layout: ``<cache_dir>/<task>/<split>-<key>.arrow`` with a ``.json`` beside it naming the key parts.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import weakref

import numpy as np

from .data import Encoded, Ragged, encode
from .io import atomic_path, write_json
from .tasks.base import PairSplit

CACHE_FORMAT = "1"  # bump when the file layout or the tokenization call changes


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides token ids: the full fast-tokenizer definition (vocab, normaliser,
    pre-tokeniser, post-processor) when there is one, else the sorted vocab plus the class and casing.
    Memoised per tokenizer object (hashing the 0.5 MB definition takes ~0.2 s); adding tokens re-hashes."""
    try:
        size, fp = _FINGERPRINTS[tokenizer]
        if size == len(tokenizer):
            return fp
    except (KeyError, TypeError):
        pass
    fp = _fingerprint(tokenizer)
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), fp)
    except TypeError:  # not weak-referenceable: no memo
        pass
    return fp


def _fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        spec = json.loads(backend.to_str())
        # Truncation / padding state is set per call (it changes after the first encode), not a property
        # of the tokenizer; max_length is part of the key on its own.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        h.update(json.dumps(vocab).encode())
        h.update(str(getattr(tokenizer, "do_lower_case", None)).encode())
    h.update(str(tokenizer.pad_token_id).encode())
    return h.hexdigest()[:16]


def split_fingerprint(split: PairSplit) -> str:
    h = hashlib.sha256()
    for part in (split.ids, split.text_a, split.text_b):
        h.update("\x1f".join(part).encode())
        h.update(b"\x1e")
    h.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def cache_key(tokenizer, split: PairSplit, max_length: int, key_parts: dict) -> tuple[str, dict]:
    parts = {"format": CACHE_FORMAT, "key_parts": key_parts, "split": split.name,
             "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
             "tokenizer_hash": tokenizer_fingerprint(tokenizer), "max_length": int(max_length),
             "data_hash": split_fingerprint(split)}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16], parts


def cache_path(cache_dir: str, split: PairSplit, key: str, key_parts: dict) -> str:
    task = str(key_parts.get("task", "task")) if isinstance(key_parts, dict) else "task"
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]", "_", s)  # noqa: E731
    return os.path.join(cache_dir, safe(task), f"{safe(split.name)}-{key}.arrow")


def write_encoded(path: str, enc: Encoded) -> None:
    import pyarrow as pa

    def list_array(r: Ragged, value_type):
        return pa.LargeListArray.from_arrays(pa.array(r.offsets, pa.int64()), pa.array(r.flat, value_type))

    table = pa.table({
        "id": pa.array(enc.ids, pa.string()),
        "input_ids": list_array(enc.input_ids, pa.int32()),
        "token_type_ids": list_array(enc.token_type_ids, pa.int8()),
        "label": pa.array(enc.labels, pa.int64()),
    }, metadata={b"pad_id": str(enc.pad_id).encode()})
    with atomic_path(path) as tmp:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def read_encoded(path: str) -> Encoded:
    import pyarrow as pa

    with pa.memory_map(path, "r") as source:
        table = pa.ipc.open_file(source).read_all()
    pad_id = int(table.schema.metadata[b"pad_id"])

    def ragged(name: str) -> Ragged:
        col = table.column(name).combine_chunks()
        offsets = col.offsets.to_numpy()
        flat = col.values.to_numpy()
        return Ragged(flat[offsets[0]: offsets[-1]], offsets - offsets[0])

    return Encoded(table.column("id").to_pylist(), ragged("input_ids"), ragged("token_type_ids"),
                   table.column("label").to_numpy(), pad_id)


def encode_cached(tokenizer, split: PairSplit, max_length: int, cache_dir: str | None,
                  key_parts: dict | None = None) -> Encoded:
    """``encode`` with an on-disk cache. ``key_parts``: what identifies the data, e.g. ``task.cache_key()``
    (task name and options); the split name, tokenizer, max length and a content hash are added here.
    ``cache_dir`` None: no cache (plain ``encode``)."""
    if not cache_dir:
        return encode(tokenizer, split, max_length)
    key_parts = key_parts or {}
    key, parts = cache_key(tokenizer, split, max_length, key_parts)
    path = cache_path(cache_dir, split, key, key_parts)
    if os.path.isfile(path):
        try:
            return read_encoded(path)
        except Exception as err:  # a damaged file (disk full, foreign writer): rebuild it
            print(f"[srnet] tokenization cache '{path}' is unreadable ({err}); rebuilding it", file=sys.stderr)
    enc = encode(tokenizer, split, max_length)
    write_encoded(path, enc)
    write_json(path[: -len(".arrow")] + ".json", parts)
    return enc
