"""Bias models: features on hand examples, the MNLI bias model (good on ID, chance on HANS), the claim-only
FEVER model, and the per-example file formats (Parquet / JSON / .npy) with their id joins."""
import json
import math
import os

import numpy as np
import pytest

from srnet_core import bias as B
from srnet_core.tasks import get_task

DATA = os.environ.get("SRNET_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA or not os.path.isdir(DATA), reason="../shared/data not present")


def test_overlap_features_hand_examples():
    swap = B.overlap_features_one("The doctor saw the lawyer .", "The lawyer saw the doctor .")
    assert swap == pytest.approx([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    p, h = "The doctor saw the lawyer near the park .", "the doctor saw the lawyer"
    f = B.overlap_features_one(p, h)
    # words: p = 8, h = 5 -> log(3); jaccard {the, doctor, saw, lawyer} / {.., near, park} = 4/6;
    # premise words in hypothesis: the x3, doctor, saw, lawyer = 6 of 8
    assert f[:6] == pytest.approx([1.0, 1.0, 1.0, math.log(3), 4 / 6, 6 / 8])
    assert 0.0 < f[6] < 1.0
    g = B.overlap_features_one("A cat sleeps .", "Dogs bark loudly")
    assert g[:6] == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) and g[6] == 0.0
    assert B.overlap_features(["a b"], ["b"]).shape == (1, 7)


@needs_data
def test_mnli_bias_model_is_good_on_id_and_chance_on_hans(tmp_path):
    task = get_task("mnli", train_source="dev_matched")
    result = B.fit_bias_model(task)
    assert list(result.log_probs) == ["train", "dev_matched", "hans"]
    dev, hans = result.metrics["dev_matched"], result.metrics["hans"]
    assert dev["accuracy"] > dev["majority_baseline"] + 0.03          # 3-way, beats the majority class
    assert dev["binary_balanced_accuracy"] > 0.62                    # entailment vs rest, chance 0.5
    assert hans["accuracy"] <= 0.505 and hans["majority_baseline"] == 0.5
    assert hans["binary_balanced_accuracy"] <= 0.505
    lp = result.log_probs["train"]
    assert lp.shape == (8000, 3) and lp.dtype == np.float32
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, atol=1e-5)
    # 2-way model expanded as [v_non - log 2, v_ent, v_non - log 2]
    np.testing.assert_allclose(lp[:, 0], lp[:, 2])
    np.testing.assert_allclose(np.exp(lp[:, 0]) * 2 + np.exp(lp[:, 1]), 1.0, atol=1e-5)
    assert result.info["coefficients"]["frac_in_premise"] > 0  # more overlap -> more "entailment"
    paths = result.write(str(tmp_path))
    values, kept = B.read_per_example(paths["train"], task.load("train").ids, 3, check="log_probs")
    np.testing.assert_array_equal(values, lp)
    assert kept.tolist() == list(range(8000))
    assert json.load(open(tmp_path / "bias_metrics.json"))["metrics"]["hans"]["accuracy"] == hans["accuracy"]


def _fever_dir(root):
    rng = np.random.default_rng(0)
    things = [f"thing{i}" for i in range(40)]
    rows = []
    for i in range(300):
        t = things[i % 40]
        kind = rng.integers(3)
        claim = [f"{t} is a film .", f"{t} is not a film .", f"{t} might be a film ."][kind]
        rows.append({"claim": claim, "evidence": f"{t} evidence {i} .", "gold_label": ["SUPPORTS", "REFUTES",
                                                                                      "NOT ENOUGH INFO"][kind]})
    os.makedirs(f"{root}/fever")
    with open(f"{root}/fever/fever.train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.makedirs(f"{root}/fever_symmetric")
    with open(f"{root}/fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl", "w") as f:
        for i, t in enumerate(things[:10]):  # each claim twice, with opposite labels
            for j, lab in enumerate(("SUPPORTS", "REFUTES")):
                f.write(json.dumps({"id": f"{i}{j}", "label": lab, "claim": f"{t} is not a film .",
                                    "evidence_sentence": "x ."}) + "\n")
    return rows


def test_fever_claim_only_bias(tmp_path):
    rows = _fever_dir(tmp_path)
    task = get_task("fever", data_dir=str(tmp_path))
    result = B.fit_bias_model(task, splits=["symmetric_v1"])
    lp = result.log_probs["train"]
    assert result.metrics["train"]["accuracy"] > 0.95  # the claim words give the label away
    # identical claims -> identical (out-of-fold) predictions
    by_claim = {}
    for r, row in zip(lp, rows):
        by_claim.setdefault(row["claim"], []).append(r)
    assert all(np.allclose(v, v[0]) for v in by_claim.values())
    # symmetric: every claim comes with both labels, so a claim-only model cannot beat 50%
    assert result.metrics["symmetric_v1"]["accuracy"] <= 0.5
    assert result.metrics["symmetric_v1"]["accuracy_restricted"] == 0.5


def test_qqp_pair_overlap_bias_uses_native_labels(tmp_path):
    os.makedirs(tmp_path / "QQP")
    lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
    for i in range(40):
        same = i % 2 == 0
        q = f"how do i learn topic{i} fast"
        lines.append(f"{i}\t{2*i}\t{2*i+1}\t{q}\t{q if same else f'what is the capital of country{i}'}\t{int(same)}")
    (tmp_path / "QQP" / "train.tsv").write_text("\n".join(lines) + "\n")
    task = get_task("qqp", data_dir=str(tmp_path))
    result = B.fit_bias_model(task, splits=[])
    assert result.features == "pair_overlap" and result.log_probs["train"].shape == (40, 2)
    assert result.metrics["train"]["accuracy"] == 1.0 and "f1_duplicate" in result.metrics["train"]


def test_task_without_bias_model_is_a_clear_error():
    class NoBias:
        name, bias_features = "custom", None
    with pytest.raises(ValueError, match="task 'custom' has no hand-crafted bias model"):
        B.bias_spec_for(NoBias())


IDS = ["a", "b", "c"]
VALS = np.log(np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32))


def test_parquet_and_json_roundtrip_with_id_join(tmp_path):
    pq_path = str(tmp_path / "bias.parquet")
    B.write_bias_file(pq_path, IDS, VALS)
    values, kept = B.read_per_example(pq_path, ["c", "a"], 3)
    np.testing.assert_array_equal(values, VALS[[2, 0]])
    assert kept.tolist() == [0, 1]
    import pyarrow.parquet as pq
    table = pq.read_table(pq_path)
    assert str(table.schema.field("id").type) == "string"
    assert str(table.schema.field("log_probs").type) == "list<element: float>"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # atomic write left nothing
    js = tmp_path / "bias.json"
    js.write_text(json.dumps({i: v.tolist() for i, v in zip(IDS, VALS)}))
    values, _ = B.read_per_example(str(js), ["b"], 3, check="log_probs")
    np.testing.assert_allclose(values, VALS[[1]])


def test_missing_ids_error_or_drop(tmp_path):
    path = str(tmp_path / "bias.parquet")
    B.write_bias_file(path, IDS, VALS)
    with pytest.raises(ValueError, match=r"bias.parquet' has no row for 2 of 4 examples \(e.g. ids \['x', 'y'\]\)"):
        B.read_per_example(path, ["a", "x", "b", "y"], 3)
    values, kept = B.read_per_example(path, ["a", "x", "b", "y"], 3, missing="drop")  # the QQP rule
    assert kept.tolist() == [0, 2]
    np.testing.assert_array_equal(values, VALS[[0, 1]])


def test_npy_by_position_and_by_integer_id(tmp_path):
    path = str(tmp_path / "log_probs.npy")
    full = np.log(np.full((5, 3), 1 / 3))
    full[3] = np.log([0.7, 0.2, 0.1])
    np.save(path, full)
    values, kept = B.read_per_example(path, ["10", "11", "12", "13", "14"], 3)  # same length: by position
    np.testing.assert_allclose(values[3], np.log([0.7, 0.2, 0.1]), rtol=1e-6)
    values, kept = B.read_per_example(path, ["3", "0"], 3)  # a subsampled split: the id is the row
    np.testing.assert_allclose(values[0], np.log([0.7, 0.2, 0.1]), rtol=1e-6)
    with pytest.raises(ValueError, match="id '9' .* is past its end"):
        B.read_per_example(path, ["1", "9"], 3)
    with pytest.raises(ValueError, match="matched by position"):
        B.read_per_example(path, ["a", "b"], 3)


def test_per_example_file_validation(tmp_path):
    path = str(tmp_path / "bias.parquet")
    B.write_bias_file(path, IDS, VALS)
    with pytest.raises(ValueError, match="rows have 3 values, the task has 2 labels"):
        B.read_per_example(path, IDS, 2)
    probs = str(tmp_path / "teacher.parquet")
    B.write_per_example(probs, IDS, np.exp(VALS), column="probs")
    values, _ = B.read_per_example(probs, IDS, 3, check="probs")
    np.testing.assert_allclose(values.sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="not log-probabilities"):
        B.read_per_example(probs, IDS, 3, check="log_probs")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        B.read_per_example(str(tmp_path / "nope.parquet"), IDS, 3)
    with pytest.raises(ValueError, match="ids are not unique"):
        B.write_bias_file(str(tmp_path / "dup.parquet"), ["a", "a", "b"], VALS)
