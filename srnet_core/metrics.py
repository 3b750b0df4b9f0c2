"""Evaluation metrics (protocol.md section 7). Plain numpy; metric names are flat strings.

- accuracy, per-class accuracy (recall of each gold class), F1 of one class.
- HANS: a 3-way NLI model's predictions are collapsed to entailment vs non-entailment (neutral and
  contradiction -> non-entailment); accuracy overall, per gold label, per heuristic, per heuristic x label
  (and per subcase when the file has that column).
- Two-label sets scored with a 3-way model (Fever-Symmetric): plain argmax accuracy (a NOT ENOUGH INFO
  prediction is wrong), plus the accuracy of the argmax restricted to the labels the set has.
"""
from __future__ import annotations

import csv

import numpy as np


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if len(gold) else float("nan")


def f1_of_class(pred, gold, cls: int) -> float:
    """F1 of class ``cls`` (as sklearn's binary F1 with pos_label=cls); 0.0 when it is never predicted nor gold."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == cls) & (gold == cls)))
    fp = float(np.sum((pred == cls) & (gold != cls)))
    fn = float(np.sum((pred != cls) & (gold == cls)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def per_class_accuracy(pred, gold, label_names: list[str]) -> dict[str, float]:
    """``accuracy_<label>``: the fraction of gold examples of each label predicted correctly (absent labels skipped)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    out = {}
    for i, name in enumerate(label_names):
        sel = gold == i
        if sel.any():
            out[f"accuracy_{name}"] = accuracy(pred[sel], gold[sel])
    return out


def classification_metrics(logits, gold, label_names: list[str], f1_classes: tuple[int, ...] = (),
                           per_class: bool = False) -> dict[str, float]:
    pred = np.asarray(logits).argmax(-1)
    out = {"accuracy": accuracy(pred, gold)}
    for cls in f1_classes:
        out[f"f1_{label_names[cls]}"] = f1_of_class(pred, gold, cls)
    if per_class:
        out.update(per_class_accuracy(pred, gold, label_names))
    return out


HANS_LABELS = ("entailment", "non-entailment")


def hans_metrics(pred_entailment, gold_entailment, heuristics, subcases=None) -> dict[str, float]:
    """HANS scores from boolean "is entailment" predictions and gold labels.

    Names: accuracy, accuracy_entailment, accuracy_non-entailment, hans_<heuristic>,
    hans_<heuristic>_<label> (6 cells for the 3 heuristics), hans_subcase_<subcase> when given.
    """
    pred = np.asarray(pred_entailment, dtype=bool)
    gold = np.asarray(gold_entailment, dtype=bool)
    heuristics = np.asarray(heuristics, dtype=object)
    out = {"accuracy": accuracy(pred, gold)}
    for label, value in zip(HANS_LABELS, (True, False)):
        sel = gold == value
        if sel.any():
            out[f"accuracy_{label}"] = accuracy(pred[sel], gold[sel])
    for heuristic in sorted(set(heuristics.tolist())):
        in_h = heuristics == heuristic
        out[f"hans_{heuristic}"] = accuracy(pred[in_h], gold[in_h])
        for label, value in zip(HANS_LABELS, (True, False)):
            sel = in_h & (gold == value)
            if sel.any():
                out[f"hans_{heuristic}_{label}"] = accuracy(pred[sel], gold[sel])
    if subcases is not None and any(subcases):
        subcases = np.asarray(subcases, dtype=object)
        for sub in sorted(set(subcases.tolist()) - {""}):
            sel = subcases == sub
            out[f"hans_subcase_{sub}"] = accuracy(pred[sel], gold[sel])
    return out


def collapse_to_entailment(logits_or_pred, entailment_index: int) -> np.ndarray:
    """3-way NLI -> "is entailment": neutral and contradiction both become non-entailment."""
    arr = np.asarray(logits_or_pred)
    pred = arr.argmax(-1) if arr.ndim == 2 else arr
    return pred == entailment_index


def two_label_metrics(logits, gold, label_names: list[str], present: tuple[int, ...]) -> dict[str, float]:
    """A K-way model on a set whose gold labels are only ``present`` (e.g. Fever-Symmetric: SUPPORTS/REFUTES).

    accuracy: argmax over all K labels (the reference's score; predicting an absent label is wrong).
    accuracy_restricted: argmax over the present labels only. predicted_<absent label>_rate: how often the
    model predicts a label the set never has. Plus per-class accuracy of the present labels.
    """
    logits = np.asarray(logits)
    gold = np.asarray(gold)
    pred = logits.argmax(-1)
    present_idx = np.asarray(present)
    restricted = present_idx[logits[:, present_idx].argmax(-1)]
    out = {"accuracy": accuracy(pred, gold), "accuracy_restricted": accuracy(restricted, gold)}
    for i, name in enumerate(label_names):
        if i not in present:
            out[f"predicted_{name.lower().replace(' ', '_')}_rate"] = float(np.mean(pred == i)) if len(pred) else 0.0
    out.update(per_class_accuracy(pred, gold, label_names))
    return out


def read_prediction_file(path: str) -> dict[str, str]:
    """A predictions file as written for the official HANS scorer (``evaluate_heur_output.py``): a header
    line, then ``<id>,<label>`` per line (comma or tab separated). Returns {id: predicted label}."""
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline()
        delim = "\t" if "\t" in first else ","
        reader = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_NONE)
        preds = {}
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"predictions file '{path}' line {line_no}: expected '<id>{delim}<label>', "
                                 f"got {row!r}")
            preds[row[0].strip()] = row[1].strip()
    return preds


def score_hans_prediction_file(path: str, data) -> dict[str, float]:
    """Score a HANS prediction file against a loaded HANS split (``PairSplit`` with extra ``heuristic``).

    Labels may be 3-way (entailment / neutral / contradiction) or 2-way (entailment / non-entailment);
    anything but ``entailment`` counts as non-entailment. Gold: ``data.extra['hans_label']``.
    """
    preds = read_prediction_file(path)
    missing = [i for i in data.ids if i not in preds]
    if missing:
        raise ValueError(f"predictions file '{path}' has no prediction for {len(missing)} HANS example(s), "
                         f"e.g. id {missing[0]!r}")
    known = {"entailment", "non-entailment", "neutral", "contradiction"}
    bad = sorted({preds[i] for i in data.ids} - known)
    if bad:
        raise ValueError(f"predictions file '{path}': unknown label(s) {bad}; expected one of {sorted(known)}")
    pred = np.array([preds[i] == "entailment" for i in data.ids])
    gold = np.array([g == "entailment" for g in data.extra["hans_label"]])
    return hans_metrics(pred, gold, data.extra["heuristic"], data.extra.get("subcase"))
