"""``kerasllm similar build|query``: the similarity index on the command line (thin: calls tasks)."""
from __future__ import annotations

import json


def add_similarity_commands(subparsers):
    """Add ``similar build`` and ``similar query`` to the ``kerasllm`` command's subparsers.
    Each command's handler is ``args.run(args)`` and returns the exit code."""
    similar = subparsers.add_parser("similar", help="find similar documents (TF-IDF + SVD index)",
                                    description="Build a similarity index over documents, and query it.")
    commands = similar.add_subparsers(dest="similar_command", metavar="{build,query}")
    commands.required = True

    build = commands.add_parser("build", help="build an index from a data file and save it",
                                description="Build a TF-IDF + truncated-SVD index from .txt/.csv/.tsv/.jsonl "
                                            "documents.")
    build.add_argument("--data", required=True, help="documents: .txt (one per line), .csv, .tsv or .jsonl")
    build.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    build.add_argument("--id-column", default=None, help="column holding document ids (default: row numbers)")
    build.add_argument("--out", required=True, help="directory to save the index to")
    build.add_argument("--components", type=int, default=256, help="SVD dimensions (default: 256)")
    build.add_argument("--ngrams", type=int, default=1, help="longest word n-gram (default: 1)")
    build.add_argument("--char-ngrams", default=None, metavar="MIN-MAX",
                       help="also use character n-grams of this range, e.g. 3-5")
    build.add_argument("--min-df", type=int, default=1, help="keep features in at least this many documents")
    build.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                       help="precision of the stored vectors (float16: half the memory)")
    build.add_argument("--index-kind", choices=("auto", "exact", "ivf", "hnsw"), default="auto",
                       help="exact scan, or a FAISS index (ivf, hnsw) rescored exactly (default: ivf from 200k docs)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(run=_build)

    query = commands.add_parser("query", help="the most similar documents to each text",
                                description="Print the k most similar documents (id, cosine) for each text.")
    query.add_argument("--index", required=True, help="an index directory (or a tasks.export folder)")
    query.add_argument("texts", nargs="+", help="text(s) to look up")
    query.add_argument("-k", type=int, default=10, help="how many documents per text (default: 10)")
    query.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    query.add_argument("--mmap", action="store_true", help="memory-map the vectors (large indexes)")
    query.set_defaults(run=_query)
    return similar


def _char_range(value):
    if value is None:
        return None
    try:
        lo, hi = (int(v) for v in value.split("-"))
    except ValueError:
        raise ValueError(f"--char-ngrams must look like MIN-MAX (e.g. 3-5), got {value!r}") from None
    return lo, hi


def _build(args):
    import time

    import tasks
    from kerasllm.data import read_table

    texts, ids = read_table(args.data, text_column=args.text_column, label_column=args.id_column)
    start = time.perf_counter()
    index = tasks.build_similarity_index(texts, ids=ids, n_components=args.components, seed=args.seed,
                                         ngram_range=(1, args.ngrams), char_ngram_range=_char_range(args.char_ngrams),
                                         min_df=args.min_df, dtype=args.dtype, index=args.index_kind)
    seconds = time.perf_counter() - start
    path = index.save(args.out)
    print(f"indexed {len(index)} documents: {index.features_.n_features} features, {index.dimensions} dimensions, "
          f"{seconds:.2f} s; saved to {path}")
    return 0


def _query(args):
    from kerasllm.models.similarity import load_similarity_index

    index = load_similarity_index(args.index, mmap=args.mmap)
    results = index.query(args.texts, k=args.k)
    for text, result in zip(args.texts, results):
        if args.json:
            print(json.dumps({"text": text, "results": [{"id": i, "score": round(s, 6)} for i, s in result]},
                             ensure_ascii=False))
            continue
        print(f"# {text}")
        for rank, (doc_id, score) in enumerate(result, 1):
            snippet = ""
            if index.texts_ is not None:
                position = index.ids_position(doc_id)
                snippet = "  " + " ".join(index.texts_[position].split())[:80]
            print(f"{rank:3d}  {score:.4f}  {doc_id}{snippet}")
    return 0

