"""The function-calling family's core: BFCL episodes, safe call parsing, replayed API state and the
official checker."""

from __future__ import annotations

import copy
import os

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from trace_core.function_calling import apis
from trace_core.function_calling.apis import ScenarioState, official_check, public_methods, replay
from trace_core.function_calling.calls import Call, CallError, parse_calls
from trace_core.function_calling.data import SUBSETS, bfcl_data_dir, load_subset, split_by_scenario


@pytest.fixture(scope="module")
def episodes():
    return {s: load_subset(bfcl_data_dir(), s) for s in SUBSETS}


def _sample(episodes, per_subset=6):
    return [r for s in SUBSETS for r in episodes[s][:: len(episodes[s]) // per_subset][:per_subset]]


def _truth_steps(record):
    """The ground truth as model steps: one call per step, every turn."""
    methods = public_methods(record.classes)
    return [[[call] for text in turn for call in parse_calls(text, methods)] for turn in record.ground_truth]


def test_ground_truth_replays_pass_the_official_checker_and_dropping_a_call_fails_it(episodes):
    for record in _sample(episodes):
        steps = _truth_steps(record)
        assert official_check(steps, record.ground_truth, record.entry()) == (True, "")
        last = max(t for t, turn in enumerate(steps) if turn)
        broken = copy.deepcopy(steps)
        broken[last] = broken[last][:-1]
        valid, error = official_check(broken, record.ground_truth, record.entry())
        assert not valid and error.startswith("multi_turn:"), record.id


def test_a_continuation_from_a_prefix_sees_exactly_the_state_of_a_from_scratch_replay(episodes):
    for record in _sample(episodes, per_subset=3):
        calls = [c for turn in _truth_steps(record) for step in turn for c in step]
        running = ScenarioState(record.config(), record.classes, record.long_context)
        outputs = []
        for k, call in enumerate(calls):
            outputs.append(running.execute(call))
            state, replayed = replay(record.config(), record.classes, calls[: k + 1], record.long_context)
            assert state.digest() == running.digest() and replayed == outputs, (record.id, k)
        # two branches from the same prefix do not see each other's calls
        first, _ = replay(record.config(), record.classes, calls[:1], record.long_context)
        second = copy.deepcopy(first)
        second.execute(calls[1] if len(calls) > 1 else calls[0])
        assert replay(record.config(), record.classes, calls[:1], record.long_context)[0].digest() == first.digest()


UNSAFE = [
    "open(file='pwned.txt', mode='w')",
    "__import__(name='os')",
    "importlib.import_module(name='subprocess')",
    "[cd(folder=__import__('os').getcwd())]",
    "cd(folder=open('pwned.txt', 'w'))",
    "(lambda: __import__('os').system('touch pwned.txt'))()",
    "cd(**{'folder': 'x'})",
    "cd(*['x'])",
    "cd(folder=f'{1}')",
    "cd.__globals__['os'].system('touch pwned.txt')",
    "[x for x in ().__class__.__base__.__subclasses__()]",
    "eval(\"open('pwned.txt', 'w')\")",
    "cd(folder='a', folder='b')",
]


@pytest.mark.parametrize("text", UNSAFE)
def test_every_unsafe_call_is_refused_and_nothing_is_written(text, tmp_path, monkeypatch, episodes):
    monkeypatch.chdir(tmp_path)
    record = episodes["base"][0]
    with pytest.raises(CallError):
        parse_calls(text, public_methods(record.classes))
    assert list(tmp_path.iterdir()) == []


def test_calls_parse_to_literals_and_render_back_canonically():
    calls = parse_calls(
        "[cd(folder='document'), sort('a.pdf'), ls(a=True), wc(file_name='x', mode=-1)]", {"cd", "sort", "ls", "wc"}
    )
    assert calls == [
        Call("cd", (), (("folder", "document"),)),
        Call("sort", ("a.pdf",)),
        Call("ls", (), (("a", True),)),
        Call("wc", (), (("file_name", "x"), ("mode", -1))),
    ]
    assert [c.render() for c in calls] == [
        "cd(folder='document')",
        "sort('a.pdf')",
        "ls(a=True)",
        "wc(file_name='x', mode=-1)",
    ]
    assert parse_calls("pwd()", {"pwd"}) == [Call("pwd")]
    with pytest.raises(CallError, match="unknown function 'rm'"):
        parse_calls("rm(file_name='a')", {"cd"})
    with pytest.raises(CallError):
        parse_calls("The file is moved.", {"cd"})


def test_an_api_error_is_an_observation_not_an_exception(episodes):
    record = episodes["base"][0]
    state = ScenarioState(record.config(), record.classes)
    out = state.execute(Call("cd", (), (("no_such_argument", 1),)))
    assert out.startswith(apis.ERROR_PREFIX)


def test_train_and_test_share_no_scenario_in_any_subset(episodes):
    records = [r for s in SUBSETS for r in episodes[s]]
    train, test = split_by_scenario(records, test_share=0.2, seed=0)
    assert len(test) == 160 and len(train) == 640
    assert not {r.scenario for r in train} & {r.scenario for r in test}
    assert {r.subset for r in test} == set(SUBSETS)
    assert split_by_scenario(records, 0.2, 0) == (train, test)


def test_checks_never_share_api_instances_and_leave_nothing_behind(episodes):
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    record = episodes["base"][0]
    before = set(vars(multi_turn_utils))
    steps = _truth_steps(record)
    wrong = copy.deepcopy(steps)
    wrong[0] = [[Call("mkdir", (), (("dir_name", "elsewhere"),))]] + wrong[0]
    # the wrong episode writes state under its own key: the correct ones after it still pass
    results = [official_check(s, record.ground_truth, record.entry())[0] for s in (steps, wrong, steps, steps)]
    assert results == [True, False, True, True]
    assert set(vars(multi_turn_utils)) == before


def test_bfcl_never_writes_inside_its_own_package():
    import bfcl_eval

    apis.api_class("GorillaFileSystem")
    assert os.environ.get("BFCL_PROJECT_ROOT")
    package = os.path.dirname(bfcl_eval.__file__)
    assert not {"result", "score", ".file_locks"} & set(os.listdir(package))
