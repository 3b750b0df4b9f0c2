"""Loading task splits from the HF hub (task option ``source: hub``), for users with network access.

Never used by tests or the offline machines (loading a hub name offline fails at once). Sets that the hub
does not carry in the protocol's form (PAWS-QQP, which must be rebuilt from the Quora dump, FEVER
claim-evidence pairs, Fever-Symmetric) fail with a message pointing at the file layout instead.
"""
from __future__ import annotations

import numpy as np

from .base import PairSplit

# (task, split) -> (dataset, config, hub split, text_a field, text_b field, {hub label -> task label name})
HUB = {
    ("mnli", "train"): ("nyu-mll/glue", "mnli", "train", "premise", "hypothesis",
                        {0: "entailment", 1: "neutral", 2: "contradiction"}),
    ("mnli", "dev_matched"): ("nyu-mll/glue", "mnli", "validation_matched", "premise", "hypothesis",
                              {0: "entailment", 1: "neutral", 2: "contradiction"}),
    ("mnli", "dev_mismatched"): ("nyu-mll/glue", "mnli", "validation_mismatched", "premise", "hypothesis",
                                 {0: "entailment", 1: "neutral", 2: "contradiction"}),
    # HF hans: label 0 = entailment, 1 = non-entailment; non-entailment -> contradiction, as from files.
    ("mnli", "hans"): ("jhu-cogsci/hans", None, "validation", "premise", "hypothesis",
                       {0: "entailment", 1: "contradiction"}),
    ("mnli", "hans_train"): ("jhu-cogsci/hans", None, "train", "premise", "hypothesis",
                             {0: "entailment", 1: "contradiction"}),
    ("qqp", "train"): ("nyu-mll/glue", "qqp", "train", "question1", "question2",
                       {0: "not_duplicate", 1: "duplicate"}),
    ("qqp", "dev"): ("nyu-mll/glue", "qqp", "validation", "question1", "question2",
                     {0: "not_duplicate", 1: "duplicate"}),
    ("qqp", "paws_wiki"): ("google-research-datasets/paws", "labeled_final", "test", "sentence1", "sentence2",
                           {0: "not_duplicate", 1: "duplicate"}),
    ("qqp", "paws_wiki_dev"): ("google-research-datasets/paws", "labeled_final", "validation", "sentence1",
                               "sentence2", {0: "not_duplicate", 1: "duplicate"}),
}


def load_from_hub(task, split: str) -> PairSplit:
    key = (task.name, split)
    if key not in HUB:
        raise ValueError(f"task '{task.name}' split '{split}' is not on the HF hub in the protocol's form; use "
                         "source: files and the layout in docs/tasks.md")
    import datasets

    name, config, hub_split, a, b, labels = HUB[key]
    ds = datasets.load_dataset(name, config, split=hub_split)
    index = {label: i for i, label in enumerate(task.label_names)}
    id_field = "idx" if "idx" in ds.column_names else ("id" if "id" in ds.column_names else None)
    ids = [str(x) for x in ds[id_field]] if id_field else [str(i) for i in range(len(ds))]
    y = np.asarray([index[labels[int(v)]] for v in ds["label"]], dtype=np.int64)
    extra = {}
    if split.startswith("hans"):
        extra["heuristic"] = list(ds["heuristic"])
        extra["subcase"] = list(ds["subcase"])
        extra["hans_label"] = ["entailment" if int(v) == 0 else "non-entailment" for v in ds["label"]]
    return PairSplit(split, ids, list(ds[a]), list(ds[b]), y, extra)
