"""The stage registry: every stage kind is declared ONCE, here or in a module that calls ``register``.

A ``StageKind`` says everything the rest of the code needs to know about a kind: how to run it, which config
fields its key reads, which spec training section feeds it, its options dataclass (the one place its defaults
live), the files it writes, its GPU memory class, its code version and whether its rows are published. The
spec (orchestrator/spec.py), the planner's key fields, the memory estimate, the row publisher and the report
are all derived from this table, so a new stage or pruning method is one ``register(...)`` call
(tests/test_registry.py adds a toy method that way and runs it end to end).

Plain dataclasses, no Ray, no pydantic.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

# The config fields every model stage reads (task data, backbone, tokenization, where to run).
COMMON_FIELDS = ("stage", "task", "task_options", "data_dir", "backbone", "max_length", "device")
# bias_source: file: the user's per-example bias file and its sha256 (the content is keyed, not the path).
BIAS_FILE_FIELDS = ("bias_file", "bias_sha256")
MEMORY_CLASSES = ("weights", "mask", "importance", "inference", "cpu")


@dataclass(frozen=True)
class StageKind:
    """One stage kind.

    name: the stage's name in configs, keys, the artifact store and ``resources.stages``.
    run: ``run(ctx, out_dir, report, resume_state) -> rows`` (``ctx``: srnet_core.stages.common.Context);
        with ``needs_model=False``: ``run(cfg, out_dir) -> rows`` (no model, no training loop).
    version: bump when a change alters the kind's results: its nodes and everything downstream re-run.
    fields: the StageConfig fields its key reads beyond ``COMMON_FIELDS`` (``common=False``: only these).
    train_section: the spec's training section (a TrainConfig) its ``train`` comes from; None: no training.
    train_fields: the TrainConfig fields it reads (None: all of them).
    options: its options dataclass; the spec section ``<name>_options`` is typed with it, and its defaults are
        the only defaults. ``options_field``: the config field that carries them (default: the kind's name).
    planner_options: option fields the planner sets per node (a spec that gives them is refused).
    outputs: the files every completed node of the kind has; ``more_outputs(config) -> [names]``: those that
        depend on its config (a fine-tune's checkpoint grid, IMP's levels). The worker refuses to commit a node
        that lacks one (``declared_outputs``), naming it.
    memory: GPU memory class for srnet_core.memory: weights (trains the weights: grads + AdamW), mask (mask
        scores), importance (a backward pass, no optimizer state), inference, cpu (no GPU at all).
    publishes: its rows go to the sweep's results (False: an internal node, e.g. the conf_reg teacher).
    method: a pruning method of paradigm (a) (``grid.methods``); per_sparsity: one node per grid sparsity
        from the fine-tuned weights (the planner's generic builder), else the planner has its own recipe.
    loss_inputs: takes bias / teacher files for its loss (poe, reweight, conf_reg, kd).
    structured: removes whole heads / sublayers (the report's speed column measures it separately).
    planned: some paradigm plans it (``resources.stages`` accepts only those); False: run directly only.
    """

    name: str
    run: Callable
    version: str = "1"
    fields: tuple[str, ...] = ()
    common: bool = True
    train_section: str | None = None
    train_fields: tuple[str, ...] | None = None
    options: type | None = None
    options_field: str | None = None
    planner_options: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    more_outputs: Callable[[dict], list[str]] | None = None
    memory: str = "weights"
    publishes: bool = True
    needs_model: bool = True
    method: bool = False
    per_sparsity: bool = True
    loss_inputs: bool = True
    structured: bool = False
    planned: bool = True

    def __post_init__(self):
        if self.memory not in MEMORY_CLASSES:
            raise ValueError(f"stage '{self.name}': memory must be one of {MEMORY_CLASSES}, not {self.memory!r}")
        if self.options is not None and not hasattr(self.options, "__dataclass_fields__"):
            raise ValueError(f"stage '{self.name}': options must be a dataclass")

    @property
    def options_key(self) -> str | None:
        """The config field holding the options (None: the kind has none)."""
        return (self.options_field or self.name) if self.options is not None else None

    @property
    def options_section(self) -> str | None:
        """The spec section typed with the options dataclass."""
        return f"{self.name}_options" if self.options is not None else None

    @property
    def key_fields(self) -> tuple[str, ...]:
        """Every config field the kind reads, so every field its key hashes."""
        out = (COMMON_FIELDS if self.common else ()) + tuple(f for f in self.fields if not (self.common and f in COMMON_FIELDS))
        if self.train_section is not None and "train" not in out:
            out += ("train",)
        if self.options_key is not None and self.options_key not in out:
            out += (self.options_key,)
        if self.loss_inputs and "loss" in out:
            out += BIAS_FILE_FIELDS
        return out

    def declared_outputs(self, config: dict) -> list[str]:
        """Every file a completed node with this config must have."""
        return list(self.outputs) + (list(self.more_outputs(config)) if self.more_outputs else [])

    def default_options(self) -> dict:
        """The options dataclass's defaults as a dict (what the spec section dumps to when not given)."""
        if self.options is None:
            return {}
        from dataclasses import asdict

        return asdict(self.options())

    def make_options(self, values: dict | None):
        """An options instance from a node's config (unknown fields are an error: a planner bug)."""
        known = {f.name for f in fields(self.options)}
        extra = set(values or {}) - known
        if extra:
            raise ValueError(f"stage '{self.name}': unknown options {sorted(extra)}; known: {sorted(known)}")
        return self.options(**(values or {}))


REGISTRY: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Add (or replace, for tests) a stage kind. Everything derived from the registry reads it live."""
    REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_kind(name: str) -> StageKind:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stage '{name}'; known: {sorted(REGISTRY)}") from None


def stage_names(planned: bool = False) -> list[str]:
    return [k.name for k in REGISTRY.values() if k.planned or not planned]


def method_names() -> list[str]:
    return [k.name for k in REGISTRY.values() if k.method]


def train_sections() -> list[str]:
    """The spec's training sections, in registry order (finetune, mask_train, ...)."""
    out: list[str] = []
    for kind in REGISTRY.values():
        if kind.train_section is not None and kind.train_section not in out:
            out.append(kind.train_section)
    return out


def option_kinds() -> list[StageKind]:
    return [k for k in REGISTRY.values() if k.options is not None]


def stage_version() -> dict[str, str]:
    return {k.name: k.version for k in REGISTRY.values()}


PLUGINS_ENV = "SRNET_PLUGINS"  # os.pathsep-separated; set by the driver, read by every worker before it runs


def load_plugins(plugins) -> None:
    """Import user modules that register stage kinds (a pruning method of one's own): each an importable
    module name (``mylab.pruning``) or a ``.py`` file path. Recorded in $SRNET_PLUGINS so that Ray workers,
    which inherit the driver's environment (and get it through the runtime_env on a cluster), import the same
    modules before they run a node (a node's payload lists them too). Raises ImportError naming the plugin."""
    import importlib
    import importlib.util
    import os
    import sys

    loaded = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = os.path.abspath(os.path.expanduser(plugin))
            name = "srnet_plugin_" + os.path.splitext(os.path.basename(path))[0]
            if name not in sys.modules:
                if not os.path.isfile(path):
                    raise ImportError(f"plugin file '{plugin}' does not exist")
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            plugin = path
        else:
            importlib.import_module(plugin)
        if plugin not in loaded:
            loaded.append(plugin)
    if loaded:
        os.environ[PLUGINS_ENV] = os.pathsep.join(loaded)


def plugin_list() -> list[str]:
    """The plugins loaded in this process (what a node payload carries to its worker)."""
    import os

    return [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
