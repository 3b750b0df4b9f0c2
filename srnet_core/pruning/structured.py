"""Structured pruning of attention heads and FFN neurons by gate importance (Michel et al. 2019), on
``srnet_core.train.TrainLoop``: a neuron-level relative of Super Tickets (Liang et al. 2021), NOT a faithful
Super Tickets. Liang et al. gate whole FFN sublayers (one gate per layer) and heads, compute importance over
the whole training set, prune, then rewind to the pre-trained weights and re-fine-tune the ticket, selected
on ID dev, on a grid of low sparsities (the phase transition). Here: individual FFN neurons and heads,
importance from ``importance_batches`` batches, training continues after each prune, and the result is the
last evaluation. Its stage and results are named ``structured``.

Importance: every head and FFN neuron gets a gate g = 1 multiplying its output (the head's slice of the
attention-output input, the neuron's column of the FFN-out input). I = sum over batches of |dL/dg|, then
normalised per layer (L2), so layers are comparable. Pruning: over ``rounds`` rounds the pruned fractions
grow linearly to the targets; each round removes the least important alive units (ranked over all layers,
keeping at least ``min_heads_per_layer`` / ``min_neurons_per_layer``), then trains the weights.

A pruned head equals zeroed rows of Q, K, V and zeroed columns of the attention output; a pruned neuron
equals a zeroed row of FFN-in and column of FFN-out. Those per-matrix weight masks are the artifact (same
format as every other method); ``shrink_model`` slices the matrices to build the smaller dense model.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..data import Encoded, epoch_order
from ..masks import MaskConfig, MaskSet, pack_masks, prune_count, sparsity_of, unpack_masks
from ..models import EncoderLayer, encoder_layers
from ..train import EvalRecord, TrainConfig, TrainLoop, autocast_context, forward_logits
from .common import OptionError, Report, encoder_names, trainable_params


@dataclass
class StructuredOptions:
    """What one structured-pruning run does.

    head_sparsity / neuron_sparsity: fractions of all attention heads / FFN neurons removed at the end.
    rounds: pruning rounds; after round r the pruned fractions are r/rounds of the targets.
    round_steps: training steps after each prune; None = TrainConfig.total_steps / rounds; 0 = no training
        (one evaluation per round).
    importance_batches: batches of TrainConfig.batch_size (a fixed shuffled draw per round) per estimate.
    normalize: L2-normalise the scores within each layer before ranking (Michel et al.).
    ranking: ``global`` = rank units of all layers together; ``layer`` = prune the same fraction per layer.
    min_heads_per_layer / min_neurons_per_layer: never prune a layer below this (a layer with no heads
        cannot be built as a smaller model).
    """

    head_sparsity: float | None = None
    neuron_sparsity: float | None = None
    rounds: int = 1
    round_steps: int | None = None
    importance_batches: int = 16
    normalize: bool = True
    ranking: Literal["global", "layer"] = "global"
    min_heads_per_layer: int = 1
    min_neurons_per_layer: int = 1

    def __post_init__(self):
        for name in ("head_sparsity", "neuron_sparsity"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise OptionError(name, f"must be in [0, 1), got {value}")
        for name in ("rounds", "importance_batches", "min_heads_per_layer", "min_neurons_per_layer"):
            if getattr(self, name) < 1:
                raise OptionError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.round_steps is not None and self.round_steps < 0:
            raise OptionError("round_steps", f"must be >= 0 or None, got {self.round_steps}")
        if self.ranking not in ("global", "layer"):
            raise OptionError("ranking", f"must be 'global' or 'layer', got {self.ranking!r}")

    def resolved(self, sparsity: float) -> "StructuredOptions":
        """The options with the fractions left None set to the grid sparsity (an explicit 0.0 means "prune
        none of them", not "use the grid sparsity")."""
        from dataclasses import replace

        return replace(self, head_sparsity=sparsity if self.head_sparsity is None else self.head_sparsity,
                       neuron_sparsity=sparsity if self.neuron_sparsity is None else self.neuron_sparsity)


# -- importance ---------------------------------------------------------------------------------------------
@contextmanager
def frozen_eval(model: nn.Module):
    """A gate pass's model state: eval mode (no dropout), no weight gradients; the training flag and every
    requires_grad flag are restored afterwards (shared by this module and Super Tickets)."""
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)


def head_gate_hook(gates: torch.Tensor, i: int, heads: int, size: int):
    """A forward pre-hook on layer i's attention-output matrix: multiplies head h's slice of its input by
    ``gates[i, h]`` (shared by this module's gates and Super Tickets')."""
    def hook(module, args):
        x = args[0]
        gated = x.view(*x.shape[:-1], heads, size) * gates[i].to(x.dtype).view(heads, 1)
        return (gated.view(x.shape),) + tuple(args[1:])
    return hook


class _Gates:
    """Forward pre-hooks that multiply each head's / neuron's input to the output matrices by a gate."""

    def __init__(self, model: nn.Module, layers: list[EncoderLayer], device):
        modules = dict(model.named_modules())
        self.heads = torch.ones(len(layers), layers[0].num_heads, device=device, requires_grad=True)
        sizes = {_out_features(modules[layer.names["ffn_in"]]) for layer in layers}
        if len(sizes) != 1:
            raise ValueError(f"FFN widths differ across layers ({sorted(sizes)}); gates need one width")
        self.neurons = torch.ones(len(layers), sizes.pop(), device=device, requires_grad=True)
        self.handles = []
        for i, layer in enumerate(layers):
            self.handles.append(modules[layer.names["attn_out"]].register_forward_pre_hook(
                head_gate_hook(self.heads, i, layer.num_heads, layer.head_size)))
            self.handles.append(modules[layer.names["ffn_out"]].register_forward_pre_hook(self._neuron_hook(i)))

    def _neuron_hook(self, i: int):
        def hook(module, args):
            return (args[0] * self.neurons[i].to(args[0].dtype),) + tuple(args[1:])
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _out_features(module: nn.Module) -> int:
    from ..models import _base_weight

    return _base_weight(module).shape[0]


def compute_importance(model: nn.Module, train_data: Encoded, loss_fn, *, batch_size: int, batches: int,
                       device, seed: int = 0, draw: int = 0, amp: str = "auto",
                       layers: list[EncoderLayer] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw importance (sum over batches of |dL/dgate|) of every head [layers, heads] and FFN neuron
    [layers, ffn width]. Dropout is off (eval mode); weights get no gradients. ``draw`` picks which fixed
    shuffled subset of the training data is used (one per round)."""
    layers = layers or encoder_layers(model)
    device = torch.device(device)
    with frozen_eval(model):
        gates = _Gates(model, layers, device)
        head_scores = torch.zeros_like(gates.heads, requires_grad=False)
        neuron_scores = torch.zeros_like(gates.neurons, requires_grad=False)
        try:
            order = epoch_order(len(train_data), seed, 1_000_000 + draw)
            for b in range(batches):
                index = order[b * batch_size: (b + 1) * batch_size]
                if len(index) == 0:
                    break
                batch = train_data.batch(index)
                with autocast_context(device, amp):
                    logits = forward_logits(model, batch, device)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = loss_fn(logits.float(), batch)
                g_heads, g_neurons = torch.autograd.grad(loss, [gates.heads, gates.neurons])
                head_scores += g_heads.abs()
                neuron_scores += g_neurons.abs()
        finally:
            gates.remove()
    return head_scores.detach().cpu(), neuron_scores.detach().cpu()


def normalize_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Each row (layer) divided by its L2 norm (rows of zeros stay zero)."""
    norms = scores.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, scores / norms.clamp_min(1e-30), scores)


def select_alive(scores: torch.Tensor, alive: torch.Tensor, sparsity: float, *, min_per_layer: int = 1,
                 ranking: str = "global") -> torch.Tensor:
    """New alive mask [layers, units]: prune the lowest-scoring alive units until floor(total * sparsity)
    units are pruned in total (``global``) or per layer (``layer``), never leaving a layer with fewer than
    ``min_per_layer``. Ties break by position (lower layer, lower index first)."""
    alive = alive.clone().bool()
    layers, units = alive.shape
    if ranking == "layer":
        for layer in range(layers):
            row = select_alive(scores[layer:layer + 1], alive[layer:layer + 1], sparsity,
                               min_per_layer=min_per_layer, ranking="global")
            alive[layer] = row[0]
        return alive
    need = prune_count(layers * units, sparsity) - int((~alive).sum())
    if need <= 0:
        return alive
    # stable order: by score, then by position
    order = np.argsort(scores.detach().cpu().double().flatten().numpy(), kind="stable")
    left = alive.sum(dim=1).tolist()
    for i in order.tolist():
        if need <= 0:
            break
        layer, unit = divmod(i, units)
        if alive[layer, unit] and left[layer] > min_per_layer:
            alive[layer, unit] = False
            left[layer] -= 1
            need -= 1
    return alive


# -- masks and smaller models ---------------------------------------------------------------------------------
def structured_weight_masks(model: nn.Module, head_alive: torch.Tensor, neuron_alive: torch.Tensor,
                            layers: list[EncoderLayer] | None = None) -> dict[str, torch.Tensor]:
    """Per-matrix bool weight masks equivalent to the head / neuron masks (rows of Q/K/V and FFN-in,
    columns of the attention output and FFN-out)."""
    from ..models import _base_weight

    layers = layers or encoder_layers(model)
    modules = dict(model.named_modules())
    out = {}
    for i, layer in enumerate(layers):
        features = head_alive[i].bool().repeat_interleave(layer.head_size).cpu()
        neurons = neuron_alive[i].bool().cpu()
        for role in ("query", "key", "value"):
            w = _base_weight(modules[layer.names[role]])
            out[layer.names[role]] = features.view(-1, 1).expand(tuple(w.shape)).clone()
        w = _base_weight(modules[layer.names["attn_out"]])
        out[layer.names["attn_out"]] = features.view(1, -1).expand(tuple(w.shape)).clone()
        w = _base_weight(modules[layer.names["ffn_in"]])
        out[layer.names["ffn_in"]] = neurons.view(-1, 1).expand(tuple(w.shape)).clone()
        w = _base_weight(modules[layer.names["ffn_out"]])
        out[layer.names["ffn_out"]] = neurons.view(1, -1).expand(tuple(w.shape)).clone()
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@torch.no_grad()
def shrink_model(model: nn.Module, head_alive: torch.Tensor, neuron_alive: torch.Tensor) -> nn.Module:
    """Physically remove pruned heads and neurons from a plain (unmasked) model, in place; returns it.

    The result computes what the masked model computes, with smaller matrices. Layers may end up with
    different head counts, which HF configs cannot describe: keep the masks as the saved artifact and
    rebuild the small model with this function after loading the dense one.
    """
    from transformers.pytorch_utils import prune_linear_layer

    from torch.nn.utils import parametrize

    layers = encoder_layers(model)
    modules = dict(model.named_modules())
    for layer in layers:
        for name in layer.names.values():
            if parametrize.is_parametrized(modules[name], "weight"):
                raise ValueError(f"'{name}' carries a mask parametrization: bake the masks first (MaskSet.bake)")
    for i, layer in enumerate(layers):
        heads = head_alive[i].bool()
        if not heads.any() or not neuron_alive[i].bool().any():
            raise ValueError(f"layer {layer.index} would keep no heads or no neurons; it cannot be built")
        features = torch.nonzero(heads.repeat_interleave(layer.head_size)).squeeze(1)
        neurons = torch.nonzero(neuron_alive[i].bool()).squeeze(1)
        for role, index, dim in (("query", features, 0), ("key", features, 0), ("value", features, 0),
                                 ("attn_out", features, 1), ("ffn_in", neurons, 0), ("ffn_out", neurons, 1)):
            name = layer.names[role]
            _set_module(model, name, prune_linear_layer(modules[name], index, dim=dim))
        attention = model.get_submodule(layer.names["query"].rpartition(".")[0])
        kept = int(heads.sum())
        for attr in ("num_attention_heads", "n_heads"):
            if hasattr(attention, attr):
                setattr(attention, attr, kept)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = kept * layer.head_size
    return model


# -- the iterative run ----------------------------------------------------------------------------------------
@dataclass
class StructuredRound:
    """One round: the head / neuron masks after its prune, their weight masks, and its training.

    head_mask [layers, heads] and neuron_mask [layers, ffn width]: True = kept. head_importance and
    neuron_importance: the normalised scores the prune used. sparsity: ``sparsity_of(weight_masks)``.
    """

    round: int
    head_sparsity: float
    neuron_sparsity: float
    head_mask: torch.Tensor
    neuron_mask: torch.Tensor
    head_importance: torch.Tensor
    neuron_importance: torch.Tensor
    weight_masks: dict[str, torch.Tensor]
    sparsity: dict
    encoder_sparsity: float
    start_step: int
    history: list[EvalRecord]
    final: EvalRecord
    train_seconds: float

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in ("round", "head_sparsity", "neuron_sparsity", "head_mask",
                                               "neuron_mask", "head_importance", "neuron_importance", "sparsity",
                                               "encoder_sparsity", "start_step", "train_seconds")}
        state.update(weight_masks=pack_masks(self.weight_masks), history=[asdict(r) for r in self.history],
                     final=asdict(self.final))
        return state

    @classmethod
    def from_state(cls, state: dict) -> "StructuredRound":
        state = dict(state)
        state["weight_masks"] = unpack_masks(state["weight_masks"])
        state["history"] = [EvalRecord(**r) for r in state["history"]]
        state["final"] = EvalRecord(**state["final"])
        return cls(**state)


def structured_prune(model: nn.Module, names: list[str], train_data: Encoded, loss_fn, config: TrainConfig, *,
                     evaluate, selection, device, options: StructuredOptions | None = None,
                     report: Report | None = None, resume_state: dict | None = None) -> list[StructuredRound]:
    """Iterative structured pruning; returns one ``StructuredRound`` per round (the last one is the target).

    The masked matrices are the six encoder roles of every layer plus any other ``names`` (e.g. the pooler,
    kept whole), so the weight masks line up with the other methods' artifacts. Every parameter that
    requires grad is trained between prunes. The model is left after the last round, masks attached.
    """
    options = options or StructuredOptions()
    if options.head_sparsity is None or options.neuron_sparsity is None:
        raise ValueError("structured_prune needs the head and neuron fractions: use options.resolved(sparsity)")
    layers = encoder_layers(model)
    role_names = {n for layer in layers for n in layer.names.values()}
    wanted = set(names) | role_names
    all_names = [n for n, _ in model.named_modules() if n in wanted]
    mask_set = MaskSet(model, all_names, MaskConfig(sparsity=0.0, init="none"), train_scores=False)
    params = trainable_params(model)
    encoder = encoder_names(model, all_names)
    n_train = len(train_data)
    round_steps = options.round_steps if options.round_steps is not None else max(
        1, config.total_steps(n_train) // options.rounds)
    round_config = replace(config, max_steps=max(1, round_steps), select_from=0.0)
    head_alive = torch.ones(len(layers), layers[0].num_heads, dtype=torch.bool)
    neuron_alive = None
    done: list[StructuredRound] = []
    start_round, loop_state = 0, None
    if resume_state is not None:
        done = [StructuredRound.from_state(s) for s in resume_state["done"]]
        start_round, loop_state = int(resume_state["round"]), resume_state["loop"]
        head_alive, neuron_alive = resume_state["head_alive"].bool(), resume_state["neuron_alive"].bool()
        mask_set.load_state_dict(resume_state["masks"])
        head_scores, neuron_scores = resume_state["head_importance"], resume_state["neuron_importance"]

    for r in range(start_round, options.rounds):
        h_target = options.head_sparsity * (r + 1) / options.rounds
        n_target = options.neuron_sparsity * (r + 1) / options.rounds
        if loop_state is None:
            head_scores, neuron_scores = compute_importance(
                model, train_data, loss_fn, batch_size=config.batch_size, batches=options.importance_batches,
                device=device, seed=config.seed, draw=r, amp=config.amp, layers=layers)
            if options.normalize:
                head_scores, neuron_scores = normalize_per_layer(head_scores), normalize_per_layer(neuron_scores)
            if neuron_alive is None:
                neuron_alive = torch.ones_like(neuron_scores, dtype=torch.bool)
            head_alive = select_alive(head_scores, head_alive, h_target,
                                      min_per_layer=options.min_heads_per_layer, ranking=options.ranking)
            neuron_alive = select_alive(neuron_scores, neuron_alive, n_target,
                                        min_per_layer=options.min_neurons_per_layer, ranking=options.ranking)
            weight_masks = structured_weight_masks(model, head_alive, neuron_alive, layers)
            full = {n: torch.ones_like(m) for n, m in mask_set.masks().items()}
            mask_set.load_masks({**full, **weight_masks})

        if options.round_steps == 0:
            record = EvalRecord(0, 0.0, evaluate(), mask_set.sparsity_report(encoder)["total"])
            history, seconds = [record], 0.0
        else:
            loop = TrainLoop(model, params, train_data, loss_fn, round_config, evaluate=evaluate,
                             selection=selection, snapshot=dict, device=device,
                             current_sparsity=lambda: mask_set.sparsity_report(encoder)["total"],
                             batch_offset=r * round_steps)

            def state_fn(loop=loop, r=r) -> dict:
                return {"round": r, "loop": loop.state(), "masks": mask_set.state_dict(),
                        "head_alive": head_alive, "neuron_alive": neuron_alive,
                        "head_importance": head_scores, "neuron_importance": neuron_scores,
                        "done": [d.to_state() for d in done]}

            if loop_state is not None:
                loop.load_state(loop_state)
                loop_state = None
            loop.train(on_eval=(lambda record, lp, fn=state_fn: report(record, fn)) if report else None)
            history, seconds = list(loop.history), loop.train_seconds
        masks = mask_set.masks()
        report_all = sparsity_of(masks)
        done.append(StructuredRound(
            round=r, head_sparsity=1.0 - float(head_alive.float().mean()),
            neuron_sparsity=1.0 - float(neuron_alive.float().mean()), head_mask=head_alive.clone(),
            neuron_mask=neuron_alive.clone(), head_importance=head_scores, neuron_importance=neuron_scores,
            weight_masks=masks, sparsity=report_all,
            encoder_sparsity=sparsity_of({n: masks[n] for n in encoder})["total"] if encoder else math.nan,
            start_step=r * round_steps, history=history, final=history[-1], train_seconds=seconds))
    return done
