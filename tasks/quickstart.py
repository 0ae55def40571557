"""The main job: the whole product on built-in real text (Python's own documentation), no download.

Trains a classifier, a character language model and a similarity index; compresses the
classifier; exports everything to ``saved_models/`` (TF Serving layout + TFLite); measures the
inference paths; writes a Markdown/HTML report with plots.

Every input (data files, model names, output folders) is checked before anything trains, and the
language model trains to a quality, not for a time: until its held-out loss reaches
``lm_target_loss`` or it has run ``lm_max_steps`` steps.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

STEPS = 7
BUILT_IN = "Python's documentation topics (built in, no download)"
# The LM stops when a periodic held-out estimate (16 batches from the start of the held-out text)
# reaches this, leaving room under the 1.6 nats/char the README promises for the full held-out text.
LM_TARGET_LOSS = 1.5
LM_MAX_STEPS = 3000
LM_EVAL_EVERY = 100
# Two layers over 64-character windows, 16 per batch, learn fastest per CPU-second of the settings
# tried on the built-in text (the library default, 4 layers over 128 characters, is for longer runs).
LM_HPARAMS = {"layers": 2, "batch_size": 16, "learning_rate": 5e-3, "eval_max_batches": 16}
LM_CONTEXT = 64
QUICK_LM_STEPS = 30  # --quick: a smoke run of every step in about a minute
# Questions whose right answer is in the documentation, with a word the right paragraph contains
# (tests/test_quickstart.py checks the index's first answer against it).
SIMILARITY_QUESTIONS = (
    ("remove whitespace from the end of a string", "stripped"),
    ("split a string into a list of words", "list of the words"),
    ("set a breakpoint in the debugger", "breakpoint"),
)
LM_PROMPTS = ("The ", "Return ", "If the ")


def quickstart(out="saved_models", report_dir="reports/quickstart", data=None, text_column="text",
               label_column="label", lm_text=None, lm_target_loss=LM_TARGET_LOSS, lm_max_steps=None,
               quick=False, seed=0):
    """Run the main job. ``data``: your labelled .csv/.tsv/.jsonl for the classifier (and the
    similarity index) instead of the built-in documentation topics; ``lm_text``: a text file for
    the language model. The language model trains until its held-out loss reaches
    ``lm_target_loss`` (nats per character) or ``lm_max_steps`` steps (default 2500). ``quick``: a
    smoke run (a few LM steps, two classifier epochs, one compression method) that still makes
    every artifact. Returns a dict of what was made and measured."""
    plan = check_inputs(out, report_dir, data, text_column, label_column, lm_text, lm_target_loss,
                        lm_max_steps if lm_max_steps is not None else (QUICK_LM_STEPS if quick else LM_MAX_STEPS))
    return _run(plan, quick, seed)


def check_inputs(out, report_dir, data, text_column, label_column, lm_text, lm_target_loss, lm_max_steps):
    """Everything a run needs, read and checked before any training: a bad file, column, name or
    folder is an error now, not after minutes of work. Returns the plan (a dict)."""
    from kerasllm.data import check_labelled, default_classification_data, default_corpus, read_table, read_text
    from kerasllm.export.layout import check_model_name

    if isinstance(lm_max_steps, bool) or not isinstance(lm_max_steps, int) or lm_max_steps < 1:
        raise ValueError(f"lm_max_steps must be a positive integer, got {lm_max_steps!r}")
    if not isinstance(lm_target_loss, (int, float)) or not lm_target_loss > 0:
        raise ValueError(f"lm_target_loss must be a positive number of nats per character, got {lm_target_loss!r}")
    if data:
        texts, labels = read_table(data, text_column, label_column)
        texts, labels = check_labelled(texts, labels)
        counts = {label: labels.count(label) for label in set(labels)}
        rare = sorted(label for label, n in counts.items() if n < 2)
        if rare:
            raise ValueError(f"{data}: every class needs at least 2 texts for the held-out split; "
                             f"these have one: {rare[:10]}")
        clf_name = model_name_from(Path(data).stem)
        source = f"your file {data} ({len(texts):,} texts, {len(counts)} classes)"
    else:
        texts, labels = default_classification_data()
        clf_name = "python-docs-topics"
        source = BUILT_IN
    corpus = read_text(lm_text) if lm_text else default_corpus()
    if len(corpus) < 2000:
        raise ValueError(f"{lm_text}: the language model needs at least 2,000 characters of text, got {len(corpus)}")
    lm_source = f"your file {lm_text} ({len(corpus):,} characters)" if lm_text else BUILT_IN
    names = {"classifier": clf_name, "small": f"{clf_name}-small", "lm": "python-docs-lm" if not lm_text
             else model_name_from(Path(lm_text).stem + "-lm"), "search": f"{clf_name}-search" if data
             else "python-docs-search"}
    for name in names.values():
        check_model_name(name)
    out, report_dir = Path(out), Path(report_dir)
    for what, folder in (("--out", out), ("--report-dir", report_dir)):
        _check_writable_folder(what, folder)
    return {"out": out, "report_dir": report_dir, "texts": texts, "labels": labels, "corpus": corpus,
            "names": names, "data": data, "source": source, "lm_source": lm_source,
            "lm_target_loss": float(lm_target_loss), "lm_max_steps": lm_max_steps}


def model_name_from(stem):
    """A file name made into a model name: 'my data' -> 'my-data' (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:100]
    return name or "model"


def _check_writable_folder(what, folder):
    """Create ``folder`` (and parents) now, and check it can be written to."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {folder}: cannot create the folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder}: the folder is not writable")


def _run(plan, quick, seed):
    import numpy as np

    import kerasllm  # noqa: F401  (the runtime, before the clock starts mattering)
    import tasks
    from kerasllm import report as rp
    from kerasllm.data import default_documents, stratified_split

    start = time.time()
    out, report_dir, names = plan["out"], plan["report_dir"], plan["names"]
    progress = _Progress(start)

    # 1. classifier ---------------------------------------------------------------------------
    texts, labels = plan["texts"], plan["labels"]
    train, train_labels, test, test_labels = stratified_split(texts, labels, 0.2, seed)
    progress.step(f"training the classifier on {len(train)} texts, {len(set(labels))} classes "
                  f"from {plan['source']}")
    clf = tasks.train_classifier(train, train_labels, seed=seed, verbose=0, **({"max_epochs": 2} if quick else {}))
    metrics = clf.evaluate(test, test_labels)
    print(rp.metrics_table(metrics))

    # 2. language model ------------------------------------------------------------------------
    corpus = plan["corpus"]
    target, cap = plan["lm_target_loss"], plan["lm_max_steps"]
    progress.step(f"training a character Transformer LM on {len(corpus):,} characters until its held-out "
                  f"loss reaches {target} nats/char (at most {cap:,} steps)")
    lm, lm_eval, held_out, samples, word_share = train_language_model_to(corpus, target, cap, seed)
    lm_steps, lm_seconds = lm.history["steps"], lm.history["train_seconds"]
    stopped = "reached the target" if lm.history.get("reached_target") else "stopped at the step cap"
    print(f"      {lm_steps:,} steps in {rp.duration_s(lm_seconds)} ({stopped}); held-out: "
          f"{lm_eval['loss']:.3f} nats/char, perplexity {lm_eval['perplexity']:.2f}")
    print(f"      samples: {word_share:.0%} of the generated words occur in the training text")

    # 3. similarity index ------------------------------------------------------------------------
    docs = texts if plan["data"] else default_documents()[0]
    progress.step(f"building the similarity index over {len(docs):,} documents")
    index = tasks.build_similarity_index(docs, n_components=min(128, max(2, len(docs) - 1)), seed=seed)
    questions = [q for q, _ in SIMILARITY_QUESTIONS] if not plan["data"] else test[:3]
    answers = index.query(questions, k=3)

    # 4. compression -----------------------------------------------------------------------------
    methods = ("ptq_dynamic",) if quick else ("prune", "ptq_dynamic", "ptq_float16", "ptq_int8")
    progress.step(f"compressing the classifier ({', '.join(methods)})")
    compression = tasks.compress(clf, train, train_labels, validation=(test, test_labels), methods=methods, seed=seed)
    compression.plot(report_dir / "compression.png")
    small = compression.best(max_quality_drop=0.01)
    compression_rows = _compression_table(compression.rows, rp)
    for row in compression_rows:
        print("      " + "  ".join(f"{v}" for v in row.values()))

    # 5. export ----------------------------------------------------------------------------------
    progress.step(f"exporting everything to {out}/ (XLA SavedModels in TF Serving's layout + TFLite)")
    exports = {
        names["classifier"]: tasks.export(clf, out / names["classifier"]),
        names["small"]: tasks.export(small, out / names["small"], formats=("tflite",)),
        names["lm"]: tasks.export(lm, out / names["lm"]),
        names["search"]: tasks.export(index, out / names["search"]),
    }
    from kerasllm.export.tf_serving import write_serving_bundle

    # models.config, batching, and (not with --quick: they compile every batch size) warm-up records
    serving = write_serving_bundle(out, warmup=not quick)
    for name, paths in exports.items():
        print(f"      {name:<28} {paths['version_dir']}")

    # 6. measure ---------------------------------------------------------------------------------
    progress.step("measuring the inference paths")
    ladder = _latency_ladder(clf, out / names["classifier"], out / names["small"], test, calls=0.1 if quick else 1)
    for name, us in ladder:
        print(f"      {name:<34} {rp.duration_us(us):>10} per text")
    batch_sizes, decode = _decode_speed(lm, batch_sizes=(1, 4) if quick else (1, 2, 4, 8, 16))
    for b, rate in zip(batch_sizes, decode["kerasllm cached (XLA)"]):
        print(f"      decode batch {b:>2}: {rp.number(rate)} new tokens/s")

    # 7. report ----------------------------------------------------------------------------------
    progress.step(f"writing the report to {report_dir}/")
    history = clf.history
    rp.plot_training_curves({
        "classifier": {"training loss": history.get("loss", []), "validation loss": history.get("val_loss", []),
                       "x_label": "epoch", "y_label": "cross-entropy (nats)"},
        "character language model": {"training loss": lm.history.get("loss", []), "x": lm.history.get("step"),
                                     "x_label": "training step", "y_label": "cross-entropy (nats per character)"},
    }, report_dir / "training.png")
    rp.plot_latency_ladder(ladder, report_dir / "latency.png",
                           title="Classifier: one text, from Python string to label")
    rp.plot_throughput(batch_sizes, decode, report_dir / "decode.png",
                       title="Language model: greedy decode, 64 new tokens after a 16-token prompt")
    sections = [
        rp.Section("Classifier", f"How well the classifier labels {len(test)} held-out texts it never saw: "
                   f"accuracy {rp.number(metrics['accuracy'])}, macro-F1 {rp.number(metrics['macro_f1'])}.",
                   table=[{"class": name, "precision": rp.number(m["precision"]), "recall": rp.number(m["recall"]),
                           "F1": rp.number(m["f1"]), "texts": m["support"]}
                          for name, m in metrics["per_class"].items()], image="training.png"),
        rp.Section("Language model", f"How well the character language model predicts held-out text: "
                   f"{rp.number(lm_eval['loss'])} nats per character (target {rp.number(target)}) after "
                   f"{lm_steps:,} steps in {rp.duration_s(lm_seconds)}; it {stopped}.",
                   table=[{"held-out characters": len(held_out), "nats per character": rp.number(lm_eval["loss"]),
                           "perplexity": rp.number(lm_eval["perplexity"]), "training steps": lm_steps,
                           "training time": rp.duration_s(lm_seconds)}]),
        rp.Section("Generated samples", f"What the language model writes after each prompt (temperature 0.6, "
                   f"top-k 10): {word_share:.0%} of its words occur in the training text.",
                   table=[{"prompt": p, "continuation": " ".join(s[len(p):].split())}
                          for p, s in zip(LM_PROMPTS, samples)]),
        rp.Section("Compression", "Each variant of the classifier as a TFLite file: size, accuracy and latency; "
                   f"the smallest within one point of accuracy was exported as {names['small']}.",
                   table=compression_rows, image="compression.png"),
        rp.Section("Inference paths", "The median time for one text, from a Python string to a label, on each "
                   "path, all measured in the same run.",
                   table=[{"path": n, "time per text": rp.duration_us(us),
                           "faster than model.predict": rp.ratio(ladder[0][1] / us)} for n, us in ladder],
                   image="latency.png"),
        rp.Section("Decode speed", "New tokens per second from the XLA-compiled decode loop with its key/value "
                   "cache, against the number of prompts decoded together.",
                   table=[{"prompts together": b, **{f"{k}: new tokens/s": rp.number(v[i]) for k, v in decode.items()}}
                          for i, b in enumerate(batch_sizes)], image="decode.png"),
        rp.Section("Similarity answers", "The three paragraphs the similarity index finds closest to each "
                   "question, with their cosine similarity.",
                   table=[{"question": q, "rank": rank, "score": rp.number(score),
                           "answer": _snippet(docs[int(i)] if isinstance(i, (int, np.integer)) else str(i))}
                          for q, hits in zip(questions, answers) for rank, (i, score) in enumerate(hits, 1)]),
    ]
    sources = plan["source"] if plan["source"] == plan["lm_source"] else (
        f"classifier and similarity index: {plan['source']}; language model: {plan['lm_source']}")
    md, page = rp.write_report(report_dir, "kerasllm quickstart report", sections,
                               intro=f"Made by kerasllm quickstart in {rp.duration_s(time.time() - start)} on "
                                     f"{sources}.")
    print(f"\ndone in {rp.duration_s(time.time() - start)}.\n"
          f"  models:  {out}/ (TF Serving: {serving['launch']})\n"
          f"  report:  {page} and {md}\n"
          f"  serve:   kerasllm serve {out} --port 8501   (then open http://127.0.0.1:8501/ to try every model)\n"
          f"  Python:  import kerasllm; kerasllm.load({str(out / names['classifier'])!r}).predict([\"your text\"])")
    return {"classifier": clf, "language_model": lm, "similarity_index": index, "compression": compression,
            "exports": exports, "latency_us": dict(ladder), "decode_tokens_per_s": decode, "report": page,
            "classifier_metrics": metrics, "lm_eval": lm_eval, "lm_steps": lm_steps, "lm_seconds": lm_seconds,
            "samples": samples, "known_word_share": word_share, "similarity": dict(zip(questions, answers)),
            "seconds": time.time() - start}


def train_language_model_to(corpus, target_loss=LM_TARGET_LOSS, max_steps=LM_MAX_STEPS, seed=0):
    """The quickstart's language model: trained until its periodic held-out loss reaches
    ``target_loss`` or ``max_steps``. Returns (lm, evaluation over the held-out text (its last 10%),
    that text, samples for LM_PROMPTS, share of sampled words found in ``corpus``)."""
    import tasks

    lm = tasks.train_language_model(corpus, architecture="transformer", tokenizer="char", context_length=LM_CONTEXT,
                                    steps=max_steps, seed=seed, eval_every=min(LM_EVAL_EVERY, max_steps),
                                    target_val_loss=target_loss, verbose=1,  # progress: elapsed, rate, estimate
                                    **LM_HPARAMS)
    held_out = corpus[-len(corpus) // 10:][:60000]
    evaluation = lm.evaluate(held_out)
    samples = lm.generate(list(LM_PROMPTS), max_new_tokens=120, temperature=0.6, top_k=10, seed=seed)
    share = known_word_share([s[len(p):] for p, s in zip(LM_PROMPTS, samples)], corpus)
    return lm, evaluation, held_out, samples, share


def known_word_share(texts, corpus):
    """The share of words in ``texts`` (letters only, two or more) that occur in ``corpus``: how
    readable a language model's samples are, as a number. 0.0 when the texts hold no words."""
    vocabulary = set(re.findall(r"[A-Za-z]{2,}", corpus.lower()))
    words = [w for text in texts for w in re.findall(r"[A-Za-z]{2,}", text.lower())]
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def _compression_table(rows, rp):
    table = []
    for r in rows:
        row = {"variant": r["name"], "quantization": r["quantization"] or "none",
               "TFLite size": rp.size(r["tflite_bytes"]), "size vs float": rp.ratio(r["size_ratio"]),
               "gzip size": rp.size(r["gzip_bytes"]), "accuracy": rp.number(r["accuracy"]),
               "accuracy change": f"{round(-r['quality_drop'] * 100, 1) + 0.0:+.1f} points",  # + 0.0: no "-0.0"
               "median time per text": rp.duration_us(r["p50_ms"] * 1000)}
        notes = "; ".join(str(n) for n in r.get("notes") or [])
        if notes:
            row["notes"] = notes
        table.append(row)
    return table


def _snippet(text, limit=140):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


class _Progress:
    def __init__(self, start):
        self.start, self.n = start, 0

    def step(self, message):
        self.n += 1
        print(f"\n[{self.n}/{STEPS}] {message}  ({time.time() - self.start:.0f} s)", flush=True)


def _median_us(fn, texts, calls):
    import numpy as np

    fn(texts[:1])  # warm up: XLA compiles, TFLite allocates
    times = []
    for i in range(max(3, calls)):
        t0 = time.perf_counter()
        fn([texts[i % len(texts)]])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _latency_ladder(clf, export_dir, small_dir, texts, calls=1.0):
    import kerasllm

    def keras_predict(batch):
        return clf.model.predict(clf.tokenizer.encode(batch), verbose=0).argmax(axis=1)

    saved = kerasllm.load(export_dir, prefer="saved_model")
    return [
        ("model.predict", _median_us(keras_predict, texts, int(10 * calls))),
        ("tf.function (no XLA)", _median_us(clf.predict, texts, int(100 * calls))),
        ("SavedModel signature (XLA)", _median_us(saved.predict, texts, int(200 * calls))),
        ("TFLite float", _median_us(kerasllm.load(export_dir).predict, texts, int(1000 * calls))),
        ("TFLite compressed", _median_us(kerasllm.load(small_dir).predict, texts, int(1000 * calls))),
    ]


def _decode_speed(lm, batch_sizes=(1, 2, 4, 8, 16), prompt_len=16, new_tokens=64):
    import numpy as np

    rates = []
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        prompt = rng.integers(1, lm.vocab_size, size=(b, prompt_len)).astype(np.int32)
        lm.generate_tokens(prompt, max_new_tokens=new_tokens)  # compile this shape
        t0 = time.perf_counter()
        lm.generate_tokens(prompt, max_new_tokens=new_tokens)
        rates.append(b * new_tokens / (time.perf_counter() - t0))
    return list(batch_sizes), {"kerasllm cached (XLA)": rates}
