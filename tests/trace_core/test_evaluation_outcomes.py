"""Per-question, per-sample outcomes of an evaluation (EvalReport.outcomes), for both task families."""

from trace_core.function_calling.data import FCRecord
from trace_core.method.evaluation import QuestionOutcome, score_trees
from trace_core.method.tree import RolloutNode, RolloutTree
from trace_core.search_agent.data import QARecord


def _leaf(parent: int, reward: float | None) -> RolloutNode:
    return RolloutNode(
        node_id=-1,
        parent_id=parent,
        depth=-1,
        model_ids=(1,),
        model_logprobs=(0.0,),
        observation_ids=(),
        text="",
        observation="",
        action="answer",
        argument="Varno",
        finish_reason="stop",
        terminal=True,
        reward=reward,
        origin="stage1",
    )


def _tree(record, rewards: list[float | None]) -> RolloutTree:
    tree = RolloutTree(record, prompt_ids=(1, 2))
    for r in rewards:
        tree.add(_leaf(0, r))
    return tree


def _fc(episode_id: str, subset: str) -> FCRecord:
    return FCRecord(
        id=episode_id,
        turns=("book a flight",),
        classes=("TravelAPI",),
        initial_config="{}",
        held_back=(),
        ground_truth=(("book()",),),
        data_source=f"bfcl_v4_{subset}",
    )


def test_each_sampled_rollout_is_kept_by_question_and_leaf_order():
    trees = [
        _tree(QARecord("q1", "Where?", ("Varno",), "synthetic_mhqa"), [1.0, 0.0, 1.0]),
        _tree(QARecord("q2", "Who?", ("Lind",), "synthetic_mhqa"), [0.0, None, 0.0]),  # no reward: a failure
    ]
    report = score_trees(trees, 3)
    assert report.outcomes == (
        QuestionOutcome("q1", 0, 1.0, "synthetic_mhqa"),
        QuestionOutcome("q1", 1, 0.0, "synthetic_mhqa"),
        QuestionOutcome("q1", 2, 1.0, "synthetic_mhqa"),
        QuestionOutcome("q2", 0, 0.0, "synthetic_mhqa"),
        QuestionOutcome("q2", 1, 0.0, "synthetic_mhqa"),
        QuestionOutcome("q2", 2, 0.0, "synthetic_mhqa"),
    )


def test_the_outcomes_add_up_to_the_reported_accuracy_and_per_question_success():
    trees = [
        _tree(QARecord("a", "?", ("x",), "nq"), [1.0, 1.0]),
        _tree(QARecord("b", "?", ("y",), "hotpotqa"), [0.0, 1.0]),
    ]
    report = score_trees(trees, 2)
    assert sum(o.correct for o in report.outcomes) / len(report.outcomes) == report.em
    per_question = [[o.correct for o in report.outcomes if o.question_id == q] for q in ("a", "b")]
    assert tuple(sum(c) / len(c) for c in per_question) == report.success


def test_function_calling_episodes_are_kept_by_episode_id_and_subset():
    trees = [_tree(_fc("multi_turn_base_7", "base"), [1.0]), _tree(_fc("multi_turn_base_7", "long_context"), [0.0])]
    report = score_trees(trees, 1)
    assert report.outcomes == (
        QuestionOutcome("multi_turn_base_7", 0, 1.0, "bfcl_v4_base"),
        QuestionOutcome("multi_turn_base_7", 0, 0.0, "bfcl_v4_long_context"),
    )
