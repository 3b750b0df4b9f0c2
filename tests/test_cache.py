"""Tokenization cache (Arrow, keyed by task/split/options/tokenizer/max length/content) and the ragged
Encoded batches with dynamic padding."""
import os

import numpy as np
import pytest
import torch

from srnet_core.cache import _fingerprint, encode_cached, tokenizer_fingerprint
from srnet_core.data import Encoded, Ragged, encode, eval_batches, fixed_batches
from srnet_core.models import load_tokenizer
from srnet_core.tasks import get_task


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-bert")


@pytest.fixture(scope="module")
def split():
    return get_task("synthetic", n_train=64, n_dev=16, n_ood=16).load("dev")


class CountingTokenizer:
    """Wraps a tokenizer and counts encode calls (a cache hit must make none)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_cache_hit_is_identical_and_skips_tokenization(tokenizer, split, tmp_path):
    tok = CountingTokenizer(tokenizer)
    key = {"task": "synthetic", "options": {"n_dev": 16}}
    first = encode_cached(tok, split, 32, str(tmp_path), key)
    second = encode_cached(tok, split, 32, str(tmp_path), key)
    assert tok.calls == 1
    plain = encode(tokenizer, split, 32)
    for enc in (first, second):
        assert enc.ids == plain.ids and enc.pad_id == plain.pad_id
        np.testing.assert_array_equal(enc.labels, plain.labels)
        np.testing.assert_array_equal(enc.input_ids.flat, plain.input_ids.flat)
        np.testing.assert_array_equal(enc.input_ids.offsets, plain.input_ids.offsets)
        np.testing.assert_array_equal(enc.token_type_ids.flat, plain.token_type_ids.flat)
    files = sorted(os.listdir(tmp_path / "synthetic"))
    assert len(files) == 2 and files[0].endswith(".arrow") and files[1].endswith(".json")
    assert not [f for f in files if f.startswith(".tmp-")]


def test_cache_key_parts(tokenizer, split, tmp_path):
    tok = CountingTokenizer(tokenizer)
    key = {"task": "synthetic", "options": {}}
    encode_cached(tok, split, 32, str(tmp_path), key)
    encode_cached(tok, split, 16, str(tmp_path), key)  # another max length
    encode_cached(tok, split, 32, str(tmp_path), {"task": "synthetic", "options": {"n_dev": 8}})  # other options
    edited = split.subset(np.arange(len(split)))
    edited.text_b[0] = edited.text_b[0] + " extra"  # same ids, edited text: must not be served stale
    fresh = encode_cached(tok, edited, 32, str(tmp_path), key)
    assert tok.calls == 4
    assert len(fresh.input_ids[0]) > len(encode(tokenizer, split, 32).input_ids[0])
    # the fingerprint ignores per-call truncation state (it changes after the first encode)
    before = _fingerprint(tokenizer)  # unmemoised
    tokenizer(["a b c"], ["d"], truncation=True, max_length=7)
    assert _fingerprint(tokenizer) == before == tokenizer_fingerprint(tokenizer)


def test_damaged_cache_file_is_rebuilt(tokenizer, split, tmp_path):
    key = {"task": "synthetic"}
    encode_cached(tokenizer, split, 32, str(tmp_path), key)
    arrow = next(p for p in (tmp_path / "synthetic").iterdir() if p.suffix == ".arrow")
    arrow.write_bytes(b"not arrow")
    enc = encode_cached(tokenizer, split, 32, str(tmp_path), key)
    assert enc.ids == split.ids and len(arrow.read_bytes()) > 100


def test_encoded_dynamic_and_fixed_padding():
    enc = Encoded(["x", "y", "z"], [[101, 5, 102], [101, 102], [101, 7, 8, 9, 102]],
                  [[0, 0, 0], [0, 0], [0, 0, 1, 1, 1]], np.array([1, 0, 2]), pad_id=0,
                  extras={"bias": np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]], dtype=np.float32)})
    b = enc.batch([1, 0])
    assert b["input_ids"].tolist() == [[101, 102, 0], [101, 5, 102]]
    assert b["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b["labels"].tolist() == [0, 1] and b["input_ids"].dtype == torch.long
    np.testing.assert_allclose(b["bias"].numpy(), [[0.3, 0.3, 0.4], [0.1, 0.2, 0.7]], rtol=1e-6)
    b = enc.batch([2], pad_to=8)
    assert b["input_ids"].tolist() == [[101, 7, 8, 9, 102, 0, 0, 0]]
    assert b["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]
    sub = enc.subset([2, 0])
    assert sub.ids == ["z", "x"] and sub.lengths().tolist() == [5, 3] and sub.labels.tolist() == [2, 1]
    assert sub.batch([0])["input_ids"].tolist() == [[101, 7, 8, 9, 102]]
    np.testing.assert_allclose(sub.extras["bias"][1], [0.1, 0.2, 0.7], rtol=1e-6)
    with pytest.raises(ValueError, match="extra 'teacher' has 2 rows for 3 examples"):
        enc.with_extra("teacher", np.zeros((2, 3)))


def test_ragged_take_and_batches():
    r = Ragged.from_lists([[1], [2, 3], [], [4, 5, 6]])
    t = r.take([3, 2, 1])
    assert [t[i].tolist() for i in range(3)] == [[4, 5, 6], [], [2, 3]]
    lengths = np.array([5, 1, 9, 3, 7, 2])
    batches = eval_batches(lengths, 4)
    assert [b.tolist() for b in batches] == [[1, 5, 3, 0], [4, 2]]
    capped = eval_batches(lengths, 4, max_tokens=12)  # rows x widest row <= 12
    assert [b.tolist() for b in capped] == [[1, 5, 3], [0], [4], [2]]
    assert [b.tolist() for b in fixed_batches(5, 2)] == [[0, 1], [2, 3], [4]]
