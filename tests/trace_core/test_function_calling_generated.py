"""Generated file-system episodes (`trace_core.function_calling.generated`): scored by BFCL's own
checker, argument values in the user's words, later turns built on earlier ones, and a held-out
pool that shares no name or word with training."""

from __future__ import annotations

import ast
import json

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from trace_core.function_calling.agreement import bfcl_verdict, env_reward, expert, text_env
from trace_core.function_calling.data import bfcl_data_dir
from trace_core.function_calling.generated import generate, generate_episode


@pytest.fixture(scope="module")
def env():
    return text_env(bfcl_data_dir())


def _kwargs(call: str) -> dict[str, object]:
    node = ast.parse(call, mode="eval").body
    assert isinstance(node, ast.Call)
    return {k.arg: ast.literal_eval(k.value) for k in node.keywords}


def _names(record) -> set[str]:
    """Every file, folder and user name of the starting state and every part of one (`reports_tavel.md`:
    the name, `reports` and `tavel`), and every word of every file."""
    out: set[str] = set()

    def walk(contents: dict) -> None:
        for name, node in contents.items():
            out.add(name)
            out.update(name.rsplit(".", 1)[0].split("_"))
            if node["type"] == "directory":
                walk(node["contents"])
            else:
                out.update(w.strip(".").lower() for w in node["content"].split())

    walk(json.loads(record.initial_config)["GorillaFileSystem"]["root"])
    for turn in record.ground_truth:
        for call in turn:
            for value in _kwargs(call).values():
                if isinstance(value, str) and value != "l":
                    out.update(w.strip(".").lower() for w in value.split())
    return out


@pytest.mark.parametrize("pool", ["train", "heldout"])
def test_the_ground_truth_of_every_generated_episode_passes_our_reward_and_bfcls_verdict(env, pool):
    for i in range(60):
        record = generate_episode(pool, 3, i)
        assert env_reward(env, record, expert(record)) == 1.0, record
        assert bfcl_verdict(record, expert(record)), record


def test_dropping_a_generated_call_fails_the_checker(env):
    failed = 0
    for i in range(40):
        record = generate_episode("train", 0, i)
        steps = expert(record)
        if len(steps[-1]) == 0:
            continue
        steps[-1] = steps[-1][:-1]  # the last request of the last turn is not done
        failed += env_reward(env, record, steps) == 0.0
    assert failed >= 35


def test_every_argument_value_is_in_the_users_words():
    for i in range(100):
        record = generate_episode("train", 1, i)
        for said, calls in zip(record.turns, record.ground_truth, strict=True):
            for call in calls:
                for key, value in _kwargs(call).items():
                    if key != "mode":
                        assert str(value) in said, (said, call)


def test_later_turns_act_on_what_earlier_turns_made_or_where_they_left_the_user():
    built_on = 0
    for i in range(100):
        record = generate_episode("train", 0, i)
        made: set[str] = set()
        for t, calls in enumerate(record.ground_truth):
            named = {str(v) for c in calls for v in _kwargs(c).values()}
            if t > 0 and named & made:
                built_on += 1
                break
            made |= {str(v) for c in calls if c.startswith(("mkdir", "touch", "cd")) for v in _kwargs(c).values()}
    assert built_on >= 30, built_on


def test_the_held_out_pool_shares_no_name_or_word_with_training():
    train = set().union(*(_names(generate_episode("train", 0, i)) for i in range(300)))
    heldout = set().union(*(_names(generate_episode("heldout", 0, i)) for i in range(300)))
    shared = {w for w in train & heldout if not w.startswith(".")}
    assert not shared, sorted(shared)


def test_argument_values_are_too_many_to_recall_so_the_policy_must_read_them_from_the_users_words():
    episodes_naming: dict[str, int] = {}
    for i in range(300):
        values = {
            str(v)
            for turn in generate_episode("train", 0, i).ground_truth
            for call in turn
            for k, v in _kwargs(call).items()
            if k != "mode"
        }
        for value in values:
            episodes_naming[value] = episodes_naming.get(value, 0) + 1
    assert len(episodes_naming) > 600
    assert max(episodes_naming.values()) <= 5  # no value is common enough to learn by heart


def test_episodes_are_reproducible_from_pool_seed_and_index_and_differ_across_seeds():
    assert generate_episode("train", 0, 5) == generate_episode("train", 0, 5)
    assert generate_episode("train", 0, 5) != generate_episode("train", 1, 5)
    kept = generate("train", 10, 0, lambda r: r.scenario % 2 == 0)
    assert [r.scenario for r in kept] == list(range(0, 20, 2))
    with pytest.raises(RuntimeError, match="pass the official checker"):
        generate("train", 3, 0, lambda r: False)


def _finish(env, record, steps):
    """The terminal step's (reward, details) when the policy writes `steps`."""
    from trace_core.function_calling.agreement import step_texts

    texts = step_texts(steps)
    for depth, text in enumerate(texts, 1):
        _, _, terminal, reward, details = env.respond(record, text, depth, "stop", texts[: depth - 1])
        if terminal:
            return reward, details
    raise AssertionError("the episode did not end")


def test_the_turn_pass_rate_counts_the_user_turns_passed_before_the_first_failure(env):
    from types import SimpleNamespace

    from trace_core.function_calling.env import turn_pass_rate

    record = next(r for i in range(50) if len((r := generate_episode("train", 0, i)).turns) == 3)
    full = expert(record)
    cases = {
        "all": (full, 3),
        "last turn skipped": ([*full[:2], []], 2),
        "first turn skipped": ([[], *full[1:]], 0),
    }
    for name, (steps, passed) in cases.items():
        reward, details = _finish(env, record, steps)
        assert details["turns_passed"] == passed, name
        assert reward == (1.0 if passed == 3 else 0.0), name
        leaf = SimpleNamespace(details=details, reward=reward)
        assert turn_pass_rate(leaf, record) == passed / 3, name
