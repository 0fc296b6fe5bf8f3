"""The function-calling reward is BFCL's verdict: calls decoded as BFCL's decoder decodes them,
each call of a step on its own, no state shared between calls or episodes, no call that hangs, and
agreement with BFCL's own runner code on perturbed ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from trace_core.function_calling import apis
from trace_core.function_calling.agreement import (
    PERTURBATIONS,
    bfcl_decoder,
    bfcl_verdict,
    env_reward,
    expert,
    perturbations,
    score,
    text_env,
)
from trace_core.function_calling.apis import ScenarioState, official_check, public_methods
from trace_core.function_calling.calls import Call, CallError, decode_step, parse_calls
from trace_core.function_calling.data import SUBSETS, bfcl_data_dir, load_subset
from trace_core.function_calling.env import expert_steps, follow


@pytest.fixture(scope="module")
def episodes():
    return {s: load_subset(bfcl_data_dir(), s) for s in SUBSETS}


@pytest.fixture(scope="module")
def env():
    return text_env(bfcl_data_dir())


def test_a_call_keeps_what_the_policy_wrote_after_the_api_changes_what_it_was_given(episodes, env):
    record = episodes["base"][90]
    state = ScenarioState(record.config(), record.classes)
    methods = public_methods(record.classes)
    [post] = parse_calls("post_tweet(content='x', mentions=['@a'])", methods)
    tweet = json.loads(state.execute(post))
    state.execute(parse_calls(f"mention(tweet_id={tweet['id']}, mentioned_usernames=['@b'])", methods)[0])
    assert post.kwargs == (("content", "x"), ("mentions", ["@a"])) and post.text == post.render()
    assert state.instances["TwitterAPI"].tweets[tweet["id"]]["mentions"] == ["@a", "@b"]
    # the scenarios whose ground truth posts a tweet and then mentions users in it pass, in every subset
    for subset in SUBSETS:
        for index in (90, 147):
            record = episodes[subset][index]
            assert env_reward(env, record, expert(record)) == 1.0, record.id


FRESH_STATE = """
import json, sys
from trace_core.function_calling.apis import ScenarioState, public_methods
from trace_core.function_calling.calls import parse_calls
from trace_core.function_calling.data import FCRecord
record = FCRecord.from_json(json.loads(sys.argv[1]))
state = ScenarioState(record.config(), record.classes, record.long_context)
outputs = [state.execute(c) for c in parse_calls(sys.argv[2], public_methods(record.classes))] if sys.argv[2] else []
print(json.dumps([state.digest(), outputs]))
"""


def _fresh(record, calls=""):
    """The state's digest (and the outputs of `calls`) in a process that ran nothing before."""
    out = subprocess.run(
        [sys.executable, "-c", FRESH_STATE, json.dumps(record.to_json()), calls],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def _here(record, calls=""):
    state = ScenarioState(record.config(), record.classes, record.long_context)
    outputs = [state.execute(c) for c in parse_calls(calls, public_methods(record.classes))] if calls else []
    return [state.digest(), outputs]


def test_no_episode_leaks_state_into_later_ones(episodes):
    # a refund in a long-context travel episode, by the environment and by BFCL's checker
    first, later = [r for r in episodes["long_context"] if "TravelAPI" in r.classes][:2]
    token = first.config()["TravelAPI"]["access_token"]
    cancel = f"cancel_booking(access_token={token!r}, booking_id='booking_901')"
    assert json.loads(_here(first, cancel)[1][0]) == {"cancel_status": True}
    calls = parse_calls(cancel, public_methods(first.classes))
    official_check([[calls]] + [[] for _ in first.turns[1:]], first.ground_truth, first.entry())
    card = "1234567812345678"
    assert (
        ScenarioState(later.config(), later.classes, True).instances["TravelAPI"].credit_card_list[card]["balance"]
        == ScenarioState(first.config(), first.classes, True).instances["TravelAPI"].credit_card_list[card]["balance"]
    )
    assert _here(later) == _fresh(later)
    # a mention of a tweet posted with the default (shared) mentions list
    record = next(r for r in episodes["base"] if r.config().get("TwitterAPI", {}).get("authenticated"))
    counter = record.config()["TwitterAPI"]["tweet_counter"]
    leak = f"[post_tweet(content='a'), mention(tweet_id={counter}, mentioned_usernames=['@leak'])]"
    _here(record, leak)
    official_check(
        [[parse_calls(leak, public_methods(record.classes))]] + [[] for _ in record.turns[1:]],
        record.ground_truth,
        record.entry(),
    )
    digest, [tweet] = _here(record, "post_tweet(content='b')")
    assert json.loads(tweet)["mentions"] == []
    assert [digest, [tweet]] == _fresh(record, "post_tweet(content='b')")


def test_positional_arguments_are_dropped_as_bfcl_drops_them_and_the_expert_writes_keywords(episodes, env):
    assert decode_step("sort('final_report.pdf')") == bfcl_decoder()("sort('final_report.pdf')") == ["sort()"]
    record = next(r for r in episodes["base"] if "sort('final_report.pdf')" in str(r.ground_truth))
    raw = [[f"[{c}]" for c in turn] for turn in record.ground_truth]
    assert env_reward(env, record, raw) == 0.0 and not bfcl_verdict(record, raw)
    assert env_reward(env, record, expert(record)) == 1.0 and bfcl_verdict(record, expert(record))
    assert "sort(file_name='final_report.pdf')" in " ".join(expert_steps(record))
    # no expert step anywhere passes an argument positionally
    for r in (r for s in SUBSETS for r in episodes[s]):
        for text in expert_steps(r):
            if text.startswith("<call>"):
                body = text.removeprefix("<call>[").removesuffix("]</call>")
                calls = parse_calls(body, public_methods(r.classes))  # one call, or a long turn's packed calls
                assert all(c.error is None for c in calls)
                assert decode_step(body) == [c.text for c in calls]


def test_one_bad_call_fails_alone_and_the_step_s_other_calls_run(episodes, env):
    record = episodes["base"][0]
    steps = expert(record)
    first = next(t for t, turn in enumerate(steps) if turn)
    steps[first][0] = steps[first][0][:-1] + ", no_such_function(x=1)]"
    assert env_reward(env, record, steps) == 1.0 and bfcl_verdict(record, steps)
    calls = follow(record, [f"<call>{steps[first][0]}</call>"]).calls()
    assert [c.error for c in calls] == [None, "name 'no_such_function' is not defined"]
    state = ScenarioState(record.config(), record.classes)
    assert [state.execute(c).startswith(apis.ERROR_PREFIX) for c in calls] == [False, True]
    [call] = parse_calls("ls(a=1+1)", public_methods(record.classes))
    assert call == Call("ls", (("a", 2),)) and bfcl_decoder()("ls(a=1+1)") == ["ls(a=2)"]


UNBOUNDED = [
    "power(base=10, exponent=10000000000)",
    "power(base=-3, exponent=10**400)",
    "logarithm(value=10, base=2, precision=1000000)",
    "logarithm(value=10, base=2, precision='1000000')",
    "square_root(number=2, precision=3000000)",
    "round_number(number=5, decimal_places=-10000000000)",
]


@pytest.mark.parametrize("text", UNBOUNDED)
def test_a_call_with_unbounded_work_returns_within_a_second(text, episodes):
    record = next(r for r in episodes["base"] if "MathAPI" in r.classes)
    [call] = parse_calls(text.replace("10**400", "1" + "0" * 400), public_methods(record.classes))
    state = ScenarioState(record.config(), record.classes)
    start = time.perf_counter()
    output = state.execute(call)
    steps = [[[call]]] + [[] for _ in record.turns[1:]]
    assert official_check(steps, record.ground_truth, record.entry())[0] is False
    assert time.perf_counter() - start < 1.0
    if call.name == "round_number":
        assert output == '{"result": 0}'  # what Python computes, at length
    else:
        assert output.startswith(apis.ERROR_PREFIX) and ("limit" in output or "precision" in output)
    # bounded calls still run as BFCL runs them
    assert state.execute(parse_calls("power(base=2, exponent=10)", {"power"})[0]) == '{"result": 1024}'


DECODER_CASES = [
    "cd(folder='a')",
    "[cd(folder='a'), ls(a=True)]",
    "cd(folder='a'), ls()",
    "`[cd(folder='a')]`",
    "sort('a.pdf')",
    "ls(a=1+1)",
    "cd(folder=document)",
    "f(x=-5)",
    "f(x=not True)",
    "f(x=+3)",
    "f(x=-'a')",
    "f(x={'a': 1, 'b': [1, 2]})",
    "f(x={})",
    "f(x={'a': {'b': 1}})",
    "f(x=(1, 2))",
    "f(x=g(1, 2))",
    "f(x=g(y=1))",
    "f(x=a[0])",
    "f(x=a.b)",
    "f(x=lambda: 1)",
    "f(x=f'{1}')",
    "f(x={1, 2})",
    "[cd(folder='a')",
    "[]",
    "[1]",
    "cd(**{'a': 1})",
    "cd(*['x'])",
    "os.system(c='x')",
    "f(x=2**10)",
    "f(x='a'*3)",
    "f(x=[1]+[2])",
    "f(x=1/0)",
    "f(x=...)",
    "f(x=1e999)",
    "f(x=-1j)",
    "f(x=None)",
    "f(x=10**-3)",
    "(lambda: 1)()",
    "[x for x in y]",
    "f(x=(1+2)*3)",
    "f(x=-(1))",
    "f(x={1: 'a'})",
    "f(x=True+1)",
    "f(x=-2**2)",
    "f(x=7//2)",
    "The file is moved.",
]


def test_the_decoder_decodes_as_bfcls_own(episodes):
    decode = bfcl_decoder()
    for text in DECODER_CASES:
        try:
            expected = decode(text)
        except Exception:
            expected = None
        try:
            ours = decode_step(text)
        except CallError:
            ours = None
        assert ours == expected, text


def _sample(episodes, per_subset=10):
    return [r for s in SUBSETS for r in episodes[s][:: len(episodes[s]) // per_subset][:per_subset]]


def test_the_reward_is_bfcls_verdict_on_perturbed_ground_truth(episodes, env):
    """A sample of the sweep in bench/fc_reward_agreement.py: 40 episodes, every perturbation."""
    seen = dict.fromkeys(PERTURBATIONS, 0)
    passed = dict.fromkeys(PERTURBATIONS, 0)
    for record in _sample(episodes):
        for name, (ours, theirs) in score(env, record).items():
            assert ours == theirs, (record.id, name, perturbations(record)[name])
            seen[name] += 1
            passed[name] += ours
    assert passed["ground_truth"] == seen["ground_truth"] == 40
    assert all(seen[name] >= 20 for name in PERTURBATIONS), seen
    assert passed["drop_call"] == 0 and passed["unknown_function"] == 40
