"""finetune: train all weights (dense); keep the best-on-ID-dev weights; weights on a fixed fraction grid of
its steps (the timing paradigm starts mask training from them) and the Early-Bird distances between them."""
from __future__ import annotations

import os

import torch

from ..io import write_json
from .common import Context, copy_into, make_loop, rows_from_history, run_loop, save_state_dict, write_summary
from .config import Report
from .registry import StageKind, register


def checkpoint_step(fraction: float, total: int) -> int:
    """The step a fraction-grid checkpoint is saved at: the ONE rule (planner, search and stage use it)."""
    return max(1, int(round(fraction * total)))


def checkpoint_file(fraction: float) -> str:
    return f"weights_f{fraction:.1f}.safetensors"


def step_file(step: int) -> str:
    """The file of an absolute-step checkpoint (``save_steps``; the timing paradigm's reference steps)."""
    return f"weights_step{int(step)}.safetensors"


def checkpoint_schedule(fractions, total: int, steps=()) -> dict[int, list[str]]:
    """{step: [files]} saved by a fine-tuning of ``total`` steps (a short run can put several on one step):
    the fraction grid's files, then the absolute steps' (those below ``total``)."""
    out: dict[int, list[str]] = {}
    for fraction in fractions:
        out.setdefault(checkpoint_step(fraction, total), []).append(checkpoint_file(fraction))
    for step in steps:
        if 0 < int(step) < total:
            out.setdefault(int(step), []).append(step_file(step))
    return out


def checkpoint_files(fractions, total: int) -> dict[int, str]:
    """{step: file}: the first file saved at each step (the one a consumer of that step reads)."""
    return {step: files[0] for step, files in checkpoint_schedule(fractions, total).items()}


def finetune(ctx: Context, out_dir: str, report: Report | None, resume_state: dict | None) -> list[dict]:
    params = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
    files: dict[int, list[str]] = {}

    def after_step(step: int) -> None:
        for name in files.get(step, ()):
            if not os.path.exists(os.path.join(out_dir, name)):
                save_state_dict(os.path.join(out_dir, name), ctx.model)

    os.makedirs(out_dir, exist_ok=True)
    loop = make_loop(ctx, params, snapshot=lambda: params, after_step=after_step, current_sparsity=lambda: 0.0,
                     restore=copy_into(params))
    files.update(checkpoint_schedule(ctx.cfg.save_fractions, loop.total_steps, ctx.cfg.save_steps))
    run_loop(loop, report, resume_state)
    if files:  # the timing predictor (docs/search.md)
        _write_timing(ctx, out_dir, checkpoint_files(ctx.cfg.save_fractions, loop.total_steps), loop.total_steps)
    with torch.no_grad():  # the selected weights
        for name, value in loop.best.items():
            params[name].copy_(value)
    save_state_dict(os.path.join(out_dir, "weights.safetensors"), ctx.model)
    write_summary(ctx, out_dir, loop, measured_sparsity=0.0)
    return rows_from_history(loop.history, loop.best_step, ctx.task)


def _write_timing(ctx: Context, out_dir: str, files: dict[int, str], total: int) -> None:
    """timing.json: Early-Bird mask distances between consecutive saved checkpoints (srnet_core.pruning.timing).
    Read back from the step files, so a resumed fine-tuning gives the same answer as an uninterrupted one."""
    from safetensors.torch import load_file

    from ..pruning.timing import early_bird_report

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


def _grid_outputs(config: dict) -> list[str]:
    """The fraction grid's files and timing.json. The absolute-step files (save_steps) are written only below the
    run's real end, which the config alone does not fix (a task's size is known when its data is read)."""
    fractions = config.get("save_fractions") or []
    return [checkpoint_file(f) for f in fractions] + (["timing.json"] if fractions else [])


register(StageKind(
    "finetune", finetune, fields=("seed", "loss", "train", "save_fractions", "save_steps"), train_section="finetune",
    outputs=("weights.safetensors", "summary.json"), more_outputs=_grid_outputs, memory="weights"))
