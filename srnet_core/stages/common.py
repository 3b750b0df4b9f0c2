"""What every model stage shares: the run context (data, tokenized splits, model, device), the training loop
wrapper, artifact writers and the long-format result rows."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .. import losses
from ..cache import encode_cached
from ..data import Encoded
from ..io import atomic_path, write_json
from ..masks import save_masks, sparsity_of
from ..models import load_model, load_tokenizer, pick_device, prunable_linear_names
from ..tasks import get_task
from ..train import EvalRecord, TrainLoop, predict_logits
from .config import Report, StageConfig


@dataclass
class Context:
    """What every stage needs, built once per run: data, tokenized splits, model, device."""

    cfg: StageConfig
    task: object
    device: torch.device
    train_split: object
    splits: dict
    train_enc: Encoded
    eval_enc: dict[str, Encoded]
    model: torch.nn.Module
    started: float

    def evaluate(self, splits: list[str] | None = None) -> dict[str, dict[str, float]]:
        out = {}
        for name, enc in self.eval_enc.items():
            if splits is not None and name not in splits:
                continue
            logits = predict_logits(self.model, enc, self.cfg.train.eval_batch_size, self.device, self.cfg.train.amp)
            out[name] = self.task.metrics(name, logits, self.splits[name])
        return out

    def selection(self, evals: dict) -> float:
        """The ID-dev metric that picks checkpoints; OOD sets never take part in selection."""
        primary = self.task.id_eval_splits[0]
        return evals[primary][self.task.primary_metric(primary)]

    def names(self, classifier: bool) -> list[str]:
        return prunable_linear_names(self.model, include_pooler=self.cfg.include_pooler,
                                     include_classifier=classifier)

    def encoder_names(self) -> list[str]:
        return prunable_linear_names(self.model, include_pooler=False, include_classifier=False)


def token_cache_dir() -> str | None:
    """$SRNET_TOKEN_CACHE, else ~/.cache/srnet/tokens; an empty value turns the cache off."""
    value = os.environ.get("SRNET_TOKEN_CACHE")
    if value is not None:
        return value or None
    return os.path.join(os.path.expanduser("~"), ".cache", "srnet", "tokens")


def prepare(cfg: StageConfig) -> Context:
    started = time.time()
    device = pick_device(cfg.device)
    task = get_task(cfg.task, data_dir=cfg.data_dir, **cfg.task_options)
    tokenizer = load_tokenizer(cfg.backbone)
    train_split = task.load(task.train_split)
    splits = {name: task.load(name) for name in task.eval_splits}
    # Tokenized once per (task, split, options, tokenizer, max length, content) and reused by every stage.
    cache = token_cache_dir()
    train_enc = encode_cached(tokenizer, train_split, cfg.max_length, cache, task.cache_key())
    eval_enc = {name: encode_cached(tokenizer, s, cfg.max_length, cache, task.cache_key()) for name, s in splits.items()}
    model = load_model(cfg.backbone, task.num_labels, seed=cfg.seed)
    if cfg.init_weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(cfg.init_weights), strict=True)
    model.to(device)
    ctx = Context(cfg, task, device, train_split, splits, train_enc, eval_enc, model, started)
    _attach_example_inputs(ctx)
    return ctx


def _attach_example_inputs(ctx: Context) -> None:
    """Join per-example bias log-probs / teacher probabilities to the training examples by id."""
    needs = losses.NEEDS.get(ctx.cfg.loss, ())
    files = {"bias": ctx.cfg.bias_file, "teacher": ctx.cfg.teacher_file}
    for name in needs:
        if not files.get(name):
            raise ValueError(f"loss '{ctx.cfg.loss}' needs a {name} file (stage config field '{name}_file')")
    from ..bias import read_per_example

    if "bias" in needs and ctx.cfg.bias_sha256:  # the file the node was planned (and keyed) with, unchanged
        from ..io import sha256_file

        if sha256_file(ctx.cfg.bias_file) != ctx.cfg.bias_sha256:
            raise ValueError(f"bias file '{ctx.cfg.bias_file}' changed since the sweep was planned (sha256 "
                             "differs): relaunch to re-plan with the new file")
    for name in needs:
        missing = "drop" if ctx.task.name == "qqp" else "error"  # protocol 5: QQP drops pairs without bias
        values, kept = read_per_example(files[name], ctx.train_enc.ids, ctx.task.num_labels, missing=missing,
                                        check="log_probs" if name == "bias" else "probs")
        if len(kept) != len(ctx.train_enc):
            ctx.train_enc = ctx.train_enc.subset(kept)
        ctx.train_enc = ctx.train_enc.with_extra(name, values)


def make_loop(ctx: Context, params, snapshot, after_step=None, current_sparsity=None, extra_state=None,
              restore=None) -> TrainLoop:
    """restore(snapshot) puts a snapshot back into the model; with it, train.ood_eval_every applies."""
    selection_split = ctx.task.id_eval_splits[0]
    return TrainLoop(ctx.model, params, ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                     evaluate=ctx.evaluate, selection=ctx.selection, snapshot=snapshot, device=ctx.device,
                     after_step=after_step, current_sparsity=current_sparsity, extra_state=extra_state,
                     evaluate_selection=lambda: ctx.evaluate([selection_split]), restore=restore)


def copy_into(params: dict) -> callable:
    """restore() for loops whose snapshot is ``params`` itself (fine-tuning, re-training)."""
    def restore(snapshot: dict) -> None:
        with torch.no_grad():
            for name, value in snapshot.items():
                params[name].copy_(value)
    return restore


def run_loop(loop: TrainLoop, report: Report | None, resume_state: dict | None) -> None:
    if resume_state is not None:
        loop.load_state(resume_state)
    loop.train(on_eval=(lambda record, lp: report(record, lp.state)) if report else None)


def save_state_dict(path: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)


def write_summary(ctx: Context, out_dir: str, loop: TrainLoop | None, **extra) -> None:
    summary = {"config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started, "device": str(ctx.device),
               "n_train": len(ctx.train_enc), **extra}
    if loop is not None:
        summary.update(best_step=loop.best_step, best_value=loop.best_value, total_steps=loop.total_steps,
                       train_seconds=loop.train_seconds)
    write_json(os.path.join(out_dir, "summary.json"), summary)



def write_teacher(path: str, ctx: Context) -> None:
    """Class probabilities of the selected model over the (unshuffled) training set, keyed by example id."""
    from ..bias import write_per_example

    logits = predict_logits(ctx.model, ctx.train_enc, ctx.cfg.train.eval_batch_size, ctx.device, ctx.cfg.train.amp)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    write_per_example(path, ctx.train_enc.ids, probs, column="probs")
    return probs



def save_mask_file(ctx: Context, path: str, masks: dict[str, torch.Tensor], target: float, **extra) -> float:
    """A mask artifact with its provenance; returns its measured sparsity over all masked matrices.
    The worker exports SRNET_CODE_VERSION (srnet_core itself never calls git)."""
    save_masks(path, masks, {"backbone": ctx.cfg.backbone, "task": ctx.cfg.task, **extra},
               model_family=ctx.model.config.model_type, target_sparsity=target,
               code_version=os.environ.get("SRNET_CODE_VERSION"))
    return sparsity_of(masks)["total"]


def rows_from_history(history: list[EvalRecord], best_step: int, task) -> list[dict]:
    rows = []
    for record in history:
        for split, metrics in record.metrics.items():
            role = task.eval_role(split)
            for name, value in metrics.items():
                rows.append({"step": record.step, "epoch": record.epoch, "eval_dataset": split,
                             "eval_role": role, "metric": name, "value": float(value),
                             "selected": record.step == best_step, "measured_sparsity": record.sparsity})
    return rows
