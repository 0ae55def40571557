"""Compression benchmark on the SMS Spam Collection (issue 7, done-when 1).

Trains the default classifier on a stratified 80/20 split (seed 0), compresses it every way,
prints the report table and checks the targets:
  int8 TFLite <= 0.30x float TFLite bytes, accuracy drop <= 1 point;
  80%-pruned gzip <= 0.40x float gzip bytes, drop <= 1.5 points;
  QAT int8 drop <= 0.5 point.
With ``--lm SAVED_LM`` (a ``LanguageModel.save`` folder, e.g. the character Transformer from
benchmarks/shakespeare.py) it compresses that instead (done-when 2): int8 weights within 2% of
the float validation loss on the last 10% of tiny Shakespeare, and the per-token decode speed-up.

    .venv/bin/python benchmarks/compression.py [--data ../shared/data/sms_spam.tsv] [--out /tmp/sms-compression]
    .venv/bin/python benchmarks/compression.py --lm runs/shakespeare_lm [--eval-tokens 4096]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("prune", "qat", "ptq_int8", "ptq_dynamic", "ptq_float16", "ptq_16x8", "distill",
           "prune+qat", "prune+ptq_int8", "distill+ptq_int8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
                                              "sms_spam.tsv"))
    parser.add_argument("--out", default="/tmp/sms-compression", help="where report.md/json/png go")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lm", help="a saved language model folder: compress it instead of the SMS classifier")
    parser.add_argument("--lm-data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
                                                 "tinyshakespeare.txt"))
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    if args.lm:
        return main_lm(args)
    if not Path(args.data).is_file():
        sys.exit(f"no data at {args.data}")

    import tasks
    from kerasllm.data import read_table, stratified_split

    texts, labels = read_table(args.data, "text", "label")
    a, b, c, d = stratified_split(texts, labels, test_size=0.2, seed=0)
    start = time.time()
    clf = tasks.train_classifier(a, b, seed=0)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    start = time.time()
    report = tasks.compress(clf, a, b, validation=(c, d), methods=tuple(args.methods.split(",")), verbose=True)
    print(f"compressed in {time.time() - start:.0f} s\n", flush=True)
    print(report.to_markdown())
    paths = report.save(args.out)
    print(f"report: {paths['markdown']}  plot: {paths['plot']}")

    rows = {r["name"]: r for r in report.rows}
    checks = []
    if "ptq_int8" in rows:
        r = rows["ptq_int8"]
        checks.append(("int8 <= 0.30x float bytes, drop <= 1 point",
                       r["quantization"] == "int8" and r["size_ratio"] <= 0.30 and r["quality_drop"] <= 0.01,
                       f"{r['size_ratio']:.3f}x, drop {100 * r['quality_drop']:+.2f}"))
    if "prune" in rows:
        r = rows["prune"]
        checks.append(("80% pruned gzip <= 0.40x float gzip, drop <= 1.5 points",
                       r["gzip_ratio"] <= 0.40 and r["quality_drop"] <= 0.015,
                       f"{r['gzip_ratio']:.3f}x, drop {100 * r['quality_drop']:+.2f}"))
    if "qat" in rows:
        r = rows["qat"]
        checks.append(("QAT int8 drop <= 0.5 point", r["quantization"] == "int8" and r["quality_drop"] <= 0.005,
                       f"drop {100 * r['quality_drop']:+.2f}"))
    print()
    for what, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value}")
    best = report.best(max_quality_drop=0.01)
    print(f"best within 1 point: {best.name} ({best.tflite_bytes} bytes)")
    return 0 if all(ok for _, ok, _ in checks) else 1


def main_lm(args):
    import tasks
    from kerasllm.data import read_text
    from kerasllm.models.language_model import load_language_model

    lm = load_language_model(args.lm)
    text = read_text(args.lm_data)
    validation = text[int(len(text) * 0.9):]
    report = tasks.compress(lm, text, validation=validation, methods=("ptq_dynamic", "ptq_float16"),
                            eval_tokens=args.eval_tokens, verbose=True)
    print(report.to_markdown())
    for r in report.rows:
        print(f"{r['name']:12s} decode step p50 {r['p50_ms']:.3f} ms  speed-up x{r['decode_speedup']:.2f}")
    paths = report.save(args.out)
    print(f"report: {paths['markdown']}  plot: {paths['plot']}")
    r = {row["name"]: row for row in report.rows}["ptq_dynamic"]
    ok = r["quantization"] == "dynamic" and r["quality_drop"] <= 0.02 and r["decode_speedup"] > 1.0
    print(f"{'PASS' if ok else 'FAIL'}  int8 weights: loss {100 * r['quality_drop']:+.2f}% vs float, "
          f"decode x{r['decode_speedup']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
