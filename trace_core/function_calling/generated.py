"""Generated multi-turn episodes on BFCL's own file-system API (`GorillaFileSystem`), for training.

BFCL v4's multi-turn data is 200 scenarios, too few (and too hard) to train a small policy on. This
module writes new episodes over the same API class, scored by the same official checker:
- a random starting file system: the user's home folder holding folders and files with random
  names and contents; names and contents mix everyday words with pseudo-words drawn from syllables
  (`reports_tavel`, `summary_kiro.txt`, `Amber dorun velka.`), thousands of distinct values, so a
  policy must read each value from the user's words rather than recall it from a short list;
- 2 or 3 user turns of 1 or 2 requests each, where later requests act on what earlier ones did or
  where they left the user (`cd` into a folder, then `mkdir` in it, then `mv` a file into the new
  folder; `touch` a file, then write into it, then count its lines);
- every argument value appears in the user's words (names quoted, text quoted), as in BFCL;
- the ground truth, one call per request, built with the requests; an episode is kept only if its
  ground truth passes the official checker (`official_check`).

Two pools of names and words, `train` and `heldout`, share no folder name, file name, user name or
content word, nor any part of one (everyday words alternate between the pools; a pseudo-word belongs
to the pool its CRC-32 parity names): a held-out episode's starting state and arguments were never
seen in training.
Episodes are reproducible from (pool, seed, index).

Deviations: BFCL's scenarios mix several API classes, long listings and missing functions or
parameters; these use the file system only, short listings and every function from the start.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trace_core.function_calling.data import FCRecord

Pool = Literal["train", "heldout"]
POOLS: tuple[Pool, ...] = ("train", "heldout")
SOURCE = "generated_file_system"
GENERATOR_VERSION = 2  # raise it when a change here changes what an (pool, seed, index) generates

# name and word pools: even positions train, odd positions held out (no value in both)
_USERS = ("alex", "maya", "omar", "lena", "ravi", "sofia", "jonas", "ines", "tariq", "yuki", "marta", "chen")
_FOLDERS = (
    "projects", "reports", "notes", "drafts", "archive", "photos", "invoices", "research", "backup", "music",
    "scripts", "letters", "budget", "travel", "recipes", "papers", "designs", "logs", "exports", "courses",
    "clients", "legal", "manuals", "samples",
)  # fmt: skip
_STEMS = (
    "summary", "todo", "ideas", "minutes", "plan", "results", "readme", "agenda", "draft", "memo", "index",
    "checklist", "outline", "report", "notes", "schedule", "budget", "invoice", "review", "log", "profile",
    "contacts", "quotes", "diary",
)  # fmt: skip
_EXTENSIONS = (".txt", ".md", ".csv", ".log")
_WORDS = (
    "apple", "river", "stone", "cloud", "ember", "falcon", "garden", "harbor", "island", "jungle", "kettle",
    "lantern", "meadow", "nectar", "orbit", "pepper", "quartz", "rocket", "saddle", "timber", "velvet",
    "willow", "yonder", "zephyr", "amber", "bridge", "candle", "desert", "engine", "forest", "glacier",
    "hollow",
)  # fmt: skip


_EVERYDAY = frozenset(_USERS + _FOLDERS + _STEMS + _WORDS)  # a pseudo-word is never one of these
# pseudo-word syllables: onset, vowel, coda
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m")


def _pool(values: tuple[str, ...], pool: Pool) -> tuple[str, ...]:
    return values[0::2] if pool == "train" else values[1::2]


def _in_pool(word: str, pool: Pool) -> bool:
    """The pool a pseudo-word belongs to: train for an even CRC-32, held out for an odd one."""
    return zlib.crc32(word.encode()) % 2 == POOLS.index(pool)


@dataclass
class _Folder:
    """What the generator knows of a folder: its files (name -> content) and subfolders."""

    files: dict[str, str] = field(default_factory=dict)
    folders: dict[str, _Folder] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        contents: dict[str, Any] = {n: {"type": "file", "content": c} for n, c in self.files.items()}
        contents.update({n: f.config() for n, f in self.folders.items()})
        return {"type": "directory", "contents": contents}


@dataclass
class _Episode:
    rng: np.random.Generator
    pool: Pool
    home: _Folder
    cwd: _Folder
    taken: set[str] = field(default_factory=set)
    focus: dict[str, str] = field(default_factory=dict)  # the folder / file the last requests made or used

    def pick(self, values: tuple[str, ...]) -> str:
        return str(values[int(self.rng.integers(len(values)))])

    def pseudo(self) -> str:
        """A pseudo-word of 2 syllables from this episode's pool."""
        while True:
            word = "".join(self.pick(_ONSETS) + self.pick(_VOWELS) + self.pick(_CODAS) for _ in range(2))
            if _in_pool(word, self.pool) and word not in _EVERYDAY:
                return word

    def word(self) -> str:
        """A content word: an everyday word of the pool or a pseudo-word, evenly."""
        return self.pick(_pool(_WORDS, self.pool)) if self.rng.random() < 0.5 else self.pseudo()

    def choose(self, kind: str, names: tuple[str, ...]) -> str:
        """One of `names`: the one in focus where it is among them (later requests build on earlier
        ones), else any; it becomes the focus."""
        name = self.focus[kind] if self.focus.get(kind) in names else self.pick(names)
        self.focus[kind] = name
        return name

    def new_name(self, kind: Literal["file", "folder"]) -> str | None:
        """A name not used anywhere in the episode yet: a pseudo-word, after an everyday folder name or
        file stem half the time (`reports_tavel`, `kiro.md`); files get an extension."""
        for _ in range(100):
            name = self.pseudo()
            if self.rng.random() < 0.5:
                name = f"{self.pick(_pool(_FOLDERS if kind == 'folder' else _STEMS, self.pool))}_{name}"
            if kind == "file":
                name += self.pick(_EXTENSIONS)
            if name not in self.taken:
                self.taken.add(name)
                return name
        return None

    def sentence(self, words: int) -> str:
        return " ".join(self.word() for _ in range(words)).capitalize() + "."

    def text(self, lines: int) -> str:
        return "\n".join(self.sentence(int(self.rng.integers(3, 7))) for _ in range(lines))


def _start(rng: np.random.Generator, pool: Pool) -> _Episode:
    home = _Folder()
    ep = _Episode(rng, pool, home, home)
    for _ in range(int(rng.integers(1, 3))):
        folder = _Folder()
        for _ in range(int(rng.integers(1, 4))):
            name = ep.new_name("file")
            assert name is not None
            folder.files[name] = ep.text(int(rng.integers(2, 6)))
        name = ep.new_name("folder")
        assert name is not None
        home.folders[name] = folder
    for _ in range(int(rng.integers(1, 3))):
        name = ep.new_name("file")
        assert name is not None
        home.files[name] = ep.text(int(rng.integers(2, 6)))
    return ep


# -- requests: each returns (what the user says, the ground-truth call) or None where it cannot apply


Request = tuple[str, str]


def _q(value: str) -> str:
    return json.dumps(value)[1:-1].replace("'", "\\'")


def _cd(ep: _Episode) -> Request | None:
    if not ep.cwd.folders:
        return None
    name = ep.choose("folder", tuple(ep.cwd.folders))
    ep.cwd = ep.cwd.folders[name]
    say = ep.pick(("Go into the '{}' folder.", "Open the folder '{}'.", "Switch to the '{}' directory."))
    return say.format(name), f"cd(folder='{name}')"


def _mkdir(ep: _Episode) -> Request | None:
    name = ep.new_name("folder")
    if name is None:
        return None
    ep.cwd.folders[name] = _Folder()
    ep.focus["folder"] = name
    say = ep.pick(("Make a new folder called '{}' here.", "Create a directory named '{}'.", "Add a folder '{}'."))
    return say.format(name), f"mkdir(dir_name='{name}')"


def _touch(ep: _Episode) -> Request | None:
    name = ep.new_name("file")
    if name is None:
        return None
    ep.cwd.files[name] = ""
    ep.focus["file"] = name
    say = ep.pick(("Create an empty file named '{}'.", "Make a new file '{}' here.", "Touch a file called '{}'."))
    return say.format(name), f"touch(file_name='{name}')"


def _echo(ep: _Episode) -> Request | None:
    empty = [n for n, c in ep.cwd.files.items() if not c]
    if not empty:
        return None
    name = ep.choose("file", tuple(empty))
    text = ep.sentence(int(ep.rng.integers(3, 6)))
    ep.cwd.files[name] = text
    say = ep.pick(("Write '{}' into '{}'.", "Put the text '{}' in the file '{}'.", "Save '{}' to '{}'."))
    return say.format(text, name), f"echo(content='{_q(text)}', file_name='{name}')"


def _move_or_copy(ep: _Episode, verb: Literal["mv", "cp"]) -> Request | None:
    if not ep.cwd.files or not ep.cwd.folders:
        return None
    name = ep.choose("file", tuple(ep.cwd.files))
    target = ep.choose("folder", tuple(ep.cwd.folders))
    if name in ep.cwd.folders[target].files:
        return None
    content = ep.cwd.files[name]
    ep.cwd.folders[target].files[name] = content
    if verb == "mv":
        del ep.cwd.files[name]
        say = ep.pick(("Move '{}' into the '{}' folder.", "Put '{}' inside '{}'.", "Relocate '{}' to '{}'."))
    else:
        say = ep.pick(("Copy '{}' into '{}'.", "Make a copy of '{}' in the '{}' folder.", "Duplicate '{}' into '{}'."))
    return say.format(name, target), f"{verb}(source='{name}', destination='{target}')"


def _read(ep: _Episode) -> Request | None:
    written = [n for n, c in ep.cwd.files.items() if c]
    if not written:
        return None
    name = ep.choose("file", tuple(written))
    kind = int(ep.rng.integers(3))
    if kind == 0:
        say = ep.pick(("Show me what '{}' says.", "Print the contents of '{}'.", "What is written in '{}'?"))
        return say.format(name), f"cat(file_name='{name}')"
    if kind == 1:
        say = ep.pick(("How many lines does '{}' have?", "Count the lines in '{}'.", "Tell me the line count of '{}'."))
        return say.format(name), f"wc(file_name='{name}', mode='l')"
    word = ep.pick(tuple(w.strip(".") for w in ep.cwd.files[name].split()))
    say = ep.pick(("Find the lines of '{}' that mention '{}'.", "Search '{}' for '{}'.", "In '{}', look for '{}'."))
    return say.format(name, word), f"grep(file_name='{name}', pattern='{word}')"


def _mv(ep: _Episode) -> Request | None:
    return _move_or_copy(ep, "mv")


def _cp(ep: _Episode) -> Request | None:
    return _move_or_copy(ep, "cp")


REQUESTS: tuple[Callable[[_Episode], Request | None], ...] = (_cd, _mkdir, _touch, _echo, _mv, _cp, _read)
# the plots an episode follows: each request acts on what the one before made or where it left the user
CHAINS: tuple[tuple[Callable[[_Episode], Request | None], ...], ...] = (
    (_cd, _mkdir, _mv),
    (_touch, _echo, _read),
    (_mkdir, _cp, _cd, _read),
    (_cd, _read, _touch, _echo),
    (_mkdir, _cd, _touch, _echo),
    (_cd, _touch, _echo, _cp),
)


def generate_episode(pool: Pool, seed: int, index: int) -> FCRecord:
    """Episode `index` of `pool` (not yet checked against the official checker: `generate`)."""
    rng = np.random.default_rng([seed, POOLS.index(pool), index])
    ep = _start(rng, pool)
    user = ep.pick(_pool(_USERS, pool))
    start = json.dumps({"GorillaFileSystem": {"root": {user: ep.home.config()}}}, sort_keys=True)
    plot = list(CHAINS[int(rng.integers(len(CHAINS)))])
    turns: list[str] = []
    truth: list[tuple[str, ...]] = []
    for _ in range(int(rng.integers(2, 4))):
        said, calls = [], []
        for _ in range(int(rng.integers(1, 3))):
            # the plot's next request, or (once it is told, or where it cannot apply) any that applies
            tries = ([plot.pop(0)] if plot else []) + [REQUESTS[int(i)] for i in rng.permutation(len(REQUESTS))]
            for make in tries:
                request = make(ep)
                if request is not None:
                    said.append(request[0])
                    calls.append(request[1])
                    break
        turns.append(" ".join(said) if said else "List what is in the current folder.")
        truth.append(tuple(calls) if calls else ("ls()",))
    return FCRecord(
        id=f"{SOURCE}_{pool}_{index}",
        turns=tuple(turns),
        classes=("GorillaFileSystem",),
        initial_config=start,
        held_back=(),
        ground_truth=tuple(truth),
        data_source=SOURCE,
    )


def generate(pool: Pool, count: int, seed: int, passes: Callable[[FCRecord], bool]) -> list[FCRecord]:
    """`count` episodes of `pool` whose ground truth `passes` (the official checker), in index order;
    an episode that fails is skipped (its index is not reused)."""
    out: list[FCRecord] = []
    index = 0
    while len(out) < count:
        record = generate_episode(pool, seed, index)
        index += 1
        if passes(record):
            out.append(record)
        if index > 4 * count + 100:
            raise RuntimeError(f"only {len(out)} of {index} generated episodes pass the official checker")
    return out
