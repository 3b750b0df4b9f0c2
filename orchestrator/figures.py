"""Figures from the results Parquet, shaped like the paper's Figures 2-8.

Metric vs sparsity: one panel per eval dataset (a row of panels per task, ID first, then OOD), one line per
method (stage) x loss, the mean over seeds with a shaded +/- std band, and the dense fine-tuned model
(paradigm ``full``) as a dashed line with its own band. Plus a heatmap of mask IoU for the mask analysis.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from srnet_core.io import atomic_path  # noqa: E402

from .results import DENSE_PARADIGM, DESIGN_COLUMNS, n_distinct, sparsity_curve  # noqa: E402

# Default metric per eval dataset: the first of these it reports (F1 of the duplicate class for QQP/PAWS,
# accuracy elsewhere, as in the paper), else its alphabetically first metric.
PREFERRED_METRICS = ("f1_duplicate", "accuracy")


def pick_metrics(curve: pd.DataFrame, metric: str | dict | None = None) -> dict[tuple[str, str], str]:
    """(task, eval_dataset) -> the metric to plot/tabulate. ``metric``: one name for every dataset, a dict
    ``{eval_dataset: metric}`` (others use the default), or None for ``PREFERRED_METRICS``."""
    chosen = {}
    for (task, dataset), group in curve.groupby(["task", "eval_dataset"], observed=True, sort=True):
        have = set(group["metric"])
        want = metric.get(dataset) if isinstance(metric, dict) else metric
        if want is None:
            want = next((m for m in PREFERRED_METRICS if m in have), min(have))
        elif want not in have:
            raise ValueError(f"metric '{want}' is not reported on '{dataset}' ({task}); it has {sorted(have)}")
        chosen[(task, dataset)] = want
    return chosen


def _panels(curve: pd.DataFrame, metrics: dict) -> list[list[tuple[str, str, str]]]:
    """Rows of (task, eval_dataset, role) panels: one row per task, ID datasets first."""
    rows = []
    for task in sorted(curve["task"].unique()):
        here = curve[curve["task"] == task][["eval_dataset", "eval_role"]].drop_duplicates()
        here = here[[(task, d) in metrics for d in here["eval_dataset"]]]
        here = here.assign(order=(here["eval_role"] != "id").astype(int)).sort_values(["order", "eval_dataset"])
        rows.append([(task, d, r) for d, r in zip(here["eval_dataset"], here["eval_role"])])
    return [r for r in rows if r]


# Short names of the design columns in legends and labels: ``a/mask_train/poe/ft=std``.
SHORT = {"finetune_loss": "ft", "mask_source": "from", "base_paradigm": "base", "source_task": "source",
         "start_step": "step", "s_initial": "s_init"}


def _label(keys: list[str], values) -> str:
    """``mask_train/poe`` for method and loss; design columns as ``ft=poe`` (see SHORT); nulls left out."""
    values = values if isinstance(values, tuple) else (values,)
    parts = [str(v) if k in ("backbone", "paradigm", "method", "loss") else f"{SHORT.get(k, k)}={v}"
             for k, v in zip(keys, values) if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    return "/".join(parts) or "all"


def varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns of ``columns`` that take more than one value (nulls count as a value) in ``frame``."""
    return [c for c in columns if c in frame and n_distinct(frame[c]) > 1]


def plot_sparsity(curve: pd.DataFrame, path: str, metric: str | dict | None = None,
                  line_keys: list[str] | None = None, title: str | None = None, x: str = "target_sparsity") -> str:
    """Draw a :func:`orchestrator.results.sparsity_curve` frame; returns ``path`` (PNG, written atomically).

    ``line_keys``: the columns that make one line (default: method and loss, plus backbone, paradigm and the
    design columns where they vary). ``x``: the x axis (``target_sparsity``, or e.g. ``start_step`` for the
    timing paradigm). Rows of paradigm ``full`` are drawn as dashed horizontal baselines (one per loss).
    """
    if curve.empty:
        raise ValueError("nothing to plot: no selected rows of completed nodes in these results")
    metrics = pick_metrics(curve, metric)
    sparse = curve[curve["paradigm"] != DENSE_PARADIGM]
    dense = curve[curve["paradigm"] == DENSE_PARADIGM]
    if line_keys is None:
        line_keys = varying(sparse, ["backbone", "paradigm"]) + ["method", "loss"] + \
            [c for c in varying(sparse, DESIGN_COLUMNS) if c != x]
    base_keys = varying(dense, ["backbone"]) + ["loss"]

    def groups(f: pd.DataFrame, keys: list[str]):
        return f.groupby(keys, observed=True, sort=True, dropna=False)
    labels = sorted({_label(line_keys, k) for k, _ in groups(sparse, line_keys)})
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    rows = _panels(curve, metrics)
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.9 * ncols, 3.3 * len(rows)), squeeze=False)
    for r, panels in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(panels):
                ax.set_visible(False)
                continue
            task, dataset, role = panels[c]
            name = metrics[(task, dataset)]

            def pick(f: pd.DataFrame) -> pd.DataFrame:
                return f[(f["task"] == task) & (f["eval_dataset"] == dataset) & (f["metric"] == name)]
            for key, line in groups(pick(sparse), line_keys):
                line = line.sort_values(x)
                xs, mean, std = line[x].astype(float), line["mean"], line["std"].fillna(0.0)
                label = _label(line_keys, key)
                ax.plot(xs, mean, marker="o", markersize=3.5, color=colors[label], label=label)
                ax.fill_between(xs, mean - std, mean + std, color=colors[label], alpha=0.18, linewidth=0)
            for i, (key, base) in enumerate(groups(pick(dense), base_keys)):
                mean, std = base["mean"].mean(), np.nan_to_num(base["std"].mean())
                shade = str(0.2 + 0.2 * (i % 3))
                ax.axhline(mean, color=shade, linestyle=("--", ":", "-.")[i % 3], linewidth=1.2,
                           label=f"full model ({_label(base_keys, key)})")
                ax.axhspan(mean - std, mean + std, color=shade, alpha=0.12, linewidth=0)
            ax.set_title(f"{task}: {dataset} ({role.upper()})", fontsize=10)
            ax.set_xlabel("sparsity" if x == "target_sparsity" else x)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
    # one legend for the figure, below the panels, as in the paper
    entries = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    legend_rows = math.ceil(len(entries) / 4) if entries else 0
    bottom = (0.1 + 0.22 * legend_rows) / fig.get_figheight()
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=min(4, len(entries)),
                   fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return _save(fig, path)


def metric_vs_sparsity(frame: pd.DataFrame, path: str, metric: str | dict | None = None) -> str:
    """The whole results frame in one figure (lines per paradigm/method/loss); what ``launch`` draws.
    ``metric``: as in :func:`pick_metrics` (default: F1-duplicate where reported, else accuracy). With no
    completed node yet it draws a panel saying so, so a sweep whose nodes all failed still finishes."""
    curve = sparsity_curve(frame)
    # the bias model is a per-task reference (its own ID/OOD accuracy is in the report), not a subnetwork
    curve = curve[curve["paradigm"] != "bias_model"]
    if curve.empty:
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        ax.text(0.5, 0.5, "no completed nodes yet", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    return plot_sparsity(curve, path, metric)


def x_axis(rows: pd.DataFrame) -> str | None:
    """What a paradigm's figure plots against: sparsity if it varies, else a numeric design column that
    varies (``start_step`` of the timing paradigm); None for sparsity-0 references such as bias models."""
    if rows["target_sparsity"].nunique() > 1:
        return "target_sparsity"
    for column in varying(rows, DESIGN_COLUMNS):
        if pd.to_numeric(rows[column], errors="coerce").notna().all():
            return column
    return "target_sparsity" if (rows["target_sparsity"] > 0).any() else None


def sparsity_figures(curve: pd.DataFrame, out_dir: str, metric: str | dict | None = None) -> list[str]:
    """One figure per paradigm (``sparsity_<paradigm>.png``), each with the dense baselines; returns paths.
    Paradigms with nothing to plot against (only sparsity-0 rows, e.g. ``bias_model``) get none."""
    dense = curve[curve["paradigm"] == DENSE_PARADIGM]
    paths = []
    for paradigm in sorted(p for p in curve["paradigm"].unique() if p != DENSE_PARADIGM):
        rows = curve[curve["paradigm"] == paradigm]
        x = x_axis(rows)
        if x is None:
            continue
        against = "sparsity" if x == "target_sparsity" else x
        paths.append(plot_sparsity(pd.concat([rows, dense]), os.path.join(out_dir, f"sparsity_{paradigm}.png"),
                                   metric, x=x,
                                   title=f"paradigm {paradigm}: metric vs {against} (mean ± std over seeds)"))
    if not paths and len(dense):
        paths.append(plot_sparsity(dense, os.path.join(out_dir, "sparsity_full.png"), metric))
    return paths


def mask_iou_figure(groups: list[tuple[str, list[str], np.ndarray]], path: str) -> str:
    """Heatmaps of pairwise mask IoU: ``groups`` = [(title, node labels, IoU matrix)], one panel each."""
    if not groups:
        raise ValueError("no mask groups to draw: need at least two masks at the same sparsity")
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    size = max(3.6, 0.42 * max(len(labels) for _, labels, _ in groups) + 1.8)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    for ax, (title, labels, matrix) in zip(axes.ravel(), groups):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        if len(labels) <= 12:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if matrix[i, j] > 0.6 else "white")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="IoU of kept weights")
    fig.tight_layout()
    return _save(fig, path)


def readable(path: str) -> None:
    """Give a file written through a private temp file (mode 0600) the usual permissions (0666 - umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
        readable(tmp)
    plt.close(fig)
    return path
