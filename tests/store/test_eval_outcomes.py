"""Per-question evaluation outcomes: stored with the evaluate stage or by the final evaluation, replaced
(never duplicated) when either is run again, and readable per question by SQL users."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from trace_core.method.evaluation import QuestionOutcome
from trace_rl.store.models import EvalOutcome
from trace_rl.store.store import RolloutStore
from trace_rl.store.user_sql import run_sql
from trace_rl.store.writer import CheckpointRecord


def _outcomes(rewards: dict[str, list[float]], source: str = "synthetic_mhqa") -> tuple[QuestionOutcome, ...]:
    return tuple(QuestionOutcome(q, i, r, source) for q, rs in rewards.items() for i, r in enumerate(rs))


def _rows(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(EvalOutcome)).scalar_one()


def _evaluate_stage(store, run, iteration, outcomes):
    with store.stage(run, iteration, "evaluate") as w:
        w.iteration_metrics({"eval/em": 0.5})
        w.eval_outcomes("dev", outcomes)


def _publish(store, run, iteration):
    with store.stage(run, iteration, "checkpoint") as w:
        w.checkpoint(CheckpointRecord("export", "runs/r/policy", "0" * 64))


def test_an_evaluation_stage_stores_each_sampled_rollout_by_question(store):
    run = store.open_run("r", {}, "h", "test")
    before = _outcomes({"q1": [1.0, 0.0], "q2": [0.0, 0.0]})
    _evaluate_stage(store, run, -1, before)  # the evaluation before training
    _evaluate_stage(store, run, 0, _outcomes({"q1": [1.0, 1.0], "q2": [1.0, 0.0]}))
    assert store.eval_outcomes(run, -1, "dev") == list(before)
    assert [o.correct for o in store.eval_outcomes(run, 0, "dev")] == [1.0, 1.0, 1.0, 0.0]


def test_rerunning_an_evaluation_stage_replaces_its_outcomes(store):
    run = store.open_run("r", {}, "h", "test")
    _evaluate_stage(store, run, 0, _outcomes({"q1": [0.0, 0.0], "q2": [0.0, 0.0], "q3": [0.0, 0.0]}))
    again = _outcomes({"q1": [1.0, 0.0], "q2": [1.0, 1.0]})
    _evaluate_stage(store, run, 0, again)
    assert store.eval_outcomes(run, 0, "dev") == list(again)
    assert _rows(store) == 4


def test_a_failed_evaluation_stage_leaves_its_earlier_outcomes_untouched(store):
    run = store.open_run("r", {}, "h", "test")
    first = _outcomes({"q1": [1.0, 0.0]})
    _evaluate_stage(store, run, 0, first)
    with pytest.raises(RuntimeError), store.stage(run, 0, "evaluate") as w:
        w.eval_outcomes("dev", _outcomes({"q9": [1.0]}))
        raise RuntimeError("killed before the commit")
    assert store.eval_outcomes(run, 0, "dev") == list(first)


def test_the_final_evaluation_is_stored_under_the_iteration_that_published_the_policy(store):
    run = store.open_run("r", {}, "h", "test")
    assert store.published_iteration(run) is None
    _publish(store, run, 0)
    _publish(store, run, 1)
    assert store.published_iteration(run) == 1


def test_the_final_evaluation_is_stored_after_the_runs_lease_is_released(db_url):
    trainer = RolloutStore(db_url)
    run = trainer.open_run("r", {}, "h", "test")
    trainer.take_lease(run, "r", ttl_s=60)
    _publish(trainer, run, 1)
    _evaluate_stage(trainer, run, 1, _outcomes({"q1": [1.0, 0.0]}))
    trainer.release_lease("done")
    trainer.close()

    evaluator = RolloutStore(db_url, create=False)  # another process, after training
    try:
        final = _outcomes({"q1": [1.0, 1.0]})
        evaluator.record_final_evaluation(
            run, 1, {("final", "dev"): final, ("final", "test"): _outcomes({"t1": [0.0]})}
        )
        assert evaluator.eval_outcomes(run, 1, "dev", "final") == list(final)
        assert evaluator.eval_outcomes(run, 1, "dev") == list(_outcomes({"q1": [1.0, 0.0]}))  # in_flow: kept
        assert [o.question_id for o in evaluator.eval_outcomes(run, 1, "test", "final")] == ["t1"]
    finally:
        evaluator.close()


def test_rerunning_a_final_evaluation_replaces_its_outcomes(store):
    run = store.open_run("r", {}, "h", "test")
    _publish(store, run, 1)
    _evaluate_stage(store, run, 1, _outcomes({"q1": [0.0, 0.0]}))
    first = {
        ("final", "dev"): _outcomes({"q1": [1.0, 0.0], "q2": [0.0, 0.0]}),
        ("final_greedy", "dev"): _outcomes({"q1": [1.0], "q2": [0.0]}),
        ("final", "test"): _outcomes({"t1": [1.0, 1.0]}),
    }
    store.record_final_evaluation(run, 1, first)
    again = {("final", "dev"): _outcomes({"q1": [1.0, 1.0]}), ("final", "test"): _outcomes({"t1": [0.0, 1.0]})}
    store.record_final_evaluation(run, 1, again)  # fewer questions and no greedy pass this time
    assert store.eval_outcomes(run, 1, "dev", "final") == list(again["final", "dev"])
    assert store.eval_outcomes(run, 1, "test", "final") == list(again["final", "test"])
    assert store.eval_outcomes(run, 1, "dev", "final_greedy") == []
    assert store.eval_outcomes(run, 1, "dev") == list(_outcomes({"q1": [0.0, 0.0]}))  # the flow's rows stay
    assert _rows(store) == 6


def test_a_final_evaluation_cannot_write_the_training_flows_outcomes(store):
    run = store.open_run("r", {}, "h", "test")
    with pytest.raises(ValueError, match="final evaluation kinds"):
        store.record_final_evaluation(run, 0, {("in_flow", "dev"): _outcomes({"q1": [1.0]})})
    assert _rows(store) == 0


def test_questions_of_different_sources_with_the_same_id_are_kept_apart(store):
    run = store.open_run("r", {}, "h", "test")
    both = _outcomes({"multi_turn_base_7": [1.0]}, "bfcl_v4_base") + _outcomes(
        {"multi_turn_base_7": [0.0]}, "bfcl_v4_long_context"
    )
    _evaluate_stage(store, run, 0, both)
    assert store.eval_outcomes(run, 0, "dev") == list(both)


def test_deleting_a_run_deletes_its_outcomes(store):
    run = store.open_run("r", {}, "h", "test")
    _evaluate_stage(store, run, 0, _outcomes({"q1": [1.0]}))
    store.delete_run("r")
    assert _rows(store) == 0


def test_the_eval_questions_view_pairs_two_runs_question_by_question(store):
    for name, rewards in (("a", {"q1": [1.0, 0.0], "q2": [0.0, 0.0]}), ("b", {"q1": [1.0, 1.0], "q2": [1.0, 0.0]})):
        run = store.open_run(name, {}, "h", "test")
        _evaluate_stage(store, run, 0, _outcomes(rewards))
    table = run_sql(
        store.url,
        "SELECT a.question_id, a.samples, a.success_rate, b.success_rate - a.success_rate AS gain "
        "FROM eval_questions a JOIN eval_questions b ON a.question_id = b.question_id "
        "AND a.split = b.split AND a.kind = b.kind AND a.iteration = b.iteration "
        "WHERE a.run = 'a' AND b.run = 'b' AND a.kind = 'in_flow' ORDER BY a.question_id",
        allow_superuser=True,  # the test database's role; users connect as a reader
    )
    assert table.columns == ("question_id", "samples", "success_rate", "gain")
    assert [(q, n) for q, n, _, _ in table.rows] == [("q1", 2), ("q2", 2)]
    assert [(float(rate), float(gain)) for _, _, rate, gain in table.rows] == [(0.5, 0.5), (0.0, 0.5)]
