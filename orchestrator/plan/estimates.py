"""Planning estimates without loading data: training-set sizes and per-node run time on one GPU."""
from __future__ import annotations

import math

from srnet_core.stages import get_kind
from srnet_core.train import TrainConfig

from .graph import Node, Plan

# Sizes for plan-time checks and estimates (no data is loaded): the official training-set sizes.
TRAIN_SIZES = {"mnli": 392_702, "qqp": 363_846, "fever": 242_911}
EVAL_SIZES = {"mnli": 9_815 + 9_832 + 30_000, "qqp": 40_430 + 677 + 8_000, "fever": 19_998 + 717 + 712}


def _size_hint(task: str, which: str, options: dict) -> int | None:
    """The task's own count (a generated task knows its sizes; None: not known without reading data)."""
    from srnet_core.tasks import TASKS

    hint = getattr(TASKS.get(task), "size_hint", None)
    size = hint(which, **options) if hint is not None else None
    return int(size) if size else None


def train_size(task: str, options: dict) -> int:
    size = _size_hint(task, "train", options)
    if size is not None:
        return size
    size = options.get("train_size", 8_000) if options.get("train_source") == "dev_matched" else \
        TRAIN_SIZES.get(task, 100_000)
    return min(size, options.get("max_train_rows") or size)


def eval_size(task: str, options: dict) -> int:
    size = _size_hint(task, "eval", options)
    if size is not None:
        return size
    size = EVAL_SIZES.get(task, 20_000)
    cap = options.get("max_eval_rows")
    return min(size, 3 * cap) if cap else size  # a task has about three eval sets


# Rough single-GPU throughput (A100/H100 class, bf16, batch 32 x 128): training steps/s and eval examples/s.
# Estimates for planning, not measurements; bench/ has the measured numbers.
THROUGHPUT = {"tiny-bert": (200.0, 50_000.0), "minilm": (40.0, 12_000.0), "bert-base-uncased": (12.0, 3_500.0),
              "roberta-base": (12.0, 3_500.0), "bert-large-uncased": (4.0, 1_200.0)}


def node_seconds(node: Node) -> float:
    """Planning estimate of one node's run time on one GPU (THROUGHPUT; bias models: CPU, about
    2 s per 10k training examples). The scheduler orders ready nodes by it and the progress view's ETA uses it."""
    cfg = node.stage_config
    memory = get_kind(node.stage).memory
    if memory == "cpu":  # a bias model: scikit-learn on CPU
        return 10.0 + train_size(cfg["task"], cfg["task_options"]) / 5_000
    steps_per_s, eval_per_s = THROUGHPUT.get(cfg["backbone"], THROUGHPUT["bert-base-uncased"])
    n_train = train_size(cfg["task"], cfg["task_options"])
    if memory == "inference" and "train" in cfg:  # a teacher: model load + one pass over the training set
        return 30.0 + n_train / eval_per_s
    if "train" not in cfg:  # no training (e.g. a one-shot method): model load and one evaluation
        return 30.0 + eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
    if memory == "importance":  # one forward+backward pass over the training set, one evaluation
        batches = math.ceil(n_train / max(1, int(cfg["train"].get("batch_size", 32))))
        return 30.0 + batches / steps_per_s + eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
    train = TrainConfig(**cfg["train"])
    steps = train.total_steps(n_train)
    evals = math.ceil(steps / max(1, train.eval_every)) + 1
    return 30.0 + steps / steps_per_s + evals * eval_size(cfg["task"], cfg["task_options"]) / eval_per_s


def estimate_gpu_hours(plan: Plan) -> dict[str, float]:
    """Estimated GPU-hours per stage (CPU stages, the bias models, count 0)."""
    out: dict[str, float] = {}
    for node in plan.nodes.values():
        if get_kind(node.stage).memory != "cpu":
            out[node.stage] = out.get(node.stage, 0.0) + node_seconds(node) / 3600
    return out
