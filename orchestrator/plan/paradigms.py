"""Paradigms as compositions of stage nodes: one small function per paradigm adds its nodes (``PARADIGMS``), and
one per pruning method of paradigm (a) that needs its own recipe (``METHODS``); every other registered method
(gmp, structured, a user's) is one node per grid sparsity from the fine-tuned weights (``NodeFactory.prune``).
"""
from __future__ import annotations

import os
from typing import Callable

from srnet_core.stages import level_file

from ..spec import SpecError, SweepSpec
from .factory import FT_CHECKPOINT_EVERY, FT_CHECKPOINT_FRACTIONS, Cell, NodeFactory
from .graph import Plan

PARADIGMS: dict[str, Callable] = {}
SWEEP_PARADIGMS: dict[str, Callable] = {}  # paradigms that span tasks (run once per sweep, after the cells)
# Methods with their own recipe: fn(f, cell, ft, loss, extra) per (fine-tuning loss L1, pruning loss L2), or,
# in CELL_METHODS, fn(f, cell) once per cell.
METHODS: dict[str, Callable] = {}
CELL_METHODS: dict[str, Callable] = {}


def paradigm(name: str, per_sweep: bool = False):
    def register(fn):
        (SWEEP_PARADIGMS if per_sweep else PARADIGMS)[name] = fn
        return fn
    return register


def check_planner_fields(spec: SweepSpec) -> None:
    """Reject spec fields the planner sets itself (one line naming the field and the fix)."""
    from srnet_core.masks import MaskConfig
    from srnet_core.stages.registry import option_kinds, train_sections
    from srnet_core.train import TrainConfig

    planner_train = {"seed": "grid.seeds", "select_from": "the paradigm (0.7 when pruning a fine-tuned model)"}
    defaults = TrainConfig()
    for section in train_sections():
        for name, source in planner_train.items():
            if getattr(spec.section(section), name) != getattr(defaults, name):
                raise SpecError(f"field '{section}.{name}': set by the planner from {source}; remove it")
        for where, overrides in spec.override_sections(section):
            for name, source in planner_train.items():
                if name in overrides:
                    raise SpecError(f"field '{where}.{name}': set by the planner from {source}; remove it")
    for kind in option_kinds():
        given, default = spec.options_of(kind.name), kind.default_options()
        for name in kind.planner_options:
            if given.get(name) != default.get(name):
                raise SpecError(f"field '{kind.options_section}.{name}': set by the planner per paradigm; remove it")
    if spec.mask.sparsity != MaskConfig().sparsity:
        raise SpecError("field 'mask.sparsity': set by the planner from grid.sparsities (and the paradigms' "
                        "options); remove it")
    if spec.device != "auto":
        raise SpecError(f"field 'device': set per node from resources (gpus_per_trial / resources.stages); "
                        f"remove 'device: {spec.device}'")


def build_plan(spec: SweepSpec) -> Plan:
    check_planner_fields(spec)
    f = NodeFactory(spec)
    g = spec.grid
    for task in g.tasks:
        for backbone in g.backbones:
            for seed in g.seeds:
                ft_std = f.finetune(task, backbone, seed, "std")
                f.ft_std[(task, backbone, seed)] = ft_std
                cell = Cell(task, backbone, seed, ft_std)
                for loss in spec.paradigm_options.full.losses:  # dense baselines (std is always planned)
                    if loss != "std":
                        f.finetune(task, backbone, seed, loss, teacher_from=ft_std)
                for name in g.paradigms:
                    if name in PARADIGMS:
                        PARADIGMS[name](f, cell)
    for name in g.paradigms:
        if name in SWEEP_PARADIGMS:
            SWEEP_PARADIGMS[name](f)
    return Plan(f.nodes)


@paradigm("a")
def _paradigm_a(f: NodeFactory, cell: Cell) -> None:
    """(a) prune a fine-tuned model: each method from each fine-tuning loss (from a PoE fine-tune only L2 = poe
    is pruned, the protocol); Super Tickets (std only) once per cell."""
    spec, g = f.spec, f.spec.grid
    for l1 in spec.paradigm_options.a.finetune_losses:
        ft = cell.ft_std if l1 == "std" else f.finetune(cell.task, cell.backbone, cell.seed, l1)
        for l2 in (g.losses if l1 == "std" else ["poe"]):
            extra = {"finetune_loss": l1}
            for method in g.methods:
                if method in CELL_METHODS:
                    continue
                if method in METHODS:
                    METHODS[method](f, cell, ft, l2, extra)
                else:
                    for s in g.sparsities:
                        f.prune(method, cell, ft, l2, s, "a", extra_cols=extra)
    for method in g.methods:
        if method in CELL_METHODS:
            CELL_METHODS[method](f, cell)


def _mask_train_method(f: NodeFactory, cell: Cell, ft, loss: str, extra: dict) -> None:
    for s in f.spec.grid.sparsities:
        f.mask_train(cell, ft, loss, s, "a", extra_cols=dict(extra))


def _imp_method(f: NodeFactory, cell: Cell, ft, loss: str, extra: dict) -> None:
    f.imp(cell, loss, ft, "a", extra)


def _super_tickets(f: NodeFactory, cell: Cell) -> None:
    """Super Tickets (Liang et al. 2021): per grid sparsity s, one super_tickets node pruning heads and FFN
    sublayers of the std fine-tuned model (std loss), and one retrain node re-fine-tuning that ticket from the
    pre-trained weights with its masks fixed (selected on ID dev). Result rows: the retrain node's, with
    method ``retrain`` and mask_source ``super_tickets`` (the super_tickets node's own rows are the pruned
    fine-tuned model before re-training, method ``super_tickets``)."""
    options = f.spec.options_of("super_tickets")
    extra = {"finetune_loss": "std"}
    for s in f.spec.grid.sparsities:
        _check_super_ticket_heads(f, cell.backbone, options, s)
        ticket = f.prune("super_tickets", cell, cell.ft_std, "std", s, "a", extra_cols=extra)
        f.retrain(cell, ticket, "masks.safetensors", "std", s, "a",
                  extra_cols={**extra, "mask_source": "super_tickets"})


METHODS.update(mask_train=_mask_train_method, imp=_imp_method)
CELL_METHODS.update(super_tickets=_super_tickets)


def _check_super_ticket_heads(f: NodeFactory, backbone: str, options: dict, s: float) -> None:
    """Refuse, before anything runs, a head fraction that would take a layer below min_heads_per_layer, when
    the backbone's head count is known without the network (tiny-bert, minilm, a local model directory)."""
    if backbone not in ("tiny-bert", "minilm") and not os.path.isfile(os.path.join(backbone, "config.json")):
        return  # a hub name: the stage checks it (same one-line message)
    if backbone not in f.shapes:
        from srnet_core.memory import backbone_shape

        f.shapes[backbone] = backbone_shape(backbone)
    shape = f.shapes[backbone]
    if shape is None:
        return
    from srnet_core.pruning.super_tickets import check_head_budget

    explicit = options.get("head_sparsity") is not None
    head_sparsity = options["head_sparsity"] if explicit else s
    try:
        check_head_budget(shape.layers, shape.heads, head_sparsity, options["min_heads_per_layer"],
                          field="super_tickets_options.head_sparsity" if explicit else "grid.sparsities")
    except ValueError as err:
        raise SpecError(f"{err} for backbone '{backbone}' (method super_tickets)") from None


@paradigm("b")
def _paradigm_b(f: NodeFactory, cell: Cell) -> None:
    """(b) prune, then re-train the subnetwork in isolation from the pre-trained weights."""
    po = f.spec.paradigm_options.b
    for source in po.mask_sources:
        if source == "imp_rw":
            imp = f.imp(cell, "poe", None, "b", {}, rewind="pretrained", by_source="imp_rw")
        for s in f.spec.grid.sparsities:
            if source == "imp_rw":
                _check_imp_level(f, s)
                src, mask_file = imp, level_file(s)
            else:
                src = f.mask_train(cell, cell.ft_std, "poe", s, "a", extra_cols={"finetune_loss": "std"})
                mask_file = "masks.safetensors"
            for l1 in po.losses:
                f.retrain(cell, src, mask_file, l1, s, "b", extra_cols={"mask_source": source}, by_source=source)


def _check_imp_level(f: NodeFactory, s: float) -> None:
    levels = f.imp_levels()
    if not any(abs(s - level) < 1e-6 for level in levels):
        raise SpecError(f"grid.sparsities: {s} is not an IMP level ({levels}); paradigm b with "
                        "mask_sources: [imp_rw] takes its masks from the IMP series")


@paradigm("c")
def _paradigm_c(f: NodeFactory, cell: Cell) -> None:
    """(c) mask training on the pre-trained model, no weight fine-tuning."""
    opts = f.spec.paradigm_options.c
    for loss in opts.losses or f.spec.grid.losses:
        for s in opts.sparsities or f.spec.grid.sparsities:
            f.mask_train(cell, None, loss, s, "c")


@paradigm("ood_upper_bound")
def _paradigm_ood(f: NodeFactory, cell: Cell) -> None:
    """OOD upper bound: OOD training data added to mask training, CE loss, still selected on ID dev."""
    spec = f.spec
    ood_options = {**spec.task_options.get(cell.task, {}), "add_ood_train": True}
    for base in spec.paradigm_options.ood_upper_bound.paradigms:
        for s in spec.grid.sparsities:
            if base == "c":
                f.mask_train(cell, None, "std", s, "ood_upper_bound", task_options=ood_options,
                             extra_cols={"base_paradigm": "c"}, by_source="c")
                continue
            node = f.mask_train(cell, cell.ft_std, "std", s, "ood_upper_bound", task_options=ood_options,
                                extra_cols={"base_paradigm": "a"}, by_source="a")
            if base == "b":
                f.retrain(cell, node, "masks.safetensors", "std", s, "ood_upper_bound",
                          extra_cols={"base_paradigm": "b"}, by_source="b")


@paradigm("timing")
def _paradigm_timing(f: NodeFactory, cell: Cell) -> None:
    """Timing: mask training from the std fine-tune's checkpoints at the given absolute steps (the reference's
    5,000 ... 20,000) and fractions, and from the end."""
    t = f.spec.paradigm_options.timing
    total = f.total_steps(cell.ft_std.stage_config)
    saved = cell.ft_std.stage_config.get("save_steps", [])
    for step in sorted(set(t.steps)):
        if step not in saved:
            raise SpecError(f"paradigm_options.timing.steps: {step} is not a saved checkpoint of the {cell.task} "
                            f"fine-tuning ({total} steps; saved every {FT_CHECKPOINT_EVERY} steps: {saved})")
        step, file = f.step_checkpoint(step)
        f.mask_train(cell, cell.ft_std, t.loss, t.sparsity, "timing", init_file=file,
                     extra_cols={"start_step": step, "finetune_loss": "std"})
    for frac in sorted(set(t.fractions)):
        if not any(abs(frac - g) < 1e-9 for g in FT_CHECKPOINT_FRACTIONS):
            raise SpecError(f"paradigm_options.timing.fractions: {frac} is not a saved fine-tuning checkpoint; use "
                            f"fractions among {list(FT_CHECKPOINT_FRACTIONS)}")
        step, file = f.checkpoint(frac, total)
        f.mask_train(cell, cell.ft_std, t.loss, t.sparsity, "timing", init_file=file,
                     extra_cols={"start_step": step, "finetune_loss": "std"})
    f.mask_train(cell, cell.ft_std, t.loss, t.sparsity, "timing",
                 extra_cols={"start_step": total, "finetune_loss": "std"})


@paradigm("gradual")
def _paradigm_gradual(f: NodeFactory, cell: Cell) -> None:
    """Gradual: cubic schedule s_initial -> s_final during mask training of the std fine-tuned model."""
    gr = f.spec.paradigm_options.gradual
    schedule = {"initial": gr.s_initial, "start": gr.start, "end": gr.end, "unit": gr.unit, "frequency": gr.frequency,
                "select": gr.select}
    # the epochs axis: a run at the section's own epochs is the same node as without the axis (same key)
    own = f.spec.train_config("mask_train", cell.task, cell.seed, gr.loss, "gradual", sparsity=gr.s_final)["epochs"]
    for epochs in gr.epochs or [own]:
        train = None if epochs == own else {"epochs": epochs}
        cols = {"finetune_loss": "std", "mask_epochs": float(epochs)}
        f.mask_train(cell, cell.ft_std, gr.loss, gr.s_final, "gradual", gradual=schedule, train=train,
                     extra_cols={**cols, "s_initial": gr.s_initial, "schedule": "gradual"})
        if gr.fixed_baseline:  # fixed s_final from the start, same loss and epochs (at the section's epochs it is
            # paradigm (a)'s node when (a) plans that loss: one node, named by (a))
            f.mask_train(cell, cell.ft_std, gr.loss, gr.s_final, "gradual", train=train,
                         extra_cols={**cols, "schedule": "fixed"})


@paradigm("transfer", per_sweep=True)
def _paradigm_transfer(f: NodeFactory) -> None:
    """Sparse*BERT: a mask found on a source task (mask training of its std fine-tuned model) is re-trained from
    the pre-trained weights on each target task, with the mask fixed."""
    spec = f.spec
    tr = spec.paradigm_options.transfer
    for source in tr.source_tasks:
        for backbone in spec.grid.backbones:
            for seed in spec.grid.seeds:
                ft = f.ft_std.get((source, backbone, seed)) or f.finetune(source, backbone, seed, "std")
                cell = Cell(source, backbone, seed, ft)
                for s in spec.grid.sparsities:
                    src = f.mask_train(cell, ft, "std", s, "a", extra_cols={"finetune_loss": "std"})
                    for target in tr.target_tasks:
                        if target != source:
                            f.retrain(cell, src, "masks.safetensors", "std", s, "transfer", retrain_task=target,
                                      extra_cols={"source_task": source})
