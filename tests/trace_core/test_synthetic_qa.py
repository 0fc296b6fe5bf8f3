from collections import Counter

from tests.conftest import SMALL_TASK
from trace_core.search_agent.synthetic_qa import generate_task


def test_the_same_seed_gives_the_same_task(small_task):
    again = generate_task(SMALL_TASK)
    assert again.corpus == small_task.corpus and again.splits == small_task.splits


def test_questions_cover_one_two_and_three_hops_with_chains_that_end_at_the_gold_answer(small_task):
    train = small_task.splits["train"]
    assert {r.hops for r in train} == {1, 2, 3}
    for r in train:
        assert len(r.chain) == r.hops
        assert r.chain[-1].answer == r.golden_answers[0]
        assert r.chain[0].query in r.question
        for prev, step in zip(r.chain, r.chain[1:]):
            assert step.query == prev.answer


def test_splits_are_disjoint_by_question(small_task):
    questions = [{r.question for r in recs} for recs in small_task.splits.values()]
    assert sum(len(q) for q in questions) == len(set().union(*questions))


def test_every_chain_fact_is_stated_in_the_document_of_its_query_entity(small_task):
    docs = {d.title: d.text for d in small_task.corpus}
    for r in small_task.splits["train"]:
        for step in r.chain:
            assert step.fact in docs[step.query]


def test_person_names_overlap_so_retrieval_sees_near_misses(small_task):
    people = [d.title for d in small_task.corpus if "was born in" in d.text]
    surnames = Counter(name.split()[-1] for name in people)
    assert max(surnames.values()) >= 2
