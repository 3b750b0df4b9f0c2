"""A task whose splits come from files in a data directory (or, with network, from the HF hub)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import PairSplit, Task, concat_splits
from .files import (DataFileError, FileSpec, find_file, load_file_split, parse_options, resolve_data_dir,
                    subsample)


@dataclass
class FileTaskOptions:
    """Options every file-backed task takes.

    paths: {split: file} overrides the file looked up for a split (relative to the data directory or
        absolute), for layouts the task does not know.
    max_train_rows / max_eval_rows: keep a seeded random subset of at most this many rows of the training
        split / of each eval split (file order and ids are kept, so bias and teacher files still join).
    subsample_seed: the seed of that subset.
    source: "files" (default) reads the data directory; "hub" loads the HF hub datasets named in
        ``srnet_core.tasks.hub`` (needs network; never used by tests).
    add_ood_train: append the task's OOD training sets (``FileTask.OOD_TRAIN``) to the training split, for
        the OOD upper bound ("SUNets", protocol 6). The appended rows keep their own file ids behind a
        ``<split>:`` prefix (``#<k>`` for the k-th repeat), so ids stay unique and ID rows still join to bias
        files by id.
    allow_subset: accept files that are not the complete official sets (srnet_core/tasks/fingerprints.py); their
        rows say so in ``data_fingerprint`` / ``data_rows``. Without it, launch refuses such files.
    """

    paths: dict = field(default_factory=dict)
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    subsample_seed: int = 0
    source: str = "files"
    add_ood_train: bool = False
    allow_subset: bool = False


class FileTask(Task):
    needs_data_dir = True
    Options = FileTaskOptions
    FILES: dict[str, FileSpec] = {}  # split -> where its file lives
    LABEL_MAPS: dict[str, dict[str, int]] = {}  # split -> raw label -> label index (default: "default")
    skip_malformed: float = 0.0
    # The OOD training data of the OOD upper bound (protocol 6): (split, repeats, required). A split that is
    # not required is added only when its file is present (PAWS-Wiki train is not in every data directory).
    OOD_TRAIN: tuple[tuple[str, int, bool], ...] = ()

    def __init__(self, data_dir: str | None = None, **options):
        self.options = parse_options(self.Options, self.name, options)
        if self.options.source not in ("files", "hub"):
            raise ValueError(f"task '{self.name}': option source must be 'files' or 'hub', "
                             f"not {self.options.source!r}")
        for key in ("max_train_rows", "max_eval_rows"):
            value = getattr(self.options, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"task '{self.name}': option {key} must be a positive integer or null, "
                                 f"not {value!r}")
        unknown = set(self.options.paths) - set(self.FILES)
        if unknown:
            raise ValueError(f"task '{self.name}': option paths names unknown split(s) {sorted(unknown)}; "
                             f"known: {sorted(self.FILES)}")
        self._data_dir = data_dir
        self._loaded: dict[str, PairSplit] = {}

    @property
    def data_dir(self) -> str:
        return resolve_data_dir(self._data_dir, self.name)

    def splits(self) -> list[str]:
        """Every split ``load`` accepts (eval splits plus extra ones such as OOD training sets)."""
        return list(self.FILES)

    def file_split(self, split: str) -> str:
        """The FILES entry ``split`` is read from (a task whose option re-routes a split overrides this)."""
        return split

    def load(self, split: str) -> PairSplit:
        if split not in self.splits():
            raise ValueError(f"task '{self.name}' has no split '{split}'; known: {self.splits()}")
        if split not in self._loaded:
            data = self._load_full(split)
            limit = self.options.max_train_rows if split == self.train_split else self.options.max_eval_rows
            data = subsample(data, limit, self.options.subsample_seed)
            if split == self.train_split and self.options.add_ood_train:
                data = self._with_ood_train(data)
            self._loaded[split] = data
        return self._loaded[split]

    def _with_ood_train(self, train: PairSplit) -> PairSplit:
        if not self.OOD_TRAIN:
            raise ValueError(f"task '{self.name}': option add_ood_train is set but the task has no OOD "
                             "training data")
        parts = [train]
        for split, repeats, required in self.OOD_TRAIN:
            if not required:
                try:
                    find_file(self.data_dir, self.FILES[split], self.options.paths.get(split))
                except DataFileError:
                    continue  # optional and absent
            ood = self._load_full(split)
            for k in range(repeats):
                suffix = f"#{k}" if repeats > 1 else ""
                parts.append(PairSplit(ood.name, [f"{split}:{i}{suffix}" for i in ood.ids], ood.text_a, ood.text_b,
                                       ood.labels, {}))
        return concat_splits(train.name, parts)

    def _load_full(self, split: str) -> PairSplit:
        if self.options.source == "hub":
            from .hub import load_from_hub
            return load_from_hub(self, split)
        return self._read_file(split)

    def _read_file(self, split: str, name: str | None = None) -> PairSplit:
        labels = self.LABEL_MAPS.get(split, self.LABEL_MAPS["default"])
        return load_file_split(name or split, self.data_dir, self.FILES[split], labels,
                               self.options.paths.get(split), self.skip_malformed)
