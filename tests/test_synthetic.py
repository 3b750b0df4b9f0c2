"""The synthetic task: deterministic, balanced, and its spurious feature does what the options say."""
from __future__ import annotations

import numpy as np
import pytest

from srnet_core.tasks import get_task
from srnet_core.tasks.synthetic import SyntheticOptions, generate


def _overlap(split):
    # the bias feature, computed independently: fraction of hypothesis words that occur in the premise
    return np.array([np.mean([w in set(p.split()) for w in h.split()]) for p, h in zip(split.text_a, split.text_b)])


def test_deterministic_and_seeded():
    a = generate("train", SyntheticOptions(n_train=300))
    b = generate("train", SyntheticOptions(n_train=300))
    c = generate("train", SyntheticOptions(n_train=300, data_seed=1))
    assert a.text_b == b.text_b and a.ids == b.ids and (a.labels == b.labels).all()
    assert a.text_b != c.text_b


def test_labels_balanced_and_ids_unique():
    split = generate("dev", SyntheticOptions(n_dev=400))
    assert np.bincount(split.labels).tolist() == [200, 200]
    assert len(set(split.ids)) == 400


@pytest.mark.parametrize("agreement", [0.9, 0.6])
def test_spurious_agreement_in_train(agreement):
    split = generate("train", SyntheticOptions(n_train=4000, spurious_agreement=agreement))
    high = np.asarray(split.extra["high_overlap"])
    agree = (high == (split.labels == 0)).mean()
    assert abs(agree - agreement) < 0.03
    # the flag is the real surface feature: high-overlap hypotheses overlap more
    ov = _overlap(split)
    assert ov[high].min() > ov[~high].max() - 1e-9 or ov[high].mean() - ov[~high].mean() > 0.4


def test_ood_reversed_and_balanced():
    rev = generate("ood", SyntheticOptions(n_ood=600, ood_mode="reversed"))
    high = np.asarray(rev.extra["high_overlap"])
    assert (high == (rev.labels == 1)).all()  # entailed pairs all low overlap, non-entailed all high
    bal = generate("ood", SyntheticOptions(n_ood=2000, ood_mode="balanced"))
    high = np.asarray(bal.extra["high_overlap"])
    assert abs((high == (bal.labels == 0)).mean() - 0.5) < 0.05


def test_high_overlap_non_entailment_uses_only_premise_words():
    split = generate("ood", SyntheticOptions(n_ood=200))
    ov = _overlap(split)
    trap = np.asarray(split.extra["high_overlap"]) & (split.labels == 1)
    assert (ov[trap] == 1.0).all()  # the HANS-style lexical-overlap trap


def test_bad_option_names_the_option():
    with pytest.raises(ValueError, match="ood_mode"):
        get_task("synthetic", ood_mode="upside_down").load("ood")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


def test_ood_train_added_for_the_upper_bound():
    task = get_task("synthetic", n_train=200, n_ood_train=60, add_ood_train=True)
    train = task.load("train")
    assert len(train) == 260 and len(set(train.ids)) == 260
    added = [i for i, x in enumerate(train.ids) if x.startswith("ood_train-")]
    assert len(added) == 60
    high = np.asarray(train.extra["high_overlap"])[added]
    assert (high == (train.labels[added] == 1)).all()  # OOD-distributed: the overlap cue is reversed
    assert task.size_hint("train", n_train=200, n_ood_train=60, add_ood_train=True) == 260
    test_ood = task.load("ood")
    assert not set(test_ood.text_b) >= set(np.asarray(train.text_b)[added])  # not the test examples


def _bias_accuracy_by_overlap(generator: int) -> tuple[float, float, float]:
    from srnet_core.bias import fit_bias_model

    task = get_task("synthetic", n_train=1500, n_dev=1000, spurious_agreement=0.9, generator=generator)
    fitted = fit_bias_model(task, ["dev"])
    dev = task.load("dev")
    assert fitted.ids["dev"] == list(dev.ids)
    pred = fitted.log_probs["dev"].argmax(-1)
    high = np.asarray(dev.extra["high_overlap"])
    right = pred == dev.labels
    return float(right.mean()), float(right[high].mean()), float(right[~high].mean())


def test_overlap_bias_model_sees_only_the_overlap_cue():
    """Generator 2: on low-overlap pairs both labels share one premise word, so the overlap bias model is at the
    agreement rate (0.9 by the overlap prior) and NOT an oracle; generator 1 let it read the label off low-overlap
    pairs (0.99), which left PoE nothing to learn from (the demo's PoE models sat at chance)."""
    overall, high, low = _bias_accuracy_by_overlap(2)
    assert abs(overall - 0.9) < 0.04 and abs(high - 0.9) < 0.05 and abs(low - 0.9) < 0.05
    _, _, low_v1 = _bias_accuracy_by_overlap(1)
    assert low_v1 > 0.97


def test_generator_version_enters_node_keys():
    from orchestrator.plan import keyed_task_options

    assert keyed_task_options("synthetic", {"n_train": 10}) == {"generator": 2, "n_train": 10}
    assert keyed_task_options("synthetic", {"generator": 1}) == {"generator": 1}
    assert keyed_task_options("mnli", {"train_size": 8}) == {"train_size": 8}  # real tasks: keys unchanged
