"""Do the direct script (bench/nli_small_direct.py) and the sweep path (stages bias_model -> finetune, as the
planner runs them, without Ray) train the same PoE model? Same recipe and seed; compares the bias log-probs
joined to the training examples and the weights after ``STEPS`` PoE steps (bit for bit).

    SRNET_DATA_DIR=../shared/data nice -n 10 .venv/bin/python bench/poe_paths_direct.py [STEPS]

Measured (issue 11, 20 steps, 1 thread): bias log-probs max |diff| 0.0, weights max |diff| 0.0.
"""
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safetensors.torch import load_file  # noqa: E402

from srnet_core import losses  # noqa: E402
from srnet_core.bias import fit_bias_model, read_per_example  # noqa: E402
from srnet_core.cache import encode_cached  # noqa: E402
from srnet_core.models import load_model, load_tokenizer  # noqa: E402
from srnet_core.stages import run_stage  # noqa: E402
from srnet_core.tasks import get_task  # noqa: E402
from srnet_core.train import TrainConfig, TrainLoop  # noqa: E402


def main(steps: int = 20) -> tuple[float, float]:
    torch.set_num_threads(1)  # float summation order must not differ between the two runs
    opts = {"train_source": "dev_matched", "train_size": 8000, "split_seed": 0}
    work = tempfile.mkdtemp(prefix="poe_paths_")
    os.environ["SRNET_TOKEN_CACHE"] = os.path.join(work, "tokens_stage")
    cfg = dict(lr=1e-4, epochs=1.0, max_steps=steps, batch_size=16, warmup_steps=50, eval_batch_size=256, seed=0,
               amp="off", eval_every=10 ** 6, eval_at_start=False)
    # the direct script's path
    task = get_task("mnli", **opts)
    paths = fit_bias_model(task).write(os.path.join(work, "bias"))
    train = encode_cached(load_tokenizer("minilm"), task.load("train"), 128, os.path.join(work, "tokens"),
                          task.cache_key())
    log_probs, _ = read_per_example(paths["train"], train.ids, 3, check="log_probs")
    train.with_extra("bias", log_probs)
    model = load_model("minilm", 3, seed=0)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    TrainLoop(model, params, train, losses.get_loss("poe"), TrainConfig(**cfg), evaluate=lambda: {"d": {"a": 0.0}},
              selection=lambda e: 0.0, snapshot=lambda: params, device="cpu").train()
    direct = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # the sweep's path: the stages the planner runs (HANS/dev subsampled: evaluation does not touch training)
    options = {**opts, "max_eval_rows": 200}
    run_stage({"stage": "bias_model", "task": "mnli", "task_options": options}, os.path.join(work, "bias_node"))
    bias_file = os.path.join(work, "bias_node", "bias_train.parquet")
    run_stage({"stage": "finetune", "task": "mnli", "task_options": options, "backbone": "minilm", "seed": 0,
               "loss": "poe", "device": "cpu", "bias_file": bias_file, "train": {**cfg, "eval_every": steps}},
              os.path.join(work, "ft"))
    stage_lp, _ = read_per_example(bias_file, train.ids, 3)
    stage = load_file(os.path.join(work, "ft", "weights.safetensors"))
    bias_diff = float(np.abs(log_probs - stage_lp).max())
    weight_diff = max(float((direct[k].float() - stage[k].float()).abs().max()) for k in direct)
    print(f"bias log-probs max |diff|: {bias_diff}")
    print(f"after {steps} PoE steps, max |weight diff| direct vs sweep path: {weight_diff}")
    return bias_diff, weight_diff


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
