"""Similarity index: fitting, search, growth, save/load, damaged folders, exports, CLI."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import kerasllm
import tasks
from kerasllm.data import default_documents
from kerasllm.models.similarity import SimilarityIndex
from kerasllm.runtime import search as search_module
from kerasllm.runtime.search import top_k

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[1:4]
               if (p / "shared" / "data").is_dir()),
              Path(__file__).resolve().parents[1].parent / "shared" / "data")
CJK_DOCS = ["我喜欢吃苹果和香蕉", "今天天气很好，我们去公园散步", "苹果和香蕉都是水果", "机器学习和深度学习"]


@pytest.fixture(scope="module")
def docs():
    texts, _ = default_documents()
    return texts[:300] + CJK_DOCS


@pytest.fixture(scope="module")
def index(docs):
    return tasks.build_similarity_index(docs, n_components=32, seed=0)


@pytest.fixture(scope="module")
def rich_index(docs):
    """Word pairs, character n-grams and string ids: every feature path of the exports."""
    ids = [f"doc-{i}" for i in range(len(docs))]
    return tasks.build_similarity_index(docs, ids=ids, n_components=24, ngram_range=(1, 2),
                                        char_ngram_range=(3, 4), min_df=2)


@pytest.fixture(scope="module")
def exported(rich_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    paths = tasks.export(rich_index, root / "docs", formats=("saved_model", "tflite"))
    return paths


def probe_texts(docs):
    return docs[:4] + [docs[5] * 3, "", "zzzz qqqq", "你好，世界! Hello... again", CJK_DOCS[2]]


# -- the index --------------------------------------------------------------------------------
def test_query_finds_the_document_itself_first(index, docs):
    results = index.query(docs[:20], k=5)
    assert len(results) == 20
    for i, result in enumerate(results):
        assert len(result) == 5
        assert result[0][0] == i and result[0][1] == pytest.approx(1.0, abs=1e-5)
        scores = [s for _, s in result]
        assert scores == sorted(scores, reverse=True)


def test_embed_gives_unit_rows_and_similarity_is_their_cosine(index, docs):
    vectors = index.embed(docs[:10])
    assert vectors.shape == (10, index.dimensions) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = index.similarity(docs[:3], docs[3:10])
    assert sims.shape == (3, 7)
    np.testing.assert_allclose(sims, vectors[:3] @ vectors[3:].T, atol=1e-6)


def test_cjk_is_split_per_character(index):
    assert index.features_.split("苹果和香蕉") == ["苹", "果", "和", "香", "蕉"]
    best = index.query(["香蕉是水果"], k=2)[0]
    assert {i for i, _ in best} == {300, 302}  # the two documents about apples and bananas


def test_feature_split_is_the_word_tokenizer_split(docs):
    import random

    from kerasllm.text.tfidf import TfidfFeatures
    from kerasllm.text.word import WordTokenizer

    rng = random.Random(0)
    pool = [chr(c) for c in [*range(0, 0x250), *range(0x3000, 0x3100), *range(0x4E00, 0x4E40), 0x1F600, 0x2028,
                             0x85, 0xA0, 0x2C2F, 0x10570, 0x1D400, 0xFF01, 0x2E80, 0xD7FF]]
    texts = docs + ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    words = WordTokenizer()
    lazy = TfidfFeatures()  # this Python's classes, one character at a time
    assert [lazy.split(t) for t in texts] == [words.split(t) for t in texts]
    stored = TfidfFeatures(split_ranges=words.split_ranges, separator_ranges=words.separator_ranges)
    assert [stored.split(t) for t in texts] == [words.split(t) for t in texts]
    # tokens: the split without one-character tokens, except CJK letters (the ASCII regex does it alone)
    from kerasllm.text.tfidf import keeps_single_char

    assert [keeps_single_char(c) for c in "苹あ，。a.7"] == [True, True, False, False, False, False, False]
    for features in (lazy, stored):
        assert [features.tokens(t) for t in texts] == \
               [[w for w in words.split(t) if len(w) > 1 or keeps_single_char(w)] for t in texts]


def test_empty_texts_and_k_larger_than_the_index(index, docs):
    vectors = index.embed(["", "   "])
    assert not vectors.any()  # no feature: the zero vector, cosine 0 with everything
    assert not index.similarity([""], docs[:3]).any()
    small = SimilarityIndex(n_components=5).fit(docs[:5])
    result = small.query([docs[0]], k=50)[0]
    assert len(result) == len(small) == 5
    assert [i for i, _ in result][0] == 0
    assert len(small.query([""], k=3)[0]) == 3  # all scores 0
    with pytest.raises(ValueError, match="n_components=8 is more than this corpus allows.*<= 5"):
        SimilarityIndex(n_components=8).fit(docs[:5])  # not capped silently


def test_index_is_a_scikit_learn_estimator(docs):
    from sklearn.base import clone

    index = SimilarityIndex(n_components=0, min_df=0)  # settings are checked by fit, as scikit-learn does
    assert index.get_params()["n_components"] == 0
    index.set_params(n_components=12, min_df=1, ngram_range=(1, 2))
    assert not hasattr(index, "components_")
    index.fit(docs[:60])
    assert index.components_.shape[1] == 12 and index.vectors_.shape == (60, 12)
    assert index.get_params()["ngram_range"] == (1, 2) and "n_components=12" in repr(index)
    twin = clone(index)
    assert not hasattr(twin, "components_") and twin.get_params() == index.get_params()
    np.testing.assert_array_equal(twin.fit(docs[:60]).vectors_, index.vectors_)  # same settings, same seed


def test_bad_input_gives_clear_errors(index, docs):
    with pytest.raises(ValueError, match="docs is empty"):
        SimilarityIndex().fit([])
    with pytest.raises(TypeError, match="single str"):
        index.query("one text")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        index.embed(["a", 3])
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.query(["a"], k=0)
    with pytest.raises(ValueError, match="n_components"):
        SimilarityIndex(n_components=0).fit(docs[:5])
    with pytest.raises(ValueError, match="min_df"):
        SimilarityIndex(min_df=0).fit(docs[:5])
    with pytest.raises(ValueError, match="index must be one of"):
        SimilarityIndex(index="lsh").fit(docs[:5])
    with pytest.raises(ValueError, match="ids has 1 ids for 2 documents"):
        SimilarityIndex(n_components=2).fit(docs[:2], ids=["a"])
    with pytest.raises(ValueError, match="already used"):
        SimilarityIndex(n_components=2).fit(docs[:2], ids=["a", "a"])
    with pytest.raises(RuntimeError, match="not built yet"):
        SimilarityIndex().query(["a"])


def test_add_folds_documents_in_without_refitting(docs):
    index = SimilarityIndex(n_components=16).fit(docs[:100])
    components = index.components_.copy()
    before = index.query(docs[:3], k=3)
    index.add(docs[100:120])
    index.add(docs[120:122], ids=["x", "y"])
    assert len(index) == 122
    np.testing.assert_array_equal(index.components_, components)
    assert index.query([docs[110]], k=1)[0][0][0] == 110
    assert index.query([docs[121]], k=1)[0][0][0] == "y"
    np.testing.assert_allclose(index.embed(docs[100:102]), index.vectors_[100:102], atol=1e-6)
    with pytest.raises(ValueError, match="already used"):
        index.add(["text"], ids=["x"])
    assert [r[0] for r in index.query(docs[:3], k=3)] == [r[0] for r in before]
    vocabulary = len(index.features_.vocabulary)
    index.refit()  # rebuilds from the kept texts: the new documents' words join the vocabulary
    assert len(index) == 122 and len(index.features_.vocabulary) > vocabulary
    assert index.ids_[-1] == "y"


# -- search -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_matches_a_full_sort_across_blocks(monkeypatch, dtype):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5000, 16)).astype(dtype)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    full = queries @ vectors.astype(np.float32).T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    for budget in (1 << 22, 2048):  # one block, then many blocks of documents and queries
        monkeypatch.setattr(search_module, "_SCORE_BUDGET", budget)
        idx, scores = top_k(vectors, queries, 10)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-5)


@pytest.fixture
def small_int8_blocks(monkeypatch):
    from kerasllm.runtime import int8_scores

    monkeypatch.setattr(int8_scores, "BLOCK_ROWS", 64)
    monkeypatch.setattr(search_module, "INT8_MIN_DOCS", 100)


def test_int8_first_pass_bounds_hold_and_answers_stay_exact(small_int8_blocks):
    from kerasllm.runtime.int8_scores import Int8Scores

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32) * rng.random((3000, 32)).astype(np.float32) ** 4
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = 0.0  # an empty document
    queries = vectors[:20] + 0.3 * rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scorer = Int8Scores.build(vectors[:2000]).extend(vectors)  # grown like an index that had documents added
    assert scorer.n == 3000 // 64 * 64  # whole blocks only: the tail is scanned in float32
    approx, bound = scorer(queries)
    exact = queries @ vectors[:scorer.n].T
    assert approx.shape == exact.shape and np.all(np.abs(approx - exact) <= bound)
    assert np.abs(approx - exact).max() > 0  # it is approximate: the rescoring matters
    idx, scores = top_k(vectors, queries, 10, scorer)
    plain_idx, plain_scores = top_k(vectors, queries, 10)
    np.testing.assert_array_equal(idx, plain_idx)
    np.testing.assert_array_equal(scores, plain_scores)


def duplicated_docs(docs):
    """Real paragraphs with exact duplicates spread through the corpus (common in real data)."""
    out = list(docs[:200])
    for position in (3, 17, 40, 41, 90, 120, 150, 151, 152, 170, 199, 200, 233, 260):
        out.insert(position, docs[5])
    return out + [docs[7]] * 12 + docs[200:260]


@pytest.mark.parametrize("int8", [False, True])
def test_equal_scores_come_in_document_order_alone_or_batched(monkeypatch, small_int8_blocks, docs, int8):
    corpus = duplicated_docs(docs)
    index = SimilarityIndex(n_components=24, int8_search=int8, index="exact").fit(corpus)
    assert (index.searcher_.int8_scores is not None) == int8
    dupes = [i for i, t in enumerate(corpus) if t == docs[5]]
    alone = index.query([docs[5]], k=10)[0]
    assert [i for i, _ in alone] == dupes[:10]  # the first ten copies, in document order
    assert len({s for _, s in alone}) == 1  # bit-identical scores
    texts = [docs[7], docs[5], docs[11]]
    expected = [index.query([t], k=12)[0] for t in texts]
    for budget in (1 << 22, 4096, 300):  # one block, then many: answers must not depend on it
        monkeypatch.setattr(search_module, "_SCORE_BUDGET", budget)
        batch = texts * 3 + corpus[:40]  # more queries than the int8 pass takes: the float32 scan
        assert index.query(batch, k=12)[:3] == expected
        assert [index.query([t], k=12)[0] for t in texts] == expected


def test_int8_pass_is_saved_and_load_rebuilds_nothing(monkeypatch, small_int8_blocks, docs, tmp_path):
    from kerasllm.runtime import int8_scores

    index = SimilarityIndex(n_components=16).fit(docs[:300])
    scorer = index.searcher_.int8_scores
    assert scorer is not None and scorer.n == 256
    expected = index.query(docs[:3], k=5)
    path = index.save(tmp_path / "idx")
    assert len(list(path.glob("int8_*.tflite"))) == 4

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the int8 pass was rebuilt on load")

    monkeypatch.setattr(int8_scores, "quantize_rows", no_rebuild)
    loaded = kerasllm.load_similarity_index(path, mmap=True)
    scorer = loaded.searcher_.int8_scores
    assert scorer.n == 256 and scorer._interpreters == []  # nothing read up front
    assert isinstance(scorer.l1, np.memmap)
    assert loaded.query(docs[:3], k=5) == expected
    assert len(scorer._interpreters) == 4  # built from the saved files at the first search


def test_add_costs_new_documents_and_reports_unknown_words(monkeypatch, small_int8_blocks, docs):
    from kerasllm.models.similarity import RefitAdvised
    from kerasllm.runtime import int8_scores

    index = SimilarityIndex(n_components=16, refit_threshold=0.5).fit(docs[:150])
    built = []
    real = int8_scores.fully_connected_model
    monkeypatch.setattr(int8_scores, "fully_connected_model", lambda q, s: built.append(len(q)) or real(q, s))
    buffers = set()
    for i in range(150, 304):  # one document at a time
        index.add([docs[i]])
        buffers.add(id(index.searcher_._buffer))
    assert len(index) == 304 and index.searcher_.int8_scores.n == 256
    assert built == [64, 64]  # only the blocks completed by the new documents were quantized
    assert len(buffers) <= 3  # the vector buffer grows by doubling, not by one copy per add
    np.testing.assert_allclose(index.vectors_[150:304], index.embed(docs[150:304]), atol=1e-6)
    assert index.last_add_["docs"] == 1 and not index.last_add_["refit_advised"]
    with pytest.warns(RefitAdvised, match="refit"):
        index.add(["zebra quagga okapi " * 20 + "flibbertigibbet " * 6000])
    report = index.last_add_
    assert report["unplaced"] == report["features"] == 6060 and report["refit_advised"]
    assert index.query(docs[250:251], k=1)[0][0][0] == 250


def test_approximate_indexes_recall_and_round_trip(docs, tmp_path):
    from kerasllm.models.similarity import RefitAdvised

    texts, _ = default_documents()
    corpus = [" ".join(t.split()[i:i + 12]) for t in texts for i in range(0, max(1, len(t.split()) - 6), 3)][:4000]
    queries = corpus[::40]
    exact = SimilarityIndex(n_components=48, index="exact").fit(corpus)
    want = exact.query(queries, k=10)
    for kind in ("ivf", "hnsw"):
        index = SimilarityIndex(n_components=48, index=kind).fit(corpus)
        assert index.searcher_.kind == kind
        got = index.query(queries, k=10)
        recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want)])
        assert recall >= 0.95, (kind, recall)
        # candidates are rescored exactly: every returned score is the true cosine
        full = dict(zip(exact.ids_, (exact.embed(queries[:1]) @ exact.vectors_.T)[0]))
        np.testing.assert_allclose([s for _, s in got[0]], [full[i] for i, _ in got[0]], atol=1e-6)
        loaded = kerasllm.load_similarity_index(index.save(tmp_path / kind))
        assert loaded.searcher_.kind == kind and loaded.query(queries, k=10) == got
        with pytest.warns(RefitAdvised):  # 4 of its 6 words are new to this small vocabulary
            index.add(["a brand new paragraph about opening files"])
        assert index.searcher_.ann.n == len(index) == len(corpus) + 1


def test_two_shards_merge_to_the_answer_of_one_index(docs, tmp_path):
    from kerasllm.runtime.search import merge_top_k

    corpus = duplicated_docs(docs)
    whole = SimilarityIndex(n_components=24).fit(corpus, ids=[f"d{i}" for i in range(len(corpus))])
    cut = 150  # the duplicates of docs[5] fall on both sides
    shards = [whole.shard(0, cut).save(tmp_path / "shard0"), whole.shard(cut, None).save(tmp_path / "shard1")]
    shards = [kerasllm.load_similarity_index(path, mmap=True) for path in shards]  # as two servers would
    assert [len(s) for s in shards] == [cut, len(corpus) - cut]
    texts = [docs[5], docs[7], "how do I open a file", ""]
    for k in (1, 10, 20):
        merged = merge_top_k([s.query(texts, k=k) for s in shards], k)
        assert merged == whole.query(texts, k=k)


# -- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_query_gives_identical_results(rich_index, docs, tmp_path, mmap):
    path = rich_index.save(tmp_path / "idx")
    loaded = kerasllm.load_similarity_index(path, mmap=mmap)
    texts = probe_texts(docs)
    assert loaded.query(texts, k=7) == rich_index.query(texts, k=7)
    np.testing.assert_array_equal(loaded.embed(texts), rich_index.embed(texts))
    assert loaded.ids_ == rich_index.ids_ and len(loaded) == len(rich_index)
    assert isinstance(loaded.vectors_, np.memmap) == mmap
    rich_index.save(path)  # saving over an index replaces it
    assert kerasllm.load_similarity_index(path).query(texts[:2]) == rich_index.query(texts[:2])


def test_float16_index_round_trips(docs, tmp_path):
    index = SimilarityIndex(n_components=16, dtype="float16").fit(docs[:80])
    assert index.vectors_.dtype == np.float16
    loaded = kerasllm.load_similarity_index(index.save(tmp_path / "f16"), mmap=True)
    assert loaded.vectors_.dtype == np.float16
    assert loaded.query(docs[:5], k=3) == index.query(docs[:5], k=3)
    assert [r[0][0] for r in loaded.query(docs[:5], k=1)] == [0, 1, 2, 3, 4]


def test_damaged_or_foreign_folders_give_clear_errors(index, tmp_path):
    good = index.save(tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="no similarity index"):
        kerasllm.load_similarity_index(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a kerasllm similarity index"):
        kerasllm.load_similarity_index(foreign)
    with pytest.raises(FileExistsError, match="not a similarity index"):
        index.save(foreign)  # never overwrites another kind of folder
    assert (foreign / "notes.txt").read_text() == "hello"

    def damaged(name, damage):
        path = tmp_path / name
        shutil.copytree(good, path)
        damage(path)
        return path

    cases = {
        "truncated": lambda p: (p / "vectors.npy").write_bytes((p / "vectors.npy").read_bytes()[:200]),
        "missing": lambda p: (p / "components.npy").unlink(),
        "bad_json": lambda p: (p / "similarity_index.json").write_text("{not json"),
        "bad_ids": lambda p: (p / "ids.json").write_text("[1, 2"),
        "wrong_shape": lambda p: np.save(p / "idf.npy", np.zeros(3, np.float32)),
    }
    for name, damage in cases.items():
        with pytest.raises(ValueError, match="damaged"):
            kerasllm.load_similarity_index(damaged(name, damage))
    other = damaged("other_format", lambda p: (p / "similarity_index.json").write_text(json.dumps({"format": "x"})))
    with pytest.raises(ValueError, match="not a kerasllm similarity index"):
        kerasllm.load_similarity_index(other)


# -- exports ----------------------------------------------------------------------------------
def test_graph_features_equal_python_features(rich_index, docs):
    from kerasllm._tf import tf
    from kerasllm.text.tfidf_graph import GraphTfidfFeatures

    texts = probe_texts(docs)
    ids, weights = GraphTfidfFeatures(rich_index.features_)(tf.constant(texts))
    py_ids, py_weights = rich_index.features_.ids_and_weights(texts)
    for row in range(len(texts)):
        graph = {i: w for i, w in zip(ids[row].numpy().tolist(), weights[row].numpy().tolist()) if w}
        python = {i: w for i, w in zip(py_ids[row].tolist(), py_weights[row].tolist()) if w}
        assert graph.keys() == python.keys()
        np.testing.assert_allclose([graph[i] for i in python], list(python.values()), rtol=1e-5)


@pytest.mark.parametrize("prefer", ["tflite", "saved_model"])
def test_exported_encoders_match_python(exported, rich_index, docs, prefer):
    model = kerasllm.load(exported["version_dir"].parent, prefer=prefer)
    assert model.backend == prefer
    texts = probe_texts(docs)
    expected = rich_index.embed(texts)
    got = model.embed(texts)
    assert got.shape == expected.shape
    nonzero = np.linalg.norm(expected, axis=1) > 0
    cosines = np.sum(got * expected, axis=1)
    assert np.all(cosines[nonzero] >= 0.9999)
    assert not got[~nonzero].any()  # empty and unknown texts stay zero
    many = docs[:300]  # more than one encoder batch
    assert np.all(np.sum(model.embed(many) * rich_index.embed(many), axis=1) >= 0.9999)
    assert [[i for i, _ in r] for r in model.query(texts[:4], k=5)] == \
           [[i for i, _ in r] for r in rich_index.query(texts[:4], k=5)]


def test_saved_model_top_k_signature_takes_k_per_request(exported, rich_index, docs):
    from kerasllm._tf import tf

    loaded = tf.saved_model.load(str(exported["saved_model"]))
    for k in (3, 25):  # k is a request input, not fixed at export time (the default was 10)
        out = loaded.signatures["top_k"](texts=tf.constant(docs[:3]), k=tf.constant(k))
        expected = rich_index.query(docs[:3], k=k)
        assert out["ids"].shape == (3, k)
        assert [[i.decode() for i in row] for row in out["ids"].numpy()] == [[i for i, _ in r] for r in expected]
        np.testing.assert_allclose(out["scores"].numpy(), [[s for _, s in r] for r in expected], atol=1e-5)
    everything = loaded.signatures["top_k"](texts=tf.constant(docs[:1]), k=tf.constant(10 ** 6))
    assert everything["ids"].shape == (1, len(rich_index))
    # the export folder also loads as an index
    assert kerasllm.load_similarity_index(exported["version_dir"]).ids_ == rich_index.ids_


def test_exported_top_k_keeps_duplicates_in_document_order(docs, tmp_path):
    from kerasllm._tf import tf

    corpus = duplicated_docs(docs)
    index = SimilarityIndex(n_components=16).fit(corpus)
    paths = tasks.export(index, tmp_path / "dupes", formats=("saved_model",))
    top = tf.saved_model.load(str(paths["saved_model"])).signatures["top_k"]
    dupes = [str(i) for i, t in enumerate(corpus) if t == docs[5]]
    alone = top(texts=tf.constant([docs[5]]), k=tf.constant(10))["ids"].numpy()[0]
    batch = top(texts=tf.constant(corpus[:30] + [docs[5]] + corpus[30:40]), k=tf.constant(10))["ids"].numpy()[30]
    assert [i.decode() for i in alone] == [i.decode() for i in batch] == dupes[:10]


def test_served_query_takes_k_per_request(exported):
    import asyncio
    import threading

    from kerasllm.serving.client import Client
    from kerasllm.serving.server import ModelServer

    root = exported["version_dir"].parent.parent
    server = ModelServer(root, poll_seconds=30)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        _, port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(120)
        client = Client(f"http://127.0.0.1:{port}")
        assert len(client.query("docs", "how do I open a file", k=3)) == 3
        assert len(client.query("docs", "how do I open a file", k=50)) == 50  # more than the default 10
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_tflite_export_refuses_an_encoder_too_large_for_a_flatbuffer(monkeypatch, index, tmp_path):
    from kerasllm.export import similarity as export_similarity

    monkeypatch.setattr(export_similarity, "TFLITE_MAX_BYTES", index.components_.nbytes // 2)
    with pytest.raises(ValueError, match=r"cannot hold this index.*2 GiB flatbuffer limit.*max_features"):
        tasks.export(index, tmp_path / "big", formats=("tflite",))
    assert not (tmp_path / "big").exists() or not any((tmp_path / "big").rglob("*.tflite"))


def test_loaded_export_needs_no_training_code(exported):
    import subprocess
    import sys

    code = ("import sys, kerasllm; m = kerasllm.load(sys.argv[1]); m.query(['open a file'], k=3); "
            "print(sorted(n for n in sys.modules if n.startswith(('kerasllm.models', 'sklearn'))))")
    out = subprocess.run([sys.executable, "-c", code, str(exported["version_dir"].parent)], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_tflite_file_carries_its_vocabulary(exported, rich_index):
    from kerasllm.export.tflite import read_attached, read_attached_file

    config = read_attached(exported["tflite"])
    assert config["kind"] == "similarity_index" and config["dimensions"] == rich_index.dimensions
    assert json.loads(read_attached_file(exported["tflite"], "vocabulary.json")) == rich_index.features_.vocabulary


# -- real data --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "sms_spam.tsv").is_file(), reason="../shared/data is absent")
def test_precision_at_10_on_sms_is_at_least_scikit_learn_lsa():
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    from kerasllm.data import read_table, stratified_split

    texts, labels = read_table(SHARED / "sms_spam.tsv", "text", "label")
    train, train_labels, test, test_labels = stratified_split(texts, labels, 0.2, seed=0)
    k = 64

    def precision(neighbours):
        return np.mean([np.mean([train_labels[i] == label for i in row]) for row, label in
                        zip(neighbours, test_labels)])

    index = tasks.build_similarity_index(train, n_components=k)
    ours = precision([[i for i, _ in r] for r in index.query(test, k=10)])
    vectorizer, svd = TfidfVectorizer(), TruncatedSVD(k, random_state=0)
    doc_vectors = normalize(svd.fit_transform(vectorizer.fit_transform(train)))
    query_vectors = normalize(svd.transform(vectorizer.transform(test)))
    theirs = precision(np.argsort(-(query_vectors @ doc_vectors.T), axis=1)[:, :10])
    assert ours >= theirs


# -- command line -----------------------------------------------------------------------------
def test_cli_build_and_query(tmp_path, capsys):
    from kerasllm.cli import main

    data = tmp_path / "docs.csv"
    data.write_text("id,body\na1,The cat sat on the mat\na2,Dogs chase cats in the park\n"
                    "a3,Stock markets fell sharply today\na4,The market for cat food grew\n", encoding="utf-8")
    out = tmp_path / "idx"
    assert main(["similar", "build", "--data", str(data), "--text-column", "body", "--id-column", "id",
                 "--out", str(out), "--components", "3"]) == 0
    assert "indexed 4 documents" in capsys.readouterr().out
    assert main(["similar", "query", "--index", str(out), "--json", "-k", "2", "dogs chase cats"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["text"] == "dogs chase cats" and line["results"][0]["id"] == "a2" and len(line["results"]) == 2
    assert main(["similar", "query", "--index", str(tmp_path), "cats"]) == 2
    assert "not a kerasllm similarity index" in capsys.readouterr().err
