"""What tests build their inputs with: rollout trees as the store keeps them (`make_tree`, `save_trees`)
and settings files for the tiny task and model (`write_settings`, `TINY`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import tomlkit

from trace_core.method.tree import RolloutNode, RolloutTree, backup
from trace_core.search_agent.data import QARecord
from trace_rl.bench.runner import tiny_sections

# the PostgreSQL server the store tests also run against (CI sets it)
PG_ENV = "TRACE_TEST_POSTGRES_URL"

# the tiny task and model (trace_rl/bench/tiny.toml, shared with `trace-rl bench --quick`) and the tests' sizes
TINY = {
    **tiny_sections(),
    "trace": {"budget": 16, "pool_size": 10, "group_size": 2},
    "train": {"iterations": 2, "eval_every": 1, "eval_questions": 4, "eval_samples": 2},
    "orchestration": {"retries": 1, "retry_delay_s": 0.01},
}


def write_settings(path: Path, workspace: Path, run_dir: Path, **sections: dict) -> Path:
    """A complete settings file (every key, as DVC needs) for the tiny setup, sharing the session's
    data and model."""
    import tomllib

    from trace_rl.config.settings import defaults_toml

    merged = tomllib.loads(defaults_toml())
    for name, values in TINY.items():
        merged[name].update(values)
    merged["task"]["data_dir"] = str(workspace / "data")
    merged["model"]["models_dir"] = str(workspace / "models")
    merged["function_calling"]["split_dir"] = str(workspace / "function_calling")
    merged["run"]["output_dir"] = str(run_dir)
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path.write_text(tomlkit.dumps(merged))
    return path


def _turn(parent, model_ids, obs, terminal=False, reward=None, action="search", origin="stage1"):
    return RolloutNode(
        node_id=-1,
        parent_id=parent,
        depth=-1,
        model_ids=tuple(model_ids),
        model_logprobs=tuple(-0.5 for _ in model_ids),
        observation_ids=tuple(obs),
        text=f"turn {model_ids}",
        observation="obs" if obs else "",
        action=action,
        argument="Varno" if terminal else "Oskar Lind",
        finish_reason="stop",
        terminal=terminal,
        reward=reward,
        origin=origin,
    )


def make_tree(question_id: str, rewards: list[float], predicted: float = 0.4) -> RolloutTree:
    """root -> first turn -> one leaf per reward; a second branch from the root fails directly.

    With rewards [1, 0]: root target (1 + 0 + 0) / 3, first turn 1/2.
    """
    record = QARecord(question_id, f"Where was {question_id} born?", ("Varno", "New Varno"), "synthetic_mhqa", 2)
    tree = RolloutTree(record, prompt_ids=(1, 2, 3), prompt_text="Question: ...")
    tree.set(replace(tree.root, predicted=predicted))
    first = tree.add(_turn(0, [10, 11, 12], [20, 21]))
    for i, r in enumerate(rewards):
        tree.add(
            _turn(
                first.node_id,
                [30 + i, 31],
                [],
                terminal=True,
                reward=r,
                action="answer",
                origin="stage2" if i else "stage1",
            )
        )
    tree.add(_turn(0, [40], [], terminal=True, reward=0.0, action="answer"))
    backup(tree)
    return tree


def save_trees(store, run_id, iteration, trees, allocator="trace", stage=None):
    """Write trees as one stage (the way the training flow does)."""
    with store.stage(run_id, iteration, stage) as w:
        w.trees(trees, allocator)
