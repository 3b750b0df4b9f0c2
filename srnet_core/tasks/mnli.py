"""MNLI (ID) with HANS (OOD), protocol.md section 7.

Labels in the GLUE/reference order [contradiction, entailment, neutral]. HANS is 2-way: its entailment
examples get label ``entailment`` and its non-entailment examples ``contradiction`` (the mapping the
protocol uses when HANS is training data); HANS metrics collapse the model's 3-way predictions to
entailment vs non-entailment and score them per heuristic x label.

Splits: train (GLUE train.tsv, or with ``train_source: train_subset`` the 29,524-row subset of MNLI train that
../shared/data has), dev_matched, dev_mismatched (ID), hans (OOD), and hans_train (not evaluated; the HANS
training set, for OOD-augmented runs). Ids: the GLUE ``index`` column for MNLI (the index the reference's
bias .npy uses), ``pairID`` for the official HANS file, else the 0-based row number.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from .base import PairSplit
from .file_task import FileTask, FileTaskOptions
from .files import FileSpec

LABELS = ["contradiction", "entailment", "neutral"]
ENTAILMENT = LABELS.index("entailment")

_GLUE = "GLUE (https://gluebenchmark.com/tasks, MNLI zip; unpacks to MNLI/), or nyu-mll/glue on the HF hub"
_HANS = ("the HANS repository github.com/tommccoy1/hans (heuristics_evaluation_set.txt), or the "
         "hans/hans_evaluation_set.tsv layout of ../shared/data (see its README)")


def _mnli(what: str, names: tuple[str, ...], id_required: bool = True) -> FileSpec:
    return FileSpec(what, names, text_a=("sentence1", "premise"), text_b=("sentence2", "hypothesis"),
                    label=("gold_label",), id=("index",), id_required=id_required, source=_GLUE)


def _hans(what: str, names: tuple[str, ...]) -> FileSpec:
    return FileSpec(what, names, text_a=("sentence1",), text_b=("sentence2",), label=("gold_label",),
                    id=("pairID",), id_required=False, source=_HANS,
                    extra=(("heuristic", ("heuristic",)), ("subcase", ("subcase",)), ("hans_label", ("gold_label",))))


FILES = {
    "train": _mnli("MNLI train", ("MNLI/train.tsv", "mnli/train.tsv", "glue_data/MNLI/train.tsv")),
    # a sample of MNLI train (../shared/data/README.md: 29,524 pairs, none in either dev set), for machines
    # without the 392,702-row file; read as the train split when train_source is train_subset
    "train_subset": _mnli("MNLI train subset", ("mnli/mnli_train_subset.tsv", "MNLI/train_subset.tsv",
                                                "mnli/train_subset.tsv")),
    "dev_matched": _mnli("MNLI dev-matched", ("MNLI/dev_matched.tsv", "mnli/dev_matched.tsv",
                                              "mnli/mnli_dev_matched.tsv", "glue_data/MNLI/dev_matched.tsv")),
    "dev_mismatched": _mnli("MNLI dev-mismatched", ("MNLI/dev_mismatched.tsv", "mnli/dev_mismatched.tsv",
                                                    "mnli/mnli_dev_mismatched.tsv",
                                                    "glue_data/MNLI/dev_mismatched.tsv"),
                           id_required=False),  # the multinli_1.0 copy has no index (and repeats pairIDs): row numbers
    "hans": _hans("HANS evaluation set", ("hans/heuristics_evaluation_set.txt", "HANS/heuristics_evaluation_set.txt",
                                          "heuristics_evaluation_set.txt", "hans/hans_evaluation_set.tsv")),
    "hans_train": _hans("HANS training set", ("hans/heuristics_train_set.txt", "HANS/heuristics_train_set.txt",
                                              "heuristics_train_set.txt", "hans/hans_train_set.tsv")),
}
_MNLI_LABELS = {name: i for i, name in enumerate(LABELS)}
_HANS_LABELS = {"entailment": ENTAILMENT, "non-entailment": LABELS.index("contradiction")}


@dataclass
class MnliOptions(FileTaskOptions):
    """MNLI options (plus those of every file task: paths, max_train_rows, max_eval_rows, subsample_seed,
    source).

    train_source: "train" (GLUE train.tsv; ID eval on dev-matched and dev-mismatched), "train_subset" (a
        subset of MNLI train, ``mnli/mnli_train_subset.tsv``; the same full dev sets; rows tag it
        ``train_subset=<sha>[subset]`` in data_fingerprint and its nodes have their own keys) or "dev_matched"
        (no MNLI train at hand: train on a fixed, seeded ``train_size``-row subset of dev-matched and use
        the remaining rows as the ID dev set; dev-mismatched is not evaluated).
    train_size / split_seed: size and seed of that subset (8,000 of 9,815 leaves 1,815 dev rows).
    eval_mismatched: also evaluate dev-mismatched (train_source "train" only).
    """

    train_source: str = "train"
    train_size: int = 8000
    split_seed: int = 0
    eval_mismatched: bool = True


class MnliTask(FileTask):
    name = "mnli"
    label_names = LABELS
    Options = MnliOptions
    FILES = FILES
    LABEL_MAPS = {"default": _MNLI_LABELS, "hans": _HANS_LABELS, "hans_train": _HANS_LABELS}
    train_split = "train"
    ood_eval_splits = ["hans"]
    ood_dev_splits = ["hans_train"]  # selection/search only (eval_ood_dev)
    bias_features = "nli_overlap"
    # OOD upper bound: + the HANS training set (30,000), non-entailment mapped to contradiction (protocol 6)
    OOD_TRAIN = (("hans_train", 1, True),)

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        o = self.options
        if o.train_source not in ("train", "train_subset", "dev_matched"):
            raise ValueError(f"task 'mnli': option train_source must be 'train', 'train_subset' or 'dev_matched', "
                             f"not {o.train_source!r}")
        if o.train_source == "train_subset" and o.source != "files":
            raise ValueError("task 'mnli': option train_source 'train_subset' reads a file; set source: files")
        if o.train_source == "dev_matched":
            self.id_eval_splits = ["dev_matched"]
        else:
            self.id_eval_splits = ["dev_matched"] + (["dev_mismatched"] if o.eval_mismatched else [])

    def file_split(self, split: str) -> str:
        """The split whose file ``split`` is read from."""
        source = self.options.train_source
        if source == "dev_matched" and split in ("train", "dev_matched"):
            return "dev_matched"
        if source == "train_subset" and split == "train":
            return "train_subset"
        return split

    @staticmethod
    def size_hint(which: str, **options) -> int | None:
        """Training rows without reading the file (the planner's step counts), for the subset source."""
        if which == "train" and options.get("train_source") == "train_subset":
            from .fingerprints import KNOWN_FILES  # the file's row count is recorded once, with its sha256

            size = KNOWN_FILES["mnli/mnli_train_subset.tsv"].rows
            return min(size, options.get("max_train_rows") or size)
        return None

    def _load_full(self, split: str) -> PairSplit:
        if self.file_split(split) == "train_subset" and split == "train":
            return self._read_file("train_subset", "train")
        if self.options.train_source == "dev_matched" and split in ("train", "dev_matched"):
            full = super()._load_full("dev_matched")
            train_idx, rest_idx = self._dev_split(len(full))
            out = full.subset(train_idx if split == "train" else rest_idx)
            out.name = split
            return out
        data = super()._load_full(split)
        if split.startswith("hans") and "heuristic" not in data.extra:
            from .files import DataFileError
            raise DataFileError(f"{FILES[split].what}: the file has no 'heuristic' column, which HANS scoring "
                                f"needs. Get it from {_HANS}")
        return data

    def _dev_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        size = self.options.train_size
        if not 0 < size < n:
            raise ValueError(f"task 'mnli': option train_size must be between 1 and {n - 1} (the dev-matched "
                             f"file has {n} rows), not {size}")
        perm = np.random.default_rng(self.options.split_seed).permutation(n)
        return np.sort(perm[:size]), np.sort(perm[size:])

    def metrics(self, split: str, logits: np.ndarray, data: PairSplit) -> dict[str, float]:
        if split.startswith("hans"):  # 3-way predictions scored 2-way, per heuristic x label
            pred = M.collapse_to_entailment(logits, ENTAILMENT)
            gold = np.asarray(data.labels) == ENTAILMENT
            return M.hans_metrics(pred, gold, data.extra["heuristic"], data.extra.get("subcase"))
        return M.classification_metrics(logits, data.labels, LABELS, per_class=True)
