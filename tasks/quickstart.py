"""The main job: the whole product on built-in real text (Python's own documentation), no download.

Trains a classifier, a character language model and a similarity index; compresses the
classifier; exports everything to ``saved_models/`` (TF Serving layout + TFLite); measures the
inference paths; writes a Markdown/HTML report with plots.
"""
from __future__ import annotations

import time
from pathlib import Path

STEPS = 7


def quickstart(out="saved_models", report_dir="reports/quickstart", data=None, text_column="text",
               label_column="label", lm_text=None, lm_seconds=180, seed=0):
    """Run the main job. ``data``: your labelled .csv/.tsv/.jsonl for the classifier (and the
    similarity index) instead of the built-in documentation topics; ``lm_text``: a text file for
    the language model. Returns a dict of what was made and measured."""
    import numpy as np

    import kerasllm
    import tasks
    from kerasllm import report as rp
    from kerasllm.data import default_classification_data, default_corpus, default_documents, read_table
    from kerasllm.data import read_text, stratified_split

    start = time.time()
    out, report_dir = Path(out), Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(start)
    sections, results = [], {}

    # 1. classifier ---------------------------------------------------------------------------
    if data:
        texts, labels = read_table(data, text_column, label_column)
        clf_name = Path(data).stem
    else:
        texts, labels = default_classification_data()
        clf_name = "python-docs-topics"
    train, train_labels, test, test_labels = stratified_split(texts, labels, 0.2, seed)
    progress.step(f"training the classifier on {len(train)} texts, {len(set(labels))} classes")
    clf = tasks.train_classifier(train, train_labels, seed=seed, verbose=0)
    metrics = clf.evaluate(test, test_labels)
    print(rp.metrics_table(metrics))
    results["classifier_metrics"] = metrics

    # 2. language model ------------------------------------------------------------------------
    corpus = read_text(lm_text) if lm_text else default_corpus()
    progress.step(f"training a character Transformer LM on {len(corpus):,} characters for {lm_seconds} s")
    lm = tasks.train_language_model(corpus, architecture="transformer", tokenizer="char", context_length=128,
                                    time_budget_s=lm_seconds, seed=seed, verbose=0)
    lm_eval = lm.evaluate(corpus[-len(corpus) // 10:][:60000])
    print(f"      validation: {lm_eval['loss']:.3f} nats/char, perplexity {lm_eval['perplexity']:.2f}")
    prompts = ["The ", "def ", "Return "]
    samples = lm.generate(prompts, max_new_tokens=120, temperature=0.8, top_k=20, seed=seed)
    results["lm_eval"] = lm_eval

    # 3. similarity index ------------------------------------------------------------------------
    docs = texts if data else default_documents()[0]
    progress.step(f"building the similarity index over {len(docs)} documents")
    index = tasks.build_similarity_index(docs, n_components=min(128, max(2, len(docs) - 1)), seed=seed)
    questions = ["how do I format a number with commas", "set a breakpoint in the debugger",
                 "remove whitespace from the end of a string"]
    answers = index.query(questions, k=3)

    # 4. compression -----------------------------------------------------------------------------
    progress.step("compressing the classifier (pruning, post-training quantization)")
    compression = tasks.compress(clf, train, train_labels, validation=(test, test_labels),
                                 methods=("prune", "ptq_dynamic", "ptq_float16", "ptq_int8"), seed=seed)
    print(compression.to_markdown())
    compression.plot(report_dir / "compression.png")
    small = compression.best(max_quality_drop=0.01)

    # 5. export ----------------------------------------------------------------------------------
    progress.step(f"exporting everything to {out}/ (XLA SavedModels in TF Serving's layout + TFLite)")
    exports = {
        clf_name: tasks.export(clf, out / clf_name),
        f"{clf_name}-small": tasks.export(small, out / f"{clf_name}-small", formats=("tflite",)),
        "python-docs-lm": tasks.export(lm, out / "python-docs-lm"),
        "python-docs-search": tasks.export(index, out / "python-docs-search"),
    }
    from kerasllm.export.tf_serving import write_serving_bundle

    serving = write_serving_bundle(out)  # models.config, batching, warm-up records for every model above
    for name, paths in exports.items():
        print(f"      {name:<28} {paths['version_dir']}")

    # 6. measure ---------------------------------------------------------------------------------
    progress.step("measuring the inference paths")
    ladder = _latency_ladder(clf, out / clf_name, out / f"{clf_name}-small", test)
    for name, us in ladder:
        print(f"      {name:<34} {us:>10.1f} µs per text")
    batch_sizes, decode = _decode_speed(lm)
    for b, rate in zip(batch_sizes, decode["kerasllm cached (XLA)"]):
        print(f"      decode batch {b:>2}: {rate:,.0f} new tokens/s")

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
        rp.Section("Training", f"Classifier: test accuracy {metrics['accuracy']:.4f}, macro-F1 "
                   f"{metrics['macro_f1']:.4f} on {len(test)} held-out texts. Language model: "
                   f"{lm_eval['loss']:.3f} nats per character on held-out text after {lm_seconds} s.",
                   image="training.png"),
        rp.Section("Compression", "Each variant of the classifier as a TFLite file: size, quality and latency "
                   "(marker size). The smallest variant within one point of accuracy was exported as "
                   f"{clf_name}-small.", table=compression.rows, image="compression.png"),
        rp.Section("Inference paths", "Median time for one text, end to end from a Python string to a label, "
                   "all paths measured in the same run.",
                   table=[{"path": n, "µs per text": round(us, 1), "× faster than model.predict":
                           round(ladder[0][1] / us, 1)} for n, us in ladder], image="latency.png"),
        rp.Section("Decode speed", "New tokens per second from the XLA-compiled decode loop with its key/value "
                   "cache, against the number of prompts decoded together.",
                   table=[{"batch": b, **{k: round(v[i]) for k, v in decode.items()}}
                          for i, b in enumerate(batch_sizes)], image="decode.png"),
        rp.Section("Generated samples", "Temperature 0.8, top-k 20.",
                   table=[{"prompt": p, "continuation": s[len(p):].replace("\n", " ")} for p, s in
                          zip(prompts, samples)]),
        rp.Section("Similarity answers", "Top 3 documentation paragraphs for each question (cosine score).",
                   table=[{"question": q, "score": round(score, 3), "answer": docs[int(i)][:100]
                           if isinstance(i, (int, np.integer)) else str(i)[:100]}
                          for q, hits in zip(questions, answers) for i, score in hits]),
    ]
    md, page = rp.write_report(report_dir, "kerasllm quickstart report", sections,
                               intro=f"Made by `kerasllm quickstart` in {time.time() - start:.0f} s on built-in "
                                     "text (Python's documentation topics).")
    print(f"\ndone in {time.time() - start:.0f} s.\n"
          f"  models:  {out}/ (TF Serving: {serving['launch']})\n"
          f"  report:  {page} and {md}\n"
          f"  serve:   kerasllm serve {out} --port 8501\n"
          f"  Python:  import kerasllm; kerasllm.load({str(out / clf_name)!r}).predict([\"your text\"])")
    return {"classifier": clf, "language_model": lm, "similarity_index": index, "compression": compression,
            "exports": exports, "latency_us": dict(ladder), "decode_tokens_per_s": decode, "report": page,
            **results}


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
    for i in range(calls):
        t0 = time.perf_counter()
        fn([texts[i % len(texts)]])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _latency_ladder(clf, export_dir, small_dir, texts):
    import kerasllm

    def keras_predict(batch):
        return clf.model.predict(clf.tokenizer.encode(batch), verbose=0).argmax(axis=1)

    saved = kerasllm.load(export_dir, prefer="saved_model")
    return [
        ("model.predict", _median_us(keras_predict, texts, 10)),
        ("tf.function (no XLA)", _median_us(clf.predict, texts, 100)),
        ("SavedModel signature (XLA)", _median_us(saved.predict, texts, 200)),
        ("TFLite float", _median_us(kerasllm.load(export_dir).predict, texts, 1000)),
        ("TFLite compressed", _median_us(kerasllm.load(small_dir).predict, texts, 1000)),
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
