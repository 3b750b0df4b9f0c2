"""The calibrated cost model: one node's run time from measurements, not from a hand-made table.

Per node: training steps (rows, epochs, batch, max_steps), padded tokens per step (the task's measured length
distribution, ``bench/calibration/token_lengths.json``, under the node's batching), seconds per step from a
calibration file (``bench/calibration/*.json``: dense, mask-training and eval passes per backbone size,
precision and compile mode), evaluation passes from the cadence (eval_every, ood_eval_every, split sizes),
checkpoint snapshots and output writes, and packing (several nodes sharing one GPU). docs/cost.md has the
formulas, the calibration format and what is measured vs assumed.

Pure Python + numpy: no torch, no Ray (the planner, ``--dry-run`` and the bench scripts import it).
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALIBRATION_DIR = os.path.join(ROOT, "bench", "calibration")
DEFAULT_CALIBRATION = "h200_2026-11-30.json"
CALIBRATION_ENV = "SRNET_CALIBRATION"
TOKEN_LENGTHS = os.path.join(CALIBRATION_DIR, "token_lengths.json")
GROUP_POOL_BATCHES = 50  # srnet_core.train's group_by_length: sort within shuffled pools of 50 batches


class CostModelError(ValueError):
    """A calibration or token-length file that cannot be used: the message is one line naming the file,
    the field and the fix."""


# The full data's split sizes (the token-length files hold the length distributions, measured on what is in
# ../shared/data; these are the row counts of the official sets the full grid trains and evaluates on).
# Per task: eval splits in evaluation order (the first is the selection split, ID dev); the OOD-dev split
# (task option eval_ood_dev) and the OOD training sets appended by add_ood_train (rows, lengths entry).
TASK_SPLITS = {
    "mnli": {"train": "mnli:train",
             "eval": [("dev_matched", 9_815, "mnli:dev_matched"), ("dev_mismatched", 9_832, "mnli:dev_mismatched"),
                      ("hans", 30_000, "mnli:hans")],
             "ood_dev": ("hans_train", 30_000, "mnli:hans_train"),
             "ood_train": [(30_000, "mnli:hans_train")]},
    "qqp": {"train": "qqp:train",
            "eval": [("dev", 40_430, "qqp:dev"), ("paws_qqp", 677, "qqp:paws_qqp"),
                     ("paws_wiki", 8_000, "qqp:paws_wiki")],
            "ood_dev": ("paws_qqp_train", 11_988, "qqp:paws_qqp_train"),
            "ood_train": [(11_988, "qqp:paws_qqp_train"), (49_401, "qqp:paws_wiki_train")]},
    "fever": {"train": "fever:train",
              "eval": [("dev", 19_998, "fever:dev"), ("symmetric_v1", 717, "fever:symmetric_v1"),
                       ("symmetric_v2", 712, "fever:symmetric_v2")],
              "ood_dev": ("symmetric_v2_dev", 708, "fever:symmetric_v2_dev"),
              "ood_train": [(7_080, "fever:symmetric_v2_dev")]},  # v2 dev duplicated x10 (protocol 6)
}
# srnet_core.tasks.synthetic.SyntheticOptions defaults (sizes come from the node's task options)
_SYNTHETIC_DEFAULTS = {"n_train": 2048, "n_dev": 512, "n_ood": 512, "n_ood_train": 256, "n_ood_dev": 256}


# -- calibration -------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    name: str
    path: str
    data: dict

    @property
    def kind(self) -> str:
        return self.data.get("kind", "gpu")

    def label(self) -> str:
        return f"{self.name} ({os.path.relpath(self.path, ROOT) if self.path.startswith(ROOT) else self.path})"

    def size_of(self, backbone: str) -> str | None:
        return self.data.get("backbones", {}).get(backbone)

    def size(self, backbone: str) -> dict:
        size = self.size_of(backbone)
        if size is None:
            raise CostModelError(f"{self.path}: field 'backbones' has no entry for backbone '{backbone}': add "
                                 f"\"{backbone}\": \"<size>\" (one of {sorted(self.data.get('sizes', {}))}) or "
                                 "measure it (bench/gpu_suite.py, bench/calibrate_cpu.py)")
        try:
            return self.data["sizes"][size]
        except KeyError:
            raise CostModelError(f"{self.path}: field 'sizes' has no entry '{size}' (named by backbones."
                                 f"{backbone}): add it with layers, total_params, prunable_params") from None

    def curve(self, backbone: str, precision: str, mode: str, kind: str) -> dict:
        size = self.size_of(backbone)
        self.size(backbone)  # the error for an unknown backbone
        where = f"curves.{size}.{precision}.{mode}.{kind}"
        node = self.data.get("curves", {})
        for part in (size, precision, mode, kind):
            if not isinstance(node, dict) or part not in node:
                raise CostModelError(f"{self.path}: field '{where}' is missing: this calibration has no "
                                     f"'{part}' there; use another calibration ({CALIBRATION_ENV}) or add it")
            node = node[part]
        return node

    def pass_seconds(self, backbone: str, precision: str, mode: str, kind: str, tokens: float,
                     floor: bool = True) -> float:
        """Seconds of one pass (a training step, or one eval batch) at ``tokens`` padded tokens:
        max(floor_s, fixed_s + per_token_s * tokens) (docs/cost.md). ``floor=False``: the per-token part only
        (a projection of a launch-overhead-free step, e.g. CUDA graphs; not a measurement)."""
        c = self.curve(backbone, precision, mode, kind)
        if not floor:
            return c["per_token_s"] * tokens
        return max(c.get("floor_s", 0.0), c.get("fixed_s", 0.0) + c["per_token_s"] * tokens)

    def compute_seconds(self, backbone: str, precision: str, mode: str, kind: str, tokens: float) -> float:
        """The part of a pass proportional to tokens (what packing cannot hide)."""
        return self.curve(backbone, precision, mode, kind)["per_token_s"] * tokens

    def thread_speedup(self, threads: int | None) -> float:
        """CPU calibrations: measured at 1 thread; speed-up at ``threads`` (interpolated, capped)."""
        table = self.data.get("thread_speedup")
        if not table or not threads:
            return 1.0
        return float(_interp(threads, [int(k) for k in table], list(table.values())))

    def packing_factor(self, processes: int) -> float:
        """Total throughput of ``processes`` nodes sharing one GPU / one node's (measured curve)."""
        if processes <= 1:
            return 1.0
        p = self.data.get("packing")
        if not p:
            raise CostModelError(f"{self.path}: field 'packing' is missing: this calibration has no packing "
                                 "measurement; run without packing or use a GPU calibration")
        return float(_interp(processes, p["processes"], p["factor"]))

    def overhead(self, name: str) -> float:
        try:
            return float(self.data["overheads"][name])
        except KeyError:
            raise CostModelError(f"{self.path}: field 'overheads.{name}' is missing: add it (seconds or bytes/s, "
                                 "see docs/cost.md)") from None


def _interp(x: float, xs: list, ys: list) -> float:
    order = np.argsort(xs)
    return float(np.interp(x, np.asarray(xs, float)[order], np.asarray(ys, float)[order]))


def calibration_path(name: str | None = None) -> str:
    """A calibration's file: ``name`` (a path, or a file name in bench/calibration/, .json optional), else
    $SRNET_CALIBRATION, else the default (the H200 file)."""
    name = name or os.environ.get(CALIBRATION_ENV) or DEFAULT_CALIBRATION
    if os.path.sep in name or os.path.exists(name):
        return os.path.abspath(name)
    return os.path.join(CALIBRATION_DIR, name if name.endswith(".json") else name + ".json")


@functools.lru_cache(maxsize=16)
def _load_calibration(path: str) -> Calibration:
    if not os.path.exists(path):
        have = sorted(f for f in os.listdir(CALIBRATION_DIR) if f.endswith(".json") and f != "token_lengths.json") \
            if os.path.isdir(CALIBRATION_DIR) else []
        raise CostModelError(f"calibration file {path} not found: set {CALIBRATION_ENV} (or --calibration, or the "
                             f"spec's cost_calibration) to one of {have} in bench/calibration/, or to a path")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise CostModelError(f"calibration file {path} is not valid JSON ({err}): regenerate it "
                             "(bench/make_h200_calibration.py, bench/calibrate_cpu.py, bench/gpu_suite.py)") from None
    for key in ("name", "backbones", "sizes", "curves", "overheads"):
        if key not in data:
            raise CostModelError(f"calibration file {path} has no field '{key}': not a calibration in the format "
                                 "of docs/cost.md; regenerate it")
    return Calibration(data["name"], path, data)


def load_calibration(name: str | None = None) -> Calibration:
    return _load_calibration(calibration_path(name))


# -- token lengths -----------------------------------------------------------------------------------------

def padded_tokens_per_batch(lengths, batch_size: int, max_length: int, batching: str, seed: int = 0,
                            epochs: int = 1, pool_batches: int = GROUP_POOL_BATCHES) -> float:
    """Mean padded tokens per batch (rows x padded width) over ``epochs`` seeded epochs.

    batching: "max_length" (every batch padded to max_length), "dynamic" (random batches, each padded to its
    longest row: the training loop's default), "grouped" (shuffle, cut into pools of ``pool_batches`` batches,
    sort each pool by length, cut into batches: group_by_length), "sorted" (the whole set sorted: evaluation).
    Lengths above max_length are truncated to it, as the tokenizer does."""
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), max_length)
    n = len(lengths)
    if n == 0:
        return 0.0
    if batching == "max_length":
        return float(n * max_length / math.ceil(n / batch_size))
    totals, count = 0.0, 0
    rng = np.random.default_rng(seed)
    for _ in range(max(1, epochs)):
        if batching == "sorted":
            order = np.sort(lengths)
        else:
            order = lengths[rng.permutation(n)]
            if batching == "grouped":
                pool = pool_batches * batch_size
                order = np.concatenate([np.sort(order[i:i + pool]) for i in range(0, n, pool)])
            elif batching != "dynamic":
                raise CostModelError(f"unknown batching '{batching}': use max_length, dynamic, grouped or sorted")
        full = (n // batch_size) * batch_size
        if full:
            totals += float(order[:full].reshape(-1, batch_size).max(axis=1).sum() * batch_size)
        if full < n:
            totals += float(order[full:].max() * (n - full))
        count += math.ceil(n / batch_size)
        if batching == "sorted":
            break
    return totals / count


@dataclass
class TokenLengths:
    path: str
    data: dict
    _cache: dict = field(default_factory=dict)

    def lengths(self, key: str) -> np.ndarray:
        if key not in self._cache:
            sets = self.data.get("sets", {})
            if key not in sets:
                raise CostModelError(f"{self.path}: field 'sets' has no entry '{key}': re-run bench/token_lengths.py "
                                     "(it measures every task's splits)")
            hist = sets[key]["histogram"]
            self._cache[key] = np.repeat(np.asarray([h[0] for h in hist], np.int64),
                                         np.asarray([h[1] for h in hist], np.int64))
        return self._cache[key]

    def has(self, key: str) -> bool:
        return key in self.data.get("sets", {})

    def tokens_per_batch(self, parts: tuple, batch_size: int, max_length: int, batching: str) -> float:
        """Mean padded tokens per batch over a mixture of sets: parts = ((rows, key), ...); each set's
        lengths are resampled to its share of the rows (the OOD training sets mixed into training)."""
        cache_key = ("tpb", parts, batch_size, max_length, batching)
        if cache_key not in self._cache:
            if len(parts) == 1:
                lengths = self.lengths(parts[0][1])
            else:
                rng = np.random.default_rng(0)
                total = sum(r for r, _ in parts)
                sample = 40_000  # large enough for a stable mean, small enough to simulate at plan time
                lengths = np.concatenate([rng.choice(self.lengths(k), size=max(1, round(sample * r / total)))
                                          for r, k in parts])
            self._cache[cache_key] = padded_tokens_per_batch(lengths, batch_size, max_length, batching, epochs=2)
        return self._cache[cache_key]

    def eval_batches(self, key: str, rows: int, batch_size: int, max_length: int) -> list[tuple[int, int]]:
        """(batches, padded tokens per batch) of a length-sorted evaluation of ``rows`` rows, from the set's
        distribution scaled to ``rows`` (a quantile resample keeps the shape)."""
        cache_key = ("eval", key, rows, batch_size, max_length)
        if cache_key not in self._cache:
            base = np.sort(self.lengths(key))
            q = (np.arange(rows) + 0.5) / rows
            lengths = np.minimum(base[np.minimum((q * len(base)).astype(np.int64), len(base) - 1)], max_length)
            out = []
            for start in range(0, rows, batch_size):
                chunk = lengths[start:start + batch_size]
                out.append((1, int(chunk.max() * len(chunk))))
            self._cache[cache_key] = out
        return self._cache[cache_key]


@functools.lru_cache(maxsize=4)
def load_token_lengths(path: str = TOKEN_LENGTHS) -> TokenLengths:
    if not os.path.exists(path):
        raise CostModelError(f"token-length file {path} not found: run bench/token_lengths.py (needs ../shared/data "
                             "and the MiniLM tokenizer)")
    with open(path) as f:
        return TokenLengths(path, json.load(f))


# -- per node ----------------------------------------------------------------------------------------------

@dataclass
class Scenario:
    """What-if settings over a node's own (grid_cost's scenarios); None keeps the node's setting."""
    amp: str | None = None            # "off" (fp32) or "bf16"
    compile: bool | None = None
    group_by_length: bool | None = None
    ood_eval_every: int | None | str = "node"  # "node": the node's own; else the value (None: every eval)
    packing: int = 1                  # nodes sharing one GPU
    floor: bool = True                # False: steps cost their per-token time only (a projection, docs/cost.md)


@dataclass
class NodeCost:
    seconds: float            # wall time of the node alone on one device (unpacked)
    gpu_seconds: float        # device-seconds it uses (packed: wall / processes-per-GPU)
    wall_packed: float        # wall time when packed with others (gpu_seconds x packing)
    steps: int = 0
    tokens_per_step: float = 0.0
    step_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    evals: int = 0
    checkpoint_s: float = 0.0
    overhead_s: float = 0.0
    compute_s: float = 0.0
    parts: dict = field(default_factory=dict)


def total_steps(train: dict, n_train: int) -> int:
    """srnet_core.train.TrainConfig.total_steps without importing torch (tests check they agree)."""
    batch = int(train.get("batch_size", 32))
    per_epoch = max(1, math.ceil(n_train / batch))
    if train.get("max_steps"):
        return int(train["max_steps"])
    return max(1, int(round(float(train.get("epochs", 1.0)) * per_epoch)))


def eval_points(steps: int, eval_every: int, at_start: bool) -> int:
    """Evaluations of a training loop (srnet_core.train.TrainLoop.train): at step 0 (eval_at_start), every
    eval_every steps, and at the last step."""
    every = max(1, int(eval_every))
    return int(at_start) + steps // every + (1 if steps % every else 0)


def _precision(amp: str, cal: Calibration) -> str:
    if amp == "off":
        return "fp32"
    if amp == "bf16":
        return "bf16"
    return "bf16" if cal.kind == "gpu" else "fp32"  # "auto": bf16 autocast on a GPU, fp32 on a CPU


def _sizes_of(task: str, options: dict, n_train: int, n_eval_total: int) -> tuple[tuple, list]:
    """(training mixture ((rows, lengths key), ...), eval splits [(name, rows, lengths key)]) of a node."""
    cap = options.get("max_eval_rows")
    if task == "synthetic":
        o = {**_SYNTHETIC_DEFAULTS, **options}
        train = [(int(o["n_train"]), "synthetic:train")]
        if o.get("add_ood_train"):
            train.append((int(o["n_ood_train"]), "synthetic:ood_train"))
        splits = [("dev", int(o["n_dev"]), "synthetic:dev")]
        if o.get("eval_ood_dev"):
            splits.append(("ood_dev", int(o["n_ood_dev"]), "synthetic:ood_dev"))
        splits.append(("ood", int(o["n_ood"]), "synthetic:ood"))
        return tuple(train), splits
    table = TASK_SPLITS.get(task)
    if table is None:  # a task without measured lengths: one split, lengths None (padded to max_length)
        return ((n_train, None),), [("eval", n_eval_total, None)]
    if task == "mnli" and options.get("train_source") == "dev_matched":
        dev_rows = 9_815 - int(options.get("train_size", 8_000))
        splits = [("dev_matched", dev_rows, "mnli:dev_matched")] + table["eval"][2:]
        base = "mnli:dev_matched"
    else:
        splits = list(table["eval"])
        if task == "mnli" and options.get("eval_mismatched") is False:
            splits = [s for s in splits if s[0] != "dev_mismatched"]
        base = table["train"]
    if options.get("eval_ood_dev"):
        splits.insert(1, table["ood_dev"])
    if cap:
        splits = [(name, min(rows, int(cap)), key) for name, rows, key in splits]
    train = [(n_train, base)]
    if options.get("add_ood_train"):
        train += [(rows, key) for rows, key in table["ood_train"]]
    return tuple(train), splits


def node_cost(stage: str, cfg: dict, memory: str, n_train: int, n_eval_total: int,
              cal: Calibration, lengths: TokenLengths | None, scenario: Scenario | None = None,
              threads: int | None = None) -> NodeCost:
    """The cost of one node. ``memory``: its stage kind's memory class (weights, mask, importance, inference,
    cpu); ``n_train`` / ``n_eval_total``: its training rows and eval rows (orchestrator.plan.estimates);
    ``threads``: CPU threads per trial (CPU calibrations)."""
    sc = scenario or Scenario()
    if memory == "cpu":  # a bias model: scikit-learn on CPU, about 2 s per 10k training examples
        s = 10.0 + n_train / 5_000
        return NodeCost(seconds=s, gpu_seconds=0.0, wall_packed=s, overhead_s=s)
    backbone = cfg["backbone"]
    cal.size(backbone)  # the one-line error for an unknown backbone, before anything else
    train = dict(cfg.get("train") or {})
    amp = sc.amp or train.get("amp", "auto")
    precision = _precision(amp, cal)
    compiled = bool(train.get("compile")) if sc.compile is None else sc.compile
    mode = "compile" if compiled else "eager"
    max_length = int(cfg.get("max_length", 128))
    speed = cal.thread_speedup(threads)
    task_options = cfg.get("task_options") or {}
    train_parts, splits = _sizes_of(cfg["task"], task_options, n_train, n_eval_total)
    rows_total = sum(r for r, _ in train_parts)

    def tokens(batch: int, batching: str) -> float:
        if lengths is None or any(k is None or not lengths.has(k) for _, k in train_parts):
            return float(batch * max_length)  # no measured lengths: every batch padded to max_length
        return lengths.tokens_per_batch(train_parts, batch, max_length, batching)

    eval_rows = train.get("eval_batch_size", 256)
    if eval_rows == "auto":
        eval_rows = int(cal.data.get("eval_batch_auto", 256))
    eval_rows = int(eval_rows)

    def split_pass(rows: int, key: str | None) -> tuple[float, float]:
        """(seconds, compute seconds) of evaluating ``rows`` rows of one split."""
        if lengths is not None and key is not None and lengths.has(key):
            batches = lengths.eval_batches(key, rows, eval_rows, max_length)
        else:
            batches = [(1, min(eval_rows, rows - i) * max_length) for i in range(0, rows, eval_rows)]
        secs = sum(cal.pass_seconds(backbone, precision, mode, "eval", t, sc.floor) for _, t in batches)
        comp = sum(cal.compute_seconds(backbone, precision, mode, "eval", t) for _, t in batches)
        return secs / speed, comp / speed

    size = cal.size(backbone)
    overhead = cal.overhead("node_s") + (cal.overhead("compile_s") if compiled else 0.0)
    out = NodeCost(seconds=0.0, gpu_seconds=0.0, wall_packed=0.0, overhead_s=overhead)
    all_eval = [split_pass(rows, key) for _, rows, key in splits]
    one_eval_s = sum(s for s, _ in all_eval)
    one_eval_c = sum(c for _, c in all_eval)

    if memory == "inference" and "train" in cfg:  # a teacher: one pass over the training set
        s, c = split_pass(rows_total, train_parts[0][1])
        out.eval_s, out.compute_s, out.evals = s, c, 1
    elif "train" not in cfg:  # no training (e.g. a one-shot method): model load and one evaluation
        out.eval_s, out.compute_s, out.evals = one_eval_s, one_eval_c, 1
    elif memory == "importance":  # one forward+backward pass over the training set, one evaluation
        batch = int(train.get("batch_size", 32))
        out.steps = math.ceil(rows_total / batch)
        out.tokens_per_step = tokens(batch, "dynamic")
        out.step_s = cal.pass_seconds(backbone, precision, mode, "dense", out.tokens_per_step, sc.floor) / speed
        out.train_s = out.steps * out.step_s
        out.eval_s, out.evals = one_eval_s, 1
        per_step = cal.compute_seconds(backbone, precision, mode, "dense", out.tokens_per_step) / speed
        out.compute_s = out.steps * per_step + one_eval_c
    else:
        batch = int(train.get("batch_size", 32))
        grouped = bool(train.get("group_by_length", False)) if sc.group_by_length is None else sc.group_by_length
        out.steps = total_steps(train, rows_total)
        out.tokens_per_step = tokens(batch, "grouped" if grouped else "dynamic")
        kind = "mask" if memory == "mask" else "dense"
        out.step_s = cal.pass_seconds(backbone, precision, mode, kind, out.tokens_per_step, sc.floor) / speed
        out.train_s = out.steps * out.step_s
        # mask training re-projects the masks (a top-k over every prunable matrix) every reproject_every steps
        if memory == "mask":
            every = (cfg.get("mask") or {}).get("reproject_every", 1)
            every = int(train.get("eval_every", 100)) if every == "eval" else max(1, int(every))
            proj = cal.data.get("projection_s_per_param", 0.0) * size["prunable_params"] / speed
            out.parts["projection_s"] = math.ceil(out.steps / every) * proj
            out.train_s += out.parts["projection_s"]
        points = eval_points(out.steps, int(train.get("eval_every", 100)), bool(train.get("eval_at_start", True)))
        ood_every = train.get("ood_eval_every") if sc.ood_eval_every == "node" else sc.ood_eval_every
        sel_s, sel_c = all_eval[0]
        other_s, other_c = one_eval_s - sel_s, one_eval_c - sel_c
        if ood_every is None:  # every split at every evaluation
            other_passes = points
        elif int(ood_every) == 0:  # the other splits once, at the selected checkpoint
            other_passes = 1
        else:  # at multiples of k (step 0 too when evaluating at the start), plus at the selected checkpoint
            other_passes = out.steps // int(ood_every) + int(bool(train.get("eval_at_start", True))) + 1
        out.evals = points
        out.parts["other_split_passes"] = other_passes
        out.eval_s = points * sel_s + other_passes * other_s
        per_step = cal.compute_seconds(backbone, precision, mode, kind, out.tokens_per_step) / speed
        out.compute_s = out.steps * per_step + points * sel_c + other_passes * other_c
        # checkpoints: at every evaluation the training state goes to host memory (trained params + 2 AdamW
        # moments + the best snapshot); finetune also writes its weights at save_steps / save_fractions
        trained = size["prunable_params"] if memory == "mask" else size["total_params"]
        snap_bytes = 4 * 4 * trained
        out.checkpoint_s = points * snap_bytes / cal.overhead("host_copy_bytes_per_s")
        saves = 1 + len([s for s in cfg.get("save_steps") or [] if s < out.steps]) \
            + len(cfg.get("save_fractions") or [])
        # a mask node writes bit-packed masks, the others fp32 weights
        out_bytes = size["prunable_params"] / 8 if memory == "mask" else 4 * size["total_params"]
        out.checkpoint_s += saves * out_bytes / cal.overhead("write_bytes_per_s")
    out.seconds = out.overhead_s + out.train_s + out.eval_s + out.checkpoint_s
    n = max(1, int(sc.packing))
    busy = out.seconds - out.overhead_s  # model load / start overlap with the other packed nodes' work
    out.gpu_seconds = max(busy / cal.packing_factor(n), out.compute_s) + out.overhead_s / n if n > 1 else out.seconds
    out.wall_packed = out.gpu_seconds * n
    return out
