"""Safe, atomic artifact I/O: tensors in safetensors, everything else JSON; nothing is unpickled.

torch is imported only by the tensor functions: the store and the row writer use this module in processes that
never load a model (a rehearsal's trial workers, workers/simulate.py)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Hidden and not ending in the target's extension, so globs like **/*.parquet never see a partial file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; published files get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _flatten(obj, prefix: str, tensors: dict, skeleton):
    """Split a nested state (dicts/lists of tensors and scalars) into tensors + a JSON skeleton."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, None)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors, None) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    return {"__value__": obj}


def _key(k):
    return {"int": k} if isinstance(k, int) else {"str": str(k)}


def _unflatten(node, tensors):
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__dict__" in node:
        return {(k["int"] if "int" in k else k["str"]): _unflatten(v, tensors) for k, v in node["__dict__"]}
    if "__list__" in node:
        items = [_unflatten(v, tensors) for v in node["__list__"]]
        return tuple(items) if node.get("tuple") else items
    return node["__value__"]


def save_safetensors(tensors: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the same bytes for the same content, atomically.

    safetensors writes ``__metadata__`` from a Rust HashMap, whose order changes from process to process, so two
    saves of the same masks had different sha256s. Here the header is re-serialised with sorted keys (the
    tensors' order and offsets are safetensors' own, already deterministic) and padded to 8 bytes as the format
    requires. Builds the file in memory: for small files (masks), not for weights."""
    from safetensors.torch import save

    raw = save(tensors)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            f.write(raw[8 + n:])


def save_state(path: str, state: dict) -> None:
    """Save a nested training state (optimizer state, RNG, counters) as safetensors + JSON skeleton."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors, None)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"skeleton": json.dumps(skeleton)})


def load_state(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        skeleton = json.loads(f.metadata()["skeleton"])
    return _unflatten(skeleton, tensors)


def sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
