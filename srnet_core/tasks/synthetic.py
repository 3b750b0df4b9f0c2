"""A generated NLI-style task with a real rule and a spurious feature whose strength you control.

Premise: "the {adj} {agent} {verb} the {patient} near the {place} ."  The real rule: the hypothesis is
entailed iff it does not contradict who did what to whom. The spurious feature is word overlap, as in HANS:
  - entailed, high overlap:   "the {agent} {verb} the {patient} near the {place} ."
  - entailed, low overlap:    "someone {verb} a {patient_class} ." / "something happened at a {place} ." ...
  - not entailed, high overlap: roles swapped, "the {patient} {verb} the {agent} near the {place} ." (all words
    occur in the premise: the lexical-overlap trap)
  - not entailed, low overlap: the same templates negated, "nobody {verb} a {patient_class} ." ... (generator 2,
    the default: both low-overlap labels share one premise word, so word overlap tells them apart no better
    than chance; generator 1, the first templates, used a different event with fresh words instead)
In ``train`` and ``dev`` (ID) the overlap agrees with the label with probability ``spurious_agreement``; in
``ood`` it is reversed (entailed pairs low overlap, non-entailed high overlap) or ``balanced`` (50/50).
Generation is seeded and deterministic: the same options give the same examples, byte for byte.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .base import PairSplit, Task, accuracy

AGENTS = {
    "person": ["doctor", "lawyer", "teacher", "artist", "student", "senator", "judge", "banker", "tourist",
               "author", "manager", "actor", "athlete", "secretary", "scientist", "professor"],
    "animal": ["dog", "cat", "horse", "rabbit", "tiger", "bear", "monkey", "sheep", "lion", "goat", "mouse",
               "fox", "wolf", "duck", "camel", "zebra"],
}
VERBS = ["saw", "helped", "called", "paid", "thanked", "followed", "avoided", "admired", "recognized",
         "visited", "contacted", "believed", "encouraged", "supported", "introduced", "advised"]
ADJS = ["tall", "young", "old", "quiet", "happy", "famous", "busy", "clever", "brave", "tired", "polite", "angry"]
PLACES = ["river", "station", "library", "market", "bridge", "hospital", "museum", "park", "school", "harbor",
          "church", "theater", "airport", "bakery", "garden", "stadium"]
LABELS = ["entailment", "non_entailment"]


@dataclass(frozen=True)
class SyntheticOptions:
    n_train: int = 2000
    n_dev: int = 500
    n_ood: int = 500
    spurious_agreement: float = 0.9
    ood_mode: str = "reversed"  # or "balanced"
    data_seed: int = 0
    # Template set. 2 (default): the low-overlap hypotheses of both labels share exactly one premise word and
    # differ only in the words some/no ("someone saw a person" vs "nobody saw a person"), so overlap features
    # (the bias model) see only high vs low overlap, as on HANS. 1: the first templates, kept to reproduce old
    # results: their low-overlap non-entailed hypotheses share no premise word, so an overlap bias model is
    # ~0.99 accurate on low-overlap pairs, a near-oracle against which PoE learns almost nothing.
    generator: int = 2
    # OOD upper bound (protocol.md section 6): add OOD-distributed training examples to the training split,
    # as MNLI + HANS train. n_ood_train of them, drawn independently of the ``ood`` test split.
    add_ood_train: bool = False
    n_ood_train: int = 500
    # OOD dev (selection and search only; evaluated with the task option eval_ood_dev): a fresh seeded draw
    # from the OOD distribution, distinct from the reported ``ood`` test split.
    n_ood_dev: int = 500


def _noun_class(noun: str) -> str:
    return next(c for c, words in AGENTS.items() if noun in words)


def _make_pair(rng: random.Random, entailed: bool, high_overlap: bool, generator: int = 2) -> tuple[str, str]:
    nouns = AGENTS["person"] + AGENTS["animal"]
    agent, patient = rng.sample(nouns, 2)
    verb, adj, place = rng.choice(VERBS), rng.choice(ADJS), rng.choice(PLACES)
    premise = f"the {adj} {agent} {verb} the {patient} near the {place} ."
    if entailed and high_overlap:
        hyp = rng.choice([
            f"the {agent} {verb} the {patient} near the {place} .",
            f"the {adj} {agent} {verb} the {patient} .",
            f"the {agent} {verb} the {patient} .",
        ])
    elif not high_overlap and generator >= 2:
        # one premise word each (the verb or the place); the label is in some/no alone
        agent_c, patient_c = _noun_class(agent), _noun_class(patient)
        hyp = rng.choice([
            f"someone {verb} a {patient_c} .", f"a {agent_c} {verb} somebody .",
            f"something happened at a {place} .", f"a {agent_c} was at a {place} .",
        ] if entailed else [
            f"nobody {verb} a {patient_c} .", f"no {agent_c} {verb} anybody .",
            f"nothing happened at a {place} .", f"no {agent_c} was at a {place} .",
        ])
    elif entailed:
        hyp = rng.choice([
            f"someone {verb} a {_noun_class(patient)} .",
            f"a {_noun_class(agent)} {verb} somebody .",
            f"a {_noun_class(agent)} was there .",
            f"something happened at a {place} .",
        ])
    elif high_overlap:
        hyp = rng.choice([
            f"the {patient} {verb} the {agent} near the {place} .",
            f"the {patient} {verb} the {adj} {agent} .",
            f"the {patient} {verb} the {agent} .",
        ])
    else:
        others = [n for n in nouns if n not in (agent, patient)]
        a2, p2 = rng.sample(others, 2)
        v2 = rng.choice([v for v in VERBS if v != verb])
        pl2 = rng.choice([p for p in PLACES if p != place])
        hyp = rng.choice([
            f"a {a2} {v2} every {p2} at a {pl2} .",
            f"no {_noun_class(agent)} was anywhere .",
            f"some {a2} {v2} a {p2} .",
        ])
    return premise, hyp


def generate(split: str, options: SyntheticOptions) -> PairSplit:
    sizes = {"train": options.n_train, "dev": options.n_dev, "ood": options.n_ood, "ood_train": options.n_ood_train,
             "ood_dev": options.n_ood_dev}
    if split not in sizes:
        raise ValueError(f"synthetic task has splits {list(sizes)}, not '{split}'")
    if options.ood_mode not in ("reversed", "balanced"):
        raise ValueError(f"synthetic ood_mode must be 'reversed' or 'balanced', not '{options.ood_mode}'")
    rng = random.Random(f"{options.data_seed}:{split}")
    ids, prem, hyp, labels, overlap = [], [], [], [], []
    for i in range(sizes[split]):
        entailed = i % 2 == 0  # exactly balanced labels
        if split in ("ood", "ood_train", "ood_dev"):
            agree = False if options.ood_mode == "reversed" else rng.random() < 0.5
        else:
            agree = rng.random() < options.spurious_agreement
        high = entailed if agree else not entailed
        p, h = _make_pair(rng, entailed, high, options.generator)
        ids.append(f"{split}-{i}")
        prem.append(p)
        hyp.append(h)
        labels.append(0 if entailed else 1)
        overlap.append(high)
    order = list(range(len(ids)))
    rng.shuffle(order)
    data = PairSplit(split, ids, prem, hyp, np.asarray(labels, dtype=np.int64), {"high_overlap": overlap})
    return data.subset(order)


class SyntheticTask(Task):
    name = "synthetic"
    label_names = LABELS
    train_split = "train"
    id_eval_splits = ["dev"]
    ood_eval_splits = ["ood"]
    ood_dev_splits = ["ood_dev"]
    # enters every node's key (orchestrator.plan.keyed_task_options): results made with other templates are
    # never reused
    KEYED_DEFAULTS = {"generator": SyntheticOptions.generator}

    def __init__(self, **options):
        self.options = SyntheticOptions(**options)

    def load(self, split: str) -> PairSplit:
        data = generate(split, self.options)
        if split == self.train_split and self.options.add_ood_train:
            extra = generate("ood_train", self.options)
            data = PairSplit(split, data.ids + extra.ids, data.text_a + extra.text_a, data.text_b + extra.text_b,
                             np.concatenate([data.labels, extra.labels]),
                             {k: data.extra[k] + extra.extra[k] for k in data.extra})
        return data

    @staticmethod
    def size_hint(which: str, **options) -> int:
        """Split sizes without generating anything (the planner's step counts)."""
        ood_dev = bool(options.pop("eval_ood_dev", False))
        o = SyntheticOptions(**options)
        if which == "train":
            return o.n_train + (o.n_ood_train if o.add_ood_train else 0)
        return o.n_dev + o.n_ood + (o.n_ood_dev if ood_dev else 0)

    def metrics(self, split: str, logits: np.ndarray, data: PairSplit) -> dict[str, float]:
        pred = logits.argmax(-1)
        out = {"accuracy": accuracy(pred, data.labels)}
        high = np.asarray(data.extra["high_overlap"], dtype=bool)
        for name, sel in (("high_overlap", high), ("low_overlap", ~high)):
            if sel.any():
                out[f"accuracy_{name}"] = accuracy(pred[sel], data.labels[sel])
        return out
