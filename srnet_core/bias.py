"""Bias models (protocol.md section 5): a logistic regression on hand-crafted spurious features, trained on
the task's ID training split, whose per-example log-probabilities feed the debiasing losses.

Feature sets (chosen by ``task.bias_features``):
- ``nli_overlap`` / ``pair_overlap`` (MNLI, QQP, synthetic): the hypothesis (second text) is a contiguous
  subsequence of the premise; all its words occur in the premise; the fraction that does;
  log(max(len(p) - len(h), 1)); and three lexical similarities that need no word vectors (where the
  reference used word-vector similarities): word Jaccard, the fraction of premise words in the
  hypothesis, and the cosine of bags of in-word character trigrams. Words: lower-cased alphanumeric runs.
  None of them depends on word order beyond the subsequence flag, as in the reference.
- ``claim_ngrams`` (FEVER): claim-only binary unigrams + bigrams (the evidence is never looked at), so
  repeated claims get identical predictions.

``nli_overlap`` trains a 2-way model (entailment vs the rest; C=100, balanced classes) and expands it to
the task's labels as [v_non - log(K-1) for non-entailment labels, v_ent for entailment], i.e.
[v_non - log 2, v_ent, v_non - log 2] for MNLI's [contradiction, entailment, neutral]. The other sets
train on the task's own labels.

Files: ``write_bias_file`` writes Parquet (``id`` string, ``log_probs`` list<float32>); ``read_per_example``
reads that, JSON ({id: [values]}) and the reference's .npy (row i = i-th training example), for bias
log-probs and teacher probabilities alike. Nothing is unpickled: convert the reference's pickled QQP dict
once with ``docs/tasks.md``'s snippet.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .io import atomic_path, write_json

_WORD = re.compile(r"[a-z0-9]+")

OVERLAP_FEATURES = ["subsequence", "all_in_premise", "frac_in_premise", "log_len_diff",
                    "jaccard", "frac_premise_in_hypothesis", "char3_cosine"]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _is_contiguous_subsequence(needle: list[str], hay: list[str]) -> bool:
    n = len(needle)
    if n == 0:
        return True
    first = needle[0]
    return any(hay[i] == first and hay[i: i + n] == needle for i in range(len(hay) - n + 1))


def _char3(tokens: list[str]) -> Counter:
    """Character trigrams of each word with boundary marks ("#cat#" -> #ca, cat, at#): a bag, so word
    order plays no part (the features must not see who-did-what-to-whom, which HANS tests)."""
    marked = [f"#{w}#" for w in tokens]
    return Counter(s[i: i + 3] for s in marked for i in range(len(s) - 2))


def overlap_features_one(premise: str, hypothesis: str) -> list[float]:
    p, h = words(premise), words(hypothesis)
    p_set, h_set = set(p), set(h)
    in_p = sum(1 for w in h if w in p_set)
    frac = in_p / len(h) if h else 1.0
    union = p_set | h_set
    jaccard = len(p_set & h_set) / len(union) if union else 1.0
    p_covered = sum(1 for w in p if w in h_set) / len(p) if p else 1.0
    cp, ch = _char3(p), _char3(h)
    dot = sum(v * cp.get(k, 0) for k, v in ch.items())
    norm = math.sqrt(sum(v * v for v in cp.values()) * sum(v * v for v in ch.values()))
    return [float(_is_contiguous_subsequence(h, p)), float(in_p == len(h)), frac,
            math.log(max(len(p) - len(h), 1)), jaccard, p_covered, dot / norm if norm else 0.0]


def overlap_features(text_a: list[str], text_b: list[str]) -> np.ndarray:
    """[N, 7] features in the order of ``OVERLAP_FEATURES`` (text_a = premise, text_b = hypothesis)."""
    return np.asarray([overlap_features_one(a, b) for a, b in zip(text_a, text_b)], dtype=np.float64).reshape(-1, 7)


@dataclass(frozen=True)
class BiasSpec:
    """How to fit one task's bias model. target: "entailment" (2-way, that label vs the rest) or "labels".
    folds: 0 = predict the training split in-sample (as the reference, fine for 7 dense features);
    k > 1 = out-of-fold predictions for the training split, grouped by claim text (n-gram features would
    otherwise memorise the training claims)."""

    features: str
    target: str
    C: float
    folds: int = 0


BIAS_SPECS = {
    "nli_overlap": BiasSpec("overlap", "entailment", C=100.0),
    "pair_overlap": BiasSpec("overlap", "labels", C=100.0),
    "claim_ngrams": BiasSpec("claim_ngrams", "labels", C=1.0, folds=5),
}
_DEFAULT_FEATURES = {"synthetic": "pair_overlap"}  # tasks without a ``bias_features`` attribute


def bias_spec_for(task) -> tuple[str, BiasSpec]:
    name = getattr(task, "bias_features", None) or _DEFAULT_FEATURES.get(task.name)
    if name not in BIAS_SPECS:
        raise ValueError(f"task '{task.name}' has no hand-crafted bias model (bias_features={name!r}); "
                         f"known feature sets: {sorted(BIAS_SPECS)}. Give a precomputed bias file instead")
    return name, BIAS_SPECS[name]


class _Featurizer:
    """Fit on the training split, then turn any split into a feature matrix."""

    def __init__(self, kind: str):
        self.kind = kind
        self.vectorizer = None
        self.scaler = None

    def fit(self, split) -> "_Featurizer":
        if self.kind == "claim_ngrams":
            from sklearn.feature_extraction.text import CountVectorizer
            self.vectorizer = CountVectorizer(ngram_range=(1, 2), min_df=2, binary=True,
                                              token_pattern=r"[a-z0-9]+", lowercase=True)
            self.vectorizer.fit(split.text_a)
        else:
            from sklearn.preprocessing import StandardScaler
            self.scaler = StandardScaler().fit(overlap_features(split.text_a, split.text_b))
        return self

    def transform(self, split):
        if self.kind == "claim_ngrams":
            return self.vectorizer.transform(split.text_a)
        return self.scaler.transform(overlap_features(split.text_a, split.text_b))

    def feature_names(self) -> list[str]:
        if self.kind == "claim_ngrams":
            return list(self.vectorizer.get_feature_names_out())
        return list(OVERLAP_FEATURES)


def _targets(task, spec: BiasSpec, labels: np.ndarray) -> np.ndarray:
    if spec.target == "entailment":
        return (labels == task.label_names.index("entailment")).astype(np.int64)
    return labels


def _expand(task, spec: BiasSpec, classes: np.ndarray, log_proba: np.ndarray) -> np.ndarray:
    """Model log-probs (columns in ``classes`` order) -> the task's label order."""
    k = task.num_labels
    out = np.empty((len(log_proba), k), dtype=np.float64)
    if spec.target == "entailment":
        ent = task.label_names.index("entailment")
        col = {int(c): j for j, c in enumerate(classes)}
        v_ent, v_non = log_proba[:, col[1]], log_proba[:, col[0]]
        out[:] = (v_non - math.log(k - 1))[:, None]
        out[:, ent] = v_ent
        return out
    if len(classes) != k:
        missing = sorted(set(range(k)) - {int(c) for c in classes})
        raise ValueError(f"task '{task.name}': the bias model's training split has no example of label(s) "
                         f"{[task.label_names[m] for m in missing]}; it cannot give log-probs for them")
    out[:, classes.astype(int)] = log_proba
    return out


@dataclass
class BiasModelResult:
    """What ``fit_bias_model`` returns: per split, the ids and log-probs [N, C] (float32) in the task's
    label order, and the bias model's own metrics (the task's metrics of its log-probs, plus the
    majority-class rate of that split as the chance level)."""

    task: str
    features: str
    ids: dict[str, list[str]]
    log_probs: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]
    info: dict = field(default_factory=dict)

    def write(self, out_dir: str) -> dict[str, str]:
        """``bias_<split>.parquet`` per split and ``bias_metrics.json``; returns {split: path}."""
        paths = {}
        for split in self.log_probs:
            paths[split] = os.path.join(out_dir, f"bias_{split}.parquet")
            write_bias_file(paths[split], self.ids[split], self.log_probs[split])
        write_json(os.path.join(out_dir, "bias_metrics.json"),
                   {"task": self.task, "features": self.features, "metrics": self.metrics, "info": self.info})
        return paths


def fit_bias_model(task, splits: list[str] | None = None, *, C: float | None = None, folds: int | None = None,
                   seed: int = 0, max_iter: int = 2000) -> BiasModelResult:
    """Fit the task's bias model on its training split; return log-probs and metrics for the training
    split and ``splits`` (default: every eval split). C / folds override the task's defaults."""
    from sklearn.linear_model import LogisticRegression

    name, spec = bias_spec_for(task)
    C = spec.C if C is None else C
    folds = spec.folds if folds is None else folds
    train = task.load(task.train_split)
    y = _targets(task, spec, np.asarray(train.labels))

    def new_model():
        return LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=seed)

    featurizer = _Featurizer(spec.features).fit(train)
    x_train = featurizer.transform(train)
    model = new_model().fit(x_train, y)

    out_ids, out_lp, out_metrics = {}, {}, {}
    train_lp = _out_of_fold(task, spec, train, y, folds, seed, new_model) if folds > 1 else \
        _expand(task, spec, model.classes_, model.predict_log_proba(x_train))
    names = [task.train_split] + [s for s in (splits if splits is not None else task.eval_splits)
                                  if s != task.train_split]
    for split_name in names:
        data = train if split_name == task.train_split else task.load(split_name)
        lp = train_lp if split_name == task.train_split else \
            _expand(task, spec, model.classes_, model.predict_log_proba(featurizer.transform(data)))
        out_ids[split_name] = list(data.ids)
        out_lp[split_name] = lp.astype(np.float32)
        m = dict(task.metrics(split_name, lp, data))
        counts = np.bincount(np.asarray(data.labels), minlength=task.num_labels)
        m["majority_baseline"] = float(counts.max() / max(1, counts.sum()))
        if spec.target == "entailment":  # what the 2-way model itself is scored on
            ent = task.label_names.index("entailment")
            m.update(_binary_metrics(lp[:, ent] > math.log(0.5), np.asarray(data.labels) == ent))
        out_metrics[split_name] = m
    info = {"C": C, "folds": folds, "target": spec.target, "n_train": len(train)}
    if spec.features == "overlap":
        info["coefficients"] = dict(zip(featurizer.feature_names(), np.ravel(model.coef_[0]).tolist()))
    return BiasModelResult(task.name, name, out_ids, out_lp, out_metrics, info)


def _binary_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Entailment vs the rest: accuracy and balanced accuracy (mean of the two recalls; chance = 0.5)."""
    recalls = [float((pred[gold == v] == v).mean()) for v in (True, False) if (gold == v).any()]
    return {"binary_accuracy": float((pred == gold).mean()) if len(gold) else float("nan"),
            "binary_balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan")}


def _out_of_fold(task, spec: BiasSpec, train, y: np.ndarray, folds: int, seed: int, new_model) -> np.ndarray:
    """Out-of-fold log-probs on the training split; folds group identical first texts (claims), so a
    repeated claim is never predicted by a model that saw it, and all its copies get the same value."""
    from sklearn.model_selection import GroupKFold

    groups = np.unique(np.asarray(train.text_a, dtype=object), return_inverse=True)[1]
    out = np.empty((len(train), task.num_labels), dtype=np.float64)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, pred_idx in splitter.split(np.zeros(len(train)), y, groups):
        part = train.subset(fit_idx)
        feat = _Featurizer(spec.features).fit(part)
        model = new_model().fit(feat.transform(part), y[fit_idx])
        if len(model.classes_) != len(np.unique(y)):
            raise ValueError(f"task '{task.name}': a cross-fitting fold lacks a label; use fewer folds")
        held_out = feat.transform(train.subset(pred_idx))
        out[pred_idx] = _expand(task, spec, model.classes_, model.predict_log_proba(held_out))
    return out


# -- per-example files (bias log-probs, teacher probabilities) -------------------------------------------

def write_per_example(path: str, ids: list[str], values: np.ndarray, column: str = "log_probs",
                      metadata: dict | None = None) -> None:
    """Parquet with ``id`` (string) and ``column`` (list<float32>), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or len(values) != len(ids):
        raise ValueError(f"write {path}: need one row of values per id ({len(ids)} ids, shape {values.shape})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"write {path}: ids are not unique")
    n, c = values.shape
    flat = pa.array(values.reshape(-1), pa.float32())
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)), flat)
    meta = {b"num_labels": str(c).encode()}
    for k, v in (metadata or {}).items():
        meta[str(k).encode()] = json.dumps(v).encode()
    table = pa.table({"id": pa.array([str(i) for i in ids], pa.string()), column: lists}, metadata=meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_bias_file(path: str, ids: list[str], log_probs: np.ndarray) -> None:
    write_per_example(path, ids, log_probs, "log_probs")


_VALUE_COLUMNS = ("log_probs", "probs", "values")


def _read_keyed(path: str) -> tuple[list[str], np.ndarray]:
    if path.endswith(".json"):
        with open(path) as f:
            obj = json.load(f)
        if not isinstance(obj, dict):
            raise ValueError(f"per-example file '{path}': expected a JSON object {{id: [values]}}")
        keys = [str(k) for k in obj]
        rows = list(obj.values())
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except ValueError:
            raise ValueError(f"per-example file '{path}': every id must map to a list of the same length") from None
        return keys, arr.reshape(len(keys), -1) if len(keys) else arr.reshape(0, 0)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = next((c for c in _VALUE_COLUMNS if c in table.column_names), None)
    if "id" not in table.column_names or col is None:
        raise ValueError(f"per-example file '{path}': needs columns 'id' and one of {list(_VALUE_COLUMNS)} "
                         f"(list of floats); it has {table.column_names}")
    lists = table.column(col).combine_chunks()
    lengths = np.asarray(lists.value_lengths().to_numpy(zero_copy_only=False))
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"per-example file '{path}': rows of '{col}' have different lengths")
    flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    width = int(lengths[0]) if len(lengths) else 0
    return [str(x) for x in table.column("id").to_pylist()], flat.reshape(len(lengths), width)


def read_per_example(path: str, ids: list[str], num_labels: int, missing: str = "error",
                     check: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values for ``ids`` from a per-example file -> (values float32 [K, num_labels], kept_index int64 [K]).

    Formats: ``.parquet`` (``id`` + ``log_probs``/``probs``/``values``), ``.json`` ({id: [..]}), ``.npy``
    ([N, C] floats, row i = the i-th training example; if N differs from len(ids) and every id is an integer,
    the id is the row: the GLUE index / FEVER line number the reference's files use, so a subsampled
    split still joins). missing: "error" (any id without a row fails) or "drop" (such examples are left
    out; the protocol's QQP rule); kept_index lists the positions in ``ids`` that have values.
    check: None, "log_probs" (each row's logsumexp must be ~0) or "probs" (non-negative, rows sum to ~1).
    """
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop', not {missing!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"per-example file '{path}' does not exist")
    ids = [str(i) for i in ids]
    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"per-example file '{path}': expected a 2-D array [examples, {num_labels}], "
                             f"got shape {arr.shape}")
        if len(arr) == len(ids):
            values, kept = arr, np.arange(len(ids))
        elif all(i.isdigit() for i in ids):
            rows = np.asarray([int(i) for i in ids], dtype=np.int64)
            kept = np.flatnonzero(rows < len(arr))
            if len(kept) < len(ids) and missing == "error":
                bad = ids[int(np.flatnonzero(rows >= len(arr))[0])]
                raise ValueError(f"per-example file '{path}' has {len(arr)} rows; id {bad!r} (used as the row "
                                 "index) is past its end. Is it the file of this training set?")
            values = arr[rows[kept]]
        else:
            raise ValueError(f"per-example file '{path}' has {len(arr)} rows but the split has {len(ids)} "
                             "examples with non-integer ids: a .npy is matched by position; use a Parquet or "
                             "JSON file keyed by id")
    else:
        if not path.endswith((".parquet", ".json")):
            raise ValueError(f"per-example file '{path}': unknown format; use .parquet, .json or .npy")
        keys, arr = _read_keyed(path)
        if len(set(keys)) != len(keys):
            raise ValueError(f"per-example file '{path}' lists an id more than once")
        where = {k: r for r, k in enumerate(keys)}
        pos = np.asarray([where.get(i, -1) for i in ids], dtype=np.int64)
        kept = np.flatnonzero(pos >= 0)
        if len(kept) < len(ids) and missing == "error":
            absent = [ids[j] for j in np.flatnonzero(pos < 0)[:3]]
            raise ValueError(f"per-example file '{path}' has no row for {len(ids) - len(kept)} of {len(ids)} "
                             f"examples (e.g. ids {absent}); is it the file of this training set? "
                             "(missing='drop' leaves such examples out, the QQP rule)")
        values = arr[pos[kept]] if len(kept) else np.zeros((0, arr.shape[1] if arr.ndim == 2 else num_labels))
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or (len(values) and values.shape[1] != num_labels):
        raise ValueError(f"per-example file '{path}': rows have {values.shape[-1]} values, the task has "
                         f"{num_labels} labels")
    if not np.isfinite(values).all():
        raise ValueError(f"per-example file '{path}': contains NaN or infinite values")
    _check_values(path, values, check)
    return values.astype(np.float32), np.asarray(kept, dtype=np.int64)


def _check_values(path: str, values: np.ndarray, check: str | None) -> None:
    if check is None or not len(values):
        return
    if check == "log_probs":
        m = values.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(values - m).sum(axis=1, keepdims=True))).ravel()
        if np.abs(lse).max() > 1e-3:
            raise ValueError(f"per-example file '{path}': rows are not log-probabilities "
                             f"(logsumexp up to {np.abs(lse).max():.3g} from 0)")
    elif check == "probs":
        if (values < -1e-6).any() or np.abs(values.sum(axis=1) - 1).max() > 1e-3:
            raise ValueError(f"per-example file '{path}': rows are not probabilities (negative or not summing to 1)")
    else:
        raise ValueError(f"check must be None, 'log_probs' or 'probs', not {check!r}")
