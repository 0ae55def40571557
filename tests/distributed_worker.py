"""Run by tests/test_distributed.py in a fresh process: train the classifier with a strategy and
write its probabilities on held-out texts to a .npy file.

usage: python distributed_worker.py {single|mirrored|multi_worker} OUT.npy
(set-up: tests/distributed_helpers.py)
"""
import sys

from distributed_helpers import worker_strategy  # (this script's folder is on sys.path)

mode, out = sys.argv[1], sys.argv[2]
strategy, chief = worker_strategy(mode)

import numpy as np  # noqa: E402

import tasks  # noqa: E402
from kerasllm.data import default_classification_data, stratified_split  # noqa: E402

train, labels, test, _ = stratified_split(*default_classification_data(), test_size=0.2, seed=0)
# no dropout: replicas draw their own dropout masks, which would make the runs differ by design
clf = tasks.train_classifier(train[:240], labels[:240], validation=(test[:40], _[:40]), epochs=2, seed=0,
                             dropout=0.0, embedding_dropout=0.0, strategy=strategy, max_length=24, batch_size=16)
if chief:
    np.save(out, clf.predict_proba(test[:50]))
