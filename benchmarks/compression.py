"""Compression benchmark (issue 15): the classifier on SMS, SUBJ and CR and the character LM, in one run.

For each classifier data set: the default classifier trained on the stratified 80/20 split (seed 0),
compressed every way (float, prune, QAT, PTQ dynamic/int8/float16, distillation, prune+int8,
prune+QAT), each converted in a child process; quality on the test half of the 20% with a 95%
paired-bootstrap interval of the drop (``best()`` chooses on the other half). Checks:
  int8 TFLite <= 0.30x float bytes, accuracy drop <= 1 point;
  pruned (80%) <= 0.40x float bytes, drop <= 1.5 points;
  QAT drop <= 0.5 point; and QAT vs PTQ int8 side by side.
Then the language model on tiny Shakespeare (first 90% train, last 10% validation): a teacher in the
"small" config (subword vocabulary 8192, hidden 256, 4 layers, 4 heads, MLP 1024, context 256) trained
for --lm-time seconds, a distilled student (half the layers, 3/4 of the width: under half the
parameters; ``train_language_model(teacher=...)``, --student-time seconds), the teacher with 80% of its
feed-forward units pruned (then fine-tuned from the teacher, --prune-time seconds), and int8-weight /
float16 TFLite, each with size, validation loss (nats per token and per character) and decode
tokens/s through the XLA loop and TFLite. Check: student <= 0.5x parameters, <= +0.05 nats/char,
>= 1.5x decode tokens/s (XLA and TFLite).

    taskset -c 0 python benchmarks/compression.py [--datasets sms,subj] [--no-lm] [--data-dir DIR]
        [--lm-time 480] [--student-time 360] [--prune-time 120] [--lm-cache DIR]
    python benchmarks/compression.py --lm runs/shakespeare_lm   # a saved teacher instead of training one
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"sms": "sms_spam.tsv", "subj": "subj.tsv", "cr": "cr.tsv"}
# "<data>-rnn": the plain SimpleRNN classifier (no bag-of-n-grams path), where the recurrence carries
# everything: full-int8 PTQ quantizes the recurrence, the QAT file keeps it float (as trained)
PLAIN = {"bag_of_ngrams": False}
# the "small" config of benchmarks/generation.py; the student: half the layers at 3/4 of the width
SMALL = "tokenizer=subword,vocab_size=8192,hidden=256,layers=4,heads=4,ff=1024,context_length=256"
STUDENT = "layers=2,hidden=192,heads=4,ff=768"
METHODS = ("prune", "qat", "ptq_int8", "ptq_dynamic", "ptq_float16", "distill", "prune+ptq_int8", "prune+qat")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sms,subj,cr,subj-rnn,cr-rnn")
    parser.add_argument("--data-dir", default=str(DATA), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", default="/tmp/kerasllm-compression", help="where the reports go")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-lm", action="store_true", help="skip the language model part")
    parser.add_argument("--calibration", type=int, default=300,
                        help="texts PTQ int8 calibrates on (a few: the case where learned QAT ranges should win)")
    parser.add_argument("--lm", help="a saved teacher LM folder (default: train one for --lm-time seconds)")
    parser.add_argument("--lm-config", default=SMALL, help="the teacher (default: the 'small' config)")
    parser.add_argument("--lm-time", type=float, default=480, help="seconds to train the teacher")
    parser.add_argument("--student", default=STUDENT, help="the distilled student's hyperparameters")
    parser.add_argument("--student-time", type=float, default=360, help="seconds to distil the student")
    parser.add_argument("--prune-time", type=float, default=120, help="seconds to fine-tune the pruned LM")
    parser.add_argument("--lm-steps", type=int, default=100000, help="step cap of each LM training")
    parser.add_argument("--lm-cache", help="save the trained LMs here and reuse them on a rerun with the same settings")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    ok = True
    for name in [d for d in args.datasets.split(",") if d]:
        plain = name.endswith("-rnn")
        methods = ("qat", "ptq_int8") if plain else tuple(args.methods.split(","))
        ok &= run_classifier(name, Path(args.data_dir) / DATASETS[name.split("-")[0]], Path(args.out) / name,
                             methods, PLAIN if plain else {}, args.calibration)
    if not args.no_lm:
        ok &= run_lm(args)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", flush=True)
    return 0 if ok else 1


def run_classifier(name, path, out, methods, hparams, calibration=300):
    import tasks
    from kerasllm.data import read_table, stratified_split

    if not path.is_file():
        sys.exit(f"no data at {path}")
    texts, labels = read_table(str(path), "text", "label")
    a, b, c, d = stratified_split(texts, labels, test_size=0.2, seed=0)
    print(f"\n## {name}: {len(a)} training texts, {len(c)} validation texts {hparams or ''}", flush=True)
    start = time.time()
    clf = tasks.train_classifier(a, b, seed=0, verbose=0, **hparams)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    start = time.time()
    report = tasks.compress(clf, a, b, validation=(c, d), methods=methods, representative_size=calibration,
                            verbose=True)
    print(f"compressed in {time.time() - start:.0f} s\n", flush=True)
    print(report.to_markdown())
    paths = report.save(out)
    print(f"report: {paths['markdown']}  plot: {paths['plot']}")
    rows = {r["name"]: r for r in report.rows}

    def drop(r):
        lo, hi = r["drop_ci"]["accuracy"]
        return f"drop {100 * r['quality_drop']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] points"

    checks = []
    for key, what, ratio, budget in (("ptq_int8", "int8 <= 0.30x float bytes, drop <= 1 point", 0.30, 0.01),
                                     ("prune", "80% pruned <= 0.40x float bytes, drop <= 1.5 points", 0.40, 0.015),
                                     ("prune+ptq_int8", "80% pruned + int8 <= 0.40x float bytes, drop <= 1.5 points",
                                      0.40, 0.015),
                                     ("qat", "QAT drop <= 0.5 point", 1.0, 0.005)):
        if hparams and key != "qat":
            continue  # the plain-RNN runs only compare QAT with PTQ
        r = rows.get(key)
        if r is None:
            continue
        if r["status"] != "ok":
            checks.append((what, False, f"FAILED: {r['error']}"))
            continue
        checks.append((what, r["size_ratio"] <= ratio and r["quality_drop"] <= budget + 1e-9,
                       f"{r['size_ratio']:.3f}x bytes, {drop(r)}"))
    print()
    for what, passed, value in checks:
        print(f"{'PASS' if passed else 'FAIL'}  [{name}] {what}: {value}")
    if rows.get("qat", {}).get("status") == "ok" and rows.get("ptq_int8", {}).get("status") == "ok":
        q, p = rows["qat"], rows["ptq_int8"]
        print(f"[{name}] QAT vs PTQ int8: accuracy {q['accuracy']:.4f} vs {p['accuracy']:.4f}, macro-F1 "
              f"{q['macro_f1']:.4f} vs {p['macro_f1']:.4f}; QAT {drop(q)}, PTQ {drop(p)}; "
              f"bytes {q['tflite_bytes']} vs {p['tflite_bytes']}, p50 {q['p50_ms']:.3f} vs {p['p50_ms']:.3f} ms")
    best = report.best(max_quality_drop=0.01, metric="macro_f1")
    print(f"[{name}] best within 1 macro-F1 point (chosen on the selection half): {best.name} "
          f"({best.tflite_bytes} bytes)", flush=True)
    return all(passed for _, passed, _ in checks)


def run_lm(args):
    import json

    import tasks
    from kerasllm.data import read_text
    from kerasllm.models.language_model import load_language_model

    path = Path(args.data_dir) / "tinyshakespeare.txt"
    text = read_text(str(path))
    teacher_hp = parse_hparams(args.lm_config)
    student_hp = parse_hparams(args.student)
    print(f"\n## language model on tiny Shakespeare (first 90% train, last 10% validation)\n"
          f"teacher {teacher_hp}, {args.lm_time:g} s of training (at most {args.lm_steps} steps); "
          f"student {student_hp}, {args.student_time:g} s of distillation (at most {args.lm_steps} steps); "
          f"80% feed-forward pruning + {args.prune_time:g} s of distilled fine-tuning; loss on "
          f"{args.eval_tokens} validation tokens through TFLite decode", flush=True)

    def trained(folder, train):
        """A trained LM, from ``folder`` when an earlier run with the same settings saved it there."""
        if args.lm_cache and (Path(folder) / "language_model.json").is_file():
            print(f"(reusing {folder})", flush=True)
            return load_language_model(folder)
        start = time.time()
        lm = train()
        print(f"trained in {time.time() - start:.0f} s: {lm.history.get('steps')} steps, validation loss "
              f"{lm.history.get('final_val_loss', float('nan')):.4f} nats/token", flush=True)
        if args.lm_cache:
            lm.save(folder)
        return lm

    cache = Path(args.lm_cache or ".") / json.dumps([teacher_hp, args.lm_time, args.lm_steps]).replace(" ", "") \
        .translate(str.maketrans('[]{}":,', "_______"))
    if args.lm:
        teacher = load_language_model(args.lm)
    else:
        teacher = trained(cache / "teacher", lambda: tasks.train_language_model(
            text, steps=args.lm_steps, time_budget_s=args.lm_time, seed=0, verbose=0, **teacher_hp))
    student = trained(cache / f"student-{args.student}-{args.student_time:g}".replace(",", "_").replace("=", ""),
                      lambda: tasks.train_language_model(text, teacher=teacher, steps=args.lm_steps,
                                                         time_budget_s=args.student_time, seed=0, verbose=0,
                                                         **student_hp))
    start = time.time()
    report = tasks.compress(teacher, text, methods=("prune", "ptq_dynamic", "ptq_float16", "distill",
                                                      "distill+ptq_dynamic", "prune+ptq_dynamic"),
                            eval_tokens=args.eval_tokens, student=student, prune_steps=args.lm_steps,
                            prune_time_s=args.prune_time, verbose=True)
    print(f"compressed in {time.time() - start:.0f} s\n", flush=True)
    print(report.to_markdown())
    report.save(Path(args.out) / "lm")
    rows = {r["name"]: r for r in report.rows}
    r, t = rows.get("distill"), rows["float"]
    if not (r and r["status"] == "ok"):
        print(f"FAIL  distilled student: {r and r.get('error')}")
        return False
    params = r["parameters"] / t["parameters"]
    loss = r["loss_per_char"] - t["loss_per_char"]
    xla, lite = r["xla_tokens_per_s"] / t["xla_tokens_per_s"], r["tflite_tokens_per_s"] / t["tflite_tokens_per_s"]
    passed = params <= 0.5 and loss <= 0.05 and xla >= 1.5 and lite >= 1.5
    print(f"{'PASS' if passed else 'FAIL'}  student <= 0.5x parameters, <= +0.05 nats/char, >= 1.5x decode: "
          f"{params:.2f}x parameters, {loss:+.4f} nats/char vs teacher, XLA decode x{xla:.2f}, TFLite decode x{lite:.2f}")
    return passed


def parse_hparams(text):
    out = {}
    for item in (i for i in text.split(",") if i):
        key, _, value = item.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


if __name__ == "__main__":
    sys.exit(main())
