"""Fakes for the function-calling tests (tests only, never the product path)."""

from __future__ import annotations

from trace_core.generation.backend import Completion


class ExpertBackend:
    """A generation backend that writes the expert's next step for any context: how many steps are
    done is read back from the context (the instruction names both closing tags once)."""

    def __init__(self, env, texts):
        self.env, self.texts = env, texts

    def generate(self, requests, params):
        out = []
        for request in requests:
            context = self.env.decode(request.prefix_ids)
            done = context.count("</call>") + context.count("</reply>") - 2
            ids = self.env.encode(self.texts[done])
            out.append([Completion(ids, (0.0,) * len(ids), "stop", "</call>")] * request.n)
        return out
