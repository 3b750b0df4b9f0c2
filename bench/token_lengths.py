"""Token-length distributions of the real data, for the cost model (orchestrator/plan/cost.py).

    nice -n 19 .venv/bin/python bench/token_lengths.py [--data ../shared/data] [--out bench/calibration/token_lengths.json]

Tokenizes every pair in ../shared/data with MiniLM's tokenizer (= bert-base-uncased's WordPiece vocab; the
roberta BPE lengths are not measured, docs/cost.md) without truncation, and the synthetic task's splits with
the demo's options. Per set: length percentiles, the histogram (what the cost model resamples), and the mean
padded tokens per batch at batch 16 and 32 under (a) padding to max_length 128, (b) dynamic padding of random
batches, (c) length-grouped batches (sort within shuffled pools of 50 batches). Sets whose full data is not
here stand in for it (named in ``proxy_for``): QQP dev = the QQP train subset, FEVER train/dev = Fever-Symmetric
v0.1 full (generated pairs + 237 original FEVER-dev pairs), PAWS-Wiki train = PAWS-Wiki dev.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.plan.cost import padded_tokens_per_batch  # noqa: E402

from benchlib import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

# set key -> (file under data/, text columns a and b, proxy note or None)
TSV_SETS = {
    "mnli:train": ("mnli/mnli_train_subset.tsv", "sentence1", "sentence2",
                   "MNLI train (392,702): a 29,524-row subset of it"),
    "mnli:dev_matched": ("mnli/mnli_dev_matched.tsv", "premise", "hypothesis", None),
    "mnli:dev_mismatched": ("mnli/mnli_dev_mismatched.tsv", "premise", "hypothesis", None),
    "mnli:hans": ("hans/hans_evaluation_set.tsv", "sentence1", "sentence2", None),
    "mnli:hans_train": ("hans/hans_train_set.tsv", "sentence1", "sentence2", None),
    "qqp:train": ("qqp/qqp_train_subset.tsv", "question1", "question2",
                  "QQP train (363,846): a 9,999-row subset of it"),
    "qqp:dev": ("qqp/qqp_train_subset.tsv", "question1", "question2",
                "QQP dev (40,430, not available): the QQP train subset"),
    "qqp:paws_qqp": ("paws_qqp/dev_and_test.tsv", "sentence1", "sentence2", None),
    "qqp:paws_qqp_train": ("paws_qqp/train.tsv", "sentence1", "sentence2", None),
    "qqp:paws_wiki": ("paws_wiki/test.tsv", "sentence1", "sentence2", None),
    "qqp:paws_wiki_train": ("paws_wiki/dev.tsv", "sentence1", "sentence2",
                            "PAWS-Wiki train (49,401, not available): PAWS-Wiki dev"),
}
FEVER_FULL = "fever_symmetric/symmetric_v0.1_fever_symmetric_full.jsonl"
JSONL_SETS = {  # (file, evidence key, claim key, proxy)
    "fever:train": (FEVER_FULL, "evidence_sentence", "claim",
                    "FEVER claim-evidence train (242,911, not available): Fever-Symmetric v0.1 full"),
    "fever:dev": (FEVER_FULL, "evidence_sentence", "claim",
                  "FEVER dev (19,998, not available): Fever-Symmetric v0.1 full"),
    "fever:symmetric_v1": ("fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl", "evidence_sentence",
                           "claim", None),
    "fever:symmetric_v2": ("fever_symmetric/symmetric_v0.2_fever_symmetric_test.jsonl", "evidence", "claim", None),
    "fever:symmetric_v2_dev": ("fever_symmetric/symmetric_v0.2_fever_symmetric_dev.jsonl", "evidence", "claim", None),
}
SYNTHETIC = {"n_train": 2048, "n_dev": 512, "n_ood": 512, "n_ood_train": 512, "n_ood_dev": 512}  # demo-sized
BATCHES = (16, 32)
POOL_BATCHES = 50


def read_tsv(path: str, a: str, b: str) -> tuple[list[str], list[str]]:
    with open(path, newline="") as f:  # QUOTE_NONE: default quoting merges MNLI rows (data/README.md)
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[a] for r in rows], [r[b] for r in rows]


def read_jsonl(path: str, a: str, b: str) -> tuple[list[str], list[str]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r[a] for r in rows], [r[b] for r in rows]


def pair_lengths(tokenizer, text_a: list[str], text_b: list[str]) -> np.ndarray:
    """Tokens of each pair as the model sees it ([CLS] a [SEP] b [SEP]), before truncation."""
    enc = tokenizer(text_a, text_b, truncation=False)
    return np.asarray([len(x) for x in enc["input_ids"]], dtype=np.int64)


def stats(lengths: np.ndarray, max_length: int = 128) -> dict:
    values, counts = np.unique(lengths, return_counts=True)
    out = {"n": int(len(lengths)), "mean": round(float(lengths.mean()), 2),
           "mean_truncated_128": round(float(np.minimum(lengths, max_length).mean()), 2),
           "over_128": round(float((lengths > max_length).mean()), 4),
           **{f"p{q}": float(np.percentile(lengths, q)) for q in (10, 50, 90, 95, 99)},
           "max": int(lengths.max()), "histogram": [[int(v), int(c)] for v, c in zip(values, counts)]}
    table = {}
    for batch in BATCHES:
        row = {mode: round(padded_tokens_per_batch(lengths, batch, max_length, mode, epochs=3), 1)
               for mode in ("max_length", "dynamic", "grouped")}
        row["grouped_vs_dynamic"] = round(1 - row["grouped"] / row["dynamic"], 4)
        row["grouped_vs_max_length"] = round(1 - row["grouped"] / row["max_length"], 4)
        row["dynamic_vs_max_length"] = round(1 - row["dynamic"] / row["max_length"], 4)
        table[str(batch)] = row
    out["padded_tokens_per_batch_at_128"] = table
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SRNET_DATA_DIR", "../shared/data"))
    parser.add_argument("--out", default="bench/calibration/token_lengths.json")
    args = parser.parse_args(argv)
    from srnet_core.models import load_tokenizer
    from srnet_core.tasks.synthetic import SyntheticOptions, generate

    t0 = time.time()
    tok = load_tokenizer("minilm")
    sets, cache = {}, {}
    for key, (rel, a, b, proxy) in {**TSV_SETS, **JSONL_SETS}.items():
        path = os.path.join(args.data, rel)
        if not os.path.exists(path):
            sys.exit(f"{path} not found: pass --data <the shared data directory> (see ../shared/data/README.md)")
        if (rel, a, b) not in cache:
            text_a, text_b = (read_tsv if rel.endswith(".tsv") else read_jsonl)(path, a, b)
            cache[(rel, a, b)] = pair_lengths(tok, text_a, text_b)
        sets[key] = {"source": f"data/{rel}", "proxy_for": proxy, **stats(cache[(rel, a, b)])}
        print(f"{key:<24} n={sets[key]['n']:>6} mean={sets[key]['mean']:>6.1f} p90={sets[key]['p90']:>5.0f} "
              f"max={sets[key]['max']:>4}")
    options = SyntheticOptions(**SYNTHETIC)
    for split in ("train", "dev", "ood", "ood_train", "ood_dev"):
        data = generate(split, options)
        lengths = pair_lengths(tok, list(data.text_a), list(data.text_b))
        sets[f"synthetic:{split}"] = {"source": f"srnet_core.tasks.synthetic {SYNTHETIC}", "proxy_for": None,
                                      **stats(lengths)}
    savings = {}
    for task, key in (("MNLI", "mnli:train"), ("QQP", "qqp:train"), ("FEVER-style (Fever-Symmetric)", "fever:train")):
        savings[task] = {b: {k: v for k, v in sets[key]["padded_tokens_per_batch_at_128"][b].items()}
                         for b in ("16", "32")}
    return write_result(args.out, {
        "tokenizer": "minilm (all-MiniLM-L6-v2's vocab.txt = bert-base-uncased WordPiece, uncased)",
        "measured": datetime.date.today().isoformat(), "data_dir": os.path.abspath(args.data),
        "pool_batches": POOL_BATCHES, "max_length_for_tables": 128,
        "note": "lengths are untruncated pair lengths with [CLS]/[SEP]; roberta-base's BPE lengths are taken "
                "equal (an assumption, docs/cost.md); tables: mean padded tokens per batch over 3 seeded epochs",
        "savings_at_128": savings, "sets": sets, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
