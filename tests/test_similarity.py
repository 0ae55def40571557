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

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
    assert index.features.split("苹果和香蕉") == ["苹", "果", "和", "香", "蕉"]
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


def test_empty_texts_and_k_larger_than_the_index(index, docs):
    vectors = index.embed(["", "   "])
    assert not vectors.any()  # no feature: the zero vector, cosine 0 with everything
    assert not index.similarity([""], docs[:3]).any()
    small = SimilarityIndex(n_components=8).fit(docs[:5])
    result = small.query([docs[0]], k=50)[0]
    assert len(result) == len(small) == 5
    assert [i for i, _ in result][0] == 0
    assert len(small.query([""], k=3)[0]) == 3  # all scores 0
    assert small.dimensions == min(8, 5)


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
        SimilarityIndex(n_components=0)
    with pytest.raises(ValueError, match="min_df"):
        SimilarityIndex(min_df=0)
    with pytest.raises(ValueError, match="ids has 1 ids for 2 documents"):
        SimilarityIndex().fit(docs[:2], ids=["a"])
    with pytest.raises(ValueError, match="already used"):
        SimilarityIndex().fit(docs[:2], ids=["a", "a"])
    with pytest.raises(RuntimeError, match="not built yet"):
        SimilarityIndex().query(["a"])


def test_add_folds_documents_in_without_refitting(docs):
    index = SimilarityIndex(n_components=16).fit(docs[:100])
    components = index.components.copy()
    before = index.query(docs[:3], k=3)
    index.add(docs[100:120])
    index.add(docs[120:122], ids=["x", "y"])
    assert len(index) == 122
    np.testing.assert_array_equal(index.components, components)
    assert index.query([docs[110]], k=1)[0][0][0] == 110
    assert index.query([docs[121]], k=1)[0][0][0] == "y"
    np.testing.assert_allclose(index.embed(docs[100:102]), index.vectors[100:102], atol=1e-6)
    with pytest.raises(ValueError, match="already used"):
        index.add(["text"], ids=["x"])
    assert [r[0] for r in index.query(docs[:3], k=3)] == [r[0] for r in before]
    vocabulary = len(index.features.vocabulary)
    index.refit()  # rebuilds from the kept texts: the new documents' words join the vocabulary
    assert len(index) == 122 and len(index.features.vocabulary) > vocabulary
    assert index.ids[-1] == "y"


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


def test_int8_first_pass_bounds_hold_and_answers_stay_exact():
    from kerasllm.runtime.int8_scores import Int8Scores

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32) * rng.random((3000, 32)).astype(np.float32) ** 4
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = 0.0  # an empty document
    queries = vectors[:20] + 0.3 * rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scorer = Int8Scores(vectors[:2000]).extend(vectors)  # grown like an index that had documents added
    approx, bound = scorer(queries)
    exact = queries @ vectors.T
    assert approx.shape == exact.shape and np.all(np.abs(approx - exact) <= bound)
    assert np.abs(approx - exact).max() > 0  # it is approximate: the rescoring matters
    idx, scores = top_k(vectors, queries, 10, scorer)
    plain_idx, plain_scores = top_k(vectors, queries, 10)
    np.testing.assert_array_equal(idx, plain_idx)
    np.testing.assert_allclose(scores, plain_scores, atol=1e-6)


def test_large_index_uses_the_int8_pass_and_answers_as_the_plain_scan(monkeypatch, docs):
    from kerasllm.models import similarity

    monkeypatch.setattr(similarity, "INT8_MIN_DOCS", 100)
    index = SimilarityIndex(n_components=32).fit(docs[:250])
    assert index._int8 is not None and index._int8.n == 250
    index.add(docs[250:300])
    assert index._int8.n == 300
    queries = index.embed(docs[:40] + ["", "zzzz"])
    expected = similarity.search(index.vectors, index.ids, queries, 10)
    got = index.query(docs[:40] + ["", "zzzz"], k=10)
    full = queries @ index.vectors.T
    for row, (g, e) in enumerate(zip(got, expected)):
        # the same scores (ids may swap places only between equal scores: some paragraphs repeat)
        np.testing.assert_allclose([s for _, s in g], [s for _, s in e], atol=1e-6)
        np.testing.assert_allclose([full[row, i] for i, _ in g], [s for _, s in g], atol=1e-6)
    assert [i for i, _ in got[-1]] == list(range(10))  # no known feature: index order, score 0


# -- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_query_gives_identical_results(rich_index, docs, tmp_path, mmap):
    path = rich_index.save(tmp_path / "idx")
    loaded = kerasllm.load_similarity_index(path, mmap=mmap)
    texts = probe_texts(docs)
    assert loaded.query(texts, k=7) == rich_index.query(texts, k=7)
    np.testing.assert_array_equal(loaded.embed(texts), rich_index.embed(texts))
    assert loaded.ids == rich_index.ids and len(loaded) == len(rich_index)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    rich_index.save(path)  # saving over an index replaces it
    assert kerasllm.load_similarity_index(path).query(texts[:2]) == rich_index.query(texts[:2])


def test_float16_index_round_trips(docs, tmp_path):
    index = SimilarityIndex(n_components=16, dtype="float16").fit(docs[:80])
    assert index.vectors.dtype == np.float16
    loaded = kerasllm.load_similarity_index(index.save(tmp_path / "f16"), mmap=True)
    assert loaded.vectors.dtype == np.float16
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
    ids, weights = GraphTfidfFeatures(rich_index.features)(tf.constant(texts))
    py_ids, py_weights = rich_index.features.ids_and_weights(texts)
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


def test_saved_model_top_k_signature(exported, rich_index, docs):
    from kerasllm._tf import tf

    loaded = tf.saved_model.load(str(exported["saved_model"]))
    out = loaded.signatures["top_k"](texts=tf.constant(docs[:3]))
    expected = rich_index.query(docs[:3], k=10)
    assert [[i.decode() for i in row] for row in out["ids"].numpy()] == [[i for i, _ in r] for r in expected]
    np.testing.assert_allclose(out["scores"].numpy(), [[s for _, s in r] for r in expected], atol=1e-5)
    # the export folder also loads as an index
    assert kerasllm.load_similarity_index(exported["version_dir"]).ids == rich_index.ids


def test_tflite_file_carries_its_vocabulary(exported, rich_index):
    from kerasllm.export.tflite import read_attached, read_attached_file

    config = read_attached(exported["tflite"])
    assert config["kind"] == "similarity_index" and config["dimensions"] == rich_index.dimensions
    assert json.loads(read_attached_file(exported["tflite"], "vocabulary.json")) == rich_index.features.vocabulary


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
