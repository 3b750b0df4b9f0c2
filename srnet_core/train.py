"""The one training loop: trains a given set of parameters (mask scores, or weights) with a given loss,
evaluates every ``eval_every`` steps (every eval split, or the ID selection split only: ``ood_eval_every``), keeps the best-on-ID-dev snapshot, and can stop
and resume exactly (same batches, same dropout draws, same optimizer state).
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import Encoded, epoch_order, eval_batches, grouped_epoch_order


@dataclass
class TrainConfig:
    """Optimisation settings shared by fine-tuning and mask training (protocol.md sections 2 and 6)."""

    lr: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None  # when set, overrides epochs
    warmup_steps: int = 0
    batch_size: int = 32
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    # "global": one norm over all trained tensors (the protocol); "per_tensor": each tensor clipped to
    # grad_clip on its own (the reference's QQP runs)
    grad_clip_mode: str = "global"
    eval_every: int = 100
    # Rows per evaluation batch, or "auto": on a GPU as many as the free memory allows (srnet_core.memory;
    # fewer padded batches, far fewer launches), 256 on CPU. Batches are length-sorted either way.
    eval_batch_size: int | str = 256
    # Evals before this fraction of training are not eligible as "best" (0.7 when pruning a fine-tuned model).
    select_from: float = 0.0
    eval_at_start: bool = True  # evaluate before the first step (e.g. plain magnitude pruning); costs one pass
    # When the splits other than the selection split (ID dev) are evaluated: None (default) at every
    # evaluation; 0 only once, at the selected checkpoint, after training; k > 0 at steps that are multiples
    # of k, and at the selected checkpoint. The selected rows are the same either way (selection reads ID dev
    # only); what changes is the cost and how many points the OOD curves have. Stages that cannot restore
    # their selected snapshot (IMP, gradual, structured) evaluate every split at every evaluation.
    ood_eval_every: int | None = None
    # Batches of similar length (sorted within shuffled pools of 50 batches, as HF's group_by_length), so a
    # batch pads to near its own examples' length. It changes which examples share a batch, so it is off by
    # default (the reference draws plain random batches); every example is still seen once per epoch.
    group_by_length: bool = False
    seed: int = 0
    amp: str = "auto"  # "auto": bf16 autocast on a GPU that supports it; "off"; "bf16"
    # torch.compile the model for training and evaluation: False; True (= "inductor"); or a backend name.
    # It composes with the mask parametrizations (tests/test_train_speed.py); the first steps pay the compile.
    compile: bool | str = False

    def __post_init__(self):
        if not (isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1) and self.eval_batch_size != "auto":
            raise ValueError(f"train.eval_batch_size must be a positive integer or 'auto', got {self.eval_batch_size!r}")
        if not isinstance(self.compile, (bool, str)):
            raise ValueError(f"train.compile must be true, false or a torch.compile backend name, got {self.compile!r}")
        if self.ood_eval_every is not None and not (isinstance(self.ood_eval_every, int) and self.ood_eval_every >= 0):
            raise ValueError(f"train.ood_eval_every must be null, 0 or a positive number of steps, got {self.ood_eval_every!r}")
        if self.grad_clip_mode not in ("global", "per_tensor"):
            raise ValueError(f"train.grad_clip_mode must be 'global' or 'per_tensor', got {self.grad_clip_mode!r}")

    def total_steps(self, n_train: int) -> int:
        per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return self.max_steps if self.max_steps else max(1, int(round(self.epochs * per_epoch)))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then linear decay to 0 at ``total`` (the HF linear schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def autocast_context(device: torch.device, amp: str):
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


_INPUT_KEYS: dict[type, list[str]] = {}


def _input_keys(model: nn.Module) -> list[str]:
    """The model's inputs, looked up once per class (``inspect.signature`` costs ~50 us a step)."""
    cls = type(model)
    if cls not in _INPUT_KEYS:
        keys = ["input_ids", "attention_mask"]
        if "token_type_ids" in inspect.signature(model.forward).parameters:
            keys.append("token_type_ids")
        _INPUT_KEYS[cls] = keys
    return _INPUT_KEYS[cls]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> GPU copy that does not block the host: from pinned memory a non_blocking copy is truly
    asynchronous (from pageable memory it is staged synchronously)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def forward_logits(model: nn.Module, batch: dict, device) -> torch.Tensor:
    device = torch.device(device)
    inputs = {k: to_device(batch[k], device) for k in _input_keys(model)}
    return model(**inputs).logits


def resolve_eval_batch_size(model: nn.Module, batch_size, device, max_length: int) -> int:
    """Rows per evaluation batch: the configured number, or for "auto" the memory estimate on a GPU."""
    if batch_size != "auto":
        return int(batch_size)
    device = torch.device(device)
    if device.type != "cuda":
        return 256
    from .memory import eval_batch_rows

    return eval_batch_rows(model, max_length, device)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Encoded, batch_size, device, amp: str = "auto") -> np.ndarray:
    """Logits in the split's original order; batches are length-sorted and padded per batch.

    On a GPU the logits of all batches stay on the device and come back in one copy at the end (a copy per
    batch would wait for each batch to finish before the next is queued).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    lengths = data.lengths()
    rows = resolve_eval_batch_size(model, batch_size, device, int(lengths.max()) if len(lengths) else 1)
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    pending = []
    with autocast_context(device, amp):
        for index in eval_batches(lengths, rows):
            logits = forward_logits(model, data.batch(index), device).float()
            if device.type == "cuda":
                pending.append((index, logits))
            else:
                out[index] = logits.numpy()
    if pending:
        stacked = torch.cat([logits for _, logits in pending]).cpu().numpy()
        out[np.concatenate([index for index, _ in pending])] = stacked
    model.train(was_training)
    return out


def make_optimizer(params: list[nn.Parameter], config: "TrainConfig", device) -> torch.optim.Optimizer:
    """AdamW; the fused CUDA kernel when every parameter is a float tensor on the GPU (one launch for all
    tensors instead of several per tensor: 37 vs 60 ms per BERT-base step on an H200, issue 12)."""
    fused = torch.device(device).type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params)
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay, **kwargs)


def release_memory(compiled, device) -> None:
    """After a stage: drop what outlives its objects in a reused worker process. torch.compile's caches hold
    the compiled model (and so its weights) until reset; on a GPU, the allocator's cached blocks go back so
    the next stage (or a packed neighbour process) can use them."""
    import gc

    compiled = compiled not in (False, "off", "false", "")
    if compiled:
        from torch import _dynamo

        _dynamo.reset()
    cuda = torch.device(device).type == "cuda"
    if compiled or cuda:
        gc.collect()  # compiled code leaves reference cycles: the model would live until the collector ran
    if cuda:
        torch.cuda.empty_cache()


def compile_model(model: nn.Module, setting) -> nn.Module:
    """``torch.compile`` the model in place (``nn.Module.compile``: same object, same state-dict keys)."""
    if setting is False or setting in ("off", "false", ""):
        return model
    if getattr(model, "_compiled_call_impl", None) is not None:
        return model  # already compiled (IMP builds one loop per level on the same model)
    backend = "inductor" if setting is True or setting in ("on", "true") else str(setting)
    model.compile(backend=backend, dynamic=None)  # dynamic=None: shapes become dynamic after a recompile
    return model


def clip_gradients(params: list[torch.Tensor], max_norm: float, mode: str = "global") -> None:
    """Clip to ``max_norm``: one norm over all ``params`` ("global") or each tensor's own ("per_tensor")."""
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif mode == "per_tensor":
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], max_norm)
    else:
        raise ValueError(f"grad_clip_mode must be 'global' or 'per_tensor', got {mode!r}")


LossFn = Callable[[torch.Tensor, dict], torch.Tensor]
EvalFn = Callable[[], dict[str, dict[str, float]]]  # split -> metric -> value


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite: the run diverged (learning rate too high, bad data...)."""


class Preempted(RuntimeError):
    """A stop was requested while training (a spot-preemption notice: the worker got SIGTERM): the loop
    checkpointed at the step boundary it reached and stopped. Not the run's fault: a retry resumes exactly
    from that checkpoint."""


# Set by ``request_stop`` (e.g. from a signal handler: a plain assignment, no lock), polled by every
# ``TrainLoop`` after each step. One per process: a preemption notice is for the whole machine.
_stop_reason: str | None = None


def request_stop(reason: str = "stop requested") -> None:
    """Ask every training loop of this process to checkpoint at its next step boundary and raise ``Preempted``."""
    global _stop_reason
    _stop_reason = reason


def stop_requested() -> str | None:
    """The reason given to ``request_stop``, or None."""
    return _stop_reason


def clear_stop() -> None:
    global _stop_reason
    _stop_reason = None


@dataclass
class EvalRecord:
    step: int
    epoch: float
    metrics: dict[str, dict[str, float]]
    sparsity: float | None = None
    partial: bool = False  # only the selection split was evaluated (ood_eval_every)


class TrainLoop:
    """Optimizer-driven loop over ``params``; hooks let mask training project masks after each step.

    after_step(step): e.g. ``MaskSet.project`` or a sparsity schedule. snapshot(): what "best" keeps (masks
    for mask training, weights for fine-tuning). selection(evals) -> float: the ID-dev metric to maximise.
    """

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], train_data: Encoded, loss_fn: LossFn,
                 config: TrainConfig, *, evaluate: EvalFn, selection: Callable[[dict], float],
                 snapshot: Callable[[], dict[str, torch.Tensor]], device,
                 after_step: Callable[[int], None] | None = None,
                 current_sparsity: Callable[[], float] | None = None,
                 extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
                 batch_offset: int = 0, lr_schedule: Callable[[int], float] | None = None,
                 evaluate_selection: Callable[[], dict] | None = None,
                 restore: Callable[[dict], None] | None = None):
        self.model, self.params, self.data, self.loss_fn, self.config = model, params, train_data, loss_fn, config
        self.evaluate, self.selection, self.snapshot = evaluate, selection, snapshot
        self.evaluate_selection, self.restore = evaluate_selection, restore
        self.after_step = after_step or (lambda step: None)
        self.current_sparsity = current_sparsity
        self.extra_state = extra_state  # (get, set) for state outside params/optimizer, e.g. mask thresholds
        # Optional, for multi-phase runs (IMP levels): draw batches as if ``batch_offset`` steps were already
        # taken, so a new loop continues through the data instead of restarting at epoch 0; and a custom LR
        # factor per local step (default: linear warmup then linear decay to 0 over this loop).
        self.batch_offset = int(batch_offset)
        self.lr_schedule = lr_schedule
        self.device = torch.device(device)
        self.steps_per_epoch = max(1, math.ceil(len(train_data) / config.batch_size))
        self.total_steps = config.total_steps(len(train_data))
        self.optimizer = make_optimizer(list(params.values()), config, self.device)
        compile_model(model, config.compile)
        self.step = 0
        self.history: list[EvalRecord] = []
        self.best_value = -math.inf
        self.best_step = -1
        self.best: dict[str, torch.Tensor] | None = None
        self.train_seconds = 0.0
        self._loss_sum: torch.Tensor | None = None  # summed on the device between evals (NaN check, no host sync)

    # -- checkpoint state -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "params": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best": self.best or {},
            "history": [asdict(r) for r in self.history],
            "train_seconds": self.train_seconds,
            "extra": self.extra_state[0]() if self.extra_state else {},
        }

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value.to(self.params[name].device))
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        self.best_value = float(state["best_value"])
        self.best_step = int(state["best_step"])
        self.best = dict(state["best"]) or None
        self.history = [EvalRecord(**r) for r in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        if self.extra_state:
            self.extra_state[1](state["extra"])
        else:
            self.after_step(self.step)

    # -- the loop -------------------------------------------------------------------------------------
    def run_eval(self) -> EvalRecord:
        # One sync per eval interval, not per step: the step only adds the loss to a device tensor.
        loss_sum = self._loss_sum
        if loss_sum is not None:
            self._loss_sum = None
            if not math.isfinite(float(loss_sum)):
                first = self.history[-1].step if self.history else 0
                raise DivergenceError(f"training loss is {float(loss_sum)} between steps {first} and {self.step} "
                                      f"(lr {self.config.lr:g}): the run diverged; lower the learning rate")
        full = self._full_eval()
        record = EvalRecord(self.step, self.step / self.steps_per_epoch,
                            self.evaluate() if full else self.evaluate_selection(),
                            self.current_sparsity() if self.current_sparsity else None, partial=not full)
        self.history.append(record)
        eligible = record.epoch >= self.config.select_from * (self.total_steps / self.steps_per_epoch) - 1e-9
        value = self.selection(record.metrics)
        if eligible and value > self.best_value:
            self.best_value, self.best_step = value, self.step
            self.best = {k: v.detach().cpu().clone() for k, v in self.snapshot().items()}
        return record

    def _cadence(self) -> int | None:
        """ood_eval_every when this loop can honour it (it can restore the selected snapshot), else None."""
        if self.evaluate_selection is None or self.restore is None:
            return None
        return self.config.ood_eval_every

    def _full_eval(self) -> bool:
        every = self._cadence()
        return every is None or (every > 0 and self.step % every == 0)

    def complete_selected(self) -> None:
        """Evaluate every split at the selected checkpoint if its evaluation was selection-only: restore the
        selected snapshot, evaluate, put the live state back. Idempotent, so a resume after it is harmless."""
        record = next((r for r in self.history if r.step == self.best_step), None)
        if record is None or not record.partial or self.best is None:
            return
        live = {k: v.detach().clone() for k, v in self.snapshot().items()}
        self.restore(self.best)
        try:
            metrics = self.evaluate()
        finally:
            self.restore(live)
        record.metrics = {**metrics, **record.metrics}  # the selection split keeps the value it was chosen by
        record.partial = False

    def batches(self):
        """Yield (step, batch) from the current step on; the order depends only on (seed, step)."""
        cached_epoch, order = -1, None
        while self.step < self.total_steps:
            epoch, position = divmod(self.step + self.batch_offset, self.steps_per_epoch)
            if epoch != cached_epoch:  # one permutation per epoch, not per step (392k rows for MNLI)
                cached_epoch = epoch
                order = (grouped_epoch_order(self.data.lengths(), self.config.batch_size, self.config.seed, epoch)
                         if self.config.group_by_length else epoch_order(len(self.data), self.config.seed, epoch))
            start = position * self.config.batch_size
            yield self.data.batch(order[start: start + self.config.batch_size])

    def train(self, on_eval: Callable[[EvalRecord | None, "TrainLoop"], None] | None = None) -> None:
        """Train to ``total_steps``. ``on_eval(record, loop)`` sees every evaluation; ``on_eval(None, loop)`` is a
        checkpoint request without an evaluation: a stop was requested (``request_stop``, a preemption
        notice), the loop is at a step boundary, and ``Preempted`` is raised once ``on_eval`` returns."""
        cfg = self.config
        self.model.train()
        params = list(self.params.values())
        if self.step == 0 and not self.history and self.config.eval_at_start:
            record = self.run_eval()  # step 0: e.g. plain magnitude pruning, or the dense starting point
            if on_eval:
                on_eval(record, self)
        for batch in self.batches():
            t0 = time.perf_counter()
            factor = (self.lr_schedule(self.step) if self.lr_schedule is not None
                      else lr_factor(self.step, cfg.warmup_steps, self.total_steps))
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            with autocast_context(self.device, cfg.amp):
                logits = forward_logits(self.model, batch, self.device)
            batch = {k: to_device(v, self.device) for k, v in batch.items()}
            loss = self.loss_fn(logits.float(), batch)
            self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                clip_gradients(params, cfg.grad_clip, cfg.grad_clip_mode)
            self.optimizer.step()
            self.step += 1
            self.after_step(self.step)
            self.train_seconds += time.perf_counter() - t0
            evaluated = self.step % cfg.eval_every == 0 or self.step == self.total_steps
            if evaluated:
                record = self.run_eval()
                if on_eval:
                    on_eval(record, self)
            if _stop_reason is not None:
                self._stop(on_eval, checkpointed=evaluated)
        self.complete_selected()

    def _stop(self, on_eval, checkpointed: bool) -> None:
        """A stop was requested: checkpoint this step (unless its evaluation just did) and raise ``Preempted``."""
        reason = _stop_reason
        if on_eval is None:
            raise Preempted(f"{reason}: stopped at step {self.step} of {self.total_steps} (no checkpoint: this run "
                            "has no report callback to write it)")
        if not checkpointed:
            on_eval(None, self)
        raise Preempted(f"{reason}: checkpointed at step {self.step} of {self.total_steps}, stopping")
