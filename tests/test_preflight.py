"""Preflight of what a spec points at (orchestrator/preflight.py) and the dataset fingerprints
(srnet_core/tasks/fingerprints.py): damaged data files and model directories are refused before Ray starts,
exit 2, at most 3 lines, quickly, writing nothing; the real files of ../shared/data pass."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from orchestrator import launch
from orchestrator import preflight as P
from srnet_core.tasks import fingerprints as fp

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REAL = os.environ.get("SRNET_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")
HAVE_REAL = os.path.isfile(os.path.join(REAL, "hans", "hans_evaluation_set.tsv"))
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="../shared/data is not here")


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "preflight-cache.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# -- small files in the official layouts (the ../shared/data copies) ----------------------------------------

MNLI_HEADER = ["index", "premise", "hypothesis", "gold_label"]
HANS_HEADER = ["gold_label", "sentence1", "sentence2", "heuristic"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]


def _tsv(path, header, rows, newline="\n", encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = newline.join("\t".join(map(str, r)) for r in [header] + rows) + newline
    with open(path, "wb") as f:
        f.write(text.encode(encoding))


def _jsonl(path, objs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in objs)


def mnli_rows(n=40):
    return [[i, f"the cat {i} sat .", f"a cat {i} sat .", MNLI_LABELS[i % 3]] for i in range(n)]


def hans_rows(n=40):
    heur = ["lexical_overlap", "subsequence", "constituent"]
    return [[("entailment", "non-entailment")[i % 2], f"the doctor {i} ran .", "the doctor ran .", heur[i % 3]]
            for i in range(n)]


def qqp_rows(n=40):
    return [[i, f"how do I {i} ?", f"how can I {i} ?", i % 2] for i in range(n)]


def fever_objs(n=40, sym=False):
    labels = ["SUPPORTS", "REFUTES"] + ([] if sym else ["NOT ENOUGH INFO"])
    out = []
    for i in range(n):
        o = {"claim": f"X {i} is a film .", "evidence": f"X {i} is a French film .", "gold_label": labels[i % len(labels)]}
        if sym:
            o["id"] = str(1000 + i)
        out.append(o)
    return out


def write_task(data, task):
    """The small valid files of one task in ``data``."""
    data = str(data)
    if task == "mnli":
        _tsv(f"{data}/mnli/mnli_dev_matched.tsv", MNLI_HEADER, mnli_rows())
        _tsv(f"{data}/hans/hans_evaluation_set.tsv", HANS_HEADER, hans_rows())
    elif task == "qqp":
        for rel in ("qqp/train.tsv", "qqp/dev.tsv"):
            _tsv(f"{data}/{rel}", ["id", "question1", "question2", "is_duplicate"], qqp_rows())
        for rel in ("paws_qqp/dev_and_test.tsv", "paws_wiki/test.tsv"):
            _tsv(f"{data}/{rel}", ["id", "sentence1", "sentence2", "label"], qqp_rows())
    elif task == "fever":
        _jsonl(f"{data}/fever/fever.train.jsonl", fever_objs())
        _jsonl(f"{data}/fever/fever.dev.jsonl", fever_objs())
        _jsonl(f"{data}/fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl", fever_objs(sym=True))
        _jsonl(f"{data}/fever_symmetric/symmetric_v0.2_fever_symmetric_test.jsonl", fever_objs(sym=True))


def spec_dict(tmp_path, task="mnli", data=None, backbone="tiny-bert", allow_subset=True, **top):
    options = {"mnli": {"train_source": "dev_matched", "train_size": 20}}.get(task, {})
    if allow_subset and task != "synthetic":
        options = {**options, "allow_subset": True}
    d = {"name": "pf", "output_dir": str(tmp_path / "out"), "max_length": 32,
         "grid": {"tasks": [task], "backbones": [backbone], "sparsities": [0.5], "seeds": [0]},
         "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4},
         "mask_train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "eval_every": 4},
         "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"}}
    if data is not None:
        d["data_dir"] = str(data)
    if task == "synthetic":
        d["task_options"] = {"synthetic": {"n_train": 64, "n_dev": 32, "n_ood": 32}}
    elif options:
        d["task_options"] = {task: options}
    d.update(top)
    return d


def call_main(argv):
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = launch.main(argv)
        except BaseException as err:  # noqa: BLE001 - an escaping exception is the failure being tested
            pytest.fail(f"{argv}: raised {type(err).__name__}: {err}\n{out.getvalue()}")
    return rc, out.getvalue(), time.perf_counter() - started


def dry_run(tmp_path, spec, name="spec"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return call_main([str(path), "--dry-run"])


def assert_refused(rc, text, seconds, expect, label, out_dir):
    lines = [line for line in text.splitlines() if line.strip()]
    assert rc == 2, f"{label}: exit {rc}: {text}"
    assert "Traceback" not in text, f"{label}: {text}"
    assert 1 <= len(lines) <= 3, f"{label}: {len(lines)} lines: {text}"
    assert seconds < 10, f"{label}: {seconds:.1f} s"
    assert expect in " ".join(text.split()), f"{label}: expected {expect!r} in {text!r}"
    assert not os.path.exists(out_dir), f"{label}: wrote into the output directory"


# -- damaged data: (label, task, damage(data_dir), expected text, spec changes) -----------------------------

def _rewrite(rel, fn):
    def damage(data):
        path = os.path.join(data, rel)
        with open(path, "rb") as f:
            raw = f.read()
        with open(path, "wb") as f:
            f.write(fn(raw))
    return damage


def _remove(rel):
    return lambda data: os.remove(os.path.join(data, rel))


def _tsv_case(rel, header, rows):
    return lambda data: _tsv(os.path.join(data, rel), header, rows)


def _jsonl_case(rel, objs):
    return lambda data: _jsonl(os.path.join(data, rel), objs)


DM, HANS = "mnli/mnli_dev_matched.tsv", "hans/hans_evaluation_set.tsv"
SYM1 = "fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl"
_dup_mnli = mnli_rows()
_dup_mnli[7][0] = 3
_sym_dup = fever_objs(sym=True)
_sym_dup[5]["id"] = _sym_dup[4]["id"]

DATA_CASES = [
    ("mnli bad label", "mnli", _tsv_case(DM, MNLI_HEADER, mnli_rows()[:5] + [[99, "a", "b", "entailed"]]),
     "label 'entailed' is not one of", {}),
    ("mnli missing column", "mnli", _tsv_case(DM, ["index", "premise", "hypothesis"], [r[:3] for r in mnli_rows()]),
     "has no column gold_label", {}),
    ("mnli header only", "mnli", _tsv_case(DM, MNLI_HEADER, []), "has no rows", {}),
    ("mnli empty file", "mnli", _rewrite(DM, lambda raw: b""), "has no rows", {}),
    ("mnli truncated mid-line", "mnli", _rewrite(DM, lambda raw: raw[:raw.rindex(b"\t", 0, len(raw) - 30)]),
     "different number of tab-separated fields", {}),
    ("mnli latin-1", "mnli", _rewrite(DM, lambda raw: raw.replace(b"the cat 5", "the caf\u00e9 5".encode("latin-1"))),
     "is not UTF-8 text (line 7", {}),
    ("mnli utf-16", "mnli", _rewrite(DM, lambda raw: raw.decode().encode("utf-16")), "is not UTF-8 text", {}),
    ("mnli utf-8 BOM", "mnli", _rewrite(DM, lambda raw: b"\xef\xbb\xbf" + raw), "byte-order mark", {}),
    ("mnli duplicated ids", "mnli", _tsv_case(DM, MNLI_HEADER, _dup_mnli), "has the id '3' more than once", {}),
    ("mnli NUL bytes", "mnli", _rewrite(DM, lambda raw: raw.replace(b"cat 9", b"c\x00t 9")), "contains NUL bytes", {}),
    ("mnli dev-matched missing", "mnli", _remove(DM), "MNLI dev-matched: no file found", {}),
    ("mnli train_size too large", "mnli", lambda d: None, "train_size must be between 1 and 39",
     {"task_options": {"mnli": {"train_source": "dev_matched", "train_size": 500, "allow_subset": True}}}),
    ("mnli paths to a missing file", "mnli", lambda d: None, "does not exist",
     {"task_options": {"mnli": {"paths": {"train": "mnli/train_sample.tsv"}, "allow_subset": True}}}),
    ("mnli small dev-matched, no allow_subset", "mnli", lambda d: None, "has 40 rows; the official MNLI dev-matched has 9,815",
     {"task_options": {"mnli": {"train_source": "dev_matched", "train_size": 20}}}),
    ("hans missing (OOD)", "mnli", _remove(HANS), "HANS evaluation set: no file found", {}),
    ("hans no heuristic column", "mnli", _tsv_case(HANS, HANS_HEADER[:3], [r[:3] for r in hans_rows()]),
     "no 'heuristic' column", {}),
    ("hans 3-way label", "mnli", _tsv_case(HANS, HANS_HEADER, hans_rows()[:3] + [["neutral", "a", "b", "subsequence"]]),
     "label 'neutral' is not one of", {}),
    ("hans extra field", "mnli", _rewrite(HANS, lambda raw: raw.replace(b"subsequence\n", b"subsequence\tx\n", 1)),
     "different number of tab-separated fields", {}),
    ("no data directory", "mnli", lambda d: shutil.rmtree(d), "does not exist", {}),
    ("qqp label 2", "qqp", _tsv_case("qqp/dev.tsv", ["id", "question1", "question2", "is_duplicate"],
                                     qqp_rows()[:4] + [[77, "a", "b", 2]]), "label '2' is not one of", {}),
    ("qqp missing column", "qqp", _tsv_case("qqp/train.tsv", ["id", "question1", "question2"],
                                            [r[:3] for r in qqp_rows()]), "has no column is_duplicate", {}),
    ("qqp malformed rows", "qqp", _rewrite("qqp/train.tsv", lambda raw: raw.replace(b"\t1\n", b"\n")),
     "different number of tab-separated fields", {}),
    ("qqp duplicated ids", "qqp", _tsv_case("qqp/dev.tsv", ["id", "question1", "question2", "is_duplicate"],
                                            qqp_rows() + [[3, "a", "b", 0]]), "more than once", {}),
    ("paws-qqp missing (OOD)", "qqp", _remove("paws_qqp/dev_and_test.tsv"), "PAWS-QQP dev_and_test: no file found", {}),
    ("paws-wiki header only", "qqp", _tsv_case("paws_wiki/test.tsv", ["id", "sentence1", "sentence2", "label"], []),
     "has no rows", {}),
    ("fever invalid JSON", "fever", _rewrite("fever/fever.train.jsonl", lambda raw: raw + b'{"claim": "x",\n'),
     "is not valid JSON", {}),
    ("fever line not an object", "fever", _rewrite("fever/fever.dev.jsonl", lambda raw: b"[1, 2]\n" + raw),
     "is not a JSON object", {}),
    ("symmetric missing claim", "fever", _jsonl_case(SYM1, [{k: v for k, v in o.items() if k != "claim"}
                                                            for o in fever_objs(sym=True)]), "has no column claim", {}),
    ("symmetric bad label", "fever", _jsonl_case(SYM1, fever_objs(sym=True)[:3] + [{**fever_objs(sym=True)[3], "gold_label": "MAYBE"}]),
     "label 'MAYBE' is not one of", {}),
    ("symmetric duplicated ids", "fever", _jsonl_case(SYM1, _sym_dup), "more than once", {}),
    ("symmetric missing (OOD)", "fever", _remove("fever_symmetric/symmetric_v0.2_fever_symmetric_test.jsonl"),
     "Fever-Symmetric v2 test (v0.2): no file found", {}),
    ("fever dev missing", "fever", _remove("fever/fever.dev.jsonl"), "FEVER dev: no file found", {}),
]


def test_damaged_data_refused_before_ray(tmp_path):
    refused = 0
    for i, (label, task, damage, expect, changes) in enumerate(DATA_CASES):
        data = tmp_path / f"data{i}"
        write_task(data, task)
        damage(str(data))
        spec = {**spec_dict(tmp_path, task, data), **changes}
        rc, text, seconds = dry_run(tmp_path, spec, f"d{i}")
        assert_refused(rc, text, seconds, expect, label, spec["output_dir"])
        refused += 1
    assert refused == len(DATA_CASES) >= 30
    for task in ("mnli", "qqp", "fever"):  # the undamaged files pass (allow_subset: they are small)
        data = tmp_path / f"ok_{task}"
        write_task(data, task)
        rc, text, _ = dry_run(tmp_path, spec_dict(tmp_path, task, data), f"ok_{task}")
        assert rc == 0, text


# -- damaged model directories and hub names ----------------------------------------------------------------

def _minilm():
    from srnet_core.models import minilm_path
    return minilm_path()


def model_dir(root, *, config="copy", weights=True, tokenizer=True):
    root.mkdir()
    src = _minilm()
    if config == "copy":
        shutil.copy(os.path.join(src, "config.json"), root / "config.json")
    elif config is not None:
        (root / "config.json").write_text(config)
    if weights:
        (root / "model.safetensors").write_bytes(b"not checked before a launch")
    if tokenizer is True:
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(src, name), root / name)
    elif tokenizer:
        (root / "tokenizer.json").write_text(tokenizer)
        (root / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizerFast"}')
    return str(root)


MODEL_CASES = [
    ("broken config.json", dict(config='{"model_type": "bert", '), "config.json that is not valid JSON"),
    ("config.json without model_type", dict(config='{"hidden_size": 64}'), "without 'model_type'"),
    ("config.json of an unknown model type", dict(config='{"model_type": "no-such-arch"}'), "transformers cannot load"),
    ("no config.json", dict(config=None), "without config.json"),
    ("no weights", dict(weights=False), "without weights"),
    ("missing tokenizer", dict(tokenizer=False), "without a tokenizer"),
    ("broken tokenizer.json", dict(tokenizer='{"version": '), "tokenizer that cannot be loaded"),
]


def test_damaged_backbones_refused_before_ray(tmp_path):
    for i, (label, kwargs, expect) in enumerate(MODEL_CASES):
        path = model_dir(tmp_path / f"model{i}", **kwargs)
        spec = spec_dict(tmp_path, "synthetic", backbone=path)
        rc, text, seconds = dry_run(tmp_path, spec, f"m{i}")
        assert_refused(rc, text, seconds, expect, label, spec["output_dir"])
    for label, name, expect in [("unknown hub name offline", "no-such-org/no-such-bert-srnet", "not in the local Hugging Face cache"),
                                ("invalid hub name", "bert base uncased!", "valid hub name")]:
        spec = spec_dict(tmp_path, "synthetic", backbone=name)
        rc, text, seconds = dry_run(tmp_path, spec, "hub")
        assert_refused(rc, text, seconds, expect, label, spec["output_dir"])
        assert seconds < 3, f"{label}: the offline hub check took {seconds:.1f} s"
    good = model_dir(tmp_path / "good")  # weights are only read at run time
    rc, text, _ = dry_run(tmp_path, spec_dict(tmp_path, "synthetic", backbone=good), "good")
    assert rc == 0, text


def test_seed_range_and_search_section(tmp_path):
    spec = spec_dict(tmp_path, "synthetic")
    spec["grid"]["seeds"] = [0, 2**63]
    rc, text, seconds = dry_run(tmp_path, spec, "seed")
    assert_refused(rc, text, seconds, "grid.seeds", "seed 2^63", spec["output_dir"])
    assert "2^32-1" in text
    spec["grid"]["seeds"] = [2**32 - 1]
    assert dry_run(tmp_path, spec, "seed_ok")[0] == 0
    with open(os.path.join(REPO, "sweeps", "timing_search.yaml")) as f:
        search = yaml.safe_load(f)
    search["output_dir"] = str(tmp_path / "out")
    rc, text, seconds = dry_run(tmp_path, search, "search")
    assert_refused(rc, text, seconds, "python -m orchestrator.search", "search section", search["output_dir"])


# -- fingerprints -------------------------------------------------------------------------------------------

@needs_real
def test_real_files_match_the_registry():
    """Every file ../shared/data documents is registered with its rows and sha256, and they match."""
    present = set()
    for root, _, files in os.walk(REAL):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), REAL).replace(os.sep, "/")
            if rel != "README.md":
                present.add(rel)
    assert present <= set(fp.KNOWN_FILES), sorted(present - set(fp.KNOWN_FILES))
    cache = {}
    for rel, known in fp.KNOWN_FILES.items():
        info = fp.digest(os.path.join(REAL, rel), cache)
        assert info["sha256"] == known.sha256, rel
        if known.rows is not None:
            assert info["rows"] == known.rows, rel
        if known.task:
            status, problem = fp.check(known.task, known.split, os.path.join(REAL, rel), info)
            assert status == known.kind and (problem is None) == (known.kind == "official"), (rel, problem)


@needs_real
def test_real_files_pass_the_preflight_and_rows_record_them(tmp_path):
    cache = fp.load_cache()
    P.check_task_data("mnli", {"train_source": "dev_matched"}, REAL, cache, ood_train=True)
    qqp = {"paths": {"train": "qqp/qqp_train_subset.tsv", "dev": "qqp/qqp_train_subset.tsv"}, "allow_subset": True}
    P.check_task_data("qqp", qqp, REAL, cache)
    # QQP's OOD upper bound trains on PAWS-Wiki train (required, issue 19), which ../shared/data lacks
    with pytest.raises(ValueError, match="PAWS-Wiki train: no file found"):
        P.check_task_data("qqp", qqp, REAL, cache, ood_train=True)
    with pytest.raises(ValueError, match="known 9,999-row subset"):  # a subset needs allow_subset
        P.check_task_data("qqp", {"paths": {"train": "qqp/qqp_train_subset.tsv", "dev": "qqp/qqp_train_subset.tsv"}},
                          REAL, cache)
    with pytest.raises(ValueError, match="known 29,524-row subset"):
        P.check_task_data("mnli", {"paths": {"train": "mnli/mnli_train_subset.tsv"}}, REAL, cache)
    P.check_task_data("mnli", {"paths": {"train": "mnli/mnli_train_subset.tsv"}, "allow_subset": True}, REAL, cache)
    cols = fp.data_columns({"task": "mnli", "data_dir": REAL, "task_options": {"train_source": "dev_matched"}})
    assert cols == {"data_fingerprint": "dev_matched=d4f852835e0a,hans=b4b3ee6c406c",
                    "data_rows": "dev_matched=9815,hans=30000"}
    cols = fp.data_columns({"task": "mnli", "data_dir": REAL,
                            "task_options": {"paths": {"train": "mnli/mnli_train_subset.tsv"}, "allow_subset": True}})
    assert "train=688232ffa8c8[subset]" in cols["data_fingerprint"] and "train=29524" in cols["data_rows"]
    assert fp.data_columns({"task": "synthetic", "task_options": {}}) == {}


@needs_real
def test_truncated_and_altered_hans_refused_unless_allow_subset(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(REAL, "mnli"), data / "mnli", ignore=lambda d, names: [
        n for n in names if n != "mnli_dev_matched.tsv"])
    (data / "hans").mkdir()
    with open(os.path.join(REAL, HANS), "rb") as f:
        lines = f.read().split(b"\n")
    opts = {"train_source": "dev_matched"}
    cases = [(b"\n".join(lines[:41]) + b"\n", "has 40 rows; the official HANS evaluation set has 30,000"),
             (b"\n".join(lines[:1] + [lines[2]] + lines[2:]), "not the official content"),  # a row duplicated, one lost
             (b"\r\n".join(lines), "CRLF line endings")]
    for i, (raw, expect) in enumerate(cases):
        (data / HANS).write_bytes(raw)
        spec = spec_dict(tmp_path, "mnli", data, allow_subset=False, task_options={"mnli": opts})
        rc, text, seconds = dry_run(tmp_path, spec, f"hans{i}")
        assert_refused(rc, text, seconds, expect, expect, spec["output_dir"])
        assert "allow_subset: true" in text
    (data / HANS).write_bytes(cases[0][0])
    spec = spec_dict(tmp_path, "mnli", data, task_options={"mnli": {**opts, "allow_subset": True}})
    rc, text, _ = dry_run(tmp_path, spec, "hans_subset")
    assert rc == 0, text
    cols = fp.data_columns({"task": "mnli", "data_dir": str(data), "task_options": {**opts, "allow_subset": True}})
    assert cols["data_rows"] == "dev_matched=9815,hans=40" and "hans=" in cols["data_fingerprint"]
    assert "[subset]" in cols["data_fingerprint"].split("hans=")[1]


def test_relaunch_does_not_reread_and_a_changed_file_is_reread(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_task(data, "mnli")
    reads = []
    real_read = P._read_all
    monkeypatch.setattr(P, "_read_all", lambda task, splits: (reads.append(1), real_read(task, splits)))
    spec = spec_dict(tmp_path, "mnli", data)
    for _ in range(2):
        assert dry_run(tmp_path, spec, "again")[0] == 0
    assert len(reads) == 1
    cache = json.loads((tmp_path / "preflight-cache.json").read_text())
    assert len(cache["files"]) == 2 and len(cache["checks"]) == 1
    _tsv(str(data / DM), MNLI_HEADER, mnli_rows()[:5] + [[99, "a", "b", "entailed"]])  # changed: re-read, refused
    rc, text, _ = dry_run(tmp_path, spec, "again")
    assert rc == 2 and "entailed" in text and len(reads) == 2


def test_result_rows_carry_the_data_columns():
    from workers.trainable import result_frame

    node = {"key": "k", "stage": "finetune", "columns": {},
            "stage_config": {"task": "mnli", "data_dir": REAL, "task_options": {"train_source": "dev_matched"}}}
    if not HAVE_REAL:
        node["stage_config"] = {"task": "synthetic", "task_options": {}}
    frame = result_frame(node, [{"split": "x", "accuracy": 0.5}], 0.0, 1.0)
    if HAVE_REAL:
        assert frame["data_rows"].iloc[0] == "dev_matched=9815,hans=30000"
        assert frame["data_fingerprint"].iloc[0].startswith("dev_matched=")
    else:
        assert "data_rows" not in frame


# -- a few real launches: exit code and line count of a fresh interpreter ----------------------------------

def test_refusals_in_a_real_launch_subprocess(tmp_path):
    data = tmp_path / "data"
    write_task(data, "mnli")
    _tsv(str(data / HANS), HANS_HEADER, hans_rows()[:3] + [["neutral", "a", "b", "subsequence"]])
    specs = [(spec_dict(tmp_path, "mnli", data), "label 'neutral'"),
             (spec_dict(tmp_path, "synthetic", backbone=model_dir(tmp_path / "m", config="{")), "not valid JSON"),
             (spec_dict(tmp_path, "synthetic", backbone="no-such-org/no-such-model"), "Hugging Face cache")]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, (spec, expect) in enumerate(specs):
        path = tmp_path / f"sub{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        proc = subprocess.run(["timeout", "60", sys.executable, "-m", "orchestrator.launch", str(path)], cwd=str(tmp_path),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=90)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stdout
        assert 1 <= len(lines) <= 3 and "Traceback" not in proc.stdout, proc.stdout
        assert expect in " ".join(proc.stdout.split()), proc.stdout
        assert not os.path.exists(spec["output_dir"])
        print(f"subprocess refusal {i}: {time.perf_counter() - started:.1f} s")
