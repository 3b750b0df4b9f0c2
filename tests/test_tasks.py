"""Task loaders: the real files in ../shared/data (exact row and label counts), the official layouts (on
small hand-written files), the nli_small split, subsampling, and the error messages."""
import json
import os
from collections import Counter

import numpy as np
import pytest

from srnet_core.tasks import TASKS, DataFileError, get_task

DATA = os.environ.get("SRNET_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA or not os.path.isdir(DATA), reason="../shared/data not present")


@needs_data
@pytest.mark.parametrize("task,split,rows,labels", [
    ("mnli", "dev_matched", 9815, {"entailment": 3479, "contradiction": 3213, "neutral": 3123}),
    ("mnli", "hans", 30000, {"entailment": 15000, "contradiction": 15000}),
    ("qqp", "paws_qqp", 677, {"not_duplicate": 486, "duplicate": 191}),
    ("qqp", "paws_wiki", 8000, {"not_duplicate": 4464, "duplicate": 3536}),
    ("fever", "symmetric_v1", 717, {"SUPPORTS": 379, "REFUTES": 338}),
    ("fever", "symmetric_v2", 712, {"SUPPORTS": 356, "REFUTES": 356}),
])
def test_real_files_row_and_label_counts(task, split, rows, labels):
    t = get_task(task)
    data = t.load(split)
    assert len(data) == rows == len(set(data.ids)) == len(data.text_a) == len(data.text_b)
    assert dict(Counter(t.label_names[y] for y in data.labels)) == labels
    assert all(isinstance(x, str) and x for x in data.text_a[:50] + data.text_b[:50])


@needs_data
def test_real_hans_heuristic_cells_and_mnli_ids():
    t = get_task("mnli")
    hans = t.load("hans")
    cells = Counter(zip(hans.extra["heuristic"], hans.extra["hans_label"]))
    assert cells == {(h, lab): 5000 for h in ("lexical_overlap", "subsequence", "constituent")
                     for lab in ("entailment", "non-entailment")}
    assert t.load("hans_train").__len__() == 30000
    dev = t.load("dev_matched")
    assert dev.ids[:3] == ["0", "1", "2"] and dev.ids[-1] == "9814"  # the GLUE index column
    assert dev.text_a[1].startswith("This site includes a list of all award winners")
    assert t.label_names == ["contradiction", "entailment", "neutral"]
    assert dev.labels[1] == 0  # row 1 is a contradiction


@needs_data
def test_nli_small_split_is_fixed_disjoint_and_complete():
    t = get_task("mnli", train_source="dev_matched")
    train, dev = t.load("train"), t.load("dev_matched")
    assert (len(train), len(dev)) == (8000, 1815)
    assert not set(train.ids) & set(dev.ids)
    assert sorted(map(int, train.ids + dev.ids)) == list(range(9815))
    assert t.id_eval_splits == ["dev_matched"] and t.ood_eval_splits == ["hans"]
    again = get_task("mnli", train_source="dev_matched")
    assert again.load("train").ids == train.ids
    other = get_task("mnli", train_source="dev_matched", split_seed=1)
    assert other.load("train").ids != train.ids
    assert [int(i) for i in train.ids] == sorted(int(i) for i in train.ids)  # file order kept


@needs_data
def test_subsampling_keeps_ids_and_is_seeded():
    full = get_task("qqp").load("paws_wiki")
    t = get_task("qqp", max_eval_rows=100, subsample_seed=3)
    sub = t.load("paws_wiki")
    assert len(sub) == 100 and set(sub.ids) <= set(full.ids)
    where = {i: k for k, i in enumerate(full.ids)}
    for i, a, y in zip(sub.ids, sub.text_a, sub.labels):
        assert full.text_a[where[i]] == a and full.labels[where[i]] == y
    assert get_task("qqp", max_eval_rows=100, subsample_seed=3).load("paws_wiki").ids == sub.ids
    assert get_task("qqp", max_eval_rows=100, subsample_seed=4).load("paws_wiki").ids != sub.ids


def test_registry_and_split_roles():
    assert {"synthetic", "mnli", "qqp", "fever"} <= set(TASKS)
    for name in ("mnli", "qqp", "fever"):
        assert TASKS[name].needs_data_dir
    assert get_task("mnli", data_dir="x").eval_splits == ["dev_matched", "dev_mismatched", "hans"]
    assert get_task("qqp", data_dir="x").eval_splits == ["dev", "paws_qqp", "paws_wiki"]
    assert get_task("fever", data_dir="x").eval_splits == ["dev", "symmetric_v1", "symmetric_v2"]
    assert get_task("fever", data_dir="x").label_names == ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]
    assert get_task("qqp", data_dir="x").label_names == ["not_duplicate", "duplicate"]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


GLUE_MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")


def test_official_layouts(tmp_path):
    d = str(tmp_path)
    rows = [(7, "A man \"sleeps .", "A person sleeps .", "entailment"), (9, "It rains .", "It is dry .", "contradiction")]
    _write(f"{d}/MNLI/train.tsv", GLUE_MNLI_HEADER + "\n" + "".join(
        f"{i}\t1\t1e\tfiction\t(x)\t(y)\t(X)\t(Y)\t{p}\t{h}\t{lab}\t{lab}\n" for i, p, h, lab in rows))
    _write(f"{d}/hans/heuristics_evaluation_set.txt",
           "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
           "sentence1\tsentence2\tpairID\theuristic\tsubcase\ttemplate\n"
           "non-entailment\t(a)\t(b)\t(A)\t(B)\tThe doctor saw the cat .\tThe cat saw the doctor .\tex0\t"
           "lexical_overlap\tln_subject/object_swap\ttemp1\n")
    _write(f"{d}/QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
           "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration?\t0\n")
    _write(f"{d}/fever/fever.train.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"id": 75397, "claim": "Nikolaj plays in a show.", "evidence": "He plays in Game of Thrones.",
         "gold_label": "SUPPORTS"},
        {"id": 75397, "claim": "Nikolaj plays in a show.", "evidence": "Other text.", "gold_label": "NOT ENOUGH INFO"}]))

    mnli = get_task("mnli", data_dir=d)
    train = mnli.load("train")
    assert train.ids == ["7", "9"] and train.text_a[0] == 'A man "sleeps .' and train.labels.tolist() == [1, 0]
    hans = mnli.load("hans")
    assert hans.ids == ["ex0"] and hans.extra["subcase"] == ["ln_subject/object_swap"]
    assert "hans_subcase_ln_subject/object_swap" in mnli.metrics("hans", np.array([[0.0, 1.0, 0.0]]), hans)
    qqp = get_task("qqp", data_dir=d).load("train")
    assert qqp.ids == ["133273"] and qqp.text_b == ["Which level of prepration?"] and qqp.labels.tolist() == [0]
    fever = get_task("fever", data_dir=d).load("train")
    assert fever.ids == ["0", "1"]  # line numbers: the reference's bias .npy row order
    assert fever.labels.tolist() == [0, 2] and fever.text_a[0] == "Nikolaj plays in a show."


def test_path_override_option(tmp_path):
    _write(f"{tmp_path}/elsewhere/my_hans.tsv",
           "gold_label\tsentence1\tsentence2\theuristic\nentailment\tA b .\tA b .\tsubsequence\n")
    t = get_task("mnli", data_dir=str(tmp_path), paths={"hans": "elsewhere/my_hans.tsv"})
    assert len(t.load("hans")) == 1
    with pytest.raises(ValueError, match="unknown split"):
        get_task("mnli", data_dir=str(tmp_path), paths={"hans_test": "x"})


def test_missing_file_error_names_file_layout_and_source(tmp_path):
    with pytest.raises(DataFileError) as err:
        get_task("fever", data_dir=str(tmp_path)).load("train")
    msg = str(err.value)
    assert "FEVER train" in msg and "fever/fever.train.jsonl" in msg and "claim" in msg and "Schuster" in msg
    with pytest.raises(DataFileError, match="gluebenchmark"):
        get_task("mnli", data_dir=str(tmp_path)).load("dev_mismatched")


def test_malformed_files_are_one_clear_error(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/paws_qqp/dev_and_test.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t0\n2\ta\tb\n3\ta\tb\t1\n")
    with pytest.raises(DataFileError, match=r"dev_and_test.tsv' line 3 has a different number"):
        get_task("qqp", data_dir=d).load("paws_qqp")
    _write(f"{d}/paws_wiki/test.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t0\n2\ta\tb\tyes\n")
    with pytest.raises(DataFileError, match=r"row 3: label 'yes' is not one of \['0', '1'\]"):
        get_task("qqp", data_dir=d).load("paws_wiki")
    _write(f"{d}/mnli/mnli_dev_matched.tsv", "index\ttext\tgold_label\n0\tx\tneutral\n")
    with pytest.raises(DataFileError, match="has no column sentence1/premise"):
        get_task("mnli", data_dir=d).load("dev_matched")
    _write(f"{d}/fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl", '{"id": "1", "claim": "x"\n')
    with pytest.raises(DataFileError, match="line 1 is not valid JSON"):
        get_task("fever", data_dir=d).load("symmetric_v1")
    _write(f"{d}/hans/hans_evaluation_set.tsv", "gold_label\tsentence1\tsentence2\nentailment\ta\tb\n")
    with pytest.raises(DataFileError, match="no 'heuristic' column"):
        get_task("mnli", data_dir=d).load("hans")


def test_no_data_dir_and_bad_options(monkeypatch):
    monkeypatch.delenv("SRNET_DATA_DIR", raising=False)
    with pytest.raises(DataFileError, match="SRNET_DATA_DIR"):
        get_task("qqp").load("paws_qqp")
    with pytest.raises(ValueError, match="unknown option 'train_sorce'"):
        get_task("mnli", train_sorce="dev_matched")
    with pytest.raises(ValueError, match="train_source must be 'train', 'train_subset' or 'dev_matched'"):
        get_task("mnli", train_source="dev")
    with pytest.raises(ValueError, match="max_eval_rows must be a positive integer"):
        get_task("qqp", max_eval_rows=0)
    with pytest.raises(ValueError, match="has no split 'test'"):
        get_task("fever", data_dir="x").load("test")


# -- OOD training data (the OOD upper bound, protocol 6) --------------------------------------------------------
def _link_real(d, *subdirs):
    for sub in subdirs:
        os.symlink(os.path.join(DATA, sub), os.path.join(d, sub))


@needs_data
def test_add_ood_train_mnli_adds_hans_train_with_non_entailment_as_contradiction(tmp_path):
    d = str(tmp_path)
    _link_real(d, "hans")
    rows = [(7, "A man sleeps .", "A person sleeps .", "entailment"), (9, "It rains .", "It is dry .", "neutral")]
    _write(f"{d}/MNLI/train.tsv", GLUE_MNLI_HEADER + "\n" + "".join(
        f"{i}\t1\t1e\tfiction\t(x)\t(y)\t(X)\t(Y)\t{p}\t{h}\t{lab}\t{lab}\n" for i, p, h, lab in rows))
    plain = get_task("mnli", data_dir=d).load("train")
    task = get_task("mnli", data_dir=d, add_ood_train=True)
    train = task.load("train")
    assert len(plain) == 2 and len(train) == 2 + 30000 == len(set(train.ids))
    assert train.ids[:2] == ["7", "9"] and train.labels[:2].tolist() == [1, 2]  # ID rows first, unchanged
    added = Counter(task.label_names[y] for y in train.labels[2:])
    assert added == {"entailment": 15000, "contradiction": 15000}  # no neutral: HANS is 2-way
    hans = task.load("hans_train")
    assert train.ids[2:] == [f"hans_train:{i}" for i in hans.ids] and train.text_b[2:] == hans.text_b
    assert task.cache_key() != get_task("mnli", data_dir=d).cache_key()  # no stale token cache
    assert len(task.load("hans")) == 30000  # eval splits unchanged
    # the nli_small split (train from dev-matched) grows by the same 30,000 rows
    small = get_task("mnli", train_source="dev_matched", add_ood_train=True).load("train")
    assert len(small) == 8000 + 30000


@needs_data
def test_add_ood_train_qqp_adds_paws_qqp_train_and_paws_wiki_train(tmp_path):
    d = str(tmp_path)
    _link_real(d, "paws_qqp")
    os.makedirs(f"{d}/paws_wiki")
    for name in ("dev.tsv", "test.tsv"):
        os.symlink(os.path.join(DATA, "paws_wiki", name), f"{d}/paws_wiki/{name}")
    _write(f"{d}/QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
           "133273\t1\t2\tHow is life?\tWhat is life?\t0\n5\t3\t4\tA?\tB?\t1\n")
    # PAWS-Wiki train absent (as in ../shared/data): refused, never silently dropped (issue 19 item 3)
    with pytest.raises(DataFileError, match="PAWS-Wiki train"):
        get_task("qqp", data_dir=d, add_ood_train=True).load("train")
    _write(f"{d}/paws_wiki/train.tsv", "id\tsentence1\tsentence2\tlabel\n1\tA b .\tB a .\t0\n2\tC .\tC .\t1\n"
           "3\tD e .\tE d .\t0\n")
    train = get_task("qqp", data_dir=d, add_ood_train=True).load("train")
    assert Counter(train.labels[2:2 + 11988].tolist()) == {0: 8212, 1: 3776}
    assert len(train) == 2 + 11988 + 3 and train.ids[-3:] == ["paws_wiki_train:1", "paws_wiki_train:2",
                                                              "paws_wiki_train:3"]


@needs_data
def test_add_ood_train_fever_adds_symmetric_v2_dev_ten_times(tmp_path):
    d = str(tmp_path)
    _link_real(d, "fever_symmetric")
    _write(f"{d}/fever/fever.train.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"claim": "Nikolaj plays in a show.", "evidence": "He plays in Game of Thrones.", "gold_label": "SUPPORTS"},
        {"claim": "X is Y.", "evidence": "Other text.", "gold_label": "NOT ENOUGH INFO"}]))
    task = get_task("fever", data_dir=d, add_ood_train=True)
    train = task.load("train")
    sym = task.load("symmetric_v2_dev")
    assert len(sym) == 708 and len(train) == 2 + 10 * 708 == len(set(train.ids))
    assert train.ids[2] == f"symmetric_v2_dev:{sym.ids[0]}#0" and train.ids[-1] == f"symmetric_v2_dev:{sym.ids[-1]}#9"
    assert Counter(train.labels[2:].tolist()) == {k: 10 * v for k, v in Counter(sym.labels.tolist()).items()}
    assert train.text_a[2: 2 + 708] == sym.text_a == train.text_a[-708:]


def test_add_ood_train_fails_clearly_when_the_ood_file_is_missing(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tA?\tB?\t0\n")
    with pytest.raises(DataFileError, match="PAWS-QQP train"):
        get_task("qqp", data_dir=d, add_ood_train=True).load("train")
