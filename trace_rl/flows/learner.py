"""The policy being trained, as the stages see it: the wrapped model, its optimizer, the frozen
reference (full fine-tuning with a KL penalty only), the version (policy updates applied), and
whether it changed in memory since its last committed checkpoint.

A stage that changes the policy calls `changing()` first and `committed()` after its commit; a
retried stage calls `restore_if_dirty` with its latest committed checkpoint, so a failed attempt's
half-applied update never leaks into the retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from trace_core.method.loss import PolicyConfig, freeze_copy, make_optimizer, wrap_policy


class Learner:
    def __init__(self, model: PreTrainedModel, config: PolicyConfig, use_reference: bool) -> None:
        self.config = config
        self.reference = freeze_copy(model) if use_reference else None
        self.policy: PreTrainedModel = wrap_policy(model, config)
        self.optimizer = make_optimizer(self.policy, config)
        self.version = 0
        self.dirty = False

    def state(self) -> dict[str, Any]:
        """What a policy checkpoint holds: trainable weights, optimizer, version and torch's random state."""
        trainable = {k: v.detach().clone() for k, v in self.policy.named_parameters() if v.requires_grad}
        return {
            "weights": trainable,
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "torch_rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        params = dict(self.policy.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["version"]
        torch.set_rng_state(state["torch_rng"])
        self.dirty = False

    def changing(self) -> None:
        self.dirty = True

    def committed(self) -> None:
        self.dirty = False

    def restore_if_dirty(self, latest: Callable[[], dict[str, Any] | None]) -> bool:
        """Reload the latest committed state (`latest()`) when an earlier attempt changed the policy
        in memory; True when it did."""
        if not self.dirty:
            return False
        state = latest()
        if state is not None:
            self.load(state)
        self.dirty = False
        return True
