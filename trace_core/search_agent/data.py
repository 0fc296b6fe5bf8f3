"""Question and corpus files in the Search-R1 / FlashRAG format: reading, checking, writing.

Question rows: `id`, `question`, `golden_answers` (a list of strings) and `data_source`. Corpus rows:
`id` and `contents`, where `contents` is `"Title"\\ntext` (the wiki-18 convention; a row without a
title line is read as text with an empty title). Files are JSON Lines (`.jsonl`) or Parquet
(`.parquet`); the same reader serves the synthetic task and HotpotQA, 2Wiki, MuSiQue or Bamboogle
files prepared for Search-R1.

A bad row raises `DataFormatError` naming the file, the line (or Parquet row) and the field.

Deviations:
1. `data_source` may be missing (FlashRAG's raw files omit it); it then defaults to the file's stem.
2. An integer `id` is accepted and kept as its decimal string.
3. Optional `metadata.hops` and `metadata.chain` (the synthetic task's reasoning chain, used only to
   write expert trajectories for the warm start) are read into typed fields when present.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_core.atomic import write_text_atomic


class DataFormatError(ValueError):
    """A data file row is malformed; the message names file, line and field."""


@dataclass(frozen=True)
class ChainStep:
    """One hop of a known reasoning chain: what to search, the fact that answers it, the hop's answer."""

    query: str
    fact: str
    answer: str


@dataclass(frozen=True)
class QARecord:
    """One question. `chain` is empty for real datasets (no expert trajectory is known)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    hops: int | None = None
    chain: tuple[ChainStep, ...] = ()

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "data_source": self.data_source,
        }
        if self.hops is not None or self.chain:
            row["metadata"] = {
                "hops": self.hops,
                "chain": [{"query": s.query, "fact": s.fact, "answer": s.answer} for s in self.chain],
            }
        return row


@dataclass(frozen=True)
class CorpusDoc:
    """One retrievable document; `contents` is kept verbatim, `title`/`text` are its two parts."""

    id: str
    contents: str

    @property
    def title(self) -> str:
        head, sep, _ = self.contents.partition("\n")
        return head.strip().strip('"') if sep else ""

    @property
    def text(self) -> str:
        head, sep, rest = self.contents.partition("\n")
        return rest.strip() if sep else head.strip()

    def to_row(self) -> dict[str, str]:
        return {"id": self.id, "contents": self.contents}


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) where location reads 'file:line N' (JSONL) or 'file:row N' (Parquet)."""
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {i}", row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise DataFormatError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet)")
    with path.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:line {i}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:line {i}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataFormatError(f"{path}:line {i}: JSON nested too deeply to read") from None


def _field(where: str, row: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise DataFormatError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"{where}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _answers(where: str, row: dict[str, Any]) -> tuple[str, ...]:
    answers = _field(where, row, "golden_answers", (list, tuple))
    if not answers:
        raise DataFormatError(f"{where}: field 'golden_answers' is empty")
    for a in answers:
        if not isinstance(a, str) or not a.strip():
            raise DataFormatError(f"{where}: field 'golden_answers' must hold non-empty strings, got {a!r}")
    return tuple(answers)


def _chain(where: str, metadata: Any) -> tuple[int | None, tuple[ChainStep, ...]]:
    if not isinstance(metadata, dict):
        return None, ()
    steps = []
    for j, step in enumerate(metadata.get("chain") or []):
        try:
            steps.append(ChainStep(str(step["query"]), str(step["fact"]), str(step["answer"])))
        except (KeyError, TypeError):
            raise DataFormatError(f"{where}: field 'metadata.chain[{j}]' needs 'query', 'fact' and 'answer'") from None
    hops = metadata.get("hops")
    return (int(hops) if isinstance(hops, int) else None), tuple(steps)


def load_questions(path: str | Path) -> list[QARecord]:
    """Read and check a question file; duplicate ids are an error."""
    path = Path(path)
    records: list[QARecord] = []
    seen: dict[str, str] = {}
    for where, row in _rows(path):
        qid = str(_field(where, row, "id", (str, int)))
        question = _field(where, row, "question", str)
        if not question.strip():
            raise DataFormatError(f"{where}: field 'question' is empty")
        answers = _answers(where, row)
        source = row.get("data_source") or path.stem.split(".")[0]
        if not isinstance(source, str):
            raise DataFormatError(f"{where}: field 'data_source' must be str, got {type(source).__name__}")
        if qid in seen:
            raise DataFormatError(f"{where}: duplicate id {qid!r} (first at {seen[qid]})")
        seen[qid] = where
        hops, chain = _chain(where, row.get("metadata"))
        records.append(QARecord(qid, question, answers, source, hops, chain))
    return records


def load_corpus(path: str | Path) -> list[CorpusDoc]:
    """Read and check a corpus file of `{"id", "contents"}` rows."""
    docs = []
    for where, row in _rows(Path(path)):
        doc_id = str(_field(where, row, "id", (str, int)))
        docs.append(CorpusDoc(doc_id, _field(where, row, "contents", str)))
    if not docs:
        raise DataFormatError(f"{path}: the corpus is empty")
    return docs


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON Lines, atomically (a crash never leaves half a file)."""
    write_text_atomic(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
