"""The search agent's expert turns, which the warm start (`method.warmstart`) imitates.

For a training question with a known reasoning chain: one `<think> ... </think>\\n<search> entity
</search>` turn per hop, the think text restating the fact the previous observation gave, then
`<answer> ... </answer>`. The observations come from the real environment and retriever, so the
policy learns from the same kind of context it will see.

Deviations: none (the paper starts from pretrained instruct models, which need no expert turns).
"""

from __future__ import annotations

from trace_core.search_agent.data import QARecord


def expert_turns(record: QARecord) -> list[str]:
    """The expert's turn texts for a question with a known chain (one search per hop, then answer)."""
    if not record.chain:
        raise ValueError(f"question {record.id} has no reasoning chain to imitate")
    turns = [f"<think> I need to look up {record.chain[0].query}. </think>\n<search> {record.chain[0].query} </search>"]
    for prev, step in zip(record.chain, record.chain[1:], strict=False):
        turns.append(f"<think> {prev.fact} </think>\n<search> {step.query} </search>")
    turns.append(f"<think> {record.chain[-1].fact} </think>\n<answer> {record.chain[-1].answer} </answer>")
    return turns


def expert_plan(record: QARecord) -> list[str]:
    """The search agent's expert turns, or none for a question without a known chain."""
    return expert_turns(record) if record.chain else []
