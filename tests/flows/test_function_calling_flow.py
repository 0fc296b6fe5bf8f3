"""`task.family = "function_calling"`: the same flow, store and stages run BFCL v4 multi-turn
episodes end to end (a tiny model, one iteration)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")

from tests.helpers import write_settings
from trace_core.function_calling.data import FCRecord
from trace_rl.config.settings import SETTINGS_FILE_ENV, SettingsError, load_settings
from trace_rl.store.store import RolloutStore

FC = {
    "task": {"family": "function_calling"},
    "function_calling": {
        "subsets": ["base", "miss_func"],
        "max_steps": 3,
        "max_tokens_per_step": 16,
        "max_output_chars": 80,
    },
    "warmstart": {"max_steps": 4, "eval_every": 4, "eval_questions": 8, "eval_samples": 1, "batch_size": 4},
    "trace": {"budget": 8, "pool_size": 4, "group_size": 2},
    "train": {"iterations": 1, "eval_every": 1, "eval_questions": 2, "eval_samples": 2},
}


def test_the_split_keeps_every_scenario_on_one_side_and_test_is_the_80_20_splits(tmp_path):
    from trace_core.function_calling.data import bfcl_data_dir, load_subset, split_by_scenario
    from trace_rl.tasks.family import family

    s = load_settings(["task.family=function_calling", f"function_calling.split_dir={tmp_path}"])
    data = family(s).prepare(s, lambda _: None)
    sides = [{r.scenario for r in split} for split in (data.train, data.dev, data.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert [len(side) for side in sides] == [140, 20, 40]
    everything = [r for subset in s.function_calling.subsets for r in load_subset(bfcl_data_dir(), subset)]
    assert {r.id for r in data.test} == {r.id for r in split_by_scenario(everything, 0.2, 0)[1]}
    # the first dev records hold each subset's entry of the same scenario
    assert len({r.scenario for r in data.dev[:4]}) == 1 and len({r.data_source for r in data.dev[:4]}) == 4


def test_by_default_every_ground_truth_step_fits_the_step_limit_and_no_output_is_cut(tmp_path):
    """The default limits hold every required call (the longest long_context step copies a whole
    file into a call), whatever the tokenizer; an explicit limit is kept as set."""
    from trace_core.function_calling.env import expert_steps
    from trace_core.models.default_model import train_tokenizer
    from trace_rl.tasks.family import family

    s = load_settings(["task.family=function_calling", f"function_calling.split_dir={tmp_path}"])
    task = family(s)
    data = task.prepare(s, lambda _: None)
    records = data.train + data.dev + data.test
    tokenizer = train_tokenizer([t for r in records[:40] for t in expert_steps(r)], 512)
    env = task.environment(s, data.directory, tokenizer)
    need = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for r in records for t in expert_steps(r)]
    assert env.config.max_tokens_per_turn == max(need) > 1000  # a small vocabulary: long steps are many tokens
    assert env.config.max_output_chars == 0 and env.config.max_turns >= max(len(expert_steps(r)) for r in records)
    long_context = [r for r in records if r.long_context][:6]
    observed = [o for r in long_context for o in env.transcript(r, expert_steps(r))[2::2]]
    assert max(len(o) for o in observed) > 2000  # long_context's long listings reach the policy whole
    explicit = load_settings(
        [
            "task.family=function_calling",
            f"function_calling.split_dir={tmp_path}",
            "function_calling.max_tokens_per_step=96",
        ]
    )
    assert task.environment(explicit, data.directory, tokenizer).config.max_tokens_per_turn == 96


def test_generated_episodes_train_and_dev_while_test_stays_bfcls_official_episodes(tmp_path):
    from trace_rl.tasks.family import family

    base = ["task.family=function_calling", f"function_calling.split_dir={tmp_path}"]
    s = load_settings([*base, "function_calling.source=generated", "function_calling.generated_train=30",
                       "function_calling.generated_dev=10"])  # fmt: skip
    data = family(s).prepare(s, lambda _: None)
    assert [len(data.train), len(data.dev)] == [30, 10]
    assert {r.data_source for r in data.train + data.dev} == {"generated_file_system"}
    assert all("_train_" in r.id for r in data.train) and all("_heldout_" in r.id for r in data.dev)
    bfcl = family(load_settings(base)).prepare(load_settings(base), lambda _: None)
    assert data.test == bfcl.test == family(s).prepare(s, lambda _: None).test  # switching back and forth
    assert bfcl.train[0].data_source.startswith("bfcl_v4_")
    with pytest.raises(Exception, match="source"):
        load_settings([*base, "function_calling.source=made_up"])


def test_the_split_is_written_whole_then_read_back_and_a_bad_line_is_named(tmp_path):
    from trace_core.function_calling.data import BFCLDataError
    from trace_rl.tasks.family import family

    s = load_settings(["task.family=function_calling", f"function_calling.split_dir={tmp_path}"])
    first = family(s).prepare(s, lambda _: None)
    assert [len(list(open(tmp_path / f"{side}.jsonl"))) for side in ("train", "dev", "test")] == [560, 80, 160]
    said: list[str] = []
    again = family(s).prepare(s, said.append)
    assert not said and (again.train, again.dev, again.test) == (first.train, first.dev, first.test)

    other = load_settings(
        ["task.family=function_calling", f"function_calling.split_dir={tmp_path}", "function_calling.split_seed=1"]
    )
    assert family(other).prepare(other, said.append).test != first.test and said  # a split setting re-splits

    lines = (tmp_path / "dev.jsonl").read_text().splitlines()
    (tmp_path / "dev.jsonl").write_text("\n".join([lines[0], '{"id": "x"}', *lines[2:]]) + "\n")
    with pytest.raises(BFCLDataError, match=r"dev\.jsonl:2: not an episode"):
        family(other).prepare(other, said.append)


def test_an_unknown_task_family_names_the_valid_ones():
    with pytest.raises(SettingsError, match="function_calling.*search_qa"):
        load_settings(["task.family=chess"])


def test_a_function_calling_run_stores_episodes_calls_and_state_and_scores_each_subset(
    prefect_api, workspace, tmp_path, monkeypatch
):
    from trace_rl.flows.training import trace_training

    settings = write_settings(tmp_path / "s.toml", workspace, tmp_path / "runs", run={"name": "fc"}, **FC)
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    history = trace_training([])
    assert [h["iteration"] for h in history] == [-1, 0]
    assert {"eval/em_bfcl_v4_base", "eval/em_bfcl_v4_miss_func"} <= set(history[-1])
    store = RolloutStore(f"sqlite:///{tmp_path / 'runs/rollouts.db'}")
    trees = store.load_trees(store.run_id("fc"), 0)
    assert sum(len(t.leaves()) for t in trees) == 8
    assert all(isinstance(t.record, FCRecord) for t in trees)
    turns = [n for t in trees for n in t.nodes[1:]]
    assert turns and all({"calls", "outputs", "state"} <= set(n.details) for n in turns)
    assert all(n.reward in (0.0, 1.0) for t in trees for n in t.leaves())
    store.close()
    assert (workspace / "models" / "tiny-function-calling" / "config.json").exists()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_any_local_causal_lm_runs_the_family_with_its_chat_template_around_the_prompt(
    prefect_api, workspace, tmp_path, monkeypatch
):
    from trace_rl.flows.pipeline import build_tiny_model, make_tools, prepare_task
    from trace_rl.flows.training import trace_training

    # a local Hugging Face model folder of our own making (no hub here), given a chat template
    built = write_settings(tmp_path / "b.toml", workspace, tmp_path / "runs", **FC)
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(built))
    s = load_settings()
    data = prepare_task(s, lambda _: None)
    local = tmp_path / "local-lm"
    shutil.copytree(build_tiny_model(s, data, make_tools(s, data), lambda _: None), local)
    config = json.loads((local / "tokenizer_config.json").read_text())
    (local / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))

    path = {"preset": "path", "path": str(local)}
    settings = write_settings(
        tmp_path / "p.toml", workspace, tmp_path / "runs", run={"name": "fc-path"}, **FC, model=path
    )
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    assert [h["iteration"] for h in trace_training([])] == [-1, 0]
    store = RolloutStore(f"sqlite:///{tmp_path / 'runs/rollouts.db'}")
    trees = store.load_trees(store.run_id("fc-path"), 0)
    assert trees and all(t.root.observation.startswith("<|im_start|>user\n") for t in trees)
    assert sum(len(t.leaves()) for t in trees) == 8
    store.close()
