"""Metrics: F1 / per-class accuracy against hand counts, the HANS 3-to-2 collapse and per heuristic x label
accuracy on a hand-made prediction file, and 3-way models scored on 2-label sets."""
import numpy as np
import pytest

from srnet_core import metrics as M
from srnet_core.tasks import get_task

HANS_ROWS = [  # gold, premise, hypothesis, heuristic
    ("non-entailment", "The doctor saw the lawyer .", "The lawyer saw the doctor .", "lexical_overlap"),
    ("non-entailment", "The judge paid the actor .", "The actor paid the judge .", "lexical_overlap"),
    ("entailment", "The doctor and the lawyer slept .", "The lawyer slept .", "lexical_overlap"),
    ("entailment", "The judge thanked the actor .", "The judge thanked the actor .", "lexical_overlap"),
    ("non-entailment", "The student that called the president advised the judges .",
     "The president advised the judges .", "subsequence"),
    ("non-entailment", "The banker near the tourist slept .", "The tourist slept .", "subsequence"),
    ("entailment", "The manager who the actor saw danced .", "The actor saw the manager .", "subsequence"),
    ("entailment", "The author and the tourist ran .", "The author ran .", "subsequence"),
    ("non-entailment", "If the artist slept , the actor ran .", "The artist slept .", "constituent"),
    ("non-entailment", "Unless the doctor ran , the judge slept .", "The doctor ran .", "constituent"),
    ("entailment", "Certainly the lawyer waited .", "The lawyer waited .", "constituent"),
    ("entailment", "Clearly the banker smiled .", "The banker smiled .", "constituent"),
]
# 3-way predictions (ids are row numbers). Collapsed: neutral/contradiction -> non-entailment.
PREDICTIONS = ["entailment", "neutral", "entailment", "entailment",   # lex: non 1/2, ent 2/2
               "entailment", "entailment", "contradiction", "entailment",  # sub: non 0/2, ent 1/2
               "contradiction", "neutral", "entailment", "neutral"]  # con: non 2/2, ent 1/2


@pytest.fixture
def hans_split(tmp_path):
    (tmp_path / "hans").mkdir()
    lines = ["gold_label\tsentence1\tsentence2\theuristic\tsource_split"]
    lines += [f"{g}\t{p}\t{h}\t{heur}\tvalidation" for g, p, h, heur in HANS_ROWS]
    (tmp_path / "hans" / "hans_evaluation_set.tsv").write_text("\n".join(lines) + "\n")
    return get_task("mnli", data_dir=str(tmp_path)).load("hans")


EXPECTED_HANS = {
    "accuracy": 7 / 12, "accuracy_entailment": 4 / 6, "accuracy_non-entailment": 3 / 6,
    "hans_lexical_overlap": 3 / 4, "hans_lexical_overlap_entailment": 1.0, "hans_lexical_overlap_non-entailment": 0.5,
    "hans_subsequence": 1 / 4, "hans_subsequence_entailment": 0.5, "hans_subsequence_non-entailment": 0.0,
    "hans_constituent": 3 / 4, "hans_constituent_entailment": 0.5, "hans_constituent_non-entailment": 1.0,
}


def test_hans_prediction_file_collapse_and_cells(hans_split, tmp_path):
    pred_file = tmp_path / "preds.txt"
    pred_file.write_text("pairID,gold_label\n" + "".join(f"{i},{p}\n" for i, p in enumerate(PREDICTIONS)))
    scores = M.score_hans_prediction_file(str(pred_file), hans_split)
    assert scores == pytest.approx(EXPECTED_HANS)
    assert set(scores) == set(EXPECTED_HANS)


def test_hans_task_metrics_from_logits_collapse_3way(hans_split):
    task = get_task("mnli", data_dir="unused")
    index = {name: i for i, name in enumerate(task.label_names)}
    logits = np.full((12, 3), -5.0)
    logits[np.arange(12), [index[p] for p in PREDICTIONS]] = 5.0
    assert task.metrics("hans", logits, hans_split) == pytest.approx(EXPECTED_HANS)
    # the gold labels: entailment -> "entailment" (1), non-entailment -> "contradiction" (0)
    assert hans_split.labels.tolist() == [0, 0, 1, 1] * 3


def test_hans_prediction_file_errors(hans_split, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("pairID,gold_label\n0,entailment\n")
    with pytest.raises(ValueError, match="no prediction for 11 HANS example"):
        M.score_hans_prediction_file(str(short), hans_split)
    bad = tmp_path / "bad.txt"
    bad.write_text("pairID,gold_label\n" + "".join(f"{i},maybe\n" for i in range(12)))
    with pytest.raises(ValueError, match="unknown label"):
        M.score_hans_prediction_file(str(bad), hans_split)


def test_f1_and_per_class_accuracy_hand_counts():
    gold = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    pred = np.array([1, 0, 1, 1, 0, 0, 0, 0])
    # class 1: tp 2, fp 1, fn 2 -> F1 = 4/7; class 0: tp 3, fp 2, fn 1 -> F1 = 6/9
    assert M.f1_of_class(pred, gold, 1) == pytest.approx(4 / 7)
    assert M.f1_of_class(pred, gold, 0) == pytest.approx(6 / 9)
    assert M.per_class_accuracy(pred, gold, ["not_duplicate", "duplicate"]) == pytest.approx(
        {"accuracy_not_duplicate": 3 / 4, "accuracy_duplicate": 2 / 4})
    from sklearn.metrics import f1_score
    assert M.f1_of_class(pred, gold, 1) == pytest.approx(f1_score(gold, pred))


def test_paws_constant_predictor_trap():
    """On PAWS-QQP's 486/191 split, always answering not_duplicate scores 71.8% accuracy but F1(dup) = 0."""
    task = get_task("qqp", data_dir="unused")
    gold = np.array([0] * 486 + [1] * 191)
    logits = np.tile([1.0, 0.0], (677, 1))

    class Data:
        labels = gold
    m = task.metrics("paws_qqp", logits, Data)
    assert m["accuracy"] == pytest.approx(486 / 677)
    assert m["f1_duplicate"] == 0.0
    assert m["f1_not_duplicate"] == pytest.approx(2 * 486 / (2 * 486 + 191))
    assert m["accuracy_duplicate"] == 0.0 and m["accuracy_not_duplicate"] == 1.0
    assert set(task.metrics("dev", logits, Data)) == {"accuracy", "f1_duplicate"}
    assert task.primary_metric("dev") == "f1_duplicate"


def test_fever_symmetric_scores_3way_model_on_2_labels():
    task = get_task("fever", data_dir="unused")
    gold = np.array([0, 0, 1, 1])  # SUPPORTS, SUPPORTS, REFUTES, REFUTES
    logits = np.array([[2.0, 1.0, 0.0],   # SUPPORTS: right
                       [1.0, 0.0, 3.0],   # NEI: wrong; restricted -> SUPPORTS: right
                       [0.0, 1.0, 3.0],   # NEI: wrong; restricted -> REFUTES: right
                       [2.0, 1.0, 0.0]])  # SUPPORTS: wrong

    class Data:
        labels = gold
    m = task.metrics("symmetric_v1", logits, Data)
    assert m == pytest.approx({"accuracy": 0.25, "accuracy_restricted": 0.75, "predicted_not_enough_info_rate": 0.5,
                               "accuracy_SUPPORTS": 0.5, "accuracy_REFUTES": 0.0})
