"""Knowledge distillation: a smaller classifier trained on a trained one's soft predictions."""
from __future__ import annotations

import numpy as np

from kerasllm.compression.training import fine_tune, soft_target_loss, soft_targets, with_model

# the student's defaults: the teacher's tokenizer and vocabulary, narrower layers, fewer bigram buckets
STUDENT = {"embedding_dim": 8, "units": 8, "bigram_buckets_fraction": 0.25}


def student_config(teacher_config, **overrides):
    cfg = {"embedding_dim": max(2, min(STUDENT["embedding_dim"], teacher_config.embedding_dim // 2)),
           "units": max(2, min(STUDENT["units"], teacher_config.units // 2)),
           "bigram_buckets": max(256, int(teacher_config.bigram_buckets * STUDENT["bigram_buckets_fraction"]))}
    unknown = set(overrides) - {"embedding_dim", "units", "bigram_buckets", "dropout"}
    if unknown:
        raise ValueError(f"student options {sorted(unknown)} are not supported; use embedding_dim, units, "
                         "bigram_buckets, dropout")
    cfg.update(overrides)
    return cfg


def distill_classifier(teacher, texts, labels=None, temperature=2.0, alpha=0.5, epochs=8, learning_rate=None,
                       student=None, seed=0):
    """Train a smaller classifier from ``teacher``; returns ``(student_classifier, info)``.

    Loss: ``alpha`` x cross-entropy with the true labels + (1 - alpha) x T² x cross-entropy with
    the teacher's probabilities softened by temperature T (Hinton et al., 2015). Without labels
    the student learns from the teacher alone (alpha = 0). ``student``: dict of the student's
    embedding_dim, units, bigram_buckets (default: a quarter of the teacher's size or less).
    """
    from kerasllm._tf import keras
    from kerasllm.compression.training import encode_labelled
    from kerasllm.models.classifier import build_model

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if labels is None:
        x, y, alpha = teacher.tokenizer.encode(texts), np.zeros(len(texts), np.int32), 0.0
    else:
        x, y = encode_labelled(teacher, texts, labels)
    n = len(teacher.classes)
    targets = soft_targets(teacher.predict_proba(texts), y, temperature)
    loss = soft_target_loss(n, temperature, alpha)

    # the student's bag has other bigram ids: no idf or logistic-regression offset of the teacher's;
    # it learns its bag jointly (ClassifierParts' trained bag)
    out = with_model(teacher, None, ngram_idf=None, bag_offset=None,
                     **student_config(teacher.config, **(student or {})))
    keras.utils.set_random_seed(seed)
    out.model = build_model(out.config)
    fine_tune(out.model, x, targets, epochs, learning_rate or teacher.config.learning_rate,
              teacher.config.batch_size, loss=loss, seed=seed)
    out._refolded = False
    return out, {"teacher_parameters": count_parameters(teacher.model),
                 "student_parameters": count_parameters(out.model),
                 "temperature": temperature, "alpha": alpha,
                 "student": {k: getattr(out.config, k) for k in ("embedding_dim", "units", "bigram_buckets")}}


def count_parameters(model):
    return int(sum(np.prod(w.shape) for w in model.weights))
