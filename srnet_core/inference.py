"""Inference speed of what pruning produces, measured, against the dense model on the same device.

- structured tickets (heads and FFN neurons removed, srnet_core.pruning.structured.shrink_model): smaller
  matrices, so fewer FLOPs and a real speed-up that grows with the pruned fraction;
- unstructured masks (mask training, IMP, GMP) baked into the weights: the matrices keep their shape and
  dense kernels multiply the zeros too, so there is NO speed-up (the ratio is 1.0 up to noise; measured here
  so that nobody has to take it on faith);
- 2:4 masks (``MaskConfig(scope="2:4")``): on a GPU with semi-structured sparse kernels
  (``torch.sparse.to_sparse_semi_structured``, sm80+, fp16/bf16) each masked Linear is run sparse and timed
  against its dense twin; the ratio is reported whatever it is (on an H200 at BERT-base shapes it was
  0.06x-0.25x, i.e. slower, issue 12). On CPU there is no such kernel: reported as unavailable.

Only torch and transformers are imported (bench/gpu_suite.py runs this on bare GPU machines).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .masks import MaskConfig, MaskSet
from .models import prunable_linear_names


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_seconds(model: nn.Module, batch: int, seq: int, device, amp: bool = True, iters: int = 10,
                    warmup: int = 3, clock=time.perf_counter) -> float:
    """Median seconds of one forward pass over ``batch`` x ``seq`` random tokens (eval mode)."""
    device = torch.device(device)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    use_amp = amp and device.type == "cuda"
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = clock()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            model(input_ids=ids, attention_mask=mask)
        _sync(device)
        if i >= warmup:
            times.append(clock() - t0)
    return statistics.median(times)


def _masked_copy(model: nn.Module, scope: str, sparsity: float) -> nn.Module:
    """A copy with magnitude masks at ``sparsity`` baked in (same shapes, zeros in the weights)."""
    out = copy.deepcopy(model)
    names = prunable_linear_names(out, include_pooler=True, include_classifier=False)
    mask_set = MaskSet(out, names, MaskConfig(sparsity=sparsity, init="magnitude", scope=scope),
                       train_scores=False)
    mask_set.bake()
    return out


def _structured_copy(model: nn.Module, fraction: float) -> nn.Module:
    """A copy with ``fraction`` of every layer's heads and FFN neurons removed (the last ones: speed depends
    on the shapes only)."""
    from .pruning.structured import encoder_layers, shrink_model

    out = copy.deepcopy(model)
    layers = encoder_layers(out)
    heads = out.config.num_attention_heads
    neurons = out.config.intermediate_size
    keep_heads = max(1, round(heads * (1 - fraction)))
    keep_neurons = max(1, round(neurons * (1 - fraction)))
    head_alive = torch.zeros(len(layers), heads, dtype=torch.bool)
    head_alive[:, :keep_heads] = True
    neuron_alive = torch.zeros(len(layers), neurons, dtype=torch.bool)
    neuron_alive[:, :keep_neurons] = True
    return shrink_model(out, head_alive, neuron_alive)


@torch.no_grad()
def semi_structured_ratio(model: nn.Module, device, batch: int = 32, seq: int = 128, iters: int = 20) -> dict:
    """Per masked Linear shape: dense time / 2:4-sparse time of ``x @ W.T`` (> 1 = the sparse kernel is faster).

    Needs CUDA with semi-structured sparse support; otherwise {"available": False, "reason": ...}.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return {"available": False, "reason": "no 2:4 sparse kernels on CPU (torch semi-structured sparsity is CUDA-only)"}
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as err:
        return {"available": False, "reason": f"torch.sparse.to_sparse_semi_structured missing: {err}"}
    shapes = {}
    modules = dict(model.named_modules())
    for name in prunable_linear_names(model, include_pooler=False, include_classifier=False):
        shapes.setdefault(tuple(modules[name].weight.shape), name)
    rows = []
    for shape, name in shapes.items():
        weight = modules[name].weight.detach().to(device=device, dtype=torch.bfloat16)
        groups = weight.abs().reshape(-1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
        pruned = (weight.reshape(-1, 4) * keep).reshape(shape)
        x = torch.randn(batch * seq, shape[1], device=device, dtype=torch.bfloat16)
        try:
            sparse = to_sparse_semi_structured(pruned)
            times = {}
            for label, w in (("dense", pruned), ("sparse", sparse)):
                for _ in range(3):
                    torch.nn.functional.linear(x, w)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(iters):
                    torch.nn.functional.linear(x, w)
                torch.cuda.synchronize()
                times[label] = (time.perf_counter() - t0) / iters
        except Exception as err:  # noqa: BLE001 - e.g. an unsupported GPU: say so
            return {"available": False, "reason": f"{type(err).__name__}: {err}"}
        rows.append({"shape": list(shape), "dense_s": times["dense"], "sparse_s": times["sparse"],
                     "speedup": times["dense"] / times["sparse"]})
    return {"available": True, "batch_tokens": batch * seq, "per_shape": rows,
            "speedup_min": min(r["speedup"] for r in rows), "speedup_max": max(r["speedup"] for r in rows)}


def measure(model: nn.Module, device, batch_sizes=(1, 32), seq: int = 128, structured=(0.3, 0.5, 0.7),
            unstructured=(0.5, 0.9), iters: int = 10, clock=time.perf_counter) -> dict:
    """Latency and throughput of the dense model and of each pruned variant, and their speed-up vs dense.

    Returns {"device", "rows": [{variant, kind, sparsity, batch, seq, seconds, tokens_per_s, speedup}],
    "semi_structured_2_4": semi_structured_ratio(...)}.
    """
    device = torch.device(device)
    model = model.to(device)
    variants = [("dense", "dense", 0.0, model)]
    for s in unstructured:
        variants.append((f"unstructured {s:g} (baked)", "unstructured", s, _masked_copy(model, "local", s).to(device)))
    variants.append(("2:4 (baked, dense kernels)", "2:4", 0.5, _masked_copy(model, "2:4", 0.5).to(device)))
    for f in structured:
        variants.append((f"structured {f:g} (shrunk)", "structured", f, _structured_copy(model, f).to(device)))
    rows = []
    for batch in batch_sizes:
        dense_s = None
        for label, kind, sparsity, m in variants:
            seconds = forward_seconds(m, batch, seq, device, iters=iters, clock=clock)
            dense_s = seconds if kind == "dense" else dense_s
            rows.append({"variant": label, "kind": kind, "sparsity": sparsity, "batch": batch, "seq": seq,
                         "seconds": seconds, "tokens_per_s": batch * seq / seconds, "speedup": dense_s / seconds})
    return {"device": str(device), "rows": rows, "semi_structured_2_4": semi_structured_ratio(model, device)}
