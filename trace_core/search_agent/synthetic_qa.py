"""A seeded synthetic multi-hop QA task: a fictional knowledge base, its documents and questions.

The knowledge base holds people, organisations, cities and countries joined by six relations
(born in, works for, mentor, based in, founded by, city in country). Every person, organisation and
city has one short document stating its facts. Questions compose 1, 2 or 3 relations from a start
entity ("In which country is the employer of Oskar Lind based?"), so answering takes one search per
hop with the right entity name carried from each observation into the next query.

Names overlap on purpose: people share first names and surnames, organisations share a stem
("Telmar Group", "Telmar Press"), some cities carry another city's name ("Varno", "New Varno"), so
the retriever returns near-miss documents beside the right one.

Every question keeps its reasoning chain (query, fact, answer per hop) in `metadata`, which the warm
start uses to write expert trajectories; the policy never sees it.

Deviations: none (the paper trains on real multi-hop QA; this task is our CPU-sized stand-in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from trace_core.search_agent.data import ChainStep, CorpusDoc, QARecord, write_jsonl

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "st",
    "tr",
    "kr",
    "vel",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "k", "m"]
_ORG_KINDS = ["Group", "Institute", "Works", "Press", "Labs", "Bank"]

# relation -> (subject kind, object kind, fact sentence)
RELATIONS: dict[str, tuple[str, str, str]] = {
    "born_in": ("person", "city", "{s} was born in {o}."),
    "works_for": ("person", "org", "{s} works for {o}."),
    "mentor": ("person", "person", "The mentor of {s} is {o}."),
    "based_in": ("org", "city", "{s} is based in {o}."),
    "founded_by": ("org", "person", "{s} was founded by {o}."),
    "city_in": ("city", "country", "{s} is a city in {o}."),
}

# (relations applied in order from the start entity, question template)
TEMPLATES: list[tuple[tuple[str, ...], str]] = [
    (("born_in",), "Where was {e} born?"),
    (("works_for",), "Which organisation does {e} work for?"),
    (("mentor",), "Who is the mentor of {e}?"),
    (("based_in",), "Where is {e} based?"),
    (("founded_by",), "Who founded {e}?"),
    (("city_in",), "Which country is {e} in?"),
    (("born_in", "city_in"), "In which country was {e} born?"),
    (("works_for", "based_in"), "Where is the employer of {e} based?"),
    (("works_for", "founded_by"), "Who founded the employer of {e}?"),
    (("mentor", "born_in"), "Where was the mentor of {e} born?"),
    (("mentor", "works_for"), "Which organisation does the mentor of {e} work for?"),
    (("founded_by", "born_in"), "Where was the founder of {e} born?"),
    (("based_in", "city_in"), "In which country is {e} based?"),
    (("works_for", "based_in", "city_in"), "In which country is the employer of {e} based?"),
    (("mentor", "born_in", "city_in"), "In which country was the mentor of {e} born?"),
    (("works_for", "founded_by", "born_in"), "Where was the founder of the employer of {e} born?"),
    (("founded_by", "born_in", "city_in"), "In which country was the founder of {e} born?"),
    (("mentor", "works_for", "based_in"), "Where is the employer of the mentor of {e} based?"),
    (("mentor", "works_for", "based_in", "city_in"), "In which country is the employer of the mentor of {e} based?"),
    (
        ("mentor", "works_for", "founded_by", "born_in"),
        "Where was the founder of the employer of the mentor of {e} born?",
    ),
    (("founded_by", "mentor", "mentor", "born_in"), "Where was the mentor of the mentor of the founder of {e} born?"),
    (
        ("works_for", "founded_by", "mentor", "works_for"),
        "Which organisation does the mentor of the founder of the employer of {e} work for?",
    ),
]
MAX_HOPS = max(len(rels) for rels, _ in TEMPLATES)


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """Sizes of the generated task. Questions are split by question, not by entity."""

    seed: int = 0
    n_people: int = 160
    n_orgs: int = 40
    n_cities: int = 30
    n_countries: int = 8
    n_train: int = 1500
    n_dev: int = 200
    n_test: int = 200
    max_hops: int = 3
    # relative weight of each hop count 1..max_hops (empty: every hop count equally likely)
    hop_shares: tuple[float, ...] = ()
    # people sharing each first name and each surname (higher: more near-miss person documents)
    name_sharing: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.max_hops <= MAX_HOPS:
            raise ValueError(f"max_hops must be 1 to {MAX_HOPS}, got {self.max_hops}")
        if self.hop_shares:
            if len(self.hop_shares) != self.max_hops:
                raise ValueError(
                    f"hop_shares needs one weight per hop count 1..{self.max_hops}, got {len(self.hop_shares)}"
                )
            if min(self.hop_shares) < 0 or sum(self.hop_shares) <= 0:
                raise ValueError(f"hop_shares must be non-negative with a positive sum, got {list(self.hop_shares)}")
        parts = max(2, self.n_people // max(self.name_sharing, 1))
        if self.name_sharing < 1 or parts * parts < 2 * self.n_people:
            raise ValueError(
                f"name_sharing={self.name_sharing}: must be >= 1 and leave at least twice as many first-name and "
                f"surname pairs ({parts}^2) as people ({self.n_people})"
            )


@dataclass(frozen=True)
class SyntheticTask:
    corpus: list[CorpusDoc]
    splits: dict[str, list[QARecord]]


class _Names:
    """Unique capitalised pseudo-words drawn from syllables."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS) for _ in range(syllables)
            ).capitalize()
            if w not in self.used and 3 <= len(w) <= 10:
                self.used.add(w)
                return w


def _entities(spec: SyntheticTaskSpec, rng: random.Random) -> dict[str, list[str]]:
    names = _Names(rng)
    firsts = [names.word(2) for _ in range(max(2, spec.n_people // spec.name_sharing))]
    lasts = [names.word(rng.choice([1, 2])) for _ in range(max(2, spec.n_people // spec.name_sharing))]
    people: list[str] = []
    while len(people) < spec.n_people:  # shared first names and surnames make near-miss documents
        full = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if full not in people:
            people.append(full)
    stems = [names.word(2) for _ in range(max(1, spec.n_orgs // 2))]
    orgs: list[str] = []
    while len(orgs) < spec.n_orgs:
        org = f"{rng.choice(stems)} {rng.choice(_ORG_KINDS)}"
        if org not in orgs:
            orgs.append(org)
    base_cities = [names.word(rng.choice([2, 3])) for _ in range(spec.n_cities - spec.n_cities // 4)]
    cities = base_cities + [f"New {c}" for c in rng.sample(base_cities, spec.n_cities // 4)]
    countries = [names.word(3) for _ in range(spec.n_countries)]
    return {"person": people, "org": orgs, "city": cities, "country": countries}


def _relations(ents: dict[str, list[str]], rng: random.Random) -> dict[str, dict[str, str]]:
    facts: dict[str, dict[str, str]] = {}
    for rel, (subj, obj, _) in RELATIONS.items():
        table = {}
        for s in ents[subj]:
            choices = [o for o in ents[obj] if o != s]
            table[s] = rng.choice(choices)
        facts[rel] = table
    return facts


def _fact(rel: str, subject: str, obj: str) -> str:
    return RELATIONS[rel][2].format(s=subject, o=obj)


def _documents(ents: dict[str, list[str]], facts: dict[str, dict[str, str]]) -> list[CorpusDoc]:
    by_kind = {
        "person": ("born_in", "works_for", "mentor"),
        "org": ("based_in", "founded_by"),
        "city": ("city_in",),
    }
    docs: list[CorpusDoc] = []
    for kind, rels in by_kind.items():
        for name in ents[kind]:
            text = " ".join(_fact(r, name, facts[r][name]) for r in rels)
            docs.append(CorpusDoc(str(len(docs)), f'"{name}"\n{text}'))
    return docs


def _question(
    template: tuple[tuple[str, ...], str], start: str, facts: dict[str, dict[str, str]], qid: str
) -> QARecord:
    rels, text = template
    chain = []
    current = start
    for rel in rels:
        nxt = facts[rel][current]
        chain.append(ChainStep(query=current, fact=_fact(rel, current, nxt), answer=nxt))
        current = nxt
    return QARecord(qid, text.format(e=start), (current,), "synthetic_mhqa", len(rels), tuple(chain))


def generate_task(spec: SyntheticTaskSpec = SyntheticTaskSpec()) -> SyntheticTask:
    """Build the knowledge base, its corpus and the train/dev/test questions, all from `spec.seed`."""
    rng = random.Random(spec.seed)
    ents = _entities(spec, rng)
    facts = _relations(ents, rng)
    corpus = _documents(ents, facts)
    by_hops: dict[int, list[tuple[tuple[str, ...], str]]] = {}
    for tpl in TEMPLATES:
        if len(tpl[0]) <= spec.max_hops:
            by_hops.setdefault(len(tpl[0]), []).append(tpl)
    wanted = spec.n_train + spec.n_dev + spec.n_test
    hops = sorted(by_hops)
    questions: dict[str, QARecord] = {}
    attempts = 0
    while len(questions) < wanted:
        attempts += 1
        if attempts > 50 * wanted:
            raise ValueError(f"the knowledge base is too small for {wanted} distinct questions")
        if spec.hop_shares:  # the default path below draws exactly as before the mix existed
            hop = rng.choices(hops, weights=spec.hop_shares)[0]
        else:
            hop = rng.choice(hops)
        template = rng.choice(by_hops[hop])
        start = rng.choice(ents[RELATIONS[template[0][0]][0]])
        record = _question(template, start, facts, qid="")
        questions.setdefault(record.question, record)
    ordered = list(questions.values())
    rng.shuffle(ordered)
    bounds = {"train": (0, spec.n_train), "dev": (spec.n_train, spec.n_train + spec.n_dev)}
    bounds["test"] = (spec.n_train + spec.n_dev, wanted)
    splits = {
        name: [
            QARecord(f"{name}-{i}", r.question, r.golden_answers, r.data_source, r.hops, r.chain)
            for i, r in enumerate(ordered[lo:hi])
        ]
        for name, (lo, hi) in bounds.items()
    }
    return SyntheticTask(corpus, splits)


def write_task(task: SyntheticTask, directory: str | Path) -> None:
    """Write `corpus.jsonl` and `{train,dev,test}.jsonl` in the Search-R1 format."""
    directory = Path(directory)
    write_jsonl(directory / "corpus.jsonl", [d.to_row() for d in task.corpus])
    for name, records in task.splits.items():
        write_jsonl(directory / f"{name}.jsonl", [r.to_row() for r in records])
