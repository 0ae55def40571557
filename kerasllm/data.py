"""Reading the user's text files, splitting them, and the built-in default corpora.

The default data is real text every CPython installation carries: the documentation topics
that ``help()`` shows (``pydoc_data.topics``). Nothing is downloaded.
"""
from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path

# Documentation sections with distinct subjects: their paragraphs make a small labelled set.
DEFAULT_CLASSIFIER_TOPICS = ("debugger", "string-methods", "formatstrings", "typesmapping", "import")


def _topics():
    from pydoc_data.topics import topics

    return topics


def default_corpus() -> str:
    """All of Python's built-in documentation topics as one text (about 0.5 MB)."""
    topics = _topics()
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def default_documents(min_words=8):
    """Paragraphs of the documentation topics: (texts, topic names)."""
    texts, labels = [], []
    topics = _topics()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            para = " ".join(para.split())
            if len(para.split()) >= min_words:
                texts.append(para)
                labels.append(key)
    return texts, labels


def default_classification_data():
    """Paragraphs from five documentation topics, labelled by topic: (texts, labels)."""
    texts, labels = default_documents()
    keep = [(t, l) for t, l in zip(texts, labels) if l in DEFAULT_CLASSIFIER_TOPICS]
    return [t for t, _ in keep], [l for _, l in keep]


def read_text(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path} holds no text")
    return text


def read_table(path, text_column="text", label_column=None):
    """Read texts (and labels) from .txt, .csv, .tsv or .jsonl. Returns (texts, labels or None).

    - .txt: one text per line; ``label_column`` is not allowed.
    - .csv/.tsv: a header row names the columns, except for a header-less two-column .tsv
      (``label<TAB>text``, the SMS Spam Collection's format) where columns are 0 and 1 or
      'label' and 'text'.
    - .jsonl: one JSON object per line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if label_column is not None:
            raise ValueError(f"{path}: a .txt file has one text per line and no label column; use .csv, .tsv or .jsonl")
        texts = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        rows = [{"text": t} for t in texts if t]
        text_column = "text"
    elif suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",", text_column, label_column)
    elif suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .txt, .csv, .tsv or .jsonl")
    if not rows:
        raise ValueError(f"{path} holds no rows of data")
    columns = [text_column] + ([label_column] if label_column is not None else [])
    for column in columns:
        if column not in rows[0]:
            raise KeyError(f"{path}: no column {column!r}; columns present: {sorted(map(str, rows[0]))}")
    texts = [str(r[text_column]) if r.get(text_column) is not None else "" for r in rows]
    labels = [str(r[label_column]) for r in rows] if label_column is not None else None
    return texts, labels


def _read_delimited(path, delimiter, text_column, label_column):
    # the csv module refuses fields over 131,072 characters by default: a long document (a manual
    # page, a book chapter) is a text like any other. Only ever raised, so threads never lower it.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        table = [row for row in reader if row]
    if not table:
        return []
    header = table[0]
    wanted = {text_column, label_column} - {None}
    if wanted <= set(header):
        return [dict(zip(header, row)) for row in table[1:]]
    # Header-less label<TAB>text, as the SMS Spam Collection is stored.
    if delimiter == "\t" and all(len(r) >= 2 for r in table[:50]) and wanted <= {"0", "1", "label", "text"}:
        return [{"0": r[0], "1": "\t".join(r[1:]), "label": r[0], "text": "\t".join(r[1:])} for r in table]
    return [dict(zip(header, row)) for row in table[1:]]


def stratified_split(texts, labels, test_size=0.2, seed=0):
    """(train_texts, train_labels, test_texts, test_labels), the same split scikit-learn makes."""
    from sklearn.model_selection import train_test_split

    a, b, c, d = train_test_split(texts, labels, test_size=test_size, random_state=seed, stratify=labels)
    return list(a), list(c), list(b), list(d)


def check_labelled(texts, labels):
    """Validate a labelled data set for training; returns (texts, labels as str)."""
    from kerasllm.text import check_texts

    texts = check_texts(texts)
    if labels is None:
        raise ValueError("labels are required to train a classifier")
    labels = list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length: {len(texts)} texts, {len(labels)} labels")
    if not texts:
        raise ValueError("no training data: texts is empty")
    labels = [str(l) for l in labels]
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"need at least two classes to train a classifier, got only {sorted(counts)}")
    return texts, labels


def shuffled(items, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
