"""The main job as a new user meets it: ``kerasllm quickstart`` (shortened by --quick) in a child process."""
import re

import pytest

from tests.test_cli import noise_lines, run_kerasllm


def test_quickstart_is_quiet_and_leaves_every_artifact(quickstart_run):
    done, models, report = quickstart_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert noise_lines(done.stdout + done.stderr) == [], "library noise in a clean run"
    assert done.stderr.strip() == "", done.stderr[-2000:]
    versions = [p for p in models.glob("*/*/saved_model.pb")]
    tflite = list(models.glob("*/*/*.tflite"))
    assert len(versions) >= 3 and len(tflite) >= 3, (versions, tflite)
    assert {p.name for p in report.glob("*.png")} >= {"training.png", "compression.png", "latency.png", "decode.png"}
    assert "done in" in done.stdout and "(stopped at the step cap)" in done.stdout


def test_report_numbers_are_for_people(quickstart_run):
    _, _, report = quickstart_run
    md = (report / "report.md").read_text(encoding="utf-8")
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "Python's documentation topics" in md
    assert not re.search(r"\d\.\d+e[+-]\d", md), "exponent notation"
    # generated text and documentation paragraphs may hold brackets or "None"; the rest is ours
    ours = "\n".join(part for part in md.split("\n## ") if not part.startswith(("Generated samples", "Similarity")))
    assert "[]" not in ours and "{" not in ours and "None" not in ours, "a Python repr"
    assert re.search(r"\| \d[\d.,]* (µs|ms|s) \|", md), "latencies with units"
    assert re.search(r"\| \d[\d.]* KB \|", md) and "×" in md
    for number in re.findall(r"\| (\d[\d,]*\.\d+) (?:µs|ms) \|", md):  # 3 significant digits
        assert len(number.replace(",", "").replace(".", "").lstrip("0")) == 3, number
    sections = re.findall(r"^## .*\n\n(.*)$", md, flags=re.M)
    assert len(sections) >= 6 and all(s.endswith(".") for s in sections)
    assert "data:image/png;base64," in page and 'src="' + "training.png" not in page


def test_report_names_the_users_data_and_bad_input_fails_before_training(tmp_path):
    from tasks.quickstart import check_inputs, model_name_from

    data = tmp_path / "my data.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(20)), encoding="utf-8")
    plan = check_inputs(tmp_path / "models", tmp_path / "report", str(data), "text", "label", None, 1.5, 10)
    assert plan["names"]["classifier"] == "my-data" and str(data) in plan["source"]
    assert model_name_from("  ") == "model"
    # each of these fails in well under a second: nothing has trained
    for args, message in [
        (("quickstart", "--data", str(tmp_path / "missing.csv")), "missing.csv"),
        (("quickstart", "--data", str(data), "--label-column", "topic"), "topic"),
        (("quickstart", "--out", str(data)), "is a file"),
        (("quickstart", "--lm-text", str(tmp_path / "none.txt")), "none.txt"),
        (("quickstart", "--lm-max-steps", "0"), "lm_max_steps"),
    ]:
        result = run_kerasllm(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-500:])
        assert "[1/7]" not in result.stdout


def test_similarity_examples_are_answered_by_the_right_paragraph():
    import tasks
    from kerasllm.data import default_documents
    from tasks.quickstart import SIMILARITY_QUESTIONS

    docs = default_documents()[0]
    index = tasks.build_similarity_index(docs, n_components=128, seed=0)  # as the quickstart builds it
    answers = index.query([q for q, _ in SIMILARITY_QUESTIONS], k=1)
    for (question, expected), hits in zip(SIMILARITY_QUESTIONS, answers):
        assert expected in docs[int(hits[0][0])], (question, docs[int(hits[0][0])][:200])


def test_known_word_share_tells_words_from_gibberish():
    from tasks.quickstart import known_word_share

    corpus = "Return the string with leading and trailing characters removed."
    assert known_word_share(["the string with characters"], corpus) == 1.0
    assert known_word_share(["sien itheithiulepe gopdean oetsasithentines"], corpus) == 0.0
    assert known_word_share([""], corpus) == 0.0


@pytest.mark.parametrize("bad", ["my data", "ok", "..x", "a/b"])
def test_model_names_from_file_names_are_valid(bad):
    from kerasllm.export.layout import check_model_name
    from tasks.quickstart import model_name_from

    assert check_model_name(model_name_from(bad))


def test_language_model_trains_to_its_target_and_writes_words():
    """The quickstart's LM step on the built-in text, to a slightly looser target than the quickstart's
    1.5 (about 1,100 steps, a minute of one core): it stops by quality and its samples are mostly words."""
    from kerasllm.data import default_corpus
    from tasks.quickstart import LM_MAX_STEPS, train_language_model_to

    corpus = default_corpus()
    lm, evaluation, held_out, samples, share = train_language_model_to(corpus, 1.6, LM_MAX_STEPS, seed=0)
    assert lm.history["reached_target"] and lm.history["steps"] < LM_MAX_STEPS
    assert evaluation["loss"] <= 1.6 and evaluation["tokens"] >= len(held_out) - 1
    assert share > 0.5, (share, samples)
