"""GPU memory of one stage run, estimated from the model's shape before anything is allocated.

What a training step holds (bytes; P = all parameters, M = masked parameters, T = batch x seq tokens):
  weights          4 P              fp32 master weights (every stage)
  finetune-like    4 P grads + 8 P AdamW moments + 2 P bf16 weight copies under autocast
                   (finetune, retrain, imp, gmp, structured: all train the weights)
  importance       2 P bf16 weight copies under autocast, no weight gradients or optimizer state, but a
                   backward pass through the training batch (super_tickets: gate gradients only)
  mask_train       4 M scores + 4 M mask buffers + 4 M score grads + 8 M AdamW moments
                   + 6 M for W*m (fp32) and its bf16 copy per forward + the projection's workspace
                   (the largest same-shape group stacked, its keep/tie/rank buffers and topk values/indices)
  activations      per encoder layer T*h*(34 + 5*a*s/h) bytes in 16-bit (Korthikanti et al. 2022, with
                   dropout masks), x2 in fp32 (amp off); embeddings and classifier are small next to it
  runtime          the CUDA context, cuBLAS workspace and the caching allocator's slack (a fixed reserve
                   plus 10%)
The estimate is deliberately on the high side: it decides whether N trials may share a GPU, and a
refusal costs a config change while an out-of-memory error costs a sweep. bench/gpu_suite.py measures
the real peaks next to it.

A stage's memory class (weights, mask, importance, inference, cpu) is declared with the stage kind
(srnet_core.stages.registry). Nothing here needs Ray or pydantic: the GPU suite runs on machines without them.
"""
from __future__ import annotations

from dataclasses import dataclass

CUDA_CONTEXT_BYTES = 600 * 2**20  # context + cuBLAS/cuDNN workspaces per process, measured ~0.5 GiB on H100/H200
ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation


@dataclass
class ModelShape:
    """What the estimate needs of a model (an HF BERT-like config)."""

    params: int
    masked_params: int
    largest_masked_group: int  # numel of the biggest set of same-shape masked matrices (projection workspace)
    hidden: int
    layers: int
    heads: int

    @classmethod
    def bert(cls, hidden: int = 768, layers: int = 12, heads: int = 12, intermediate: int = 3072,
             vocab: int = 30522, positions: int = 512, num_labels: int = 3) -> "ModelShape":
        """The shape of a BERT-family classifier from its config numbers (no model is built)."""
        attn = 4 * (hidden * hidden + hidden)
        ffn = 2 * hidden * intermediate + intermediate + hidden
        norms = 2 * 2 * hidden
        embeddings = (vocab + positions + 2) * hidden + 2 * hidden
        head = hidden * hidden + hidden + hidden * num_labels + num_labels
        params = embeddings + layers * (attn + ffn + norms) + head
        masked = layers * (4 * hidden * hidden + 2 * hidden * intermediate) + hidden * hidden + hidden * num_labels
        largest = max(layers * 4 * hidden * hidden + hidden * hidden, layers * hidden * intermediate)
        return cls(params, masked, largest, hidden, layers, heads)

    @classmethod
    def of(cls, model, masked_names: list[str] | None = None) -> "ModelShape":
        """The shape of a built model; ``masked_names``: its masked Linear modules (default: none)."""
        cfg = model.config
        params = sum(p.numel() for p in model.parameters())
        modules = dict(model.named_modules())
        groups: dict[tuple, int] = {}
        for name in masked_names or []:
            weight = modules[name].weight
            groups[tuple(weight.shape)] = groups.get(tuple(weight.shape), 0) + weight.numel()
        return cls(params, sum(groups.values()), max(groups.values(), default=0), int(cfg.hidden_size),
                   int(cfg.num_hidden_layers), int(cfg.num_attention_heads))


def activation_bytes(shape: ModelShape, batch: int, seq: int, amp: bool = True) -> int:
    """Activations a training step keeps for backward, all layers (16-bit under autocast, else fp32)."""
    per_layer = batch * seq * shape.hidden * (34 + 5 * shape.heads * seq / shape.hidden)
    return int(per_layer * shape.layers * (1 if amp else 2))


def projection_workspace_bytes(shape: ModelShape, scope: str = "local") -> int:
    """Peak extra bytes of one ``MaskSet.project`` on the device (srnet_core.masks._keep_top_topk)."""
    n = shape.masked_params if scope == "global" else shape.largest_masked_group
    # stacked copy (4) + keep (1) + tied (1) + int32 rank (4) + topk values+indices on the smaller side (<= n/2 x 12)
    return int(n * (4 + 1 + 1 + 4 + 6))


@dataclass
class StageMemory:
    stage: str
    weights: int
    training_state: int
    activations: int
    workspace: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.activations + self.workspace + self.runtime


def estimate_stage_memory(stage: str, shape: ModelShape, batch: int, seq: int, amp: bool = True,
                          scope: str = "local", eval_batch: int = 256) -> StageMemory:
    """Peak GPU bytes of one run of ``stage`` (training step or evaluation, whichever is larger)."""
    from .stages import get_kind

    memory = get_kind(stage).memory
    weights = 4 * shape.params
    workspace = 0
    if memory == "mask":
        m = shape.masked_params
        state = 4 * m + 4 * m + 4 * m + 8 * m + 6 * m
        workspace = projection_workspace_bytes(shape, scope)
    elif memory == "weights":
        p = shape.params
        state = 4 * p + 8 * p + (2 * p if amp else 0)
    else:  # importance (gate gradients only), inference, cpu: no optimizer state
        state = 2 * shape.params if amp else 0
    train_acts = activation_bytes(shape, batch, seq, amp) if memory in ("mask", "weights", "importance") else 0
    # inference keeps one layer's activations at a time
    eval_acts = activation_bytes(shape, eval_batch, seq, amp) // max(1, shape.layers)
    activations = max(train_acts, eval_acts)
    subtotal = weights + state + activations + workspace
    return StageMemory(stage, weights, state, activations, workspace,
                       CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * subtotal))


def eval_batch_rows(model, seq: int, device, fraction: float = 0.25, cap: int = 4096) -> int:
    """Rows per evaluation batch on a GPU: the largest power of two whose inference activations fit in
    ``fraction`` of the free memory (at least 32, at most ``cap``)."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    shape = ModelShape.of(model)
    per_row = max(1, activation_bytes(shape, 1, seq) // max(1, shape.layers))
    rows = 32
    while rows * 2 <= cap and rows * 2 * per_row <= fraction * free:
        rows *= 2
    return rows


def backbone_shape(backbone: str, num_labels: int = 3) -> ModelShape | None:
    """The backbone's shape from its config alone (no weights are read); None when it cannot be found."""
    from transformers import AutoConfig

    from .models import TINY_BERT_CONFIG, resolve_backbone_path

    if backbone == "tiny-bert":
        c = TINY_BERT_CONFIG
        return ModelShape.bert(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                               c["intermediate_size"], positions=c["max_position_embeddings"], num_labels=num_labels)
    try:
        cfg = AutoConfig.from_pretrained(resolve_backbone_path(backbone))
    except Exception:  # noqa: BLE001 - not reachable from here (hub name offline): no estimate, no refusal
        return None
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim")
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads")
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", 4 * hidden)
    return ModelShape.bert(hidden, layers, heads, inter, vocab=cfg.vocab_size,
                           positions=getattr(cfg, "max_position_embeddings", 512), num_labels=num_labels)
