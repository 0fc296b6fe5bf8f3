import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_core.search_agent.data import DataFormatError, load_corpus, load_questions, write_jsonl
from trace_core.search_agent.synthetic_qa import write_task


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_questions_round_trip_through_jsonl(tmp_path, small_task):
    write_task(small_task, tmp_path)
    loaded = load_questions(tmp_path / "train.jsonl")
    assert loaded == small_task.splits["train"]
    assert load_corpus(tmp_path / "corpus.jsonl") == small_task.corpus


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"question": "q?", "golden_answers": ["a"]}', "line 2: missing field 'id'"),
        ('{"id": 2, "question": "q?", "golden_answers": "a"}', "line 2: field 'golden_answers' must be list"),
        ('{"id": 2, "question": "", "golden_answers": ["a"]}', "line 2: field 'question' is empty"),
        ('{"id": 2, "question": "q?", "golden_answers": []}', "line 2: field 'golden_answers' is empty"),
        ('{"id": 2, "question": "q?"', "line 2: not valid JSON"),
        ('{"id": 1, "question": "q?", "golden_answers": ["a"]}', "line 2: duplicate id '1'"),
    ],
)
def test_a_bad_question_row_names_the_file_the_line_and_the_field(tmp_path, bad_row, message):
    good = json.dumps({"id": 1, "question": "Who?", "golden_answers": ["x"], "data_source": "hotpotqa"})
    path = _write_lines(tmp_path / "dev.jsonl", [good, bad_row])
    with pytest.raises(DataFormatError) as err:
        load_questions(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_a_bad_corpus_row_names_the_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "corpus.jsonl", ['{"id": "0", "contents": "\\"A\\"\\ntext"}', '{"id": "1"}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:line 2: missing field 'contents'"):
        load_corpus(path)


def test_parquet_files_in_the_search_r1_format_are_read(tmp_path):
    table = pa.table(
        {
            "id": ["q1", "q2"],
            "question": ["Who?", "Where?"],
            "golden_answers": [["Ann", "Anne"], ["Rome"]],
            "data_source": ["bamboogle", "bamboogle"],
        }
    )
    pq.write_table(table, tmp_path / "test.parquet")
    records = load_questions(tmp_path / "test.parquet")
    assert [r.golden_answers for r in records] == [("Ann", "Anne"), ("Rome",)]
    assert records[0].data_source == "bamboogle" and records[0].chain == ()


def test_a_bad_parquet_row_is_named_by_its_row_number(tmp_path):
    table = pa.table({"id": ["q1", "q2"], "question": ["Who?", None], "golden_answers": [["a"], ["b"]]})
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(DataFormatError, match=r"train.parquet:row 2: missing field 'question'"):
        load_questions(tmp_path / "train.parquet")


def test_missing_data_source_defaults_to_the_file_name(tmp_path):
    write_jsonl(tmp_path / "musique.jsonl", [{"id": "a", "question": "q?", "golden_answers": ["x"]}])
    assert load_questions(tmp_path / "musique.jsonl")[0].data_source == "musique"


def test_a_corpus_row_splits_into_title_and_text():
    from trace_core.search_agent.data import CorpusDoc

    doc = CorpusDoc("7", '"Telmar Group"\nTelmar Group is based in Varno.')
    assert (doc.title, doc.text) == ("Telmar Group", "Telmar Group is based in Varno.")
    assert CorpusDoc("8", "plain text only").title == ""
