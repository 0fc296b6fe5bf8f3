import pytest

from trace_core.search_agent.agent import FORMAT_ERROR, parse_turn


@pytest.mark.parametrize(
    ("text", "action", "argument"),
    [
        ("<think> hm </think>\n<search> Oskar Lind </search>", "search", "Oskar Lind"),
        ("<think> ok </think> <answer> Varno </answer>", "answer", "Varno"),
        ("<answer>Varno</answer>\n", "answer", "Varno"),
    ],
)
def test_well_formed_turns_parse_to_their_action(text, action, argument):
    parsed = parse_turn(text)
    assert (parsed.action, parsed.argument, parsed.error) == (action, argument, None)


@pytest.mark.parametrize(
    ("text", "finish", "why", "ends_episode"),
    [
        ("<think> still thinking", "length", "no closing tag before the token limit", False),
        ("<search>   </search>", "stop", "empty query", False),
        ("Oskar Lind </search>", "stop", "</search> without <search>", False),
        ("<answer> Varno </answer> because it is", "stop", "text after the answer", True),
        ("<answer> </answer>", "stop", "empty answer", True),
    ],
)
def test_malformed_turns_are_format_failures_not_exceptions(text, finish, why, ends_episode):
    parsed = parse_turn(text, finish)
    assert parsed.action == "invalid"
    assert parsed.error == why
    assert parsed.terminal_error is ends_episode


def test_first_closing_tag_decides_the_action():
    assert parse_turn("<search> a </search> <answer> b </answer>").action == "search"


def test_environment_answers_a_malformed_turn_with_a_format_error_observation(env, small_task):
    record = small_task.splits["train"][0]
    [step] = env.step([record], ["<think> no tags at all"], [1], ["length"])
    assert not step.terminal and step.reward is None
    assert FORMAT_ERROR in step.observation
    assert step.observation_ids == env.encode(step.observation)


def test_text_after_the_answer_ends_the_episode_with_reward_zero(env, small_task):
    record = small_task.splits["train"][0]
    gold = record.golden_answers[0]
    [step] = env.step([record], [f"<answer> {gold} </answer> extra"], [1], ["stop"])
    assert step.terminal and step.reward == 0.0


def test_a_correct_answer_earns_reward_one_and_a_wrong_one_zero(env, small_task):
    record = small_task.splits["train"][0]
    right, wrong = env.step(
        [record, record],
        [f"<answer> {record.golden_answers[0]} </answer>", "<answer> nobody </answer>"],
        [2, 2],
        ["stop", "stop"],
    )
    assert (right.terminal, right.reward) == (True, 1.0)
    assert (wrong.terminal, wrong.reward) == (True, 0.0)


def test_a_search_returns_the_retrieved_passages_inside_information_tags(env, small_task):
    record = small_task.splits["train"][0]
    query = record.chain[0].query
    [step] = env.step([record], [f"<search> {query} </search>"], [1], ["stop"])
    assert step.observation.strip().startswith("<information>Doc 1(Title: " + query + ")")
    assert step.observation.strip().endswith("</information>")
    assert not step.terminal


def test_searching_on_the_last_allowed_turn_ends_unsolved(env, small_task):
    record = small_task.splits["train"][0]
    last = env.config.max_turns
    [step] = env.step([record], ["<search> anything </search>"], [last], ["stop"])
    assert step.terminal and step.reward == 0.0 and step.observation_ids == ()
