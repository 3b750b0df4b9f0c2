"""Super Tickets (Liang et al. 2021, arXiv 2105.12002): one-shot structured pruning of attention heads and
whole FFN sublayers of a fine-tuned model by gate importance (Michel et al. 2019). The ticket's masks are
then re-fine-tuned from the pre-trained weights by the ``retrain`` stage (rewinding), selected on ID dev.

Importance: every head h gets a gate xi_h = 1 multiplying its slice of the attention-output input (so the head's
whole contribution), and every layer's FFN sublayer one gate xi_f = 1 multiplying the FFN-out result (after
its bias, before dropout, the residual and LayerNorm). With the model in eval mode (no dropout) and no weight
update, one pass over the WHOLE training set in a fixed order (examples 0..n-1, batches of the fine-tuning
batch size) gives I = sum over batches of |dL_batch/dxi|, L_batch the task loss (mean over the batch), as in
Michel et al. and the reference implementation (which divides by the batch count: a constant, same ranking).
Normalisation (``normalize``): head scores are divided by their layer's L2 norm (Michel et al.); the FFN
scores, one per layer, by their L2 norm over layers (what the reference code does), which makes the FFN
ranking scale-free.

Pruning, one shot: the ``floor(heads * head_sparsity)`` lowest heads ranked over all layers, keeping at least
``min_heads_per_layer`` per layer, and the ``floor(layers * ffn_sparsity)`` lowest FFN sublayers ranked over
all layers. A pruned head = zeroed rows of Q, K, V and columns of the attention output; a pruned FFN sublayer
= all-zero FFN-in and FFN-out masks. Masks never cover biases in this project, so a pruned FFN sublayer still
adds its FFN-out bias (a constant vector per layer, trained by ``retrain``) where the reference's gate would
add nothing; a pruned head adds nothing (its attention-output columns are zero).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import Encoded
from ..masks import prune_count
from ..models import EncoderLayer, _base_weight, encoder_layers
from ..train import autocast_context, forward_logits
from .common import OptionError
from .structured import frozen_eval, head_gate_hook, normalize_per_layer, select_alive, structured_weight_masks


@dataclass
class SuperTicketOptions:
    """What one Super Tickets prune does (the spec's ``super_tickets_options``; fields documented in
    docs/spec.md). head_sparsity / ffn_sparsity: fractions of all heads / FFN sublayers removed.
    min_heads_per_layer: never prune a layer below this many heads. normalize: see the module docstring."""

    head_sparsity: float | None = None  # None: the grid sparsity (``resolved``)
    ffn_sparsity: float | None = None
    min_heads_per_layer: int = 1
    normalize: bool = True

    def resolved(self, sparsity: float) -> "SuperTicketOptions":
        """The fractions left None set to the grid sparsity (an explicit 0.0 means "prune none of them")."""
        from dataclasses import replace

        return replace(self, head_sparsity=sparsity if self.head_sparsity is None else self.head_sparsity,
                       ffn_sparsity=sparsity if self.ffn_sparsity is None else self.ffn_sparsity)

    def __post_init__(self):
        for name in ("head_sparsity", "ffn_sparsity"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise OptionError(name, f"must be in [0, 1), got {value!r}")
        if not (isinstance(self.min_heads_per_layer, int) and self.min_heads_per_layer >= 1):
            raise OptionError("min_heads_per_layer", f"must be an integer >= 1, got {self.min_heads_per_layer!r}")


def check_head_budget(layers: int, heads: int, head_sparsity: float, min_heads_per_layer: int = 1,
                      field: str = "super_tickets_options.head_sparsity") -> None:
    """Raise a one-line ValueError naming ``field`` when pruning ``head_sparsity`` of ``layers x heads`` would
    need to take a layer below ``min_heads_per_layer`` heads (also used by the planner, before anything runs)."""
    total = layers * heads
    need = prune_count(total, head_sparsity)
    room = total - layers * min(min_heads_per_layer, heads)
    if need > room:
        raise ValueError(f"field '{field}': {head_sparsity:g} of {total} heads ({layers} layers x {heads}) is {need} "
                         f"heads, but keeping {min_heads_per_layer} per layer allows at most {room} "
                         f"(head_sparsity <= {room / total:.4f})")


class SublayerGates:
    """Gates on a model: ``heads`` [layers, heads] multiply each head's slice of the attention-output input,
    ``ffn`` [layers] multiplies each layer's FFN-out result. Hooks only; the model is not modified."""

    def __init__(self, model: nn.Module, layers: list[EncoderLayer], device):
        modules = dict(model.named_modules())
        counts = {layer.num_heads for layer in layers}
        if len(counts) != 1:
            raise ValueError(f"head counts differ across layers ({sorted(counts)}); gates need one count")
        self.heads = torch.ones(len(layers), counts.pop(), device=device, requires_grad=True)
        self.ffn = torch.ones(len(layers), device=device, requires_grad=True)
        self.handles = []
        for i, layer in enumerate(layers):
            self.handles.append(modules[layer.names["attn_out"]].register_forward_pre_hook(
                head_gate_hook(self.heads, i, layer.num_heads, layer.head_size)))
            self.handles.append(modules[layer.names["ffn_out"]].register_forward_hook(self._ffn_hook(i)))

    def _ffn_hook(self, i: int):
        def hook(module, args, output):
            return output * self.ffn[i].to(output.dtype)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class Importance:
    """Raw importance (sum over batches of |dL/dgate|): ``heads`` [layers, heads], ``ffn`` [layers];
    ``batches`` / ``examples``: how much training data the pass saw (all of it)."""

    heads: torch.Tensor
    ffn: torch.Tensor
    batches: int
    examples: int


def fixed_batches(n: int, batch_size: int):
    """Index batches 0..n-1 in order, ``batch_size`` each (the last one shorter): ceil(n / batch_size) batches."""
    for start in range(0, n, batch_size):
        yield range(start, min(n, start + batch_size))


def gate_importance(model: nn.Module, train_data: Encoded, loss_fn, *, batch_size: int, device, amp: str = "auto",
                    layers: list[EncoderLayer] | None = None) -> Importance:
    """One pass over the whole training set (fixed order, eval mode, no weight gradients): the raw head and
    FFN-sublayer importance. The model's training flag and requires_grad flags are restored afterwards."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = layers or encoder_layers(model)
    device = torch.device(device)
    with frozen_eval(model):
        gates = SublayerGates(model, layers, device)
        heads = torch.zeros(gates.heads.shape, dtype=torch.float64)
        ffn = torch.zeros(gates.ffn.shape, dtype=torch.float64)
        batches = examples = 0
        try:
            for index in fixed_batches(len(train_data), batch_size):
                batch = train_data.batch(index)
                with autocast_context(device, amp):
                    logits = forward_logits(model, batch, device)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = loss_fn(logits.float(), batch)
                g_heads, g_ffn = torch.autograd.grad(loss, [gates.heads, gates.ffn])
                heads += g_heads.detach().abs().double().cpu()
                ffn += g_ffn.detach().abs().double().cpu()
                batches += 1
                examples += len(index)
        finally:
            gates.remove()
    return Importance(heads.float(), ffn.float(), batches, examples)


def normalize_ffn(scores: torch.Tensor) -> torch.Tensor:
    """FFN-sublayer scores [layers] divided by their L2 norm over layers (all zeros stay zeros)."""
    return normalize_per_layer(scores.view(1, -1)).view(-1)


@dataclass
class SuperTicket:
    """The ticket: ``head_mask`` [layers, heads] and ``ffn_mask`` [layers] (True = kept), the normalised scores
    they were ranked by, the raw importance, and the per-matrix ``weight_masks`` of the six encoder roles."""

    head_mask: torch.Tensor
    ffn_mask: torch.Tensor
    head_scores: torch.Tensor
    ffn_scores: torch.Tensor
    importance: Importance
    weight_masks: dict[str, torch.Tensor]

    @property
    def head_sparsity(self) -> float:
        return 1.0 - float(self.head_mask.float().mean())

    @property
    def ffn_sparsity(self) -> float:
        return 1.0 - float(self.ffn_mask.float().mean())


def select_ticket(head_scores: torch.Tensor, ffn_scores: torch.Tensor, options: SuperTicketOptions
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(head_mask, ffn_mask): the lowest-scoring heads (global ranking, per-layer floor) and FFN sublayers
    (global ranking) pruned. Ties break by position (lower layer, lower index first)."""
    layers, heads = head_scores.shape
    check_head_budget(layers, heads, options.head_sparsity, options.min_heads_per_layer)
    head_mask = select_alive(head_scores, torch.ones(layers, heads, dtype=torch.bool), options.head_sparsity,
                             min_per_layer=options.min_heads_per_layer, ranking="global")
    ffn_mask = select_alive(ffn_scores.view(1, -1), torch.ones(1, layers, dtype=torch.bool), options.ffn_sparsity,
                            min_per_layer=0, ranking="global").view(-1)
    return head_mask, ffn_mask


def super_ticket(model: nn.Module, train_data: Encoded, loss_fn, *, batch_size: int, device, amp: str = "auto",
                 options: SuperTicketOptions | None = None) -> SuperTicket:
    """Importance over the whole training set, then the one-shot prune; the model is left unchanged."""
    options = options or SuperTicketOptions()
    if options.head_sparsity is None or options.ffn_sparsity is None:
        raise ValueError("super_ticket needs the head and FFN fractions: use options.resolved(sparsity)")
    layers = encoder_layers(model)
    importance = gate_importance(model, train_data, loss_fn, batch_size=batch_size, device=device, amp=amp,
                                 layers=layers)
    head_scores, ffn_scores = importance.heads, importance.ffn
    if options.normalize:
        head_scores, ffn_scores = normalize_per_layer(head_scores), normalize_ffn(ffn_scores)
    head_mask, ffn_mask = select_ticket(head_scores, ffn_scores, options)
    return SuperTicket(head_mask, ffn_mask, head_scores, ffn_scores, importance,
                       ticket_weight_masks(model, head_mask, ffn_mask, layers))


def ticket_weight_masks(model: nn.Module, head_mask: torch.Tensor, ffn_mask: torch.Tensor,
                        layers: list[EncoderLayer] | None = None) -> dict[str, torch.Tensor]:
    """Per-matrix bool masks: Q/K/V rows and attention-output columns of pruned heads zero; FFN-in and FFN-out
    of a pruned FFN sublayer all zero."""
    layers = layers or encoder_layers(model)
    modules = dict(model.named_modules())
    width = {_base_weight(modules[layer.names["ffn_in"]]).shape[0] for layer in layers}
    if len(width) != 1:
        raise ValueError(f"FFN widths differ across layers ({sorted(width)})")
    neuron_alive = ffn_mask.bool().view(-1, 1).expand(len(layers), width.pop())
    return structured_weight_masks(model, head_mask, neuron_alive, layers)


__all__ = ["Importance", "SublayerGates", "SuperTicket", "SuperTicketOptions", "check_head_budget",
           "fixed_batches", "gate_importance", "normalize_ffn", "select_ticket", "super_ticket",
           "ticket_weight_masks"]
