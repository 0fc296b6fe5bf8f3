"""When a sampled turn ends, for the transformers backend: at an end-of-sequence token or a stop string.

The end-of-sequence ids are gathered from the model's generation config, its config and the
tokenizer. A stop string is searched for only after a token whose text contains the last character
of some stop string; the text searched is then the decoded tail of the turn, twice as many tokens
as the longest stop string has characters.

Deviations: none.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trace_core.generation.backend import FinishReason, SamplingParams


class TurnEnd:
    """Tells whether a turn has ended from its tokens so far: ("eos", None), ("stop", the stop string)
    or (None, None) while it goes on."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self._token_text: list[str] | None = None  # the text of every token id, built on first need

    def __call__(self, tokens: list[int], params: SamplingParams) -> tuple[FinishReason | None, str | None]:
        last = tokens[-1]
        if last in self.eos_ids:
            return "eos", None
        if params.stop:
            if self._token_text is None:
                self._token_text = _token_texts(self.tokenizer, len(self.tokenizer))
            enders = {s[-1] for s in params.stop}
            if last < len(self._token_text) and any(c in self._token_text[last] for c in enders):
                window = max(len(s) for s in params.stop) * 2
                tail = self.tokenizer.decode(tokens[-window:])
                for stop in params.stop:
                    if stop in tail:
                        return "stop", stop
        return None, None


def _token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    return tokenizer.batch_decode([[i] for i in range(vocab_size)])


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every end-of-sequence token id the model's generation config, config or tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
