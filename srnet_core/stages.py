"""Stages: pure functions of (config, input artifacts) -> (output artifacts in out_dir, metric rows).

A stage never knows about Ray: the caller passes ``report(record, state_fn)`` to see each evaluation (and
checkpoint the state it is given) and ``resume_state`` to continue an interrupted run exactly. Inputs from
upstream stages arrive as file paths in the config (init_weights, mask_file, bias_file, teacher_file).

Outputs per stage kind:
  finetune    weights.safetensors (best on ID dev), weights_step{N}.safetensors for each save_steps entry,
              weights_f{F:.1f}.safetensors at each save_fractions entry (step max(1, round(F * total))),
              teacher.parquet (class probabilities over the training set) when save_teacher
  teacher     teacher.parquet: class probabilities of init_weights over the training set (for conf_reg)
  mask_train  masks.safetensors (best on ID dev; the mask at its target sparsity at that time)
  super_tickets masks.safetensors (the Super Ticket: pruned heads and FFN sublayers of init_weights) and
              super_tickets.safetensors (head / FFN-sublayer masks and importance); one row set: the pruned,
              not re-trained model (the ticket's result is the downstream retrain node's)
  retrain     weights.safetensors (the fixed mask baked in: a plain HF state dict with zeros)
  evaluate    metric rows only
Every stage also writes summary.json.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from . import losses
from .cache import encode_cached
from .data import Encoded
from .io import atomic_path, write_json
from .masks import MaskConfig, MaskSet, load_masks, save_masks, sparsity_of
from .models import count_prunable, load_model, load_tokenizer, pick_device, prunable_linear_names
from .tasks import get_task
from .train import EvalRecord, TrainConfig, TrainLoop, predict_logits, release_memory

# Bump a stage's version when a change alters its results: its nodes (and everything downstream) re-run.
STAGE_VERSION = {"bias_model": "1", "finetune": "1", "teacher": "1", "mask_train": "1", "imp": "1", "gmp": "1", "structured": "1",
                 "super_tickets": "1", "retrain": "1", "evaluate": "1"}


@dataclass
class StageConfig:
    """Everything one stage run depends on. Every field is documented once, here.

    stage: the stage kind (see STAGE_VERSION).
    task / task_options / data_dir: which task, its options (e.g. synthetic sizes, add_ood_train), where real
        data lives (None: $SRNET_DATA_DIR).
    backbone: ``minilm``, ``tiny-bert``, an HF hub name, or a model directory.
    seed: fixes the classifier initialisation, data order and dropout.
    sparsity: target fraction of zeros per prunable matrix (mask_train; the final target for gradual).
    loss: std, poe, reweight or conf_reg (srnet_core.losses).
    max_length: tokens per pair (truncation).
    include_pooler / mask_classifier: mask the pooler / the classifier too (protocol.md section 1 lists both).
    device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    init_weights: weights.safetensors of an upstream node to start from (paradigm (a)); None starts from the
        pre-trained backbone with a randomly initialised classifier.
    mask_file: a fixed mask (retrain, evaluate). bias_file / teacher_file: per-example bias log-probs /
        teacher probabilities, joined to training examples by id.
    save_steps: fine-tuning steps whose weights are saved for the timing paradigm.
    save_fractions: fractions of the fine-tuning's steps whose weights are saved (the planner's fixed grid).
    save_teacher: after fine-tuning, save its class probabilities over the training set (for conf_reg).
    gradual / imp / structured / super_tickets: options of those pruning methods (None: not used).
    """

    stage: str = "mask_train"
    task: str = "synthetic"
    task_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    backbone: str = "tiny-bert"
    seed: int = 0
    sparsity: float = 0.5
    loss: str = "std"
    max_length: int = 128
    include_pooler: bool = True
    mask_classifier: bool = True
    device: str = "auto"
    init_weights: str | None = None
    mask_file: str | None = None
    bias_file: str | None = None
    bias_sha256: str | None = None  # a user-given bias file (bias_source: file): its sha256, checked when read
    teacher_file: str | None = None
    save_steps: list[int] = field(default_factory=list)
    save_fractions: list[float] = field(default_factory=list)
    save_teacher: bool = False
    gradual: dict | None = None
    imp: dict | None = None
    structured: dict | None = None
    super_tickets: dict | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "StageConfig":
        d = dict(d)
        train = TrainConfig(**d.pop("train", {}))
        mask = MaskConfig(**d.pop("mask", {}))
        return cls(train=train, mask=mask, **d)

    def to_dict(self) -> dict:
        return asdict(self)


Report = Callable[[EvalRecord, Callable[[], dict]], None]


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

    def evaluate(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, enc in self.eval_enc.items():
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
    from .bias import read_per_example

    if "bias" in needs and ctx.cfg.bias_sha256:  # the file the node was planned (and keyed) with, unchanged
        from .io import sha256_file

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


def _loop(ctx: Context, params, snapshot, after_step=None, current_sparsity=None, extra_state=None) -> TrainLoop:
    return TrainLoop(ctx.model, params, ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                     evaluate=ctx.evaluate, selection=ctx.selection, snapshot=snapshot, device=ctx.device,
                     after_step=after_step, current_sparsity=current_sparsity, extra_state=extra_state)


def _run(loop: TrainLoop, report: Report | None, resume_state: dict | None) -> None:
    if resume_state is not None:
        loop.load_state(resume_state)
    loop.train(on_eval=(lambda record, lp: report(record, lp.state)) if report else None)


def _save_state_dict(path: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)


def _summary(ctx: Context, out_dir: str, loop: TrainLoop | None, **extra) -> None:
    summary = {"config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started, "device": str(ctx.device),
               "n_train": len(ctx.train_enc), **extra}
    if loop is not None:
        summary.update(best_step=loop.best_step, best_value=loop.best_value, total_steps=loop.total_steps,
                       train_seconds=loop.train_seconds)
    write_json(os.path.join(out_dir, "summary.json"), summary)


# -- stages -------------------------------------------------------------------------------------------------
def finetune(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Train all weights (dense); keep the best-on-ID-dev weights; optional step checkpoints and teacher."""
    params = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
    files: dict[int, list[str]] = {step: [f"weights_step{step}.safetensors"] for step in ctx.cfg.save_steps}

    def after_step(step: int) -> None:
        for name in files.get(step, ()):  # a short run can put several fractions on one step
            if not os.path.exists(os.path.join(out_dir, name)):
                _save_state_dict(os.path.join(out_dir, name), ctx.model)

    os.makedirs(out_dir, exist_ok=True)
    loop = _loop(ctx, params, snapshot=lambda: params, after_step=after_step, current_sparsity=lambda: 0.0)
    for fraction in ctx.cfg.save_fractions:  # the same rule as orchestrator.plan.checkpoint_step
        files.setdefault(max(1, int(round(fraction * loop.total_steps))), []).append(f"weights_f{fraction:.1f}.safetensors")
    _run(loop, report, resume_state)
    if _saved_files(ctx.cfg, loop.total_steps):  # the timing predictor (docs/search.md)
        _write_timing(ctx, out_dir, _saved_files(ctx.cfg, loop.total_steps), loop.total_steps)
    with torch.no_grad():  # the selected weights
        for name, value in loop.best.items():
            params[name].copy_(value)
    _save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    if ctx.cfg.save_teacher:
        write_teacher(os.path.join(out_dir, "teacher.parquet"), ctx)
    _summary(ctx, out_dir, loop, measured_sparsity=0.0)
    return rows_from_history(loop.history, loop.best_step, ctx.task)


def _saved_files(cfg: StageConfig, total: int) -> dict[int, str]:
    """{step: file} of the checkpoints a fine-tuning saves: save_steps, and a fixed fraction grid if any."""
    files = {int(s): f"weights_step{int(s)}.safetensors" for s in cfg.save_steps}
    for f in getattr(cfg, "save_fractions", None) or ():
        files.setdefault(max(1, int(round(f * total))), f"weights_f{f:.1f}.safetensors")
    return files


def _write_timing(ctx: Context, out_dir: str, files: dict[int, str], total: int) -> None:
    """timing.json: Early-Bird mask distances between consecutive saved checkpoints (srnet_core.pruning.timing).
    Read back from the step files, so a resumed fine-tuning gives the same answer as an uninterrupted one."""
    from safetensors.torch import load_file

    from .pruning.timing import early_bird_report

    names = [f"{n}.weight" for n in ctx.encoder_names()]
    checkpoints = []
    for step in sorted(files):  # {step: file} of the saved checkpoints
        path = os.path.join(out_dir, files[step])
        if step < total and os.path.exists(path):
            state = load_file(path)
            checkpoints.append((step, {n: state[n] for n in names}))
    live = dict(ctx.model.named_parameters())
    checkpoints.append((total, {n: live[n].detach().cpu() for n in names}))
    write_json(os.path.join(out_dir, "timing.json"), {"total_steps": total, **early_bird_report(checkpoints)})


def write_teacher(path: str, ctx: Context) -> None:
    """Class probabilities of the selected model over the (unshuffled) training set, keyed by example id."""
    from .bias import write_per_example

    logits = predict_logits(ctx.model, ctx.train_enc, ctx.cfg.train.eval_batch_size, ctx.device, ctx.cfg.train.amp)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    write_per_example(path, ctx.train_enc.ids, probs, column="probs")
    return probs


def mask_train(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Train mask scores with frozen weights (straight-through); fixed or gradual target sparsity."""
    cfg = ctx.cfg
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    names = ctx.names(classifier=cfg.mask_classifier)
    if cfg.gradual:
        return _gradual(ctx, out_dir, report, resume_state, names, train_weights=False)
    mask_set = MaskSet(ctx.model, names, MaskConfig(**{**asdict(cfg.mask), "sparsity": cfg.sparsity}))
    params = {f"scores:{n}": mask_set.parametrization(n).scores for n in names}
    encoder = ctx.encoder_names()
    loop = _loop(ctx, params, snapshot=lambda: {f"mask:{n}": m for n, m in mask_set.masks().items()},
                 after_step=mask_set.project,
                 # reported over the encoder matrices, the protocol's denominator (section 1)
                 current_sparsity=lambda: mask_set.sparsity_report(encoder)["total"],
                 extra_state=(mask_set.state_dict, mask_set.load_state_dict))
    _run(loop, report, resume_state)
    os.makedirs(out_dir, exist_ok=True)
    best = {n: loop.best[f"mask:{n}"] for n in names}
    measured_all = _save_masks(ctx, os.path.join(out_dir, "masks.safetensors"), best, cfg.sparsity)
    _summary(ctx, out_dir, loop, measured_sparsity=sparsity_of({n: best[n] for n in encoder})["total"],
             measured_sparsity_all_masked=measured_all, prunable_params=count_prunable(ctx.model, names))
    return rows_from_history(loop.history, loop.best_step, ctx.task)


def _gradual_options(ctx: Context, initial: float):
    from .pruning.gradual import GradualOptions

    g = ctx.cfg.gradual or {}
    # t_f defaults to the last epoch (the reference; for GMP Sparse*BERT's recovery phase at s_f)
    end = g.get("end", "last_epoch")
    return GradualOptions(initial=g.get("initial", initial), final=ctx.cfg.sparsity, start=g.get("start", 0.0),
                          end=end, unit=g.get("unit", "epoch"),
                          frequency=g.get("frequency") or ctx.cfg.train.eval_every, scope=ctx.cfg.mask.scope,
                          # A result reported at sparsity s must be a checkpoint AT s: with "any", GMP's best
                          # ID-dev eval can be its dense start (measured in paper_small: GMP "0.9" was dense).
                          select=g.get("select", "final"), reproject_every=ctx.cfg.mask.reproject_every)


def _gradual(ctx: Context, out_dir: str, report, resume_state, names, train_weights: bool) -> list[dict]:
    """Cubic-schedule pruning: gradual mask training (frozen weights, 0.7 -> 0.9 in the reference) or GMP
    (Sparse*BERT: weights trained, magnitude masks 0 -> s_f). The saved mask is the selected checkpoint's,
    at the sparsity the schedule had then (the reference's re-threshold-to-s_i bug is not copied)."""
    from .pruning.gradual import gmp, gradual_mask_train

    run = gmp if train_weights else gradual_mask_train
    options = _gradual_options(ctx, 0.0 if train_weights else 0.7)
    result = run(ctx.model, names, ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                 evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device, options=options,
                 report=report, resume_state=resume_state)
    os.makedirs(out_dir, exist_ok=True)
    _save_masks(ctx, os.path.join(out_dir, "masks.safetensors"), result.masks, result.target_sparsity)
    if train_weights:
        result.mask_set.bake()  # weights with real zeros: a plain HF model
        _save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started, "best_step": result.best_step,
        "best_value": result.best_value, "target_sparsity_at_best": result.target_sparsity,
        "measured_sparsity": result.encoder_sparsity, "final_sparsity_reached": result.final_sparsity_reached,
        "total_steps": result.total_steps, "train_seconds": result.train_seconds})
    return rows_from_history(result.history, result.best_step, ctx.task)


def gmp_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Gradual magnitude pruning of a (fine-tuned) model with its weights trained; classifier not pruned."""
    return _gradual(ctx, out_dir, report, resume_state, ctx.names(classifier=False), train_weights=True)


def imp_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Iterative magnitude pruning: one run gives every level (0.1 .. 0.9 by default), each saved as
    ``masks_s{level:.2f}.safetensors``; a level's result is the last evaluation of its interval (protocol 3).
    With ``rewind`` the encoder weights go back to their starting values after each prune (imp-rw)."""
    from .pruning.imp import ImpOptions, imp

    o = dict(ctx.cfg.imp or {})
    rewind = o.pop("rewind", None)
    options = ImpOptions(**{k: v for k, v in o.items() if k in ImpOptions.__dataclass_fields__},
                         rewind=None if rewind in (None, "none") else rewind)
    os.makedirs(out_dir, exist_ok=True)

    def on_level(level, model) -> None:
        _save_masks(ctx, os.path.join(out_dir, f"masks_s{level.target_sparsity:.2f}.safetensors"), level.masks,
                    level.target_sparsity, imp_level=level.level)

    levels = imp(ctx.model, ctx.names(classifier=False), ctx.train_enc, losses.get_loss(ctx.cfg.loss), ctx.cfg.train,
                 evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device, options=options,
                 on_level=on_level, report=report, resume_state=resume_state)
    rows = []
    for level in levels:
        for row in rows_from_history(
                [EvalRecord(level.start_step + r.step, r.epoch, r.metrics, level.encoder_sparsity) for r in level.history],
                level.start_step + level.final.step, ctx.task):
            rows.append({**row, "target_sparsity": level.target_sparsity, "imp_level": level.level})
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started,
        "levels": [{"target_sparsity": lv.target_sparsity, "measured_sparsity": lv.encoder_sparsity,
                    "steps": lv.steps} for lv in levels]})
    return rows


def structured_options(cfg: StageConfig):
    """StructuredOptions of a stage config: head/neuron fractions default to the grid sparsity only when
    they are absent or None (an explicit 0.0 means "prune none of them", not "use the grid sparsity")."""
    from .pruning.structured import StructuredOptions

    o = dict(cfg.structured or {})

    def fraction(key: str) -> float:
        return cfg.sparsity if o.get(key) is None else float(o[key])

    return StructuredOptions(head_sparsity=fraction("head_sparsity"), neuron_sparsity=fraction("neuron_sparsity"),
                             rounds=o.get("rounds", 1), importance_batches=o.get("importance_batches", 16),
                             ranking=o.get("ranking", "global"))


def structured_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Structured pruning of attention heads and FFN neurons by loss sensitivity (neuron-level; not a faithful
    Super Tickets, see srnet_core.pruning.structured).
    Saves the head/neuron masks (``structured.safetensors``, from which a physically smaller model is built
    with srnet_core.pruning.structured.shrink_model) and the equivalent per-matrix ``masks.safetensors``."""
    from safetensors.torch import save_file

    from .pruning.structured import structured_prune

    s = ctx.cfg.sparsity
    options = structured_options(ctx.cfg)
    rounds = structured_prune(ctx.model, ctx.names(classifier=False), ctx.train_enc, losses.get_loss(ctx.cfg.loss),
                              ctx.cfg.train, evaluate=ctx.evaluate, selection=ctx.selection, device=ctx.device,
                              options=options, report=report, resume_state=resume_state)
    last = rounds[-1]
    os.makedirs(out_dir, exist_ok=True)
    _save_masks(ctx, os.path.join(out_dir, "masks.safetensors"), last.weight_masks, s, structured=True)
    with atomic_path(os.path.join(out_dir, "structured.safetensors")) as tmp:
        save_file({"head_mask": last.head_mask.to(torch.uint8).contiguous(),
                   "neuron_mask": last.neuron_mask.to(torch.uint8).contiguous(),
                   "head_importance": last.head_importance.float().contiguous(),
                   "neuron_importance": last.neuron_importance.float().contiguous()}, tmp)
    write_json(os.path.join(out_dir, "summary.json"), {
        "config": ctx.cfg.to_dict(), "wall_seconds": time.time() - ctx.started,
        "rounds": [{"head_sparsity": r.head_sparsity, "neuron_sparsity": r.neuron_sparsity,
                    "measured_sparsity": r.encoder_sparsity} for r in rounds]})
    history = [EvalRecord(r.start_step + h.step, h.epoch, h.metrics, r.encoder_sparsity) for r in rounds for h in r.history]
    return rows_from_history(history, last.start_step + last.final.step, ctx.task)


def super_ticket_options(cfg: StageConfig):
    """SuperTicketOptions of a stage config: head/FFN fractions default to the grid sparsity only when absent
    or None (an explicit 0.0 means "prune none of them")."""
    from .pruning.super_tickets import SuperTicketOptions

    o = dict(cfg.super_tickets or {})

    def fraction(key: str) -> float:
        return cfg.sparsity if o.get(key) is None else float(o[key])

    return SuperTicketOptions(head_sparsity=fraction("head_sparsity"), ffn_sparsity=fraction("ffn_sparsity"),
                              min_heads_per_layer=o.get("min_heads_per_layer", 1),
                              normalize=o.get("normalize", True))


def super_tickets_stage(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Super Tickets (srnet_core.pruning.super_tickets): head and FFN-sublayer importance of the fine-tuned
    init_weights over the whole training set, one-shot prune, masks saved. The pruned model (fine-tuned weights,
    not re-trained) is evaluated once for its rows; the ``retrain`` stage re-fine-tunes the ticket from the
    pre-trained weights. One pass with no optimizer state: nothing to resume (a retry recomputes it)."""
    from safetensors.torch import save_file

    from .models import encoder_layers
    from .pruning.super_tickets import check_head_budget, super_ticket

    cfg = ctx.cfg
    if not cfg.init_weights:
        raise ValueError("the super_tickets stage needs init_weights (the std fine-tuned model to prune)")
    options = super_ticket_options(cfg)
    layers = encoder_layers(ctx.model)  # refuse an impossible head fraction before the pass over the data
    explicit = (cfg.super_tickets or {}).get("head_sparsity") is not None
    check_head_budget(len(layers), layers[0].num_heads, options.head_sparsity, options.min_heads_per_layer,
                      field="super_tickets_options.head_sparsity" if explicit else "grid.sparsities")
    ticket = super_ticket(ctx.model, ctx.train_enc, losses.get_loss(cfg.loss), batch_size=cfg.train.batch_size,
                          device=ctx.device, amp=cfg.train.amp, options=options)
    names = ctx.names(classifier=False)  # the pooler (when prunable) is kept whole, like `structured`
    modules = dict(ctx.model.named_modules())
    masks = {n: ticket.weight_masks[n] if n in ticket.weight_masks
             else torch.ones(tuple(modules[n].weight.shape), dtype=torch.bool) for n in names}
    encoder = ctx.encoder_names()
    measured = sparsity_of({n: masks[n] for n in encoder})["total"]
    os.makedirs(out_dir, exist_ok=True)
    measured_all = _save_masks(ctx, os.path.join(out_dir, "masks.safetensors"), masks, cfg.sparsity,
                               super_tickets=True, head_sparsity=ticket.head_sparsity,
                               ffn_sparsity=ticket.ffn_sparsity)
    with atomic_path(os.path.join(out_dir, "super_tickets.safetensors")) as tmp:
        save_file({"head_mask": ticket.head_mask.to(torch.uint8).contiguous(),
                   "ffn_mask": ticket.ffn_mask.to(torch.uint8).contiguous(),
                   "head_importance": ticket.importance.heads.float().contiguous(),
                   "ffn_importance": ticket.importance.ffn.float().contiguous(),
                   "head_scores": ticket.head_scores.float().contiguous(),
                   "ffn_scores": ticket.ffn_scores.float().contiguous()}, tmp)
    mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
    mask_set.load_masks(masks)
    record = EvalRecord(0, 0.0, ctx.evaluate(), measured)
    pruned_heads = [[int(h) for h in torch.nonzero(~row).flatten()] for row in ticket.head_mask]
    _summary(ctx, out_dir, None, measured_sparsity=measured, measured_sparsity_all_masked=measured_all,
             head_sparsity=ticket.head_sparsity, ffn_sparsity=ticket.ffn_sparsity,
             pruned_heads=pruned_heads, pruned_ffn=[int(i) for i in torch.nonzero(~ticket.ffn_mask).flatten()],
             importance_batches=ticket.importance.batches, importance_examples=ticket.importance.examples)
    return rows_from_history([record], 0, ctx.task)


def retrain(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Fine-tune the weights of a fixed subnetwork from the pre-trained weights ("in isolation", paradigm b;
    sparse transfer). The classifier is not masked; the mask is loaded for every matrix the model shares
    with it, so a mask found on another task (other label count) transfers."""
    masks, _ = load_masks(ctx.cfg.mask_file)
    names = [n for n in ctx.names(classifier=False) if n in masks]
    if not names:
        raise ValueError(f"mask file {ctx.cfg.mask_file} has no matrix of this model; was it made for another "
                         "backbone?")
    mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
    mask_set.load_masks({n: masks[n] for n in names})
    params = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
    encoder = [n for n in ctx.encoder_names() if n in names]
    measured = mask_set.sparsity_report(encoder)["total"]
    loop = _loop(ctx, params, snapshot=lambda: params, current_sparsity=lambda: measured)
    _run(loop, report, resume_state)
    with torch.no_grad():
        for name, value in loop.best.items():
            params[name].copy_(value)
    mask_set.bake()  # plain weights with zeros: loads as an ordinary HF model
    os.makedirs(out_dir, exist_ok=True)
    _save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    _summary(ctx, out_dir, loop, measured_sparsity=measured)
    return rows_from_history(loop.history, loop.best_step, ctx.task)


def evaluate(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """Evaluate given weights (and optionally a mask) on the task's ID and OOD sets."""
    measured = 0.0
    if ctx.cfg.mask_file:
        masks, _ = load_masks(ctx.cfg.mask_file)
        names = [n for n in ctx.names(classifier=True) if n in masks]
        mask_set = MaskSet(ctx.model, names, MaskConfig(init="none", sparsity=0.0), train_scores=False)
        mask_set.load_masks({n: masks[n] for n in names})
        measured = mask_set.sparsity_report([n for n in ctx.encoder_names() if n in names])["total"]
    record = EvalRecord(0, 0.0, ctx.evaluate(), measured)
    os.makedirs(out_dir, exist_ok=True)
    _summary(ctx, out_dir, None, measured_sparsity=measured)
    return rows_from_history([record], 0, ctx.task)


def bias_model(cfg: StageConfig, out_dir: str) -> list[dict]:
    """Fit the task's hand-crafted bias model on its training split (srnet_core.bias); write per-example
    log-probs for the training split (``bias_train.parquet``) and every eval split, and its own metrics: good
    on ID and near chance on OOD is what shows the features are the bias."""
    from .bias import fit_bias_model, write_bias_file

    started = time.time()
    task = get_task(cfg.task, data_dir=cfg.data_dir, **cfg.task_options)
    result = fit_bias_model(task)
    os.makedirs(out_dir, exist_ok=True)
    result.write(out_dir)
    train = task.train_split
    write_bias_file(os.path.join(out_dir, "bias_train.parquet"), result.ids[train], result.log_probs[train])
    write_json(os.path.join(out_dir, "summary.json"), {"config": cfg.to_dict(), "wall_seconds": time.time() - started,
                                                       "info": result.info})
    evals = {split: m for split, m in result.metrics.items() if split != train}
    return rows_from_history([EvalRecord(0, 0.0, evals, 0.0)], 0, task)


def teacher(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    """conf_reg's teacher as its own node: the probabilities of the fine-tuned weights (init_weights) over the
    training set, and their accuracy there (one row, not selected: it is no curve point)."""
    if not ctx.cfg.init_weights:
        raise ValueError("the teacher stage needs init_weights (a fine-tuned model)")
    os.makedirs(out_dir, exist_ok=True)
    probs = write_teacher(os.path.join(out_dir, "teacher.parquet"), ctx)
    accuracy = float((probs.argmax(-1) == ctx.train_enc.labels).mean())
    _summary(ctx, out_dir, None, train_accuracy=accuracy)
    return [{"step": 0, "epoch": 0.0, "eval_dataset": ctx.task.train_split, "eval_role": "train",
             "metric": "accuracy", "value": accuracy, "selected": False, "measured_sparsity": 0.0}]


STAGES: dict[str, Callable] = {"finetune": finetune, "teacher": teacher, "mask_train": mask_train, "imp": imp_stage, "gmp": gmp_stage,
                               "structured": structured_stage, "super_tickets": super_tickets_stage,
                               "retrain": retrain, "evaluate": evaluate}


def run_stage(config: dict | StageConfig, out_dir: str, report: Report | None = None,
              resume_state: dict | None = None) -> list[dict]:
    """Run one stage; write its artifacts to ``out_dir``; return its metric rows (long format)."""
    cfg = config if isinstance(config, StageConfig) else StageConfig.from_dict(config)
    if cfg.stage not in STAGES and cfg.stage != "bias_model":
        raise ValueError(f"unknown stage '{cfg.stage}'; known: {sorted(STAGES) + ['bias_model']}")
    if cfg.stage == "bias_model":  # no model, no training loop
        return bias_model(cfg, out_dir)
    ctx = prepare(cfg)
    device = ctx.device
    try:
        return STAGES[cfg.stage](ctx, out_dir, report, resume_state)
    finally:
        del ctx  # a reused worker process must not keep this stage's model (tests/test_memory_release.py)
        release_memory(cfg.train.compile, device)


def _save_masks(ctx: Context, path: str, masks: dict[str, torch.Tensor], target: float, **extra) -> float:
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
