"""Tokenized splits, deterministic shuffled batches, and dynamic padding.

Token ids are stored ragged (one flat int array plus row offsets), not as Python lists: a 392k-example
MNLI train split is ~16M tokens, which as lists of Python ints would take ~0.6 GB; flat it is 64 MB and
maps straight from the Arrow cache (srnet_core.cache).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .tasks.base import PairSplit


class Ragged:
    """Rows of different lengths: ``flat[offsets[i]:offsets[i + 1]]`` is row i."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = np.asarray(flat)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[-1] != len(self.flat):
            raise ValueError("Ragged: offsets must be 1-D, start at 0 and end at len(flat)")

    @classmethod
    def from_lists(cls, rows, dtype=np.int32) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((x for r in rows for x in r), dtype=dtype, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, index) -> "Ragged":
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths()[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Ragged(self.flat[_gather_index(self.offsets[index], lengths)], offsets)

    def padded(self, index, width: int, pad) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``index`` padded (or cut) to ``width``: (values [B, width], mask [B, width])."""
        index = np.asarray(index, dtype=np.int64)
        lengths = np.minimum(self.lengths()[index], width)
        cols = np.arange(width)
        mask = cols[None, :] < lengths[:, None]
        if len(self.flat) == 0:
            return np.full((len(index), width), pad, dtype=self.flat.dtype), mask
        pos = np.minimum(self.offsets[index][:, None] + cols[None, :], len(self.flat) - 1)
        return np.where(mask, self.flat[pos], pad), mask


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions of the rows starting at ``starts`` with ``lengths``, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_start_in_out = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts - row_start_in_out, lengths) + np.arange(total)


def _as_ragged(rows, dtype) -> Ragged:
    return rows if isinstance(rows, Ragged) else Ragged.from_lists(rows, dtype)


@dataclass
class Encoded:
    """A tokenized split: ragged token ids, labels, and optional per-example float arrays (bias log-probs,
    teacher probabilities) that travel with each batch under their own names.

    ``input_ids`` / ``token_type_ids`` may be given as lists of lists or as ``Ragged``; they are stored
    as ``Ragged``.
    """

    ids: list[str]
    input_ids: Ragged
    token_type_ids: Ragged
    labels: np.ndarray
    pad_id: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.input_ids = _as_ragged(self.input_ids, np.int32)
        self.token_type_ids = _as_ragged(self.token_type_ids, np.int8)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.ids)
        if not (len(self.input_ids) == len(self.token_type_ids) == len(self.labels) == n):
            raise ValueError(f"Encoded: {n} ids but {len(self.input_ids)} token rows, {len(self.token_type_ids)} "
                             f"type rows and {len(self.labels)} labels")
        for name, values in self.extras.items():
            self._check_extra(name, values)

    def _check_extra(self, name: str, values: np.ndarray) -> None:
        if len(values) != len(self.ids):
            raise ValueError(f"Encoded: extra '{name}' has {len(values)} rows for {len(self.ids)} examples")

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return self.input_ids.lengths()

    def with_extra(self, name: str, values: np.ndarray) -> "Encoded":
        """Attach a per-example array (row i belongs to example i), e.g. bias log-probs under "bias"."""
        values = np.asarray(values, dtype=np.float32)
        self._check_extra(name, values)
        self.extras[name] = values
        return self

    def subset(self, index) -> "Encoded":
        """Examples ``index`` (e.g. the kept rows when a debiasing loss drops training examples that have
        no bias log-probs, the QQP rule)."""
        index = np.asarray(index, dtype=np.int64)
        return Encoded([self.ids[i] for i in index], self.input_ids.take(index), self.token_type_ids.take(index),
                       self.labels[index], self.pad_id, {k: v[index] for k, v in self.extras.items()})

    def batch(self, index, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Rows ``index`` padded to their own longest row (dynamic padding), or to ``pad_to``."""
        index = np.asarray(list(index) if not isinstance(index, np.ndarray) else index, dtype=np.int64)
        offsets = self.input_ids.offsets  # only this batch's lengths: this runs at every training step
        width = int((offsets[index + 1] - offsets[index]).max()) if pad_to is None else int(pad_to)
        ids, mask = self.input_ids.padded(index, width, self.pad_id)
        types, _ = self.token_type_ids.padded(index, width, 0)
        out = {"input_ids": torch.from_numpy(ids.astype(np.int64)),
               "token_type_ids": torch.from_numpy(types.astype(np.int64)),
               "attention_mask": torch.from_numpy(mask.astype(np.int64)),
               "labels": torch.from_numpy(self.labels[index])}
        for name, values in self.extras.items():
            out[name] = torch.as_tensor(values[index])
        return out


def encode(tokenizer, split: PairSplit, max_length: int) -> Encoded:
    enc = tokenizer(split.text_a, split.text_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return Encoded(list(split.ids), enc["input_ids"], types, np.asarray(split.labels, dtype=np.int64),
                   tokenizer.pad_token_id or 0)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch: a pure function of (seed, epoch), so resume needs no state."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def grouped_epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                        pool_batches: int = 50) -> np.ndarray:
    """``epoch_order`` with batches of similar length (HF's ``group_by_length``): the epoch's shuffled order is
    cut into pools of ``pool_batches`` batches, each pool is sorted by length (longest first) and cut into
    batches, and the batches are shuffled. Every example appears exactly once; the one short batch (n not a
    multiple of batch_size) stays last, so step k still reads positions [k*bs, (k+1)*bs). A pure function of
    (lengths, batch_size, seed, epoch), so resume needs no state."""
    lengths = np.asarray(lengths)
    order = epoch_order(len(lengths), seed, epoch)
    pool = batch_size * max(1, int(pool_batches))
    full, short = [], []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        for i in range(0, len(chunk), batch_size):
            (full if len(chunk[i:i + batch_size]) == batch_size else short).append(chunk[i:i + batch_size])
    perm = np.random.default_rng([seed, epoch, 1]).permutation(len(full))
    parts = [full[i] for i in perm] + short
    return np.concatenate(parts) if parts else order


def eval_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Length-sorted batches for evaluation: each batch pads only to its own longest example.

    max_tokens: also cap batch rows x padded width, so a large ``batch_size`` stays within memory on
    the longest examples (the batch is cut where the next example would exceed the budget).
    """
    order = np.argsort(lengths, kind="stable")
    if not max_tokens:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    sorted_len = np.asarray(lengths)[order]
    while start < len(order):
        end = start + 1
        # sorted ascending, so the widest row of [start, end) is the last one
        while end < len(order) and end - start < batch_size and (end - start + 1) * sorted_len[end] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def fixed_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """File-order batches (the reference's evaluation: no sorting, every batch padded to max_length)."""
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

