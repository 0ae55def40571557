"""Reading the user's files, and the built-in default data."""
import json

import pytest

from kerasllm.data import check_labelled, default_classification_data, default_corpus, read_table


def test_builtin_data_is_real_text_with_several_classes():
    texts, labels = default_classification_data()
    assert len(texts) > 200 and len(set(labels)) >= 4
    assert "def " in default_corpus() or "function" in default_corpus()


def test_reads_csv_tsv_jsonl_and_txt(tmp_path):
    (tmp_path / "a.csv").write_text('body,tag\n"hello, there",x\nbye,y\n')
    assert read_table(tmp_path / "a.csv", "body", "tag") == (["hello, there", "bye"], ["x", "y"])
    (tmp_path / "a.tsv").write_text("ham\tfine thanks\nspam\tWIN now\n")  # header-less label<TAB>text
    assert read_table(tmp_path / "a.tsv", "text", "label") == (["fine thanks", "WIN now"], ["ham", "spam"])
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"t": t, "l": l}) for t, l in [("a", 1), ("b", 2)]))
    assert read_table(tmp_path / "a.jsonl", "t", "l") == (["a", "b"], ["1", "2"])
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert read_table(tmp_path / "a.txt") == (["one", "two"], None)


def test_long_documents_are_read_whole(tmp_path):
    """A field over the csv module's default 131,072-character limit (a 25,000-word manual page)."""
    long = "word " * 60_000 + "end"
    (tmp_path / "a.tsv").write_text(f"label\ttext\nlong\t{long}\nshort\tfine\n")
    assert read_table(tmp_path / "a.tsv", "text", "label") == ([long, "fine"], ["long", "short"])
    (tmp_path / "a.csv").write_text(f'text,label\n"{long}, still",long\n')
    assert read_table(tmp_path / "a.csv", "text", "label") == ([long + ", still"], ["long"])


def test_bad_files_get_errors_that_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "a.csv").write_text("body,tag\nx,y\n")
    with pytest.raises(KeyError, match="no column 'text'"):
        read_table(tmp_path / "a.csv", "text", "tag")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_table(tmp_path / "a.xml")


def test_training_data_checks():
    with pytest.raises(ValueError, match="at least two classes"):
        check_labelled(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="empty"):
        check_labelled([], [])
    with pytest.raises(ValueError, match="differ in length"):
        check_labelled(["a"], ["x", "y"])
