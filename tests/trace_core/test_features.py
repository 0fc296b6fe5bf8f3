import numpy as np
import pytest

from trace_core.method.rollout import new_trees
from trace_core.method.tree import RolloutNode
from trace_core.search_agent.features import STRUCTURAL, SearchAgentFeaturizer, TextEncoder, structural_features


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_the_text_encoder_gives_unit_vectors_and_similar_texts_are_closer(encoder):
    a, b, c = encoder.encode(["Where was Oskar Lind born?", "Where was Oskar Lind born ?", "Who founded Telmar Press?"])
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert a @ b > a @ c
    assert encoder.encode([""])[0].tolist() == [0.0] * encoder.dim


def _turn(parent, action, argument, observation, text="t"):
    return RolloutNode(
        -1, parent, -1, (1,), (0.0,), (2,), text, observation, action, argument, "stop", False, None, "stage1"
    )


def test_structural_features_read_depth_searches_and_whether_the_search_hit(env, small_task):
    record = small_task.splits["train"][0]
    [tree] = new_trees([record], env)
    entity = record.chain[0].query
    good = tree.add(_turn(0, "search", entity, f"<information>Doc 1(Title: {entity}) ...</information>"))
    bad = tree.add(_turn(good.node_id, "search", "nobody at all", "<information>No results.</information>"))
    f_root = structural_features(tree, 0, 4)
    f_good = structural_features(tree, good.node_id, 4)
    f_bad = structural_features(tree, bad.node_id, 4)
    assert f_root.tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    # depth 1/4, not root, 1 search/4, 0 invalid, searched, grounded in the question, top hit matches, not empty
    assert f_good.tolist() == [0.25, 0, 0.25, 0, 1, 1, 1, 0]
    assert f_bad.tolist() == [0.5, 0, 0.5, 0, 1, 0, 0, 1]


def test_featurizer_rows_hold_question_turn_and_structure(encoder, env, small_task):
    trees = new_trees(small_task.splits["train"][:2], env)
    featurizer = SearchAgentFeaturizer(encoder, max_turns=4)
    x = featurizer.features(trees, [(0, 0), (1, 0)])
    assert x.shape == (2, 2 * encoder.dim + STRUCTURAL)
    assert not np.allclose(x[0, : encoder.dim], x[1, : encoder.dim])  # different questions


def test_question_words_mark_the_same_slots_for_the_same_wording_whatever_the_case():
    from trace_core.search_agent.features import question_words

    a = question_words("Where was the founder of Orvik born?", 256)
    assert a.shape == (256,) and set(np.unique(a)) <= {0.0, 1.0}
    assert np.array_equal(a, question_words("WHERE was the founder of orvik born", 256))
    # 7 words and 6 word pairs: at most 13 slots (fewer where two hash to one)
    assert 10 <= a.sum() <= 13
