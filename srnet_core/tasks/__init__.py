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
    if getattr(cls, "needs_data_dir", False):
        return cls(data_dir=data_dir, **options)
    return cls(**options)


__all__ = ["DataFileError", "PairSplit", "Task", "TASKS", "get_task"]
