"""Planning estimates without loading data: training-set sizes and per-node run time on one device (the calibrated
cost model, orchestrator/plan/cost.py)."""
from __future__ import annotations

import math

from srnet_core.stages import get_kind
from srnet_core.train import TrainConfig

from . import cost
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


# FALLBACK ONLY: the old hand-made throughput table (training steps/s, eval examples/s at batch 32 x 128),
# no measurement behind it. node_seconds uses it only for a backbone the calibration does not know (a custom
# HF encoder), so that planning never fails; the calibrated model (orchestrator/plan/cost.py) is the estimate.
FALLBACK_THROUGHPUT = {"tiny-bert": (200.0, 50_000.0), "minilm": (40.0, 12_000.0),
                       "bert-base-uncased": (12.0, 3_500.0), "roberta-base": (12.0, 3_500.0),
                       "bert-large-uncased": (4.0, 1_200.0)}

_calibration_name: str | None = None  # set by use_calibration (launch --calibration / spec cost_calibration)


def use_calibration(name: str | None) -> cost.Calibration:
    """Choose the calibration every estimate uses (a name in bench/calibration/ or a path; None: the
    $SRNET_CALIBRATION env var, else the H200 file). Raises CostModelError (one line) if it is unusable."""
    global _calibration_name
    cal = cost.load_calibration(name)
    _calibration_name = name
    return cal


def calibration() -> cost.Calibration:
    return cost.load_calibration(_calibration_name)


def calibration_label() -> str:
    """What the estimates are calibrated on, for --dry-run and the live view."""
    return calibration().label()


def _token_lengths() -> cost.TokenLengths | None:
    try:
        return cost.load_token_lengths()
    except cost.CostModelError:  # without the lengths file every batch counts as padded to max_length
        return None


def node_cost(node: Node, scenario: cost.Scenario | None = None, cal: cost.Calibration | None = None,
              threads: int | None = None) -> cost.NodeCost:
    """The calibrated cost of one node (orchestrator/plan/cost.py); raises CostModelError for a backbone
    the calibration lacks."""
    cfg = node.stage_config
    memory = get_kind(node.stage).memory
    options = cfg.get("task_options") or {}
    n_train = train_size(cfg["task"], options)
    n_eval = eval_size(cfg["task"], options)
    return cost.node_cost(node.stage, cfg, memory, n_train, n_eval, cal or calibration(), _token_lengths(),
                          scenario, threads)


def _fallback_seconds(node: Node) -> float:
    """The old estimate from FALLBACK_THROUGHPUT (bert-base's row for a backbone it lacks too)."""
    cfg = node.stage_config
    memory = get_kind(node.stage).memory
    steps_per_s, eval_per_s = FALLBACK_THROUGHPUT.get(cfg["backbone"], FALLBACK_THROUGHPUT["bert-base-uncased"])
    n_train = train_size(cfg["task"], cfg["task_options"])
    if memory == "inference" and "train" in cfg:
        return 30.0 + n_train / eval_per_s
    if "train" not in cfg:
        return 30.0 + eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
    if memory == "importance":
        batches = math.ceil(n_train / max(1, int(cfg["train"].get("batch_size", 32))))
        return 30.0 + batches / steps_per_s + eval_size(cfg["task"], cfg["task_options"]) / eval_per_s
    train = TrainConfig(**{k: v for k, v in cfg["train"].items() if k in TrainConfig.__dataclass_fields__})
    steps = train.total_steps(n_train)
    evals = math.ceil(steps / max(1, train.eval_every)) + 1
    return 30.0 + steps / steps_per_s + evals * eval_size(cfg["task"], cfg["task_options"]) / eval_per_s


def node_seconds(node: Node) -> float:
    """Planning estimate of one node's run time on one device, from the calibration in use
    (``calibration_label()``); a backbone the calibration lacks falls back to FALLBACK_THROUGHPUT. The
    scheduler orders ready nodes by it and the progress view's ETA uses it."""
    if get_kind(node.stage).memory == "cpu":  # a bias model: scikit-learn on CPU, no calibration needed
        return 10.0 + train_size(node.stage_config["task"], node.stage_config["task_options"]) / 5_000
    cal = calibration()
    if cal.size_of(node.stage_config.get("backbone", "")) is None:
        return _fallback_seconds(node)
    return node_cost(node, cal=cal).seconds


def estimate_gpu_hours(plan: Plan) -> dict[str, float]:
    """Estimated GPU-hours per stage from the calibration in use (CPU stages, the bias models, count 0)."""
    out: dict[str, float] = {}
    for node in plan.nodes.values():
        if get_kind(node.stage).memory != "cpu":
            out[node.stage] = out.get(node.stage, 0.0) + node_seconds(node) / 3600
    return out
