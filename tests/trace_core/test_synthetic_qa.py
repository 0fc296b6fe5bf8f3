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


def _mix(**changes):
    from dataclasses import replace

    return generate_task(replace(SMALL_TASK, **changes))


def test_hop_shares_skew_the_mix_toward_the_weighted_hop_counts():
    task = _mix(max_hops=4, hop_shares=(0.5, 0.0, 0.0, 0.5), n_people=60, n_train=300)
    hops = Counter(r.hops for r in task.splits["train"])
    assert set(hops) == {1, 4}  # zero weight: never drawn
    assert 0.4 < hops[1] / sum(hops.values()) < 0.6


def test_four_hop_questions_chain_four_documented_facts_to_the_gold_answer():
    task = _mix(max_hops=4, hop_shares=(0.0, 0.0, 0.0, 1.0), n_people=60, n_train=100)
    docs = {d.title: d.text for d in task.corpus}
    for r in task.splits["train"]:
        assert r.hops == 4 and len(r.chain) == 4 and r.chain[-1].answer == r.golden_answers[0]
        assert all(step.fact in docs[step.query] for step in r.chain)
        assert "hop" not in r.question.lower()  # difficulty shows only in the wording of the relation chain


def test_more_name_sharing_means_fewer_distinct_surnames():
    def surnames(task):
        return {d.title.split()[-1] for d in task.corpus if "was born in" in d.text}

    assert len(surnames(_mix(n_people=60, name_sharing=5))) < len(surnames(_mix(n_people=60, name_sharing=3)))


def test_a_name_sharing_that_leaves_too_few_name_pairs_is_refused():
    import pytest

    with pytest.raises(ValueError, match="name_sharing=8"):
        _mix(name_sharing=8)


def test_a_hop_mix_with_the_wrong_length_is_refused():
    import pytest

    with pytest.raises(ValueError, match="one weight per hop count"):
        _mix(max_hops=3, hop_shares=(1.0, 1.0))
