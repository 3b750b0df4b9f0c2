"""Task registry: name -> Task class. ``get_task(name, data_dir=..., **options)``.

A task that reads files (``needs_data_dir``) gets ``data_dir``; without one it falls back to the
environment variable SRNET_DATA_DIR when it first loads a split. See docs/tasks.md for layouts and options.
"""
from __future__ import annotations

from .base import PairSplit, Task
from .fever import FeverTask
from .files import DataFileError
from .mnli import MnliTask
from .qqp import QqpTask
from .synthetic import SyntheticTask

TASKS: dict[str, type[Task]] = {
    "synthetic": SyntheticTask,
    "mnli": MnliTask,
    "qqp": QqpTask,
    "fever": FeverTask,
}


def get_task(name: str, data_dir: str | None = None, **options) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; known tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    eval_ood_dev = bool(options.pop("eval_ood_dev", False))  # which splits are evaluated, not the data
    task = cls(data_dir=data_dir, **options) if getattr(cls, "needs_data_dir", False) else cls(**options)
    if eval_ood_dev:
        if getattr(task.options, "add_ood_train", False):
            raise ValueError(f"task '{name}': options eval_ood_dev and add_ood_train exclude each other: with "
                             "add_ood_train the OOD training data is in training, so no OOD dev split is held out "
                             "for selection; turn one of them off")
        if not task.ood_dev_splits:
            raise ValueError(f"task '{name}' has no OOD dev split; remove the option eval_ood_dev")
        task.eval_ood_dev = True
    return task


__all__ = ["DataFileError", "PairSplit", "Task", "TASKS", "get_task"]
