"""FEVER claim-evidence pairs (ID) with Fever-Symmetric v1 and v2 (OOD), protocol.md section 7.

Labels in the reference's FeverProcessor order [SUPPORTS, REFUTES, NOT ENOUGH INFO]; text_a is the
claim, text_b the evidence (as the reference). Fever-Symmetric only has SUPPORTS / REFUTES: the 3-way
model's plain argmax is scored (a NOT ENOUGH INFO prediction is wrong, the reference's number), plus the
argmax restricted to the two labels.

Splits: train, dev (ID); symmetric_v1 (v0.1 generated, 717), symmetric_v2 (v0.2 test, 712) (OOD);
symmetric_v2_dev (708) is loadable but not evaluated (the protocol's OOD-augmented training data).
Ids: the 0-based line number for train/dev (the index of the reference's bias .npy, "training order"),
the file's ``id`` for the Symmetric sets.
"""
from __future__ import annotations

import numpy as np

from .. import metrics as M
from .base import PairSplit
from .file_task import FileTask
from .files import FileSpec

LABELS = ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]

_FEVER = ("the claim-evidence pairs of Schuster et al. 2019: fever.train.jsonl (242,911 lines) and "
          "fever.dev.jsonl (Dropbox links in the data instructions of UKPLab/emnlp2020-debiasing-unknown, e.g. "
          "https://www.dropbox.com/s/v1a0depfg7jp90f/fever.train.jsonl)")
_SYM = "github.com/TalSchuster/FeverSymmetric (symmetric_v0.1/ and symmetric_v0.2/)"


def _fever(what, names):
    return FileSpec(what, names, text_a=("claim",), text_b=("evidence", "evidence_sentence"),
                    label=("gold_label", "label"), id=(), source=_FEVER, fmt="jsonl")


def _sym(what, names):
    return FileSpec(what, names, text_a=("claim",), text_b=("evidence_sentence", "evidence"),
                    label=("gold_label", "label"), id=("id",), source=_SYM, fmt="jsonl")


FILES = {
    "train": _fever("FEVER train", ("fever/fever.train.jsonl", "FEVER/fever.train.jsonl", "fever.train.jsonl")),
    "dev": _fever("FEVER dev", ("fever/fever.dev.jsonl", "FEVER/fever.dev.jsonl", "fever.dev.jsonl")),
    "symmetric_v1": _sym("Fever-Symmetric v1 (v0.1 generated)", (
        "fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl",
        "FeverSymmetric/symmetric_v0.1/fever_symmetric_generated.jsonl",
        "symmetric_v0.1/fever_symmetric_generated.jsonl", "fever_symmetric_generated.jsonl")),
    "symmetric_v2": _sym("Fever-Symmetric v2 test (v0.2)", (
        "fever_symmetric/symmetric_v0.2_fever_symmetric_test.jsonl",
        "FeverSymmetric/symmetric_v0.2/fever_symmetric_test.jsonl",
        "symmetric_v0.2/fever_symmetric_test.jsonl", "fever_symmetric_test.jsonl")),
    "symmetric_v2_dev": _sym("Fever-Symmetric v2 dev (v0.2)", (
        "fever_symmetric/symmetric_v0.2_fever_symmetric_dev.jsonl",
        "FeverSymmetric/symmetric_v0.2/fever_symmetric_dev.jsonl",
        "symmetric_v0.2/fever_symmetric_dev.jsonl", "fever_symmetric_dev.jsonl")),
}
_PRESENT_IN_SYMMETRIC = (0, 1)


class FeverTask(FileTask):
    name = "fever"
    label_names = LABELS
    FILES = FILES
    LABEL_MAPS = {"default": {name: i for i, name in enumerate(LABELS)}}
    train_split = "train"
    id_eval_splits = ["dev"]
    ood_eval_splits = ["symmetric_v1", "symmetric_v2"]
    ood_dev_splits = ["symmetric_v2_dev"]  # v0.2 dev: selection/search only
    bias_features = "claim_ngrams"
    # OOD upper bound: + Fever-Symmetric v0.2 dev (708) repeated 10 times (protocol 6)
    OOD_TRAIN = (("symmetric_v2_dev", 10, True),)

    def metrics(self, split: str, logits: np.ndarray, data: PairSplit) -> dict[str, float]:
        if split.startswith("symmetric"):
            return M.two_label_metrics(logits, data.labels, LABELS, _PRESENT_IN_SYMMETRIC)
        return M.classification_metrics(logits, data.labels, LABELS, per_class=True)
