"""The function-calling family's core: BFCL episodes, safe call parsing, replayed API state and the
official checker."""

from __future__ import annotations

import copy
import json
import os

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from tests.fc_fakes import ExpertBackend
from trace_core.function_calling import apis
from trace_core.function_calling.apis import ScenarioState, official_check, public_methods, replay
from trace_core.function_calling.calls import Call, CallError, parse_calls
from trace_core.function_calling.data import (
    SUBSETS,
    FCRecord,
    bfcl_data_dir,
    load_subset,
    read_split,
    split_by_scenario,
    write_split,
)


@pytest.fixture(scope="module")
def episodes():
    return {s: load_subset(bfcl_data_dir(), s) for s in SUBSETS}


def _sample(episodes, per_subset=6):
    return [r for s in SUBSETS for r in episodes[s][:: len(episodes[s]) // per_subset][:per_subset]]


def _truth_steps(record):
    """The ground truth as model steps: one call per step (arguments by keyword), every turn."""
    from trace_core.function_calling.env import keyword_call

    methods = public_methods(record.classes)
    return [
        [[call] for text in turn for call in parse_calls(keyword_call(text, record.classes), methods)]
        for turn in record.ground_truth
    ]


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
        assert ScenarioState(record.config(), record.classes, record.long_context).digest() != running.digest()
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
    "echo(content=open(file='pwned.txt', mode='w'), file_name='x')",
    "cd(folder=__import__('os').system('touch pwned.txt') + 1)",
    "json.dumps(obj=1)",
]


@pytest.mark.parametrize("text", UNSAFE)
def test_every_unsafe_call_is_refused_or_harmless_and_nothing_is_written(text, tmp_path, monkeypatch, episodes):
    monkeypatch.chdir(tmp_path)
    record = episodes["base"][0]
    methods = public_methods(record.classes)
    try:
        calls = parse_calls(text, methods)
    except CallError:
        calls = []
    # what may run is a method of the episode's APIs with literal arguments (a string, at worst)
    assert all(c.error is not None or (c.name in methods and c.text == c.render()) for c in calls)
    state = ScenarioState(record.config(), record.classes)
    assert all(isinstance(state.execute(c), str) for c in calls)
    # and BFCL's checker, which executes what it is given, gets nothing that could write either
    steps = [[calls] if calls else []] + [[] for _ in record.ground_truth[1:]]
    assert official_check(steps, record.ground_truth, record.entry())[0] is False
    assert list(tmp_path.iterdir()) == []


def test_calls_decode_as_bfcls_decoder_decodes_them():
    allowed = {"cd", "sort", "ls", "wc", "mkdir"}
    calls = parse_calls(
        "[cd(folder='document'), sort('a.pdf'), ls(a=1+1), wc(file_name=x, mode=-1), rm(file_name='a')]", allowed
    )
    assert calls == [
        Call("cd", (("folder", "document"),)),
        Call("sort", (), "sort()"),  # positional arguments are dropped, as BFCL's decoder drops them
        Call("ls", (("a", 2),)),  # arithmetic computed
        Call("wc", (("file_name", "x"), ("mode", -1))),  # a bare name is its text
        Call("rm", (), "rm(file_name='a')", "name 'rm' is not defined"),  # fails alone; the others run
    ]
    assert [c.text for c in calls] == [
        "cd(folder='document')",
        "sort()",
        "ls(a=2)",
        "wc(file_name='x', mode=-1)",
        "rm(file_name='a')",
    ]
    assert parse_calls("pwd()", {"pwd"}) == [Call("pwd")]
    assert parse_calls("cd(folder='a'), ls()", allowed) == [Call("cd", (("folder", "a"),)), Call("ls")]
    for text in (
        "The file is moved.",
        "[]",
        "cd(folder=f'{1}')",
        "cd(folder={})",
        "[cd(folder='a'), 'x']",
        "cd(x=2**10**9)",
    ):
        with pytest.raises(CallError):
            parse_calls(text, allowed)


def test_an_api_error_is_an_observation_not_an_exception(episodes):
    record = episodes["base"][0]
    state = ScenarioState(record.config(), record.classes)
    out = state.execute(Call("cd", (("no_such_argument", 1),)))
    assert out.startswith(apis.ERROR_PREFIX)


def test_every_episode_survives_the_split_files_round_trip(episodes, tmp_path):
    records = [r for s in SUBSETS for r in episodes[s]]
    assert all(FCRecord.from_json(json.loads(json.dumps(r.to_json()))) == r for r in records)
    write_split(tmp_path, {"train": records[:5], "dev": records[5:7], "test": records[7:8]})
    assert read_split(tmp_path) == {"train": records[:5], "dev": records[5:7], "test": records[7:8]}


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
    wrong[0] = [[Call("mkdir", (("dir_name", "elsewhere"),))]] + wrong[0]
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


@pytest.fixture(scope="module")
def fc_env(episodes):
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv
    from trace_core.models.default_model import train_tokenizer

    texts = [t for r in episodes["base"][:20] for t in r.turns] + [
        c for r in episodes["base"][:20] for t in r.ground_truth for c in t
    ]
    return FunctionCallingEnv(train_tokenizer(texts, 400), bfcl_data_dir(), FCConfig(max_turns=40))


def _expert_texts(record):
    from trace_core.function_calling.env import expert_steps

    return expert_steps(record)


def _run(env, record, texts):
    """Feed the steps one at a time, each with the earlier ones as its history."""
    results = []
    for depth, text in enumerate(texts, 1):
        results.append(env.step([record], [text], [depth], ["stop"], [texts[: depth - 1]])[0])
        if results[-1].terminal:
            break
    return results


def test_every_ground_truth_call_is_allowed_and_all_but_one_are_documented_at_their_turn(episodes):
    from trace_core.function_calling.env import allowed_functions, documented_functions

    early = []
    for record in (r for s in SUBSETS for r in episodes[s]):
        for turn, calls in enumerate(record.ground_truth):
            for text in calls:
                (call,) = parse_calls(text, allowed_functions(record))  # raises if a call is not allowed
                if call.name not in documented_functions(record, turn):
                    early.append((record.id, call.name))
    assert early == [("multi_turn_miss_func_49", "tail")]  # BFCL's own ground truth calls it before it is offered


def test_the_expert_episode_earns_reward_1_and_a_wrong_call_reward_0(fc_env, episodes):
    for record in _sample(episodes, per_subset=2):
        texts = _expert_texts(record)
        results = _run(fc_env, record, texts)
        assert len(results) == len(texts) and results[-1].terminal and results[-1].reward == 1.0, record.id
        assert all(not r.terminal for r in results[:-1])
        first_call = next(i for i, t in enumerate(texts) if t.startswith("<call>"))
        wrong = [
            *texts[:first_call],
            "<call>[mkdir(dir_name='zzz')]</call>" if "GorillaFileSystem" in record.classes else texts[first_call],
            *texts[first_call + 1 :],
        ]
        if wrong != texts:
            assert _run(fc_env, record, wrong)[-1].reward == 0.0, record.id


def test_a_step_from_a_stored_prefix_gets_the_observation_of_the_sequential_episode(fc_env, episodes):
    record = episodes["base"][0]
    texts = _expert_texts(record)
    sequential = _run(fc_env, record, texts)
    for depth in (2, 4, len(texts) - 1):
        again = fc_env.step([record], [texts[depth - 1]], [depth], ["stop"], [texts[: depth - 1]])[0]
        assert again.observation == sequential[depth - 1].observation
    # a branch (a different step after the same prefix) sees the prefix's state, not the other branch's
    branch = fc_env.step([record], ["<call>[pwd()]</call>"], [2], ["stop"], [texts[:1]])[0]
    assert "document" in branch.observation  # the first ground-truth call was cd(folder='document')


@pytest.mark.parametrize("text", UNSAFE)
def test_an_unsafe_step_gets_an_error_observation_and_runs_nothing(fc_env, episodes, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fc_env.step([episodes["base"][0]], [f"<call>{text}</call>"], [1], ["stop"])[0]
    assert not result.terminal
    if result.parsed.action == "invalid":
        assert "Invalid step" in result.observation
    else:  # decoded as BFCL decodes it: each call an error, or a method given a string
        assert all(c.error is not None or c.name == "cd" for c in result.parsed.calls)
        assert "Error during execution" in result.observation or "No such file or directory" in result.observation
    assert list(tmp_path.iterdir()) == []


def test_held_back_functions_are_left_out_of_the_prompt_until_their_turn_and_then_announced(fc_env, episodes):
    record = next(r for r in episodes["miss_func"] if r.held_back)
    (turn, names), *_ = record.held_back
    assert f"\n{names[0]}(" not in fc_env.prompt_text(record)
    texts = _expert_texts(record)
    replies = [i for i, t in enumerate(texts) if t.startswith("<reply>")]
    announce = _run(fc_env, record, texts)[replies[turn - 1]]
    assert "New functions:" in announce.observation and names[0] in announce.observation


def test_names_only_docs_list_every_offered_function_on_one_line_and_hold_back_the_rest(episodes):
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv, documented_functions

    record = next(r for r in episodes["miss_func"] if r.held_back)
    compact = FunctionCallingEnv(None, bfcl_data_dir(), FCConfig())
    names = FunctionCallingEnv(None, bfcl_data_dir(), FCConfig(docs="names"))
    prompt = names.prompt_text(record)
    listed = prompt.split("Functions:\n", 1)[1].split("\n", 1)[0].split(", ")
    assert set(listed) == set(documented_functions(record, 0))
    assert not {n for _, held in record.held_back for n in held} & set(listed)
    assert "(" not in ", ".join(listed) and len(prompt) < len(compact.prompt_text(record)) / 3


def test_an_episode_that_runs_out_of_steps_ends_and_is_checked(episodes):
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv
    from trace_core.models.default_model import train_tokenizer

    env = FunctionCallingEnv(train_tokenizer(["<call>ls()</call>"], 300), bfcl_data_dir(), FCConfig(max_turns=2))
    record = episodes["base"][0]
    results = _run(env, record, ["<call>[pwd()]</call>", "<call>[pwd()]</call>", "<reply>x</reply>"])
    assert len(results) == 2 and results[-1].terminal and results[-1].reward == 0.0


def test_trees_grown_by_the_method_branch_the_episode_exactly(fc_env, episodes):
    from trace_core.method.rollout import Expansion, grow, new_trees

    record = episodes["base"][0]
    texts = _expert_texts(record)
    backend = ExpertBackend(fc_env, texts)
    trees = new_trees([record], fc_env)
    grow(trees, [Expansion(0, 0, 2)], backend, fc_env, fc_env.config.sampling(), "stage1")
    tree = trees[0]
    assert [leaf.reward for leaf in tree.leaves()] == [1.0, 1.0]
    assert [n.text for n in tree.path(tree.leaves()[0].node_id)[1:]] == texts
    # a continuation from a mid-episode turn (Stage 2) rebuilds its state from the path and succeeds too
    anchor = tree.path(tree.leaves()[0].node_id)[3]
    grow(trees, [Expansion(0, anchor.node_id, 1)], backend, fc_env, fc_env.config.sampling(), "stage2")
    assert [leaf.reward for leaf in tree.leaves()] == [1.0, 1.0, 1.0]


def test_a_step_that_does_not_decode_ends_the_user_turn_as_in_bfcl(fc_env, episodes):
    """BFCL's runner takes a response it cannot decode (or one that decodes to no call) as the model's
    answer and moves to the next user turn; so does the environment, telling the policy why."""
    record = next(r for r in episodes["base"] if len(r.turns) >= 2)
    for malformed in ("I would list the files.", "<call>[ls(</call>", "<call>[]</call>"):
        result = fc_env.step([record], [malformed], [1], ["stop"])[0]
        assert not result.terminal and "The turn ends." in result.observation
        assert result.observation.endswith(fc_env.step([record], ["<reply>ok</reply>"], [1], ["stop"])[0].observation)
    # the steps after it belong to the second turn: the first turn's ground truth is never made up
    texts = _expert_texts(record)
    first_reply = next(i for i, t in enumerate(texts) if t.startswith("<reply>"))
    skipped = ["<call>[ls(</call>", *texts[first_reply + 1 :]]
    assert _run(fc_env, record, skipped)[-1].reward == 0.0


def test_a_turns_21st_call_step_ends_the_episode_as_bfcls_step_limit_does(episodes):
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv
    from trace_core.models.default_model import train_tokenizer

    env = FunctionCallingEnv(train_tokenizer(["<call>ls()</call>"], 300), bfcl_data_dir(), FCConfig(max_turns=64))
    record = next(r for r in episodes["base"] if len(r.turns) >= 2)
    results = _run(env, record, ["<call>[pwd()]</call>"] * 30)
    assert len(results) == 21 and results[-1].terminal and results[-1].reward == 0.0
    assert not any(r.terminal for r in results[:20])


def test_the_expert_packs_a_turn_of_more_than_20_calls_into_20_steps_and_still_passes(episodes):
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv

    long_turns = [r for subset in episodes.values() for r in subset if max(map(len, r.ground_truth)) > 20]
    assert long_turns  # BFCL's long_context subset has such turns
    env = FunctionCallingEnv(None, bfcl_data_dir(), FCConfig(max_turns=10_000))
    for record in long_turns:
        texts = _expert_texts(record)
        assert sum(t.startswith("<call>") for t in texts) <= 20 * len(record.turns)
        for depth, text in enumerate(texts, 1):
            _, _, terminal, reward, _ = env.respond(record, text, depth, "stop", texts[: depth - 1])
            if terminal:
                break
        assert (depth, reward) == (len(texts), 1.0), record.id


CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_with_a_chat_template_each_tool_result_and_user_turn_is_its_own_chat_message(episodes):
    """An instruct model sees the episode as the chat it was tuned on: the policy's steps as assistant
    messages, each call's results as a tool message, each later user turn as a user message, exactly
    as the tokenizer's template renders that conversation."""
    from trace_core.function_calling.env import FCConfig, FunctionCallingEnv
    from trace_core.models.default_model import train_tokenizer

    tokenizer = train_tokenizer(["<call>ls()</call> <|user|> <|tool|> <|assistant|> <|end|>"], 300)
    tokenizer.chat_template = CHATML
    env = FunctionCallingEnv(tokenizer, bfcl_data_dir(), FCConfig(max_turns=64))
    record = next(r for r in episodes["base"] if len(r.turns) >= 2)
    texts = _expert_texts(record)
    end = next(i for i, t in enumerate(texts) if t.startswith("<reply>")) + 1  # the first user turn and its reply
    results = _run(env, record, texts[:end])
    rendered = env.prompt_text(record) + "".join(t + r.observation for t, r in zip(texts[:end], results, strict=True))
    messages = [{"role": "user", "content": rendered.split("<|user|>", 1)[1].split("<|end|>", 1)[0]}]
    for text, result in zip(texts[:end], results, strict=True):
        role = "tool" if text.startswith("<call>") else "user"
        content = result.observation.split(f"<|{role}|>", 1)[1].split("<|end|>", 1)[0]
        messages += [{"role": "assistant", "content": text}, {"role": role, "content": content}]
    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<result>" in messages[2]["content"] and "<user>" in messages[-1]["content"]
