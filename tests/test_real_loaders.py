"""The real-data training sources (issue 20): MNLI's 29.5k-row train subset with the full dev sets, and QQP's
10k-row train subset with a seeded held-out dev slice, read from ../shared/data as a stage reads them."""
import numpy as np
import pytest

from orchestrator.plan.estimates import train_size
from orchestrator.plan.graph import node_key
from orchestrator.preflight import check_task_data
from srnet_core.tasks import fingerprints as fp
from srnet_core.tasks import get_task


def _pairs(split):
    return {(a, b) for a, b in zip(split.text_a, split.text_b)}


def test_mnli_train_subset_rows_labels_and_no_dev_overlap(data_dir):
    task = get_task("mnli", data_dir=data_dir, train_source="train_subset")
    assert task.eval_splits == ["dev_matched", "dev_mismatched", "hans"]
    train = task.load("train")
    assert len(train) == 29_524 and len(set(train.ids)) == 29_524
    # [contradiction, entailment, neutral]: the counts ../shared/data/README.md gives
    assert np.bincount(train.labels).tolist() == [9_885, 9_789, 9_850]
    matched, mismatched = task.load("dev_matched"), task.load("dev_mismatched")
    assert (len(matched), len(mismatched)) == (9_815, 9_832)
    assert np.bincount(matched.labels).tolist() == [3_213, 3_479, 3_123]
    assert np.bincount(mismatched.labels).tolist() == [3_240, 3_463, 3_129]
    assert not _pairs(train) & _pairs(matched) and not _pairs(train) & _pairs(mismatched)
    assert len(task.load("hans")) == 30_000
    # the planner's count without reading the file, and the capped one
    assert train_size("mnli", {"train_source": "train_subset"}) == 29_524
    assert train_size("mnli", {"train_source": "train_subset", "max_train_rows": 5000}) == 5_000


def test_qqp_train_subset_held_out_dev_is_seeded_and_disjoint(data_dir):
    task = get_task("qqp", data_dir=data_dir, train_source="train_subset")
    assert task.eval_splits == ["dev", "paws_qqp", "paws_wiki"]
    train, dev = task.load("train"), task.load("dev")
    assert (len(train), len(dev)) == (8_999, 1_000)
    assert not set(train.ids) & set(dev.ids) and len(set(train.ids) | set(dev.ids)) == 9_999
    # label counts of the whole file (not duplicate 6,370 / duplicate 3,629) split between the two
    assert (np.bincount(train.labels) + np.bincount(dev.labels)).tolist() == [6_370, 3_629]
    # the held-out slice is a pure function of split_seed: the same ids again, other ids for another seed
    again = get_task("qqp", data_dir=data_dir, train_source="train_subset").load("dev")
    other = get_task("qqp", data_dir=data_dir, train_source="train_subset", split_seed=1).load("dev")
    assert again.ids == dev.ids and set(other.ids) != set(dev.ids)
    expected = np.sort(np.random.default_rng(0).permutation(9_999)[:1_000]).astype(str).tolist()
    assert dev.ids == expected  # ids are the file's 0..9,998 row ids
    paws = task.load("paws_qqp")
    assert len(paws) == 677 and not (_pairs(train) | _pairs(dev)) & _pairs(paws)
    assert train_size("qqp", {"train_source": "train_subset"}) == 8_999
    assert train_size("qqp", {"train_source": "train_subset", "dev_size": 2_000}) == 7_999


def test_rows_name_the_training_source_and_the_preflight_takes_it_without_allow_subset(data_dir, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("SRNET_PREFLIGHT_CACHE", str(tmp_path / "cache.json"))
    cols = fp.data_columns({"task": "mnli", "data_dir": data_dir, "task_options": {"train_source": "train_subset"}})
    assert "train_subset=688232ffa8c8[subset]" in cols["data_fingerprint"].split(",")
    assert "train_subset=29524" in cols["data_rows"].split(",")
    cols = fp.data_columns({"task": "qqp", "data_dir": data_dir, "task_options": {"train_source": "train_subset"}})
    assert "train_subset=6106537510d1[subset]" in cols["data_fingerprint"].split(",")
    cache = {}
    for name in ("mnli", "qqp"):
        digests = check_task_data(name, {"train_source": "train_subset"}, data_dir, cache)
        assert "train_subset" in digests and "train" not in digests
    # the same file named as the full train set is still refused without allow_subset
    with pytest.raises(ValueError, match="known 29,524-row subset.*allow_subset"):
        check_task_data("mnli", {"paths": {"train": "mnli/mnli_train_subset.tsv"}}, data_dir, cache)


def test_training_sources_never_share_keys():
    base = {"task": "mnli", "backbone": "minilm", "seed": 0}
    keys = {node_key("finetune", {**base, "task_options": {"train_source": s}}, {}) for s in
            ("train", "train_subset", "dev_matched")}
    assert len(keys) == 3


def test_bad_source_options_are_one_line(data_dir):
    with pytest.raises(ValueError, match="train_source must be 'train', 'train_subset' or 'dev_matched'"):
        get_task("mnli", data_dir=data_dir, train_source="subset")
    with pytest.raises(ValueError, match="train_source must be 'train' or 'train_subset'"):
        get_task("qqp", data_dir=data_dir, train_source="dev")
    with pytest.raises(ValueError, match="dev_size must be between 1 and 9998"):
        get_task("qqp", data_dir=data_dir, train_source="train_subset", dev_size=9_999).load("dev")
