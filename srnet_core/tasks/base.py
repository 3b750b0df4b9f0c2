"""What every task provides: named splits of sentence pairs, a label order, and metrics per split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PairSplit:
    """One split of a sentence-pair task. ``ids`` are stable per example (bias-prob joins use them)."""

    name: str
    ids: list[str]
    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray  # int64 indices into the task's label_names
    extra: dict[str, list] = field(default_factory=dict)  # e.g. HANS "heuristic"

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "PairSplit":
        index = np.asarray(index, dtype=np.int64)
        return PairSplit(
            name=self.name,
            ids=[self.ids[i] for i in index],
            text_a=[self.text_a[i] for i in index],
            text_b=[self.text_b[i] for i in index],
            labels=self.labels[index],
            extra={k: [v[i] for i in index] for k, v in self.extra.items()},
        )


def concat_splits(name: str, parts: list[PairSplit]) -> PairSplit:
    """Rows of ``parts`` one after another; extra columns are kept only when every part has them."""
    keys = set.intersection(*(set(p.extra) for p in parts)) if parts else set()
    return PairSplit(name=name, ids=[i for p in parts for i in p.ids], text_a=[t for p in parts for t in p.text_a],
                     text_b=[t for p in parts for t in p.text_b],
                     labels=np.concatenate([np.asarray(p.labels, dtype=np.int64) for p in parts]),
                     extra={k: [v for p in parts for v in p.extra[k]] for k in sorted(keys)})


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(gold)).mean()) if len(gold) else float("nan")


class Task:
    """Subclasses set ``name``, ``label_names``, the split roles, and implement ``load``.

    ``needs_data_dir``: the task reads files, so ``get_task`` passes it ``data_dir``.
    ``bias_features``: which hand-crafted bias model fits this task (see ``srnet_core.bias``); None = none.
    """

    name: str = ""
    label_names: list[str] = []
    train_split: str = "train"
    id_eval_splits: list[str] = []
    ood_eval_splits: list[str] = []
    # OOD dev (docs/search.md): held-out OOD data used ONLY for selection and search, never reported as the
    # OOD result; evaluated when the task option ``eval_ood_dev`` is on (get_task sets ``eval_ood_dev``).
    ood_dev_splits: list[str] = []
    eval_ood_dev: bool = False
    needs_data_dir: bool = False
    bias_features: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def eval_splits(self) -> list[str]:
        dev = list(self.ood_dev_splits) if self.eval_ood_dev else []
        return list(self.id_eval_splits) + dev + list(self.ood_eval_splits)

    def eval_role(self, split: str) -> str:
        """The ``eval_role`` of a split's result rows: id, ood_dev (selection/search only) or ood (reported)."""
        if split in self.id_eval_splits:
            return "id"
        return "ood_dev" if split in self.ood_dev_splits else "ood"

    def load(self, split: str) -> PairSplit:  # pragma: no cover - abstract
        raise NotImplementedError

    def primary_metric(self, split: str) -> str:
        return "accuracy"

    def metrics(self, split: str, logits: np.ndarray, data: PairSplit) -> dict[str, float]:
        return {"accuracy": accuracy(logits.argmax(-1), data.labels)}

    def cache_key(self) -> dict:
        """What identifies this task's data for caches: its name and options (JSON-serialisable)."""
        options = getattr(self, "options", None)
        if options is not None and hasattr(options, "__dataclass_fields__"):
            from dataclasses import asdict
            options = asdict(options)
        return {"task": self.name, "options": options}
