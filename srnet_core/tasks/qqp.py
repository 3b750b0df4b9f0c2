"""QQP (ID) with PAWS-QQP and PAWS-Wiki (OOD), protocol.md section 7.

Labels [not_duplicate, duplicate] = 0/1 as in GLUE and PAWS. The ID metric is the F1 of the duplicate
class. PAWS sets are imbalanced (PAWS-QQP dev_and_test: 486 / 191), so a constant predictor can beat a
biased model on F1: they also report accuracy, the F1 of each class and per-class accuracy.

Splits: train, dev (ID; with ``train_source: train_subset`` both come from the 9,999-row QQP train subset of
../shared/data, the dev split a seeded held-out slice of it, since QQP dev is not available there); paws_qqp (dev_and_test, 677), paws_wiki (test, 8,000) (OOD); paws_qqp_train,
paws_wiki_train and paws_wiki_dev are loadable but not evaluated (the first two are the OOD training data
of ``add_ood_train``). Ids: the files' ``id`` column (GLUE's pair id for QQP, the
key of the reference's bias dict).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from .base import PairSplit
from .file_task import FileTask, FileTaskOptions
from .files import FileSpec

LABELS = ["not_duplicate", "duplicate"]
DUPLICATE = 1

_GLUE = "GLUE (https://gluebenchmark.com/tasks, QQP zip; unpacks to QQP/), or nyu-mll/glue on the HF hub"
_PAWS_QQP = ("PAWS-QQP, built from the Quora dump with qqp_generate_data.py of "
             "github.com/google-research-datasets/paws (writes paws_qqp/{train,dev_and_test}.tsv)")
_PAWS_WIKI = ("PAWS-Wiki Labeled (Final) from github.com/google-research-datasets/paws "
              "(paws_wiki_labeled_final.tar.gz unpacks to final/{train,dev,test}.tsv)")


def _qqp(what, names):
    return FileSpec(what, names, text_a=("question1",), text_b=("question2",), label=("is_duplicate",),
                    id=("id",), source=_GLUE)


def _paws(what, names, source):
    return FileSpec(what, names, text_a=("sentence1",), text_b=("sentence2",), label=("label",), id=("id",),
                    source=source)


FILES = {
    "train": _qqp("QQP train", ("QQP/train.tsv", "qqp/train.tsv", "glue_data/QQP/train.tsv")),
    "dev": _qqp("QQP dev", ("QQP/dev.tsv", "qqp/dev.tsv", "glue_data/QQP/dev.tsv")),
    # a sample of QQP train (../shared/data/README.md: 9,999 pairs, none in PAWS-QQP), for machines without
    # GLUE's QQP; with train_source train_subset it is both the train split and (a held-out slice) the dev split
    "train_subset": _qqp("QQP train subset", ("qqp/qqp_train_subset.tsv", "QQP/train_subset.tsv",
                                              "qqp/train_subset.tsv")),
    "paws_qqp": _paws("PAWS-QQP dev_and_test", ("paws_qqp/dev_and_test.tsv", "paws/qqp/dev_and_test.tsv",
                                                 "paws_final/dev_and_test.tsv", "PAWS-QQP/dev_and_test.tsv"),
                      _PAWS_QQP),
    "paws_qqp_train": _paws("PAWS-QQP train", ("paws_qqp/train.tsv", "paws/qqp/train.tsv", "paws_final/train.tsv",
                                               "PAWS-QQP/train.tsv"), _PAWS_QQP),
    "paws_wiki": _paws("PAWS-Wiki test", ("paws_wiki/test.tsv", "paws_wiki/final/test.tsv", "paws/wiki/test.tsv",
                                          "final/test.tsv"), _PAWS_WIKI),
    "paws_wiki_train": _paws("PAWS-Wiki train", ("paws_wiki/train.tsv", "paws_wiki/final/train.tsv",
                                                 "paws/wiki/train.tsv", "final/train.tsv"), _PAWS_WIKI),
    "paws_wiki_dev": _paws("PAWS-Wiki dev", ("paws_wiki/dev.tsv", "paws_wiki/final/dev.tsv", "paws/wiki/dev.tsv",
                                             "final/dev.tsv"), _PAWS_WIKI),
}


@dataclass
class QqpOptions(FileTaskOptions):
    """QQP options (plus those of every file task).

    train_source: "train" (GLUE train.tsv and dev.tsv) or "train_subset" (the QQP train subset
        ``qqp/qqp_train_subset.tsv``: a seeded ``dev_size``-row slice of it is the ID dev set, the rest is
        trained on; rows tag it ``train_subset=<sha>[subset]`` and its nodes have their own keys).
    dev_size / split_seed: size and seed of that held-out slice (1,000 of 9,999 leaves 8,999 to train on).
    """

    train_source: str = "train"
    dev_size: int = 1000
    split_seed: int = 0


class QqpTask(FileTask):
    name = "qqp"
    label_names = LABELS
    Options = QqpOptions
    FILES = FILES
    LABEL_MAPS = {"default": {"0": 0, "1": 1}}
    skip_malformed = 1e-3  # GLUE's QQP reader skips rows with missing fields; more than 0.1% is an error
    train_split = "train"
    id_eval_splits = ["dev"]
    ood_eval_splits = ["paws_qqp", "paws_wiki"]
    ood_dev_splits = ["paws_qqp_train"]  # selection/search only (eval_ood_dev)
    bias_features = "pair_overlap"
    # OOD upper bound: + PAWS-QQP train (11,988) + PAWS-Wiki train (49,401), both required: the reference
    # trains on both (--dataset_names qqp,paws_qqp,paws_wiki), and a run without one would be another experiment
    OOD_TRAIN = (("paws_qqp_train", 1, True), ("paws_wiki_train", 1, True))

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        o = self.options
        if o.train_source not in ("train", "train_subset"):
            raise ValueError(f"task 'qqp': option train_source must be 'train' or 'train_subset', not {o.train_source!r}")
        if o.train_source == "train_subset" and o.source != "files":
            raise ValueError("task 'qqp': option train_source 'train_subset' reads a file; set source: files")
        if not (isinstance(o.dev_size, int) and o.dev_size >= 1):
            raise ValueError(f"task 'qqp': option dev_size must be a positive integer, not {o.dev_size!r}")

    def file_split(self, split: str) -> str:
        """The split whose file ``split`` is read from."""
        if self.options.train_source == "train_subset" and split in ("train", "dev"):
            return "train_subset"
        return split

    @staticmethod
    def size_hint(which: str, **options) -> int | None:
        if which == "train" and options.get("train_source") == "train_subset":
            from .fingerprints import KNOWN_FILES  # the file's row count is recorded once, with its sha256

            size = KNOWN_FILES["qqp/qqp_train_subset.tsv"].rows - int(options.get("dev_size", 1000))  # minus held-out dev
            return min(size, options.get("max_train_rows") or size)
        return None

    def _load_full(self, split: str) -> PairSplit:
        if self.file_split(split) != "train_subset":
            return super()._load_full(split)
        full = self._read_file("train_subset", split)
        size = self.options.dev_size
        if not 0 < size < len(full):
            raise ValueError(f"task 'qqp': option dev_size must be between 1 and {len(full) - 1} (the QQP train "
                             f"subset has {len(full)} rows), not {size}")
        perm = np.random.default_rng(self.options.split_seed).permutation(len(full))
        out = full.subset(np.sort(perm[:size] if split == "dev" else perm[size:]))
        out.name = split
        return out

    def primary_metric(self, split: str) -> str:
        return "f1_duplicate"

    def metrics(self, split: str, logits: np.ndarray, data: PairSplit) -> dict[str, float]:
        if split.startswith("paws"):
            return M.classification_metrics(logits, data.labels, LABELS, f1_classes=(DUPLICATE, 0), per_class=True)
        return M.classification_metrics(logits, data.labels, LABELS, f1_classes=(DUPLICATE,))
