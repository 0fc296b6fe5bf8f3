"""The training loop: each iteration's stages, in order, each one call into trace_core.

    sample pool -> allocate roots -> roll out bare -> allocate prefixes -> roll out continuations
    -> back up targets -> refit predictor -> update policy -> (evaluate)

`TrainState` holds what lives across iterations: the policy (with its optimizer), the predictor,
the backend, the random generator. Each stage function takes the state and the iteration's
`IterationData` and returns its output; `train` only sequences them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from flows.pipeline import Log, Runtime, code_version, load_runtime, settings_hash
from flows.settings import Settings
from store.db import render_url
from store.store import RolloutStore
from trace_core.advantages import ADVANTAGES, nonzero_share
from trace_core.allocators import Allocator, AllocatorConfig, PrefixPlan, RootPlan, make_allocator
from trace_core.evaluation import score_trees
from trace_core.features import SearchAgentFeaturizer, TextEncoder
from trace_core.loss import PolicyConfig, UpdateStats, build_sequences, make_optimizer, policy_update, wrap_policy
from trace_core.predictor import FitReport, PredictorConfig, PredictorQuality, SuccessPredictor, quality
from trace_core.rollout import AgentGrower, new_trees, rollout_batch
from trace_core.sampling import (
    effective_ratio,
    node_examples,
    plan_stage1,
    plan_stage2,
    predict_nodes,
    stage1_expansions,
    stage2_expansions,
    stage2_input,
)
from trace_core.tree import RolloutTree, backup


@dataclass
class TrainState:
    runtime: Runtime
    store: RolloutStore
    run_id: int
    policy: PreTrainedModel
    optimizer: torch.optim.Optimizer
    predictor: SuccessPredictor
    featurizer: SearchAgentFeaturizer
    allocator: Allocator
    allocator_config: AllocatorConfig
    policy_config: PolicyConfig
    rng: np.random.Generator


@dataclass
class IterationData:
    iteration: int
    trees: list[RolloutTree] = field(default_factory=list)
    plan1: RootPlan | None = None
    plan2: PrefixPlan | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def allocator_config(s: Settings) -> AllocatorConfig:
    t = s.trace
    return AllocatorConfig(t.budget, t.stage1_share, t.group_size, t.max_per_prompt, t.max_per_anchor)


def policy_config(s: Settings) -> PolicyConfig:
    p = s.policy
    return PolicyConfig(
        learning_rate=p.learning_rate, clip_eps=p.clip_eps, kl_coef=p.kl_coef, minibatches=p.minibatches,
        lora=p.lora, lora_rank=p.lora_rank, lora_alpha=p.lora_alpha, seed=s.run.seed,
    )  # fmt: skip


def predictor_config(s: Settings) -> PredictorConfig:
    p = s.predictor
    return PredictorConfig(p.prior, p.window, p.hidden, p.epochs, p.learning_rate, seed=s.run.seed)


def init_state(s: Settings, log: Log) -> TrainState:
    store = RolloutStore(s.store_url())
    snapshot = s.snapshot()
    run_id = store.open_run(s.run.name, snapshot, settings_hash(snapshot), code_version())
    log(f"writing every tree to {render_url(s.store_url())} (run {s.run.name!r})")
    runtime = load_runtime(s, log)
    pcfg = policy_config(s)
    policy = wrap_policy(runtime.model, pcfg)
    runtime.backend.sync_weights(policy)
    featurizer = SearchAgentFeaturizer(TextEncoder(device=s.model.device), s.agent.max_turns)
    return TrainState(
        runtime=runtime, store=store, run_id=run_id, policy=policy, optimizer=make_optimizer(policy, pcfg),
        predictor=SuccessPredictor(featurizer.dim, predictor_config(s)), featurizer=featurizer,
        allocator=make_allocator(s.trace.allocator), allocator_config=allocator_config(s), policy_config=pcfg,
        rng=np.random.default_rng(s.run.seed),
    )  # fmt: skip


# -- stages -----------------------------------------------------------------------------------------


def sample_pool(st: TrainState, data: IterationData, s: Settings) -> None:
    train = st.runtime.data.train
    picks = st.rng.choice(len(train), min(s.trace.pool_size, len(train)), replace=False)
    data.trees = new_trees([train[i] for i in picks], st.runtime.env)


def allocate_roots(st: TrainState, data: IterationData) -> None:
    data.plan1 = plan_stage1(data.trees, st.allocator, st.allocator_config, st.predictor, st.featurizer, st.rng)


def _grower(st: TrainState) -> AgentGrower:
    return AgentGrower(st.runtime.backend, st.runtime.env, st.runtime.env.config.sampling())


def roll_out_roots(st: TrainState, data: IterationData) -> None:
    assert data.plan1 is not None
    _grower(st)(data.trees, stage1_expansions(data.plan1), "stage1")


def allocate_prefixes(st: TrainState, data: IterationData) -> None:
    assert data.plan1 is not None
    s2 = stage2_input(data.trees, data.plan1, st.allocator, st.predictor, st.featurizer)
    data.plan2 = plan_stage2(s2, data.plan1, st.allocator, st.allocator_config, st.rng)


def roll_out_prefixes(st: TrainState, data: IterationData) -> None:
    assert data.plan2 is not None
    _grower(st)(data.trees, stage2_expansions(data.plan2), "stage2")


def back_up(st: TrainState, data: IterationData) -> None:
    for tree in data.trees:
        backup(tree)


def refit_predictor(st: TrainState, data: IterationData) -> tuple[PredictorQuality, FitReport]:
    """Score the predictions made at allocation time (before the predictor saw these outcomes),
    then add the iteration's node targets to the window and refit."""
    x, target, weight, nodes = node_examples(data.trees, st.featurizer)
    seen = [i for i, (t, n) in enumerate(nodes) if data.trees[t].nodes[n].predicted is not None]
    predicted = np.array([data.trees[nodes[i][0]].nodes[nodes[i][1]].predicted for i in seen], dtype=np.float64)
    before = quality(predicted, target[seen], weight[seen])
    st.predictor.add(data.iteration, x, target, weight, [data.trees[t].record.id for t, _ in nodes])
    return before, st.predictor.fit()


def update_policy(st: TrainState, data: IterationData, s: Settings) -> tuple[UpdateStats, float]:
    paths = ADVANTAGES.get(s.trace.advantage)(data.trees)
    rows = build_sequences(data.trees, paths, keep_zero=st.policy_config.kl_coef > 0)
    pad = st.runtime.env.tokenizer.pad_token_id or 0
    stats = policy_update(st.policy, st.optimizer, rows, st.policy_config, pad, data.iteration)
    st.runtime.backend.sync_weights(st.policy)
    return stats, nonzero_share(paths)


def evaluate(st: TrainState, s: Settings) -> dict[str, float]:
    """Dev accuracy (avg@n EM and F1 at temperature 1) and, on the same held-out trees, the
    predictor's quality: these questions are never trained on."""
    records = st.runtime.data.dev[: s.train.eval_questions]
    n = s.train.eval_samples
    trees = rollout_batch(records, n, st.runtime.backend, st.runtime.env, st.runtime.env.config.sampling(1.0))
    report = score_trees(trees, n)
    out = {"eval/em": report.em, "eval/f1": report.f1, "eval/mixed_share": report.mixed / len(records)}
    if st.predictor.fitted:
        for tree in trees:
            backup(tree)
        _, target, weight, nodes = node_examples(trees, st.featurizer)
        q = quality(predict_nodes(trees, nodes, st.predictor, st.featurizer), target, weight)
        out.update({"predictor/dev_brier": q.brier, "predictor/dev_auc": q.auc, "predictor/dev_ece": q.ece})
    return out


# -- the loop ---------------------------------------------------------------------------------------


def run_iteration(st: TrainState, s: Settings, iteration: int) -> IterationData:
    data = IterationData(iteration)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        timings[f"time/{name}"] = time.perf_counter() - start
        return out

    tokens_before = st.runtime.backend.stats.generated_tokens
    store, run, alloc = st.store, st.run_id, s.trace.allocator
    stage("sample_pool", lambda: sample_pool(st, data, s))
    stage("allocate_roots", lambda: allocate_roots(st, data))
    assert data.plan1 is not None
    store.save_root_plan(run, iteration, [t.record for t in data.trees],
                         [_predicted(t, st) for t in data.trees], data.plan1, stage="allocate_roots")  # fmt: skip
    stage("roll_out_roots", lambda: roll_out_roots(st, data))
    store.save_trees(run, iteration, data.trees, alloc, stage="roll_out_roots")
    stage("allocate_prefixes", lambda: allocate_prefixes(st, data))
    assert data.plan2 is not None
    unused = {i: _predicted(t, st) for i, t in enumerate(data.trees) if not t.leaves()}
    store.save_prefix_plan(run, iteration, data.plan2, unused, stage="allocate_prefixes")
    stage("roll_out_prefixes", lambda: roll_out_prefixes(st, data))
    stage("back_up", lambda: back_up(st, data))
    store.save_trees(run, iteration, data.trees, alloc, stage="back_up")
    before, fit = stage("refit_predictor", lambda: refit_predictor(st, data))
    store.save_predictor_fit(run, iteration, fit, before, stage="refit_predictor")
    update, nonzero = stage("update_policy", lambda: update_policy(st, data, s))
    store.save_policy_update(run, iteration, update, iteration + 1, stage="update_policy")
    leaves = [leaf for t in data.trees for leaf in t.leaves()]
    data.metrics = {
        "rollout/trees": len(data.trees),
        "rollout/leaves": len(leaves),
        "rollout/generated_tokens": st.runtime.backend.stats.generated_tokens - tokens_before,
        "rollout/mean_reward": float(np.mean([leaf.reward or 0.0 for leaf in leaves])),
        "rollout/effective_ratio": effective_ratio(data.trees),
        "rollout/nonzero_advantage_share": nonzero,
        "alloc/stage1_leaves": data.plan1.leaves,
        "alloc/stage2_leaves": data.plan2.leaves,
        "alloc/expected_mixed_stage1": data.plan1.expected_mixed,
        "alloc/expected_mixed_stage2": data.plan2.expected_mixed,
        "predictor/brier": before.brier,
        "predictor/auc": before.auc,
        "predictor/ece": before.ece,
        "predictor/fit_loss": fit.loss,
        "policy/loss": update.loss,
        "policy/kl": update.kl,
        "policy/clip_fraction": update.clip_fraction,
        "policy/grad_norm": update.grad_norm,
        "policy/learning_rate": update.learning_rate,
        "policy/tokens": update.tokens,
        **timings,
    }
    return data


def _predicted(tree: RolloutTree, st: TrainState) -> float:
    return tree.root.predicted if tree.root.predicted is not None else st.predictor.config.prior


def train(s: Settings, log: Log) -> list[dict[str, float]]:
    st = init_state(s, log)
    log(f"training {s.train.iterations} iterations with allocator '{s.trace.allocator}', budget {s.trace.budget} "
        f"leaves, advantage '{s.trace.advantage}'")  # fmt: skip
    history: list[dict[str, float]] = []
    start_eval = evaluate(st, s)
    log(f"dev accuracy before training: EM {start_eval['eval/em']:.3f}  F1 {start_eval['eval/f1']:.3f}")
    history.append({"iteration": -1, **start_eval})
    for it in range(s.train.iterations):
        start = time.perf_counter()
        data = run_iteration(st, s, it)
        row: dict[str, float] = {"iteration": it, **data.metrics, "time/iteration": time.perf_counter() - start}
        if (it + 1) % s.train.eval_every == 0 or it == s.train.iterations - 1:
            row.update(evaluate(st, s))
        st.store.save_iteration(st.run_id, it, row, stage="evaluate")
        history.append(row)
        extra = f"  dev EM {row['eval/em']:.3f}" if "eval/em" in row else ""
        log(f"iter {it:3d}  reward {row['rollout/mean_reward']:.3f}  effective {row['rollout/effective_ratio']:.2f}  "
            f"nonzero-adv {row['rollout/nonzero_advantage_share']:.2f}  predictor AUC {row['predictor/auc']:.2f}  "
            f"{row['time/iteration']:.1f}s{extra}")  # fmt: skip
    st.store.set_run_status(st.run_id, "done")
    st.store.close()
    return history
