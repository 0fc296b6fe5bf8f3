"""BFCL v4 multi-turn episodes as prompts, and the train/test split by scenario.

An `FCRecord` is one episode of a BFCL v4 multi-turn subset (`base`, `miss_func`, `miss_param`,
`long_context`): its user turns, the API classes involved, their initial state, the functions held
back until a later turn (`miss_func`) and the ground-truth calls of every turn. `id` is BFCL's
(e.g. `multi_turn_base_12`), `data_source` is `bfcl_v4_<subset>`.

The four subsets are variants of the same 200 scenarios (entry `<subset>_<i>` of every subset
starts from scenario i's state and tasks), so an independent split per subset would put most test
scenarios' calls in the training set. `split_by_scenario` splits the scenario indices once, with a
seeded permutation, and sends every subset's entry i to the same side.

Deviations:
1. The paper's split is 80/20 without saying how; ours is by scenario, shared across subsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUBSETS = ("base", "miss_func", "miss_param", "long_context")


@dataclass(frozen=True)
class FCRecord:
    """One multi-turn episode. `turns[t]` is user turn t's text ('' for a turn that only makes held-back
    functions available); `initial_config` is JSON text (the record stays hashable); `held_back`
    maps a turn index to the functions that become available at it; `ground_truth[t]` is turn t's
    calls as BFCL writes them; `excluded`: functions of the APIs BFCL does not offer in this episode."""

    id: str
    turns: tuple[str, ...]
    classes: tuple[str, ...]
    initial_config: str
    held_back: tuple[tuple[int, tuple[str, ...]], ...]
    ground_truth: tuple[tuple[str, ...], ...]
    data_source: str = "bfcl_v4_base"
    excluded: tuple[str, ...] = ()

    @property
    def subset(self) -> str:
        return self.data_source.removeprefix("bfcl_v4_")

    @property
    def question(self) -> str:
        """The user's requests, turn by turn: what a reader (and the success predictor) sees of it."""
        return "\n".join(t for t in self.turns if t)

    @property
    def scenario(self) -> int:
        """The scenario index shared by the four subsets' entries."""
        return int(self.id.rsplit("_", 1)[1])

    @property
    def long_context(self) -> bool:
        return self.subset == "long_context"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.initial_config)
        return config

    def entry(self) -> dict[str, Any]:
        """The record as BFCL's checker reads a test entry."""
        return {"id": self.id, "initial_config": self.config(), "involved_classes": list(self.classes)}

    def unavailable(self, turn: int) -> frozenset[str]:
        """Functions not yet available at user turn `turn`."""
        return frozenset(f for t, names in self.held_back if t > turn for f in names)

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON (lists for tuples); `from_json` rebuilds it exactly."""
        return {
            "id": self.id,
            "data_source": self.data_source,
            "turns": list(self.turns),
            "classes": list(self.classes),
            "initial_config": self.initial_config,
            "held_back": [[t, list(names)] for t, names in self.held_back],
            "ground_truth": [list(turn) for turn in self.ground_truth],
            "excluded": list(self.excluded),
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> FCRecord:
        """The inverse of `to_json`; a missing key raises KeyError naming it."""
        return cls(
            id=str(row["id"]),
            turns=tuple(row["turns"]),
            classes=tuple(row["classes"]),
            initial_config=str(row["initial_config"]),
            held_back=tuple((int(t), tuple(names)) for t, names in row["held_back"]),
            ground_truth=tuple(tuple(turn) for turn in row["ground_truth"]),
            data_source=str(row["data_source"]),
            excluded=tuple(row["excluded"]),
        )


class BFCLDataError(ValueError):
    """A BFCL data file that cannot be read; the message names the file and line."""


def _lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """JSON objects of a JSON Lines file (BFCL's `.json` files are JSON Lines), with line numbers."""
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise BFCLDataError(f"{path}:{number}: not a JSON line ({err.msg})") from None
                except RecursionError:
                    raise BFCLDataError(f"{path}:{number}: JSON nested too deeply to read") from None


def _turn_text(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")


def to_record(entry: Mapping[str, Any], answer: Mapping[str, Any], subset: str) -> FCRecord:
    held = entry.get("missed_function") or {}
    return FCRecord(
        id=str(entry["id"]),
        turns=tuple(_turn_text(turn) for turn in entry["question"]),
        classes=tuple(entry["involved_classes"]),
        initial_config=json.dumps(entry.get("initial_config") or {}, sort_keys=True),
        held_back=tuple(sorted((int(t), tuple(names)) for t, names in held.items())),
        ground_truth=tuple(tuple(turn) for turn in answer["ground_truth"]),
        data_source=f"bfcl_v4_{subset}",
        excluded=tuple(entry.get("excluded_function") or ()),
    )


def load_subset(data_dir: Path, subset: str) -> list[FCRecord]:
    """One subset's episodes from BFCL's data folder (`BFCL_v4_multi_turn_<subset>.json` and its
    `possible_answer/` twin), in file order."""
    if subset not in SUBSETS:
        raise BFCLDataError(f"unknown BFCL multi-turn subset {subset!r}; valid: {', '.join(SUBSETS)}")
    questions = data_dir / f"BFCL_v4_multi_turn_{subset}.json"
    answers = data_dir / "possible_answer" / questions.name
    by_id: dict[str, dict[str, Any]] = {}
    for number, row in _lines(answers):
        if "id" not in row or "ground_truth" not in row:
            raise BFCLDataError(f"{answers}:{number}: needs 'id' and 'ground_truth'")
        by_id[str(row["id"])] = row
    out = []
    for number, row in _lines(questions):
        missing = [k for k in ("id", "question", "involved_classes") if k not in row]
        if missing:
            raise BFCLDataError(f"{questions}:{number}: missing {', '.join(missing)}")
        if str(row["id"]) not in by_id:
            raise BFCLDataError(f"{questions}:{number}: no ground truth for {row['id']!r} in {answers}")
        record = to_record(row, by_id[str(row["id"])], subset)
        if len(record.ground_truth) != len(record.turns):
            raise BFCLDataError(
                f"{questions}:{number}: {len(record.turns)} turns but ground truth for {len(record.ground_truth)}"
            )
        out.append(record)
    return out


def bfcl_data_dir() -> Path:
    """The data folder of the installed `bfcl-eval` package."""
    try:
        import bfcl_eval
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{err}: the function-calling task needs BFCL's data: pip install --no-deps bfcl-eval==2026.3.23 mpmath"
        ) from None
    return Path(bfcl_eval.__file__).parent / "data"


def split_by_scenario(
    records: Sequence[FCRecord], test_share: float = 0.2, seed: int = 0
) -> tuple[list[FCRecord], list[FCRecord]]:
    """(train, test): a seeded share of the scenario indices goes to test, with every subset's entry
    of those scenarios; record order is kept within each side."""
    scenarios = sorted({r.scenario for r in records})
    order = np.random.default_rng(seed).permutation(len(scenarios))
    test_count = round(len(scenarios) * test_share)
    test = {scenarios[i] for i in order[:test_count]}
    return [r for r in records if r.scenario not in test], [r for r in records if r.scenario in test]


SPLITS = ("train", "dev", "test")


def write_split(directory: Path, sides: Mapping[str, Sequence[FCRecord]]) -> None:
    """Each side's episodes as JSON Lines, `<directory>/<side>.jsonl`, in the given order: the data a
    run trains and is scored on, whole (so DVC versions it, and a later `bfcl-eval` cannot change it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for side, records in sides.items():
        tmp = directory / f".{side}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))
        tmp.replace(directory / f"{side}.jsonl")


def read_split(directory: Path) -> dict[str, list[FCRecord]]:
    """The sides written by `write_split`; a malformed line raises BFCLDataError naming file and line."""
    sides: dict[str, list[FCRecord]] = {}
    for side in SPLITS:
        path = directory / f"{side}.jsonl"
        records = []
        for number, row in _lines(path):
            try:
                records.append(FCRecord.from_json(row))
            except (KeyError, TypeError, ValueError) as err:
                raise BFCLDataError(f"{path}:{number}: not an episode ({type(err).__name__}: {err})") from None
        sides[side] = records
    return sides
