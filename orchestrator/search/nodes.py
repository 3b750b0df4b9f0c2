"""The search's one contact with the planner: its public node factory (``orchestrator.plan.NodeFactory``),
reduced to what a study asks of it. Trial nodes are built with the planner's own recipes (same configs, same
content keys), and the fine-tune's checkpoint grid is read with the one rule srnet_core.stages.finetune has.
"""
from __future__ import annotations

from srnet_core.stages import checkpoint_files as grid_files

from ..plan import Input, Node, NodeFactory
from ..spec import SweepSpec

__all__ = ["Input", "Node", "SearchNodes", "checkpoint_files", "saved_steps"]


def checkpoint_files(finetune: Node, total: int) -> dict[int, str]:
    """{step: file} of the weights a fine-tuning node saves on its checkpoint grid (``save_fractions``)."""
    return grid_files(finetune.stage_config.get("save_fractions", []), total)


def saved_steps(finetune: Node, total: int) -> list[int]:
    """The steps whose weights a fine-tuning node saves (below its end)."""
    return sorted(s for s in checkpoint_files(finetune, total) if s < total)


class SearchNodes:
    """The planner's node builder, reduced to what a study asks of it. Nodes built here are the planner's own
    (same configs, same content keys): a trial equal to a grid node reuses it."""

    def __init__(self, spec: SweepSpec):
        self._b = NodeFactory(spec)

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
        """Mask training of a fine-tuned model, as the planner configures it."""
        return self._b.mask_train_config(task, backbone, seed, loss, sparsity, True, options)

    def loss_inputs(self, task: str, loss: str, finetune: Node, options: dict) -> dict:
        return self._b.loss_inputs(task, loss, finetune, options)

    def columns(self, task: str, backbone: str, seed: int, paradigm: str, loss: str, sparsity: float,
                **extra) -> dict:
        return self._b.columns(task, backbone, seed, paradigm, loss, sparsity, **extra)

    def mask_train(self, cfg: dict, inputs: dict, columns: dict) -> Node:
        """The mask-training node of ``cfg`` (the existing one when equal work was built before)."""
        return self._b.add(Node("mask_train", cfg, inputs, columns=columns))
