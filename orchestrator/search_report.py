"""Figures and tables of Optuna searches (docs/search.md), from the results Parquet alone.

Per study: the Pareto front (ID dev vs OOD dev, cost as colour; pruned and infeasible trials marked), the
best trials' curves (ID dev and OOD dev over mask training), and the timing predictor against the search
(``<output_dir>/search/<study>.predictor.json``, written by the driver).
"""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from srnet_core.io import atomic_path, write_json  # noqa: E402

_OBJ = {"objective.id_dev": "id_dev", "objective.ood_dev": "ood_dev", "objective.cost": "cost",
        "objective.scalar": "scalar"}


def trial_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, trial): objectives, state, feasibility, node key, parameters."""
    rows = frame[frame["stage"] == "search_trial"]
    if rows.empty:
        return pd.DataFrame()
    keep = ["study", "trial", "trial_state", "trial_node_key", "feasible", "constraint", "rung_fraction",
            *sorted(c for c in rows.columns if c.startswith("param."))]
    wide = rows.pivot_table(index=["study", "trial"], columns="metric", values="value", aggfunc="first",
                            observed=True).rename(columns=_OBJ)
    info = rows.drop_duplicates(["study", "trial"]).set_index(["study", "trial"])[[c for c in keep[2:] if c in rows]]
    out = info.join(wide).reset_index().sort_values(["study", "trial"])
    return out.reset_index(drop=True)


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Complete trials no other complete trial beats on all of ID dev (max), OOD dev (max) and cost (min)."""
    done = trials[trials["trial_state"] == "complete"]
    keep = []
    for i, a in done.iterrows():
        dominated = any((b["id_dev"] >= a["id_dev"] and b["ood_dev"] >= a["ood_dev"] and b["cost"] <= a["cost"])
                        and (b["id_dev"] > a["id_dev"] or b["ood_dev"] > a["ood_dev"] or b["cost"] < a["cost"])
                        for j, b in done.iterrows() if j != i)
        if not dominated:
            keep.append(i)
    return done.loc[keep]


def pareto_figure(trials: pd.DataFrame, path: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    done = trials[trials["trial_state"] == "complete"]
    feasible = done["feasible"].fillna(True).astype(bool)
    scatter = None
    for mask, marker, label in ((feasible, "o", "feasible"), (~feasible, "X", "ID dev below the constraint")):
        part = done[mask]
        if len(part):
            scatter = ax.scatter(part["id_dev"], part["ood_dev"], c=part["cost"], cmap="viridis", marker=marker,
                                 s=60, edgecolors="k", label=label, vmin=trials["cost"].min(),
                                 vmax=trials["cost"].max())
    pruned = trials[trials["trial_state"] == "pruned"]
    if len(pruned):
        ax.scatter(pruned["id_dev"], pruned["ood_dev"], c="lightgrey", marker="s", s=30, label="pruned (rung value)")
    front = pareto_front(trials)
    if len(front):  # non-dominated in 3 objectives: ringed, not joined (a 2-D line would mislead)
        ax.scatter(front["id_dev"], front["ood_dev"], facecolors="none", edgecolors="r", s=180, linewidths=1.5,
                   label="Pareto-optimal (ID, OOD dev, cost)")
    for _, t in done.iterrows():
        ax.annotate(str(int(t["trial"])), (t["id_dev"], t["ood_dev"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="cost (training steps)")
    ax.set_xlabel("ID dev")
    ax.set_ylabel("OOD dev")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def curves_figure(frame: pd.DataFrame, trials: pd.DataFrame, path: str, metric: str = "accuracy",
                  top: int = 3) -> str:
    """ID dev and OOD dev over mask training for the ``top`` complete trials by scalarised value."""
    best = trials[trials["trial_state"] == "complete"].sort_values(["scalar", "trial"], ascending=[False, True])
    best = best.drop_duplicates("trial_node_key").head(top)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    nodes = frame[(frame["stage"] == "mask_train") & (frame["metric"] == metric)]
    for _, t in best.iterrows():
        rows = nodes[nodes["node_key"] == t["trial_node_key"]].drop_duplicates(["step", "eval_dataset"])
        for ax, role in zip(axes, ("id", "ood_dev")):
            r = rows[rows["eval_role"] == role].sort_values("step")
            ax.plot(r["step"], r["value"], marker=".", label=f"trial {int(t['trial'])}")
    for ax, name in zip(axes, ("ID dev", "OOD dev")):
        ax.set_title(f"{name} {metric} during mask training", fontsize=9)
        ax.set_xlabel("mask-training step")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.4f}"
    return str(v)


def _md(table: pd.DataFrame) -> list[str]:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.astype(object).itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return lines


PREDICTOR_COLUMNS = ["method", "start_step", "id_dev", "ood_dev", "cost_steps", "mask_trainings", "wall_seconds",
                     "trial"]


def search_section(frame: pd.DataFrame, fig_dir: str, output_dir: str | None = None) -> tuple[list[str], list[str]]:
    """Markdown lines and figure paths for every study in ``frame`` (empty when there is none): what
    ``orchestrator.report`` appends. ``output_dir``: where the driver wrote the predictor tables."""
    trials = trial_table(frame)
    if trials.empty:
        return [], []
    lines, figures = ["## Searches", ""], []
    for study, group in trials.groupby("study", sort=True):
        states = group["trial_state"].value_counts().to_dict()
        lines += [f"### Study `{study}`", "", f"{len(group)} trials: " +
                  ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".", ""]
        pareto = pareto_figure(group, os.path.join(fig_dir, f"{study}_pareto.png"), study)
        curves = curves_figure(frame, group, os.path.join(fig_dir, f"{study}_curves.png"))
        figures += [pareto, curves]
        lines += [f"![Pareto front]({os.path.relpath(pareto, fig_dir)})", "",
                  f"![best trials]({os.path.relpath(curves, fig_dir)})", ""]
        params = [c for c in group.columns if c.startswith("param.")]
        shown = group[["trial", "trial_state", *params, "id_dev", "ood_dev", "cost", "scalar", "feasible"]]
        front = set(pareto_front(group)["trial"])
        shown = shown.assign(pareto=shown["trial"].isin(front))
        lines += _md(shown) + [""]
        pred = os.path.join(output_dir, "search", f"{study}.predictor.json") if output_dir else None
        if pred and os.path.exists(pred):
            with open(pred) as f:
                table = pd.DataFrame(json.load(f))
            table = table[[c for c in PREDICTOR_COLUMNS if c in table]]
            lines += ["Timing predictor (no search) against the study's best feasible trial:", ""] + _md(table) + [""]
    return lines, figures


def write_search_report(result, table: pd.DataFrame, root: str, output_dir: str) -> str:
    """The driver's report: ``<output_dir>/search/<study>.md`` with its figures, and the predictor table."""
    from . import results

    study = result.setting.study_name
    search_dir = os.path.join(output_dir, "search")
    if not table.empty:
        write_json(os.path.join(search_dir, f"{study}.predictor.json"),
                   json.loads(table.to_json(orient="records")))
    frame = results.load(root)
    frame = frame[(frame["stage"] != "search_trial") | (frame.get("study") == study)]
    lines, _ = search_section(frame, search_dir, output_dir)
    path = os.path.join(search_dir, f"{study}.md")
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join([f"# Search {study}", ""] + lines[2:]) + "\n")
    return path
