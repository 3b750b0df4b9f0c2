"""The calibration file's shared pieces (docs/cost.md): model shapes, the backbone map, fitting measured points
to a pass curve, and deriving the other sizes from BERT-base. Standard library only, so bench/gpu_suite.py can
use it on a bare GPU box.

A pass curve: seconds = max(floor_s, fixed_s + per_token_s x padded tokens).
"""
from __future__ import annotations

import statistics

# Model shapes: layers, all parameters, prunable encoder matrices + pooler (protocol.md section 1).
SIZES = {
    "bert-base": {"layers": 12, "hidden": 768, "total_params": 109_482_240, "prunable_params": 85_524_480},
    "bert-large": {"layers": 24, "hidden": 1024, "total_params": 335_141_888, "prunable_params": 303_039_488},
    "minilm": {"layers": 6, "hidden": 384, "total_params": 22_713_216, "prunable_params": 10_764_672},
    "tiny-bert": {"layers": 2, "hidden": 64, "total_params": 2_057_408, "prunable_params": 69_696},
}
BACKBONES = {"bert-base-uncased": "bert-base", "roberta-base": "bert-base", "bert-large-uncased": "bert-large",
             "minilm": "minilm", "tiny-bert": "tiny-bert"}
FORM = "seconds of a pass = max(floor_s, fixed_s + per_token_s * padded tokens of the step or eval batch)"


def fit_linear(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares seconds = fixed + per_token x tokens; a negative intercept or slope (noise) is refit
    through the origin."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    fixed = my - slope * mx
    if fixed < 0 or slope <= 0:
        slope, fixed = sum(p[0] * p[1] for p in points) / sum(p[0] ** 2 for p in points), 0.0
    return fixed, slope


def fit_roofline(points: list[tuple[float, float]], knee: float = 1.15) -> dict:
    """A GPU training step: the launch-bound floor (the time at the fewest tokens) and the per-token time of
    the points clearly above it (median of t / tokens); when every point sits on the floor, the largest
    point's t / tokens (an upper bound on the per-token time, so the curve never undershoots a point)."""
    pts = sorted(points)
    floor = pts[0][1]
    above = [t / n for n, t in pts if t > knee * floor]
    per_token = statistics.median(above) if above else pts[-1][1] / pts[-1][0]
    return {"floor_s": floor, "fixed_s": 0.0, "per_token_s": per_token, "points": [list(p) for p in pts]}


def scaled(curve: dict, size: str, base: str = "bert-base") -> dict:
    """BERT-base's curve scaled to another shape: the floor and per-batch time with the layer count (launch
    overhead is per layer), the per-token time with the prunable matrices (FLOPs)."""
    lay = SIZES[size]["layers"] / SIZES[base]["layers"]
    flops = SIZES[size]["prunable_params"] / SIZES[base]["prunable_params"]
    return {"floor_s": curve["floor_s"] * lay, "fixed_s": curve["fixed_s"] * lay,
            "per_token_s": curve["per_token_s"] * flops,
            "provenance": f"derived from {base} ({curve.get('provenance', 'measured').split(':')[0]}): floor and "
                          f"per-batch time x layers ({lay:g}), per-token time x prunable params ({flops:.3f})"}


def derive_sizes(base_curves: dict, base: str = "bert-base") -> dict:
    """{size: {precision: {mode: {kind: curve}}}}: the measured base size as is, the others scaled."""
    out = {}
    for size in SIZES:
        out[size] = {prec: {mode: {kind: (dict(c) if size == base else scaled(c, size, base))
                                   for kind, c in passes.items()} for mode, passes in modes.items()}
                     for prec, modes in base_curves.items()}
    return out
