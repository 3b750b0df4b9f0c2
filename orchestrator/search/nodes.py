"""The search's one contact with the planner's node recipes.

Everything a study needs from ``orchestrator.plan``'s private ``_Builder`` (base configs, step counts, the std
fine-tuning node, loss inputs, row columns, adding a node) and the planner facts the search re-states (how a
fine-tuning records its saved checkpoints; mask training from a fine-tuned model selects from 70% of its
steps and masks the classifier) live here and nowhere else in ``orchestrator.search``, so that this module
alone changes when the planner exposes a public node factory.
"""
from __future__ import annotations

from ..plan import Input, Node, _Builder
from ..spec import SweepSpec

__all__ = ["Input", "Node", "SearchNodes", "checkpoint_files", "saved_steps"]


def checkpoint_files(finetune: Node, total: int) -> dict[int, str]:
    """{step: file} of the weights a fine-tuning node saves before its end. The one place that knows how the
    planner records saved checkpoints: ``save_steps`` (``weights_step{N}``) here, or the scheduler's fixed
    grid ``save_fractions`` (``weights_f{F:.1f}`` at step max(1, round(F * total)), issue 9)."""
    cfg = finetune.stage_config
    if "save_fractions" in cfg:
        return {max(1, int(round(f * total))): f"weights_f{f:.1f}.safetensors" for f in cfg["save_fractions"]}
    return {int(s): f"weights_step{int(s)}.safetensors" for s in cfg.get("save_steps", [])}


def saved_steps(finetune: Node, total: int) -> list[int]:
    """The steps whose weights a fine-tuning node saves (below its end)."""
    return sorted(s for s in checkpoint_files(finetune, total) if s < total)


class SearchNodes:
    """The planner's node builder, reduced to what a study asks of it. Nodes built here are the planner's own
    (same configs, same content keys): a trial equal to a grid node reuses it."""

    def __init__(self, spec: SweepSpec):
        self._b = _Builder(spec)

    def finetune(self, task: str, backbone: str, seed: int, options: dict) -> Node:
        """The grid's own std fine-tuning (shared with the sweep's nodes)."""
        return self._b.finetune(task, backbone, seed, "std", task_options=options)

    def total_steps(self, stage: str, task: str, backbone: str, seed: int, options: dict,
                    sparsity: float = 0.0) -> int:
        return self._b.total_steps(self._b.base_config(stage, task, backbone, seed, "std", sparsity, options))

    def base_config(self, task: str, backbone: str, seed: int, loss: str, sparsity: float, options: dict) -> dict:
        """A mask-training stage config as the spec gives it."""
        return self._b.base_config("mask_train", task, backbone, seed, loss, sparsity, options)

    def mask_train_config(self, task: str, backbone: str, seed: int, loss: str, sparsity: float,
                          options: dict) -> dict:
        """Mask training of a fine-tuned model (protocol 2), as the planner configures it."""
        cfg = self.base_config(task, backbone, seed, loss, sparsity, options)
        cfg["train"]["select_from"] = 0.7
        cfg["mask_classifier"] = True
        return cfg

    def loss_inputs(self, task: str, loss: str, finetune: Node, options: dict) -> dict:
        return self._b.loss_inputs(task, loss, finetune, options)

    def columns(self, task: str, backbone: str, seed: int, paradigm: str, loss: str, sparsity: float,
                **extra) -> dict:
        return self._b.columns(task, backbone, seed, paradigm, loss, sparsity, **extra)

    def mask_train(self, cfg: dict, inputs: dict, columns: dict) -> Node:
        """The mask-training node of ``cfg`` (the existing one when equal work was built before)."""
        return self._b.add(Node("mask_train", cfg, inputs, columns=columns))
