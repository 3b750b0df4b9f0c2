"""Dataset fingerprints: how many rows the official files have (and their sha256 where the copy is canonical),
so that an incomplete or altered copy is refused before a sweep starts (orchestrator/preflight.py), and what
every result row records about the files it was computed from (``data_columns``).

Rows are counted as non-blank lines after the header (JSONL: non-blank lines; a file without a header, such
as ``mnli_train_contradicting_hans_heuristics.tsv``: every non-blank line). With ``quoting=csv.QUOTE_NONE``
a TSV row is one line, so this is the reader's row count, computed without parsing.

A file whose count or (for canonical files) sha256 does not match is refused unless the task option
``allow_subset: true`` is set; its rows then carry ``data_fingerprint`` (``split=<sha256[:12]>`` with a
``[subset]`` tag) and ``data_rows`` (``split=<rows>``). docs/tasks.md lists the registry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

CACHE_ENV = "SRNET_PREFLIGHT_CACHE"
CACHE_FORMAT = 1  # bump when a digest gains a field


@dataclass(frozen=True)
class Official:
    """The complete official set behind a task split: its row count, and the canonical copies known by sha256
    (``names``: path suffixes that claim to be such a copy, so a different sha256 there means altered)."""

    what: str
    rows: int | None  # None: not registered (no count check; the rows are still recorded)
    sha256: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


# (task, split) -> the official set. Counts: GLUE (MNLI train 392,702, dev-matched 9,815, dev-mismatched 9,832
# labelled; QQP train 363,846, dev 40,430), HANS (30,000 + 30,000), PAWS README (PAWS-QQP 11,988 / 677,
# PAWS-Wiki 49,401 / 8,000 / 8,000), Schuster et al. (FEVER train 242,911), FeverSymmetric (717, 708, 712).
OFFICIAL: dict[tuple[str, str], Official] = {
    ("mnli", "train"): Official("MNLI train", 392_702),
    ("mnli", "dev_matched"): Official(
        "MNLI dev-matched", 9_815, ("d4f852835e0a2b57dae7da09c23a1c2031bebe3ffea900642d91833677e18051",),
        ("mnli_dev_matched.tsv",)),
    ("mnli", "dev_mismatched"): Official(
        "MNLI dev-mismatched", 9_832, ("2c6abda6b47a413d172c3641b208fcce99e58792bc89e1283c050eec3c918e91",),
        ("mnli_dev_mismatched.tsv",)),
    ("mnli", "hans"): Official(
        "HANS evaluation set", 30_000, ("b4b3ee6c406cbbd86421fe8df4206a81a0b349e600a28ac1aa02533737c3d54b",),
        ("hans_evaluation_set.tsv",)),
    ("mnli", "hans_train"): Official(
        "HANS training set", 30_000, ("b002d05fbacbdf37c9dc26a85802ec63772e640be0d907e842522d4114d5d48b",),
        ("hans_train_set.tsv",)),
    ("qqp", "train"): Official("QQP train", 363_846),
    ("qqp", "dev"): Official("QQP dev", 40_430),
    ("qqp", "paws_qqp"): Official(
        "PAWS-QQP dev_and_test", 677, ("4cd621b3f1c0fa70d13992bfe928a868124444a226b1ce6386b2fc949aaad233",),
        ("paws_qqp/dev_and_test.tsv",)),
    ("qqp", "paws_qqp_train"): Official(
        "PAWS-QQP train", 11_988, ("f993e5b1aad1763b04c9e4c2e5b93016eb209c0d92741e188fa4eef1c0c7f4c9",),
        ("paws_qqp/train.tsv",)),
    ("qqp", "paws_wiki"): Official(
        "PAWS-Wiki test", 8_000, ("51fc5f45bf33e7991a0c09b38bb4ff1ee482afd170128ae5ae5d8c4ba1d250cf",)),
    ("qqp", "paws_wiki_dev"): Official(
        "PAWS-Wiki dev", 8_000, ("069c5c604db421f5d3513e932e9b1025456f1ffa7321ddb8336189bbc627bd67",)),
    ("qqp", "paws_wiki_train"): Official("PAWS-Wiki train", 49_401),
    ("fever", "train"): Official("FEVER train (claim-evidence)", 242_911),
    ("fever", "dev"): Official("FEVER dev (claim-evidence)", None),
    ("fever", "symmetric_v1"): Official(
        "Fever-Symmetric v1 (v0.1 generated)", 717,
        ("83a4aac042192ebc159b4478dc5316f9e25094e41ddc97c3b1cea825ad2943eb",),
        ("symmetric_v0.1_fever_symmetric_generated.jsonl", "symmetric_v0.1/fever_symmetric_generated.jsonl")),
    ("fever", "symmetric_v2"): Official(
        "Fever-Symmetric v2 test (v0.2)", 712, ("b2ff560615bd3337c858bc5b09256d04f39aaa034aaae2351bb2d6345c110f83",),
        ("symmetric_v0.2_fever_symmetric_test.jsonl", "symmetric_v0.2/fever_symmetric_test.jsonl")),
    ("fever", "symmetric_v2_dev"): Official(
        "Fever-Symmetric v2 dev (v0.2)", 708, ("1d43d016da9264de2139cd10edd459ffbeac84f1fd85d60b70ab6ef63d283f81",),
        ("symmetric_v0.2_fever_symmetric_dev.jsonl", "symmetric_v0.2/fever_symmetric_dev.jsonl")),
}


@dataclass(frozen=True)
class KnownFile:
    """A file of ../shared/data (its README documents each): rows, sha256, and the task split it serves.
    ``kind``: official (the complete set), subset (a known part of one: usable with allow_subset), other."""

    rows: int | None
    sha256: str
    task: str | None = None
    split: str | None = None
    kind: str = "official"


# Every file ../shared/data/README.md documents, by its path there (tests/test_preflight.py checks them all).
KNOWN_FILES: dict[str, KnownFile] = {
    "hans/hans_evaluation_set.tsv": KnownFile(30_000, OFFICIAL["mnli", "hans"].sha256[0], "mnli", "hans"),
    "hans/hans_train_set.tsv": KnownFile(30_000, OFFICIAL["mnli", "hans_train"].sha256[0], "mnli", "hans_train"),
    "hans/LICENSE_tommccoy1_hans.md": KnownFile(
        None, "ece363d4ea0a01bc3dbe0b7fba5ff6c8d81d5866fea8948a1f353642cdb750fa", kind="other"),
    "mnli/mnli_dev_matched.tsv": KnownFile(9_815, OFFICIAL["mnli", "dev_matched"].sha256[0], "mnli", "dev_matched"),
    "mnli/mnli_dev_mismatched.tsv": KnownFile(
        9_832, OFFICIAL["mnli", "dev_mismatched"].sha256[0], "mnli", "dev_mismatched"),
    "mnli/mnli_train_subset.tsv": KnownFile(
        29_524, "688232ffa8c850aae707b71379c04b6ea12e58181c7b46e2da49fe04895275bc", "mnli", "train", "subset"),
    "mnli/mnli_train_contradicting_hans_heuristics.tsv": KnownFile(  # no header: 261 lines
        261, "6bb2dd7cb1f9640e53f1c75b76fef32ed392c4643f6c698292d735cc9ae4e940", kind="other"),
    "qqp/qqp_train_subset.tsv": KnownFile(
        9_999, "6106537510d1b5a6286a090a692e973a67131e2cfc2727642f26c1b9b2536a50", "qqp", "train", "subset"),
    "paws_qqp/dev_and_test.tsv": KnownFile(677, OFFICIAL["qqp", "paws_qqp"].sha256[0], "qqp", "paws_qqp"),
    "paws_qqp/train.tsv": KnownFile(11_988, OFFICIAL["qqp", "paws_qqp_train"].sha256[0], "qqp", "paws_qqp_train"),
    "paws_wiki/dev.tsv": KnownFile(8_000, OFFICIAL["qqp", "paws_wiki_dev"].sha256[0], "qqp", "paws_wiki_dev"),
    "paws_wiki/test.tsv": KnownFile(8_000, OFFICIAL["qqp", "paws_wiki"].sha256[0], "qqp", "paws_wiki"),
    "fever_symmetric/symmetric_v0.1_fever_symmetric_generated.jsonl": KnownFile(
        717, OFFICIAL["fever", "symmetric_v1"].sha256[0], "fever", "symmetric_v1"),
    "fever_symmetric/symmetric_v0.1_fever_symmetric_full.jsonl": KnownFile(
        956, "6edf8b5bdc3f2fe470b98e94297ed31200a241c98b0318f905bf324345cf6897", kind="other"),
    "fever_symmetric/symmetric_v0.2_fever_symmetric_dev.jsonl": KnownFile(
        708, OFFICIAL["fever", "symmetric_v2_dev"].sha256[0], "fever", "symmetric_v2_dev"),
    "fever_symmetric/symmetric_v0.2_fever_symmetric_test.jsonl": KnownFile(
        712, OFFICIAL["fever", "symmetric_v2"].sha256[0], "fever", "symmetric_v2"),
    "fever_symmetric/DATA_LICENSE": KnownFile(
        None, "742d3104ce5632387650a5d1b03c57d938a4bccae7276f6ee615ed21809295d4", kind="other"),
    "reference/berts_of_a_feather_accuracies_by_run.csv": KnownFile(  # 100 runs, 4 summary rows, 7 empty rows
        111, "307a98e15c1e85e81694887f85b99fdc5b6de2b0e3108b989ac4d0ae0fd4a40d", kind="other"),
}
# File splits that are subsets of an official split by definition (train_source: train_subset): their rows
# are tagged [subset]; the option that selects them is the user's knowing choice, so no allow_subset is needed.
SUBSET_SPLITS = {("mnli", "train_subset"): "train", ("qqp", "train_subset"): "train"}
_SUBSETS = {(f.task, f.split, f.sha256): (path, f.rows) for path, f in KNOWN_FILES.items() if f.kind == "subset"}
_HEADERLESS = {f.sha256 for p, f in KNOWN_FILES.items() if p.endswith("contradicting_hans_heuristics.tsv")}


# -- digests, cached by path, size and mtime ---------------------------------------------------------------

def cache_path() -> str | None:
    """$SRNET_PREFLIGHT_CACHE (a JSON file; empty: no cache), else ~/.cache/srnet/preflight.json."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return value or None
    return os.path.join(os.path.expanduser("~"), ".cache", "srnet", "preflight.json")


def load_cache() -> dict:
    path = cache_path()
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, TypeError, ValueError):
        data = None
    # another format (or a broken file): start afresh
    return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else {"format": CACHE_FORMAT}


def save_cache(data: dict) -> None:
    """Atomic, best effort: an unwritable cache only costs a re-read next time."""
    path = cache_path()
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".preflight-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def digest(path: str, cache: dict | None = None) -> dict:
    """{"sha256", "rows", "crlf", "nul", "bom", "utf8_error"} of a file; ``cache`` (load_cache()) is consulted and updated."""
    files = cache.setdefault("files", {}) if cache is not None else {}
    key = stat_key(path)
    if key in files:
        return files[key]
    h, rows, crlf, nul, bom, utf8_error, offset = hashlib.sha256(), 0, False, False, False, None, 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            h.update(line)
            if line_no == 1:
                bom = line.startswith(b"\xef\xbb\xbf")
            if utf8_error is None:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    utf8_error = [offset + err.start, line_no]  # byte offset, line
            offset += len(line)
            rows += bool(line.strip())
            crlf = crlf or line.endswith(b"\r\n")
            nul = nul or b"\x00" in line
    sha = h.hexdigest()
    headerless = path.endswith(".jsonl") or sha in _HEADERLESS
    out = {"sha256": sha, "rows": rows if headerless else max(rows - 1, 0), "crlf": crlf, "nul": nul,
           "bom": bom, "utf8_error": utf8_error}
    if len(files) >= 4096:  # keep the cache small: forget the oldest entries
        for old in list(files)[:1024]:
            del files[old]
    files[key] = out
    return out


# -- the fingerprint check ---------------------------------------------------------------------------------

def _names(path: str, names: tuple[str, ...]) -> bool:
    p = path.replace(os.sep, "/")
    return any(p == n or p.endswith("/" + n) for n in names)


def check(task: str, split: str, path: str, info: dict) -> tuple[str, str | None]:
    """(status, problem): status "official" (the complete set), "unchecked" (nothing registered), or "subset"
    (a known subset, fewer/more rows, or a canonical file with another sha256), in which case ``problem``
    says why in one sentence; the caller refuses it unless allow_subset is set."""
    if (task, split) in SUBSET_SPLITS:  # a subset by definition, chosen with train_source: tag it, never refuse
        return "subset", None
    official = OFFICIAL.get((task, split))
    if official is None:
        return "unchecked", None
    sha, rows = info["sha256"], info["rows"]
    if sha in official.sha256:
        return "official", None
    known = _SUBSETS.get((task, split, sha))
    if known is not None:
        return "subset", (f"is the known {known[1]:,}-row subset ({known[0]}) of {official.what}, which has "
                          f"{official.rows:,} rows")
    if official.rows is not None and rows != official.rows:
        return "subset", f"has {rows:,} rows; the official {official.what} has {official.rows:,}: an incomplete copy"
    if official.sha256 and _names(path, official.names):
        why = " (it has CRLF line endings; the official file has LF)" if info.get("crlf") else ""
        return "subset", (f"has the official row count but not the official content{why}: sha256 "
                          f"{sha[:12]}, expected {official.sha256[0][:12]}: an altered copy")
    return ("official" if official.rows is not None else "unchecked"), None


# -- which files a task reads, and what every result row records ------------------------------------------

def needed_splits(task, ood_train: bool = False) -> list[str]:
    """The splits a stage of ``task`` loads: train, eval splits, and (``ood_train`` or the task option
    add_ood_train) the OOD training splits, the optional ones only when present."""
    from .files import DataFileError, find_file

    out = [task.train_split] + [s for s in task.eval_splits if s != task.train_split]
    if ood_train or getattr(task.options, "add_ood_train", False):
        for split, _, required in getattr(task, "OOD_TRAIN", ()):
            if not required:
                try:
                    find_file(task.data_dir, task.FILES[split], task.options.paths.get(split))
                except DataFileError:
                    continue
            out.append(split)
    return list(dict.fromkeys(out))


def file_split(task, split: str) -> str:
    """The split whose file ``split`` is read from (MNLI's train_source: dev_matched reads dev-matched)."""
    method = getattr(task, "file_split", None)
    return method(split) if method is not None else split


def task_files(task, splits: list[str]) -> dict[str, str]:
    """{file split: path} of the files behind ``splits`` (find_file's one-line error when one is missing)."""
    from .files import find_file

    out = {}
    for split in splits:
        fs = file_split(task, split)
        if fs not in out:
            out[fs] = find_file(task.data_dir, task.FILES[fs], task.options.paths.get(fs))
    return out


def data_columns(stage_config: dict) -> dict:
    """``data_fingerprint`` and ``data_rows`` of a stage's rows: per file split the task reads,
    ``split=<sha256[:12]>`` (tagged ``[subset]`` when it is not the complete official file, ``[unchecked]``
    when nothing is registered) and ``split=<rows>``. Empty for tasks that read no files (synthetic, hub)."""
    from . import get_task

    name = stage_config.get("task")
    if not name:
        return {}
    task = get_task(name, data_dir=stage_config.get("data_dir"), **dict(stage_config.get("task_options") or {}))
    if not getattr(task, "needs_data_dir", False) or task.options.source != "files":
        return {}
    cache = load_cache()
    prints, rows = [], []
    for split, path in sorted(task_files(task, needed_splits(task)).items()):
        info = digest(path, cache)
        status, _ = check(name, split, path, info)
        tag = "" if status == "official" else f"[{status}]"
        prints.append(f"{split}={info['sha256'][:12]}{tag}")
        rows.append(f"{split}={info['rows']}")
    save_cache(cache)
    return {"data_fingerprint": ",".join(prints), "data_rows": ",".join(rows)}
