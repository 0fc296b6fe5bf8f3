"""The BM25 index is rebuilt whenever the corpus it was built from changes, wherever it changes."""

from __future__ import annotations

import json

from trace_rl.config.settings import load_settings
from trace_rl.flows.pipeline import make_tools, prepare_task


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_editing_a_middle_document_of_a_corpus_file_rebuilds_the_index(tmp_path):
    questions = [{"id": "q1", "question": "Who founded Orvik?", "golden_answers": ["Ana"]}]
    _write(tmp_path / "q.jsonl", questions)
    docs = [{"id": str(i), "contents": f"Title {i}\nfiller text number {i}"} for i in range(5)]
    corpus = tmp_path / "my_corpus.jsonl"  # not named corpus.*: the old fingerprint never looked at it
    _write(corpus, docs)
    overrides = [
        "task.source=files",
        f"task.data_dir={tmp_path / 'data'}",
        f"task.train_file={tmp_path / 'q.jsonl'}",
        f"task.dev_file={tmp_path / 'q.jsonl'}",
        f"task.corpus_file={corpus}",
    ]
    s = load_settings(overrides)
    first = make_tools(s, prepare_task(s, lambda _: None))
    assert first.search(["zanzibarite"], 1)[0] == []
    docs[2] = {"id": "2", "contents": "Title 2\nthe zanzibarite mine lies in Orvik"}  # same size class, middle row
    _write(corpus, docs)
    second = make_tools(s, prepare_task(s, lambda _: None))
    hits = second.search(["zanzibarite"], 1)[0]
    assert hits and "zanzibarite" in hits[0].text
