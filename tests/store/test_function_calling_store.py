"""Function-calling trees in the rollout database: the episode, each node's calls, outputs and state
digest, and a continuation from a stored prefix that sees the state a from-scratch replay gives."""

from __future__ import annotations

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from sqlalchemy import select

from tests.fc_fakes import ExpertBackend
from tests.helpers import save_trees
from trace_core.function_calling.apis import ScenarioState
from trace_core.function_calling.data import bfcl_data_dir, load_subset
from trace_core.function_calling.env import FCConfig, FunctionCallingEnv, expert_steps, follow
from trace_core.method.rollout import Expansion, grow, new_trees
from trace_core.method.tree import backup
from trace_core.models.default_model import train_tokenizer
from trace_rl.store.models import Node, Prompt


@pytest.fixture(scope="module")
def grown():
    record = load_subset(bfcl_data_dir(), "base")[3]
    texts = expert_steps(record)
    tokenizer = train_tokenizer([*record.turns, *texts], 400)
    env = FunctionCallingEnv(tokenizer, bfcl_data_dir(), FCConfig(max_turns=40))
    trees = new_trees([record], env)
    grow(trees, [Expansion(0, 0, 2)], ExpertBackend(env, texts), env, env.config.sampling(), "stage1")
    backup(trees[0])
    return env, record, trees


def test_an_episode_and_its_nodes_calls_outputs_and_state_round_trip(store, grown):
    _, record, trees = grown
    run = store.open_run("fc", {"a": 1}, "h1", "test")
    save_trees(store, run, 0, trees, "uniform", stage="roll_out_roots")
    [loaded] = store.load_trees(run, 0)
    assert loaded.record == record
    assert [n.details for n in loaded.nodes] == [n.details for n in trees[0].nodes]
    first_call = trees[0].nodes[1]
    assert first_call.details["calls"] and first_call.details["outputs"]
    with store.engine.connect() as conn:
        payload = conn.execute(select(Prompt.payload).where(Prompt.dataset_id == record.id)).scalar_one()
        digests = conn.execute(select(Node.details).where(Node.depth == 1)).scalars().all()
    assert payload["family"] == "function_calling" and payload["record"]["ground_truth"]
    assert {d["state"] for d in digests} == {first_call.details["state"]}


def test_a_step_from_a_stored_prefix_sees_the_state_of_a_from_scratch_replay(store, grown):
    env, record, trees = grown
    run = store.open_run("fc2", {"a": 1}, "h1", "test")
    save_trees(store, run, 0, trees, "uniform", stage="roll_out_roots")
    [loaded] = store.load_trees(run, 0)
    leaf = loaded.leaves()[0]
    path = loaded.path(leaf.node_id)[1:]
    for cut in range(1, len(path)):
        history = [n.text for n in path[:cut]]
        # the digest the stored node holds is the state replayed from scratch after its steps
        state = ScenarioState(record.config(), record.classes)
        for call in follow(record, history).calls():
            state.execute(call)
        assert path[cut - 1].details["state"] == state.digest()
        # and the next step taken from the stored prefix gets the observation it got in the episode
        [step] = env.step([loaded.record], [path[cut].text], [cut + 1], ["stop"], [history])
        assert step.observation == path[cut].observation
