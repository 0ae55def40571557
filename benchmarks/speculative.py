"""Speculative vs plain decode, in one run, at batch 1 on one pinned core.

The "small" config target (subword vocab 8192, hidden 256, 4 layers, 4 heads, MLP 1024, context 256)
is trained for ``--target-time`` seconds on tiny Shakespeare; the draft (``--draft`` size, default
1 layer x 128) is distilled from it for ``--draft-time`` seconds (``tasks.train_draft_model``: on the
same text and, for ``--draft-generated`` of its tokens, on the target's own continuations, generated
within that time; 0 distils on the text alone); ``--draft-vocab`` lists the draft heads measured:
``all`` (the whole vocabulary) and N (``with_draft(draft, draft_vocab=N)``: proposals from the first N
token ids only, a head N / 8192 as costly). Both models are saved under ``--cache`` and reused by later
runs with the same settings. Prompts: ``--prompts`` windows of ``--prompt-len`` tokens from the
validation text (the last 10%); each variant generates ``--new-tokens`` tokens for every prompt,
variants alternating, median of ``--repeats``. Greedy rows check that speculative tokens equal plain
tokens; sampled rows (temperature 1) print the acceptance rate. ``--lookup-k`` adds prompt-lookup rows
(``with_draft("prompt_lookup")``: no draft model; proposals copied from earlier text).

    python benchmarks/speculative.py [--k 2,3,4] [--draft-vocab all,1024] [--core 0] [--target-time 300]
        [--draft-time 120] [--profile]

``--profile`` also times the parts of a round separately, each in its own XLA loop of cached calls on
the same pair (variants alternating, median): a plain target step, a verify pass over k + 1 tokens,
a draft step, each split into the Transformer blocks and the vocabulary head; and from those costs
the acceptance rate each k would need for 1.0x and 1.6x.

``benchmarks/generation.py`` runs this too (its ``speculative`` variant).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (a worktree under wt/ looks one level further up)
DATA = next((d / "shared" / "data" / "tinyshakespeare.txt" for d in (ROOT.parent, ROOT.parent.parent)
             if (d / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
TARGET = dict(hidden=256, layers=4, heads=4, ff=1024)  # the "small" config of benchmarks/generation.py
DRAFTS = {"1x128": dict(hidden=128, layers=1, heads=2, ff=512), "1x64": dict(hidden=64, layers=1, heads=2, ff=256),
          "2x128": dict(hidden=128, layers=2, heads=2, ff=512)}


def add_arguments(p):
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--data", default=str(DATA))
    # short enough for one benchmark run on a shared core (the pair is cached for later runs)
    g.add_argument("--target-time", type=float, default=300.0, help="seconds to train the target")
    g.add_argument("--draft-time", type=float, default=120.0, help="seconds to distil the draft")
    g.add_argument("--draft", default="1x128", choices=sorted(DRAFTS))
    g.add_argument("--draft-generated", type=float, default=0.5,
                   help="share of the draft's training tokens that are the target's own generations")
    g.add_argument("--k", default="2,3,4", help="numbers of speculative tokens to measure (distilled draft)")
    g.add_argument("--draft-vocab", default="all,1024",
                   help="draft heads to measure: 'all' or N (with_draft(..., draft_vocab=N): the first N token ids)")
    g.add_argument("--lookup-k", default="4,8", help="numbers of tokens prompt lookup proposes ('' : no lookup rows)")
    g.add_argument("--prompts", type=int, default=4)
    g.add_argument("--spec-new-tokens", type=int, default=128)
    g.add_argument("--spec-prompt-len", type=int, default=16)
    g.add_argument("--spec-repeats", type=int, default=3)
    g.add_argument("--profile", action="store_true", help="also time draft step, verify pass and plain step apart")
    g.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kerasllm-speculative-bench"),
                   help="folder for the trained target and draft (reused when present)")
    return p


def _trained(args):
    import json

    import kerasllm
    import tasks

    def load(folder):
        lm = kerasllm.load_language_model(folder)
        lm.history = json.loads((folder / "history.json").read_text())
        return lm

    def save(lm, folder):
        lm.save(folder)
        (folder / "history.json").write_text(json.dumps({k: lm.history.get(k) for k in ("final_val_loss",
                                                                                        "generated_tokens")}))

    tag = f"t{args.target_time:g}"
    target_dir = Path(args.cache) / f"target-{tag}"
    draft_dir = Path(args.cache) / f"draft-{args.draft}-{tag}-d{args.draft_time:g}-g{args.draft_generated:g}"
    if (target_dir / "language_model.json").is_file():
        target = load(target_dir)
    else:
        target = tasks.train_language_model(Path(args.data), tokenizer="subword", vocab_size=8192, context_length=256,
                                            time_budget_s=args.target_time, seed=0, verbose=0, **TARGET)
        save(target, target_dir)
    if (draft_dir / "language_model.json").is_file():
        draft = load(draft_dir)
    else:
        draft = tasks.train_draft_model(target, Path(args.data), time_budget_s=args.draft_time, seed=0, verbose=0,
                                        distill_generated=args.draft_generated, **DRAFTS[args.draft])
        save(draft, draft_dir)
    return target, draft


def measure(args):
    """Train (or load) the pair, time plain and speculative decode; returns printable table lines."""
    import numpy as np


    if not Path(args.data).is_file():
        raise SystemExit(f"--data: no file at {args.data} (tiny Shakespeare, from ../shared/data)")
    t0 = time.perf_counter()
    target, draft = _trained(args)
    setup_s = time.perf_counter() - t0
    text = Path(args.data).read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]
    ids = target.tokenizer.encode(val[:20000])
    starts = np.linspace(0, len(ids) - args.spec_prompt_len - 1, args.prompts).astype(int)
    prompts = [np.asarray(ids[s:s + args.spec_prompt_len], np.int32)[None] for s in starts]
    n = args.spec_new_tokens
    ks = [int(k) for k in args.k.split(",")]
    vocabs = _vocabs(args.draft_vocab)
    # variant name -> decoder: the distilled draft at each k and head, and prompt lookup (no draft model)
    specs = {_name(k, v): target.with_draft(draft, num_speculative=k, draft_vocab=v) for v in vocabs for k in ks}
    specs.update({f"prompt lookup k={k}": target.with_draft("prompt_lookup", num_speculative=k)
                  for k in ([int(k) for k in args.lookup_k.split(",")] if args.lookup_k else [])})
    lines, ratios, greedy_acceptance = [], {}, {}
    for mode, temperature in (("greedy", 0.0), ("sampled T=1", 1.0)):
        def plain():
            return [target.generate_tokens(p, n, temperature=temperature, seed=0) for p in prompts]

        def speculative(name, stats=None):
            outs = []
            for p in prompts:
                outs.append(specs[name].generate_tokens(p, n, temperature=temperature, seed=0))
                if stats is not None:
                    stats.append(specs[name].stats)
            return outs

        runs = {"plain": plain, **{name: (lambda name=name: speculative(name)) for name in specs}}
        reference = plain()
        stats = {name: [] for name in specs}
        same = {name: all(np.array_equal(r, o) for r, o in zip(reference, speculative(name, stats[name])))
                for name in specs}
        times = {name: [] for name in runs}
        for _ in range(args.spec_repeats):  # alternate the variants: plain, k=.., plain, k=.., ...
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        plain_tps = len(prompts) * n / statistics.median(times["plain"])
        lines.append(f"| {mode} | plain (target alone) | {plain_tps:,.0f} | 1.00 | | |")
        for name in specs:
            st = stats[name]
            tps = len(prompts) * n / statistics.median(times[name])
            rounds = sum(s["rounds"] for s in st)
            rate = sum(s["accepted"] for s in st) / max(1, sum(s["proposed"] for s in st))
            per_round = sum(s["accepted"] + s["rounds"] for s in st) / max(1, rounds)
            plain_steps = sum(s.get("plain_steps", 0) for s in st)
            extra = f", {plain_steps} plain steps" if name.startswith("prompt") else ""
            check = ("identical to plain" if same[name] else "DIFFERENT from plain") if mode == "greedy" else ""
            if mode == "greedy":
                ratios[name] = tps / plain_tps
                if name.startswith("draft"):
                    greedy_acceptance[name] = rate
            lines.append(f"| {mode} | speculative, {name} | {tps:,.0f} | {tps / plain_tps:.2f} | {rate:.2f} "
                         f"({per_round:.2f} tokens per verify pass{extra}) | {check} |")
    trained = max(v for name, v in ratios.items() if name.startswith("draft"))
    lines.append(f"goal: speculative greedy with the trained draft >= 1.6x plain at batch 1: best {trained:.2f}x "
                 f"({'met' if trained >= 1.6 else 'NOT met'})")
    if len(ratios) > len(ks) * len(vocabs):
        best = max(ratios, key=ratios.get)
        lines.append(f"best of all variants: {best} {ratios[best]:.2f}x")
    val_loss = {name: m.history.get("final_val_loss") if m.history else None for name, m in
                (("target", target), ("draft", draft))}
    head = [f"training: target = 'small' config ({TARGET}, subword vocab 8192, context 256) trained "
            f"{args.target_time:g} s on {Path(args.data).name} (time_budget_s, seed 0); draft {args.draft} "
            f"({DRAFTS[args.draft]}) distilled from it for {args.draft_time:g} s "
            f"(tasks.train_draft_model, distill_generated={args.draft_generated:g}: "
            f"{(draft.history or {}).get('generated_tokens') or 0:,} tokens generated by the target); "
            f"setup (train or load from {args.cache}) {setup_s:.0f} s",
            f"target: {target!r}, validation loss {_fmt(val_loss['target'])} nats/token; "
            f"draft: {draft.num_params:,} parameters, {_fmt(val_loss['draft'])} nats/token",
            f"batch 1, {len(prompts)} prompts of {args.spec_prompt_len} tokens from the validation text, "
            f"{n} new tokens each",
            "| mode | variant | tokens/s | x plain | acceptance rate | tokens |", "|---|---|---|---|---|---|"]
    if getattr(args, "profile", False):
        lookup_ks = [int(k) for k in args.lookup_k.split(",")] if args.lookup_k else []
        lines += [""] + profile(target, draft, ks, greedy_acceptance, max(5, args.spec_repeats),
                                args.spec_prompt_len, n, prompts[0], lookup_ks, vocabs)
    return head + lines


def _vocabs(text):
    """--draft-vocab 'all,1024' -> [None, 1024]"""
    return [None if v.strip() == "all" else int(v) for v in text.split(",")]


def _name(k, vocab):
    return f"draft k={k}" + ("" if vocab is None else f", draft_vocab={vocab}")


PROFILE_STEPS = 64  # cached calls per timed XLA loop


def _loop(model, tokens_per_call, cache_len, start, head=True, vocab=None):
    """An XLA function running PROFILE_STEPS cached calls of ``tokens_per_call`` tokens at batch 1 (slots
    start, start + 1, ...; each call's argmax feeds the next, so nothing is hoisted out of the loop).
    ``head=False`` stops at the final hidden states: the Transformer blocks alone; ``head="last"`` projects
    only the last position (the draft's 2-token call in a round). ``vocab`` N: a head over the first N
    token ids (``draft_vocab``)."""
    from kerasllm._tf import tf

    @tf.function(jit_compile=True, autograph=False)
    def run(token):
        constants = model.decode_constants()
        if vocab is not None:
            constants = constants[:, :vocab]
        pad = tf.zeros([1], tf.int32)

        def body(i, token, cache):
            tokens = tf.tile(token[:, None], [1, tokens_per_call])
            if head == "last":
                out, cache = model.hidden_with_cache(tokens, cache, start + i, pad)
                out = model.logits(out[:, -1:], constants)
            elif head:
                out, cache = model.call_with_cache(tokens, cache, start + i, pad, constants)
            else:
                out, cache = model.hidden_with_cache(tokens, cache, start + i, pad)
            nxt = tf.reduce_max(tf.argmax(out, -1, output_type=tf.int32), -1)  # every position, as a verify pass
            return i + 1, nxt % 64 + 1, cache

        init = (tf.constant(0), token, model.init_cache(1, cache_len))
        return tf.while_loop(lambda i, *_: i < PROFILE_STEPS, body, init)[1]

    return run


def profile(target, draft, ks, acceptance, repeats, prompt_len, new_tokens, prompt, lookup_ks=(), vocabs=(None,)):
    """Microseconds per plain step, verify pass (k + 1 tokens), draft step (1 and 2 tokens), each with
    and without the head; the variants alternate ``repeats`` times (median). Returns table lines."""
    import numpy as np

    from kerasllm.generation.window import PAD_MULTIPLE, round_up

    cache_len = round_up(prompt_len + new_tokens + max(list(ks) + list(lookup_ks)), PAD_MULTIPLE)
    start = prompt_len
    cases = {"target step (1 token) = plain decode step": (target, 1, True),
             "target blocks only (1 token)": (target, 1, False)}
    for k in sorted(set(ks) | set(lookup_ks)):
        cases[f"verify pass k={k} ({k + 1} tokens)"] = (target, k + 1, True)
        cases[f"target blocks only ({k + 1} tokens)"] = (target, k + 1, False)
    cases["draft blocks only (1 token)"] = (draft, 1, False)
    for v in vocabs:
        head = "" if v is None else f", head over {v} tokens"
        cases.update({f"draft step (1 token{head})": (draft, 1, True, v),
                      f"draft first call of a round (2 tokens{head})": (draft, 2, "last", v)})
    cases = {name: case + (None,) * (4 - len(case)) for name, case in cases.items()}
    token = np.array([7], np.int32)
    fns = {name: (lambda f=_loop(m.model, s, cache_len, start, head, v): f(token).numpy(), PROFILE_STEPS)
           for name, (m, s, head, v) in cases.items()}
    # the real loops in the same alternation: what a round costs inside generate_tokens
    specs = {_name(k, v): target.with_draft(draft, num_speculative=k, draft_vocab=v) for v in vocabs for k in ks}
    specs.update({("lookup", k): target.with_draft("prompt_lookup", num_speculative=k) for k in lookup_ks})
    for key, spec in specs.items():
        spec.generate_tokens(prompt, new_tokens)
        calls = spec.stats["rounds"] + spec.stats["plain_steps"]  # loop iterations
        name = f"prompt lookup k={key[1]}" if isinstance(key, tuple) else key
        fns[f"{name}, whole loop per round"] = (lambda spec=spec: spec.generate_tokens(prompt, new_tokens), calls)
    fns["plain generate_tokens, per token"] = (lambda: target.generate_tokens(prompt, new_tokens), new_tokens)
    for fn, _ in fns.values():
        fn()  # compile
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, calls) in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / calls * 1e6)
    us = {name: statistics.median(v) for name, v in times.items()}
    plain = us["target step (1 token) = plain decode step"]
    lines = [f"profile: microseconds per cached call at batch 1 (cache {cache_len} slots; {PROFILE_STEPS} calls "
             f"per XLA loop, median of {repeats}, variants alternating); head = final norm + vocabulary projection "
             f"+ argmax", "| part | us per call | x plain step | head (us) |", "|---|---|---|---|"]
    blocks = {(id(m), s): name for name, (m, s, head, v) in cases.items() if head is False}
    for name, (m, s, head, v) in cases.items():
        if head is False:
            continue
        b = blocks.get((id(m), s))
        head_us = f"{us[name] - us[b]:,.0f} (blocks {us[b]:,.0f})" if b and head is True else ""
        lines.append(f"| {name} | {us[name]:,.0f} | {us[name] / plain:.2f} | {head_us} |")
    lines.append(f"| plain generate_tokens ({prompt.shape[1]}-token prompt + {new_tokens}), per token | "
                 f"{us['plain generate_tokens, per token']:,.0f} | "
                 f"{us['plain generate_tokens, per token'] / plain:.2f} | (prefill included) |")
    lines += ["round model: a round costs (k - 1) draft steps + one 2-token draft call + one verify pass and yields "
              "(1 - a^(k+1)) / (1 - a) tokens at per-token acceptance a; speed-up = tokens x plain step / round cost",
              "| k, draft head | round cost from parts (us) | whole loop per round (us) | x plain step | "
              "max speed-up (a = 1) | a for 1.0x | a for 1.6x | measured a (greedy) | predicted speed-up at measured a |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v, k in ((v, k) for v in vocabs for k in ks):
        head = "" if v is None else f", head over {v} tokens"
        cost = (k - 1) * us[f"draft step (1 token{head})"] + us[f"draft first call of a round (2 tokens{head})"] + \
            us[f"verify pass k={k} ({k + 1} tokens)"]

        def speedup(a):
            return (k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)) * plain / cost

        def needed(goal):
            grid = np.linspace(0, 1, 1001)
            ok = [a for a in grid if speedup(a) >= goal]
            return f"{ok[0]:.2f}" if ok else "unreachable"

        a = acceptance.get(_name(k, v))
        lines.append(f"| {k}, {v or 'all'} | {cost:,.0f} | {us[f'{_name(k, v)}, whole loop per round']:,.0f} | "
                     f"{cost / plain:.2f} | {speedup(1.0):.2f} | {needed(1.0)} | {needed(1.6)} | "
                     f"{'' if a is None else f'{a:.2f}'} | {'' if a is None else f'{speedup(a):.2f}'} |")
    for k in lookup_ks:  # no draft: a round is one verify pass (or one plain step when nothing matches)
        cost = us[f"verify pass k={k} ({k + 1} tokens)"]
        lines.append(f"| prompt lookup {k} | {cost:,.0f} | {us[f'prompt lookup k={k}, whole loop per round']:,.0f} | "
                     f"{cost / plain:.2f} | {(k + 1) * plain / cost:.2f} | | | | |")
    return lines


def _fmt(x):
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a (loaded)"


def main():
    from pinning import add_arguments as pin_arguments, describe, pin

    p = add_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = pin_arguments(p).parse_args()
    tf, keras = pin(args.core, args.threads)
    lines = measure(args)
    print()
    print(f"{describe(args.core, args.threads)}; tensorflow {tf.__version__}, tf_keras {keras.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
