"""Prunable-layer selection per model family, built from small random configs (no downloads)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from srnet_core.models import (BackboneError, PRUNABLE_LAYOUTS, count_prunable, encoder_layers, load_model,
                               prunable_linear_names)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=120,
             max_position_embeddings=64)


def from_config(config, meta: bool = False):
    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    if meta:  # shapes only: a BERT-large layout without allocating 1.3 GB
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


ROLES_BERT = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"]


def test_bert_base_counts_match_the_protocol():
    from transformers import BertConfig

    model = from_config(BertConfig(num_labels=3), meta=True)
    encoder = prunable_linear_names(model, include_pooler=False)
    assert len(encoder) == 72
    assert count_prunable(model, encoder) == 84_934_656  # protocol.md section 1
    with_pooler = prunable_linear_names(model)
    assert with_pooler == encoder + ["bert.pooler.dense"]
    assert count_prunable(model, with_pooler) == 85_524_480
    assert prunable_linear_names(model, include_classifier=True)[-1] == "classifier"


def test_bert_large_counts():
    from transformers import BertConfig

    model = from_config(BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, num_labels=3), meta=True)
    encoder = prunable_linear_names(model, include_pooler=False)
    assert len(encoder) == 144
    assert count_prunable(model, encoder) == 24 * (4 * 1024 ** 2 + 2 * 1024 * 4096) == 301_989_888
    assert count_prunable(model, prunable_linear_names(model)) == 301_989_888 + 1024 ** 2
    layers = encoder_layers(model)
    assert len(layers) == 24 and layers[0].num_heads == 16 and layers[0].head_size == 64


def test_minilm_layout_from_its_real_config():
    from transformers import AutoConfig

    from srnet_core.models import minilm_path

    config = AutoConfig.from_pretrained(minilm_path(), num_labels=3)
    model = from_config(config, meta=True)
    assert model.config.model_type == "bert"
    encoder = prunable_linear_names(model, include_pooler=False)
    assert len(encoder) == 36
    assert count_prunable(model, encoder) == 6 * (4 * 384 ** 2 + 2 * 384 * 1536) == 10_616_832


def test_tiny_bert_order_and_roles():
    model = load_model("tiny-bert", 2)
    names = prunable_linear_names(model)
    expected = [f"bert.encoder.layer.{i}.{r}" for i in range(2) for r in ROLES_BERT] + ["bert.pooler.dense"]
    assert names == expected
    layers = encoder_layers(model)
    assert [layer.names["ffn_out"] for layer in layers] == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    assert layers[1].names["attn_out"] == "bert.encoder.layer.1.attention.output.dense"


def test_roberta_has_no_pooler_its_head_dense_is_classifier():
    from transformers import RobertaConfig

    model = from_config(RobertaConfig(**SMALL, num_labels=3))
    assert not any("pooler" in n for n, _ in model.named_modules())
    names = prunable_linear_names(model)
    encoder = [f"roberta.encoder.layer.{i}.{r}" for i in range(2) for r in ROLES_BERT]
    # classifier.dense is the randomly initialised head, not a pre-trained pooler: never pruned as one
    assert names == encoder
    assert prunable_linear_names(model, include_classifier=True) == encoder + ["classifier.dense",
                                                                               "classifier.out_proj"]
    assert len(prunable_linear_names(model, include_pooler=False)) == 12
    assert count_prunable(model, prunable_linear_names(model, include_pooler=False)) == 2 * (4 * 32 * 32 + 2 * 32 * 64)


def test_distilbert_layout():
    from transformers import DistilBertConfig

    model = from_config(DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=120,
                                         max_position_embeddings=64, num_labels=3))
    names = prunable_linear_names(model, include_classifier=True)
    roles = ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"]
    assert names == ([f"distilbert.transformer.layer.{i}.{r}" for i in range(2) for r in roles]
                     + ["pre_classifier", "classifier"])
    assert prunable_linear_names(model) == names[:-2]  # the head is not a pooler
    layers = encoder_layers(model)
    assert layers[0].num_heads == 4 and layers[0].head_size == 8
    assert layers[1].names["ffn_in"] == "distilbert.transformer.layer.1.ffn.lin1"


def test_electra_skips_its_embedding_projection():
    from transformers import ElectraConfig

    model = from_config(ElectraConfig(**SMALL, embedding_size=16, num_labels=3))
    names = prunable_linear_names(model)
    assert "electra.embeddings_project" not in names
    assert len(names) == 12 and "classifier.dense" not in names


def test_unregistered_bert_like_family_falls_back_by_module_names():
    from transformers import MegatronBertConfig

    model = from_config(MegatronBertConfig(**SMALL, num_labels=3))
    assert model.config.model_type not in PRUNABLE_LAYOUTS
    assert len(prunable_linear_names(model, include_pooler=False)) == 12


def test_exclude_patterns_make_the_set_configurable():
    model = load_model("tiny-bert", 2)
    names = prunable_linear_names(model, exclude=[r"\.pooler\.", r"layer\.1\."])
    assert names == [f"bert.encoder.layer.0.{r}" for r in ROLES_BERT]
    with pytest.raises(BackboneError, match="excluded"):
        prunable_linear_names(model, exclude=[r"."])


def test_model_without_matching_layers_gets_a_clear_error():
    from transformers import GPT2Config

    model = from_config(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=120, n_positions=64, num_labels=2))
    with pytest.raises(BackboneError, match="register_layout"):
        prunable_linear_names(model)

    class Renamed(nn.Module):  # a registered family whose module names do not match its layout
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "bert"})()
            self.block = nn.Linear(4, 4)

    with pytest.raises(BackboneError, match="no prunable encoder layers found in a 'bert' model"):
        prunable_linear_names(Renamed())
