"""Final evaluation of a trained policy.

`evaluate_run` loads the run's published policy (base model plus its LoRA adapter) and scores it on
the whole dev and test sets: exact match and F1 (the task family's) averaged over `train.eval_samples`
samples at temperature 1, and greedy exact match. Seeds are fixed, so two evaluations of the same
policy give the same file. Each rollout's outcome is stored too (`eval_outcomes`, for paired
per-question comparisons), under the iteration that published the evaluated policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from trace_core.method.evaluation import QuestionOutcome, evaluate_policy
from trace_core.models.default_model import load_policy
from trace_rl.config.settings import Settings
from trace_rl.flows.pipeline import Log, Runtime, load_runtime
from trace_rl.store.db import StoreError, render_url
from trace_rl.store.store import RolloutStore
from trace_rl.tasks.family import family


def evaluate_run(
    s: Settings, log: Log, questions: int | None = None, greedy: bool = True, store_outcomes: bool = True
) -> dict[str, Any]:
    """Dev and test accuracy of the run's final policy (see the module docstring), on the first
    `questions` of each split (all when None), with or without the greedy pass.

    With `store_outcomes`, every rollout's outcome goes to the rollout database (`eval_outcomes`, kinds
    `final` and `final_greedy`, under the iteration that published the policy), replacing an earlier
    final evaluation of that policy; the run must be in the store (checked before evaluating)."""
    policy_dir = s.run.output_dir / s.run.name / "policy"
    target = _outcomes_target(s) if store_outcomes else None
    rt = load_runtime(s, log)
    f1 = family(s).f1
    use_policy(rt, policy_dir, s.model.device)
    out: dict[str, Any] = {"policy": str(policy_dir), "samples": s.train.eval_samples}
    outcomes: dict[tuple[str, str], tuple[QuestionOutcome, ...]] = {}
    for split in ("dev", "test"):
        records = getattr(rt.data, split)[:questions]
        torch.manual_seed(s.run.seed)
        rt.backend.reseed(s.run.seed)
        sampled = evaluate_policy(records, rt.backend, rt.env, n=s.train.eval_samples, temperature=1.0, f1=f1)
        outcomes["final", split] = sampled.outcomes
        out[split] = {"questions": len(records), "em": sampled.em, "f1": sampled.f1, **sampled.histogram()}
        if len(sampled.by_source) > 1:  # e.g. BFCL's subsets: accuracy per subset (the paper's Table 5)
            out[split].update({f"em_{source}": em for source, em in sampled.by_source})
        if greedy:
            rt.backend.reseed(s.run.seed)
            best = evaluate_policy(records, rt.backend, rt.env, n=1, temperature=0.0, f1=f1)
            outcomes["final_greedy", split] = best.outcomes
            out[split].update(greedy_em=best.em, greedy_f1=best.f1)
        log(
            f"{split}: EM {sampled.em:.3f}  F1 {sampled.f1:.3f}"
            + (f"  greedy EM {out[split]['greedy_em']:.3f}" if greedy else "")
        )
    if target is not None:
        _store_outcomes(s, target, outcomes)
        log(f"per-question outcomes stored in eval_outcomes (run {s.run.name!r}, iteration {target[1]})")
    return out


def _outcomes_target(s: Settings) -> tuple[int, int]:
    """(run id, iteration of the published policy) that a final evaluation's outcomes are stored under;
    StoreError, before any evaluation, when the store does not hold the run or its published policy, or
    is at another schema version. Read-only: a missing database file is refused, not created."""
    store = RolloutStore(s.store_url(), create=False, read_only=True)
    try:
        run_id = store.run_id(s.run.name)
        iteration = store.published_iteration(run_id)
    finally:
        store.close()
    if iteration is None:
        raise StoreError(
            f"run {s.run.name!r} has published no policy in {render_url(s.store_url())}: nothing to store the "
            "final evaluation's outcomes under (train it first, or evaluate without storing outcomes)"
        )
    return run_id, iteration


def _store_outcomes(
    s: Settings, target: tuple[int, int], outcomes: dict[tuple[str, str], tuple[QuestionOutcome, ...]]
) -> None:
    """Write them the way any process outside the training flow does: its own store, no lease (the
    training flow never writes the final kinds), one transaction replacing an earlier evaluation's."""
    store = RolloutStore(s.store_url(), create=False)
    try:
        store.record_final_evaluation(*target, outcomes)
    finally:
        store.close()


def use_policy(rt: Runtime, policy_dir: Path, device: str) -> None:
    """Generate from the policy saved in `policy_dir` (a LoRA adapter over the runtime's model, or
    whole weights). Safe to call again with another policy: once the runtime's model carries an
    adapter, the next one goes on a fresh copy of the base weights."""
    if (policy_dir / "adapter_config.json").exists():
        wrapped = any(isinstance(m, BaseTunerLayer) for m in rt.model.modules())
        base = load_policy(rt.model_dir, device, rt.model.dtype)[0] if wrapped else rt.model
        rt.backend.sync_weights(PeftModel.from_pretrained(base, policy_dir).eval())
    elif (policy_dir / "config.json").exists():
        rt.backend.sync_weights(load_policy(policy_dir, device, rt.model.dtype)[0].eval())
    else:
        raise FileNotFoundError(f"{policy_dir}: no trained policy (run `trace-rl run` first)")
