"""train.ood_eval_every: OOD splits evaluated less often than ID dev, with the selected checkpoint's rows
unchanged (selection reads ID dev only; the selected snapshot is restored and evaluated in full once)."""
from __future__ import annotations

import pytest

from srnet_core.stages import run_stage
from srnet_core.train import TrainConfig

BASE = {"task": "synthetic", "task_options": {"n_train": 192, "n_dev": 64, "n_ood": 64}, "backbone": "tiny-bert",
        "seed": 2, "max_length": 40, "device": "cpu",
        "train": {"lr": 2e-3, "epochs": 2, "batch_size": 16, "eval_every": 3, "eval_at_start": False}}


def _by_step(rows):
    out = {}
    for r in rows:
        out.setdefault(r["step"], {})[(r["eval_dataset"], r["metric"])] = r["value"]
    return out


def _selected(rows):
    return {(r["eval_dataset"], r["metric"]): r["value"] for r in rows if r["selected"]}


@pytest.mark.parametrize("stage", ["finetune", "mask_train"])
def test_selected_rows_identical_and_ood_only_where_asked(tmp_path, stage):
    extra = {"sparsity": 0.5, "mask": {"init": "magnitude_soft", "score_scale": "normalized"}} if stage == "mask_train" else {}
    # mask lr high enough that the masks move between the selected and the final step
    train = {**BASE["train"], "lr": 5e-2} if stage == "mask_train" else BASE["train"]
    cfg = {**BASE, "stage": stage, **extra, "train": train}
    every = run_stage(cfg, str(tmp_path / "every"))
    runs = {k: run_stage({**cfg, "train": {**train, "ood_eval_every": k}}, str(tmp_path / f"k{k}"))
            for k in (0, 6)}
    steps = sorted(_by_step(every))  # 24 steps: evals at 3, 6, ..., 24
    assert steps == list(range(3, 25, 3))
    best = {r["step"] for r in every if r["selected"]}
    assert len(best) == 1
    (best,) = best
    assert best != 24  # else evaluating the final weights would pass too: the restore would go untested
    for k, rows in runs.items():
        assert {r["step"] for r in rows if r["selected"]} == {best}
        # the selected checkpoint's rows: the same numbers whatever the cadence (OOD evaluated on the restored
        # selected snapshot, not on the final weights)
        assert _selected(rows) == _selected(every)
        for step, metrics in _by_step(rows).items():
            splits = {split for split, _ in metrics}
            full = step == best or (k > 0 and step % k == 0)
            assert splits == ({"dev", "ood"} if full else {"dev"}), (k, step, splits)
            assert metrics.items() <= _by_step(every)[step].items()  # same values where evaluated


def test_bad_cadence_is_refused():
    with pytest.raises(ValueError, match="ood_eval_every"):
        TrainConfig(ood_eval_every=-1)
