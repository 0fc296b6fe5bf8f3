"""Padding token sequences into batches and scoring them with a causal LM.

`token_logprobs` gives, for every position t >= 1 of every row, log p(ids[t] | ids[:t]) under the
model; the warm start's cross-entropy and the policy loss both read it through a mask that is 1 on
the policy's own tokens and 0 on prompt, observation and padding tokens.

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


def pad_right(rows: Sequence[Sequence[int]], pad_value: int | float, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Stack rows of different lengths into (batch, max_len), padding at the end."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=dtype)
    return out


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision values to float32 for softmax arithmetic; keep float64 as is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def token_logprobs(model: PreTrainedModel, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token.

    ids, attention: (batch, seq); attention is 1 on real tokens, 0 on right padding.
    Returns (batch, seq - 1): entry t is log p(ids[:, t + 1] | ids[:, : t + 1]).
    """
    logits = at_least_fp32(model(input_ids=ids, attention_mask=attention).logits[:, :-1, :])
    # gather minus logsumexp avoids a second (batch, seq, vocab) tensor for large vocabularies
    picked = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
