"""Run by tests/test_lm_training.py in a fresh process: train a tiny language model with a strategy
and write its logits on a fixed window to OUT.npy (and, for mirrored, those of a run stopped after 3
steps and resumed from its checkpoint to OUT_resumed.npy).

usage: python lm_distributed_worker.py {single|mirrored|multi_worker} OUT.npy [CHECKPOINT_DIR]
(set-up: tests/distributed_helpers.py)
"""
import sys

from distributed_helpers import worker_strategy  # (this script's folder is on sys.path)

mode, out = sys.argv[1], sys.argv[2]
strategy, chief = worker_strategy(mode)

import numpy as np  # noqa: E402

import tasks  # noqa: E402
from kerasllm.data import default_corpus  # noqa: E402

TEXT = default_corpus()[:20000]
# warm-up longer than the run: the learning rate does not depend on the planned total, so a run
# stopped at step 3 and resumed to step 6 follows the same schedule as one run of 6 steps
SETTINGS = dict(architecture="transformer", context_length=16, seed=0, hidden=16, layers=1, heads=2, ff=32,
                batch_size=8, learning_rate=3e-3, warmup_steps=10, dropout=0.0, verbose=0)


def logits(lm):
    return lm.model(lm.tokenizer.encode(TEXT[-16:])[None]).numpy()


lm = tasks.train_language_model(TEXT, steps=6, strategy=strategy, **SETTINGS)
if chief:
    np.save(out, logits(lm))
if mode == "mirrored" and len(sys.argv) > 3:
    ckpt = sys.argv[3]
    tasks.train_language_model(TEXT, steps=3, strategy=strategy, checkpoint_dir=ckpt, checkpoint_every=3, **SETTINGS)
    resumed = tasks.train_language_model(TEXT, steps=6, strategy=strategy, checkpoint_dir=ckpt, **SETTINGS)
    assert resumed.history["step"][0] > 3  # it started from the checkpoint
    np.save(out.replace(".npy", "_resumed.npy"), logits(resumed))
