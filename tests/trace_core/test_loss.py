from dataclasses import replace

import pytest
import torch

from trace_core.generation.batching import pad_right, token_logprobs
from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.advantages import grpo_advantages, tree_advantages
from trace_core.method.loss import (
    PolicyConfig,
    build_sequences,
    make_optimizer,
    policy_update,
    surrogate_loss,
    wrap_policy,
)
from trace_core.method.rollout import rollout_batch
from trace_core.method.tree import backup


def test_ppo_clip_surrogate_on_hand_cases():
    # ratios 1.5, 0.5, 1.5 with advantages +1, +1, -1 and eps 0.2:
    # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-1.5, -1.2) = -1.5 -> loss = -(1.2 + 0.5 - 1.5) / 3
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5]]))
    loss, _, clip = surrogate_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3), 0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.5) / 3)
    assert clip.item() == pytest.approx(1 / 3)  # only the first token is clipped


def test_kl_penalty_is_zero_when_the_policy_equals_the_reference_and_positive_otherwise():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.2)
    assert surrogate_loss(logp, logp.clone(), *args[1:], ref_logp=logp.clone(), kl_coef=1.0)[1].item() == 0.0
    assert surrogate_loss(logp, logp.clone(), *args[1:], ref_logp=logp - 0.3, kl_coef=1.0)[1].item() > 0


@pytest.fixture()
def batch(model, tokenizer, env, small_task):
    """Real rollouts of the tiny policy, with rewards assigned by a fixed rule so groups are mixed."""
    model = model.float()
    trees = rollout_batch(
        small_task.splits["train"][:6], 4, TransformersBackend(model, tokenizer), env, env.config.sampling()
    )
    for tree in trees:
        for i, leaf in enumerate(tree.leaves()):
            tree.set(replace(leaf, reward=float(i % 2 == 0)))
        backup(tree)
    return model, trees


def test_observation_and_prompt_tokens_get_no_loss_and_zero_gradient(batch, tokenizer):
    model, trees = batch
    rows = build_sequences(trees, grpo_advantages(trees))
    observation_ids = {tok for tree in trees for n in tree for tok in n.observation_ids}
    for row, path in zip(rows, grpo_advantages(trees)):
        tree = trees[path.tree]
        policy_positions = set()
        pos = len(tree.root.observation_ids)
        for node_id in path.node_ids:
            node = tree.nodes[node_id]
            policy_positions.update(range(pos, pos + len(node.model_ids)))
            pos += len(node.model_ids) + len(node.observation_ids)
        assert {i for i, m in enumerate(row.loss_mask) if m} == policy_positions
    ids = pad_right([r.input_ids for r in rows], 0)
    attention = pad_right([[1] * len(r.input_ids) for r in rows], 0)
    logp = token_logprobs(model, ids, attention).detach().requires_grad_(True)
    mask, adv, old = (
        pad_right([getattr(r, f)[1:] for r in rows], 0.0, torch.float32)
        for f in ("loss_mask", "advantages", "old_logprobs")
    )
    loss, _, _ = surrogate_loss(logp, old, adv, mask, 0.2)
    loss.backward()
    assert torch.all(logp.grad[mask == 0] == 0)
    assert observation_ids  # the batch did hold observations


def test_one_update_changes_the_lora_weights_and_raises_the_log_prob_of_positive_advantage_paths(batch, tokenizer):
    model, trees = batch
    config = PolicyConfig(learning_rate=5e-3, minibatches=1)
    policy = wrap_policy(model, config)
    lora_before = {k: v.clone() for k, v in policy.named_parameters() if "lora_" in k}
    paths = grpo_advantages(trees)
    rows = build_sequences(trees, paths)

    def mean_logp(sign):
        chosen = [r for r in rows if sign * max(r.advantages, key=abs) > 0]
        ids = pad_right([r.input_ids for r in chosen], 0)
        attention = pad_right([[1] * len(r.input_ids) for r in chosen], 0)
        mask = pad_right([r.loss_mask[1:] for r in chosen], 0.0, torch.float32)
        with torch.no_grad():
            logp = token_logprobs(policy, ids, attention)
        return ((logp * mask).sum() / mask.sum()).item()

    before_pos, before_neg = mean_logp(+1), mean_logp(-1)
    stats = policy_update(policy, make_optimizer(policy, config), rows, config, pad_id=0)
    assert stats.steps == 1 and stats.tokens > 0 and stats.grad_norm > 0
    assert any(not torch.equal(lora_before[k], v) for k, v in policy.named_parameters() if "lora_" in k)
    assert mean_logp(+1) > before_pos
    assert mean_logp(-1) < before_neg


def test_with_the_tree_estimator_a_shared_turn_carries_loss_once(batch):
    _, trees = batch
    rows = build_sequences(trees, tree_advantages(trees), keep_zero=True)
    counted = sum(sum(r.loss_mask) for r in rows)
    unique = sum(len(n.model_ids) for tree in trees for n in tree)
    assert counted == unique
