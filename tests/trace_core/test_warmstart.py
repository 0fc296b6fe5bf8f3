import torch

from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.warmstart import WarmStartConfig, expert_trajectories, warm_start
from trace_core.search_agent.expert import expert_plan, expert_turns


def test_the_expert_solves_every_question_it_can_within_the_turn_limit(env, small_task):
    records = [r for r in small_task.splits["train"] if len(r.chain) + 1 <= env.config.max_turns]
    plans = [expert_turns(r) for r in records]
    for depth in range(1, max(len(p) for p in plans) + 1):
        live = [i for i, p in enumerate(plans) if len(p) >= depth]
        steps = env.step(
            [records[i] for i in live], [plans[i][depth - 1] for i in live], [depth] * len(live), ["stop"] * len(live)
        )
        for i, step in zip(live, steps):
            final = depth == len(plans[i])
            assert step.terminal == final
            if final:
                assert step.reward == 1.0


def test_only_expert_turn_tokens_carry_loss_never_prompt_or_observation_tokens(env, small_task):
    record = next(r for r in small_task.splits["train"] if r.hops == 2)
    [traj] = expert_trajectories([record], env, expert_plan)
    trained = env.tokenizer.decode([t for t, m in zip(traj.input_ids, traj.loss_mask) if m])
    masked = env.tokenizer.decode([t for t, m in zip(traj.input_ids, traj.loss_mask) if not m])
    assert trained == "".join(expert_turns(record))
    assert "<information>" not in trained and "Question:" not in trained
    assert masked.count("<information>Doc 1") == 2


def test_warm_start_stops_at_the_first_measurement_inside_the_band_and_keeps_those_weights(
    model, tokenizer, env, small_task
):
    model = model.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = TransformersBackend(model, tokenizer)
    config = WarmStartConfig(batch_size=4, eval_every=3, eval_questions=8, eval_samples=1, success_band=(0.0, 1.0))
    report = warm_start(
        model, backend, env, small_task.splits["train"][8:], small_task.splits["train"][:8], config, expert_plan
    )
    assert report.chosen.step == 3 and [c.step for c in report.history] == [3]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
