"""Everything a spec points at, checked on the driver before Ray starts (and by --dry-run); each problem is
one SpecError line naming the field and the fix.

- ``search:``: launch runs grids; a spec with an Optuna study is run by ``python -m orchestrator.search``.
- the output directory, artifact store and per-trial resources (``orchestrator.spec.preflight``);
- every backbone resolves: ``minilm`` / ``tiny-bert`` (the packaged MiniLM), a model directory with a loadable
  config.json, weights and tokenizer, or a hub name in the local Hugging Face cache (with HF_HUB_OFFLINE set an
  uncached name is refused at once; online it is downloaded at run time);
- every task's files open with the readers the stages use (columns, labels, ids unique, UTF-8, row counts)
  and match the fingerprint registry (srnet_core/tasks/fingerprints.py) unless ``allow_subset: true``. A
  file already checked (same path, size, mtime, task options) is not re-read: the results are cached in
  ``$SRNET_PREFLIGHT_CACHE`` or ``~/.cache/srnet/preflight.json``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from functools import lru_cache

from srnet_core.tasks import TASKS, DataFileError, get_task
from srnet_core.tasks import fingerprints as fp

from .spec import SpecError, SweepSpec, preflight

PREFLIGHT_VERSION = "1"  # bump when the checks change: cached results of older checks are not trusted
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
              "sentencepiece.bpe.model")


def check_launch(spec: SweepSpec, source: str, local_ray: bool = True, inputs: bool = True) -> None:
    """What a launch would refuse, before Ray starts. ``inputs``: also check data files and backbones."""
    if spec.search is not None:
        raise SpecError(f"{source}: field 'search': this spec defines a search; run it with python -m "
                        f"orchestrator.search {source} (launch runs grids only), or remove the section")
    preflight(spec, source, local_ray=local_ray)
    if inputs:
        check_backbones(spec, source)
        check_data(spec, source)


# -- backbones ---------------------------------------------------------------------------------------------

def check_backbones(spec: SweepSpec, source: str) -> None:
    for name in spec.grid.backbones:
        problem = backbone_problem(name)
        if problem:
            raise SpecError(f"{source}: field 'grid.backbones': backbone '{name}' {problem}")


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def backbone_problem(name: str) -> str | None:
    """None when ``name`` will load, else why not and the fix (the rest of one sentence)."""
    from srnet_core.models import BackboneError, resolve_backbone_path

    try:
        path = resolve_backbone_path(name)
    except BackboneError as err:
        return f"cannot be used: {err}"
    if os.path.isdir(path):
        return _directory_problem(path, _dir_stamp(path))
    if os.path.exists(path):
        return f"is '{path}', a file: give a model directory or a hub name"
    if name.startswith(("/", "./", "../", "~")):
        return f"is a directory '{path}' that does not exist"
    return _hub_problem(name)


def _dir_stamp(path: str) -> tuple:
    out = []
    for entry in sorted(os.listdir(path)):
        try:
            st = os.stat(os.path.join(path, entry))
        except OSError:
            continue
        out.append((entry, st.st_size, st.st_mtime_ns))
    return tuple(out)


@lru_cache(maxsize=64)
def _directory_problem(path: str, stamp: tuple) -> str | None:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return f"is a directory '{path}' without config.json: save the model there with save_pretrained()"
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        return f"has a config.json that is not valid JSON{where}: '{config}'; re-save it with save_pretrained()"
    if not isinstance(data, dict) or "model_type" not in data:
        return f"has a config.json without 'model_type': '{config}'; re-save it with save_pretrained()"
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - whatever transformers raises becomes one line
        return f"has a config.json transformers cannot load ({_first_line(err)}): '{config}'"
    if not any(os.path.isfile(os.path.join(path, w)) for w in _WEIGHTS):
        return f"is a directory '{path}' without weights ({', '.join(_WEIGHTS[::2])}): save the model there"
    if not any(os.path.isfile(os.path.join(path, t)) for t in _TOKENIZER):
        return (f"is a directory '{path}' without a tokenizer ({', '.join(_TOKENIZER[:3])}...): save the "
                "tokenizer there too (tokenizer.save_pretrained)")
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        return f"has a tokenizer that cannot be loaded from '{path}' ({_first_line(err)}); re-save it"
    return None


def _hub_problem(name: str) -> str | None:
    try:
        from huggingface_hub import constants, try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return ("is neither a model directory nor a valid hub name: use 'minilm', 'tiny-bert', a model "
                "directory or a hub name such as bert-base-uncased")
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return _cached_hub_problem(name, cached)
    if _offline():
        return (f"is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub is offline "
                f"(HF_HUB_OFFLINE): run huggingface-cli download {name} on a machine with network, or give a "
                "model directory")
    return None  # online: from_pretrained downloads it


@lru_cache(maxsize=64)
def _cached_hub_problem(name: str, config: str) -> str | None:
    try:
        from transformers import AutoConfig, AutoTokenizer

        AutoConfig.from_pretrained(name, local_files_only=True)
        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        return (f"is only partly in the local Hugging Face cache ({_first_line(err)}): download it again "
                f"(huggingface-cli download {name}) or give a model directory")
    return None


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join((str(err) or type(err).__name__).split())
    return text if len(text) <= limit else text[:limit] + "..."


# -- data --------------------------------------------------------------------------------------------------

def spec_tasks(spec: SweepSpec) -> list[str]:
    tasks = list(spec.grid.tasks)
    transfer = spec.paradigm_options.transfer
    if "transfer" in spec.grid.paradigms and transfer is not None:
        tasks += transfer.source_tasks + transfer.target_tasks
    return list(dict.fromkeys(tasks))


def check_data(spec: SweepSpec, source: str) -> None:
    """Every file every task of the spec reads: opened, parsed and fingerprinted (cached)."""
    cache = fp.load_cache()
    try:
        for name in spec_tasks(spec):
            if not getattr(TASKS[name], "needs_data_dir", False):
                continue
            options = dict(spec.task_options.get(name, {}))
            if options.get("source", "files") != "files":
                continue  # hub data cannot be checked offline; it is loaded at run time
            try:
                check_task_data(name, options, spec.resolved_data_dir(), cache,
                                ood_train="ood_upper_bound" in spec.grid.paradigms)
            except (DataFileError, ValueError) as err:
                msg = _one_line(err).removeprefix(f"task '{name}': ")
                raise SpecError(f"{source}: task '{name}': {msg}") from None
    finally:
        fp.save_cache(cache)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def check_task_data(name: str, options: dict, data_dir: str | None, cache: dict, ood_train: bool = False) -> dict:
    """Check one task's files; returns {file split: digest}. Raises DataFileError / ValueError (one line)."""
    task = get_task(name, data_dir=data_dir, **options)
    splits = fp.needed_splits(task, ood_train=ood_train)
    files = fp.task_files(task, splits)
    digests = {}
    for split, path in files.items():
        info = fp.digest(path, cache)
        if info["utf8_error"]:
            byte, line = info["utf8_error"]
            raise DataFileError(f"{task.FILES[split].what}: file '{path}' is not UTF-8 text (line {line}, byte "
                                f"{byte}); convert it to UTF-8 (e.g. iconv -t utf-8) or get a fresh copy from "
                                f"{task.FILES[split].source}")
        if info.get("nul"):
            raise DataFileError(f"{task.FILES[split].what}: file '{path}' contains NUL bytes (a binary file?); get a "
                                f"fresh copy from {task.FILES[split].source}")
        if info.get("bom"):
            raise DataFileError(f"{task.FILES[split].what}: file '{path}' starts with a byte-order mark (BOM), which "
                                "hides its first column name; save it as UTF-8 without BOM")
        if info["rows"] == 0:
            spec = task.FILES[split]
            raise DataFileError(f"{spec.what}: file '{path}' has no rows (it is empty or only a header). Expected "
                                f"layout: {spec.layout()}. Get it from {spec.source}")
        digests[split] = info
    key = hashlib.sha256(json.dumps([PREFLIGHT_VERSION, name, options, splits, ood_train,
                                     sorted((s, fp.stat_key(p)) for s, p in files.items())],
                                    sort_keys=True, default=str).encode()).hexdigest()
    checks = cache.setdefault("checks", {})
    if key not in checks:
        _read_all(task, splits)
        checks[key] = True
    for split, path in files.items():
        status, problem = fp.check(name, split, path, digests[split])
        if problem and not task.options.allow_subset:
            raise DataFileError(f"{task.FILES[split].what}: file '{path}' {problem}. Get a complete copy from "
                                f"{task.FILES[split].source}; or, to use it knowingly, set "
                                f"task_options.{name}.allow_subset: true (rows then record data_fingerprint)")
    return digests


def _read_all(task, splits: list[str]) -> None:
    """Load every split as a stage does (same readers, same task checks); errors become one line."""
    for split in splits:
        try:
            task.load(split)
        except UnicodeDecodeError as err:  # the digest finds these first; a race with a rewrite lands here
            raise DataFileError(f"task '{task.name}' split '{split}': a file is not UTF-8 text ({err.reason})") from None
        except csv.Error as err:
            raise DataFileError(f"task '{task.name}' split '{split}': the file cannot be parsed as TSV ({err})") from None
        except KeyError as err:
            raise DataFileError(f"task '{task.name}' split '{split}': a row lacks the field {err}") from None
        except ValueError:
            raise  # DataFileError and the tasks' own checks: already one line
        except Exception as err:  # noqa: BLE001 - anything else a damaged file provokes: one line, not a traceback
            raise DataFileError(f"task '{task.name}' split '{split}': its file cannot be read "
                                f"({type(err).__name__}: {_first_line(err)})") from None
    task._loaded.clear()  # nothing is kept: the driver only checks

