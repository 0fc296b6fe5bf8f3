"""README "Extending", followed literally: a new allocator, advantage estimator, success predictor,
generation backend and search tool, each registered under a new name, carry a training run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tests.helpers import write_settings
from trace_core.generation.backend import BACKENDS, BackendSpec, make_backend
from trace_core.method.advantages import ADVANTAGES, PathAdvantage
from trace_core.method.allocators import ALLOCATORS, NO_PREFIXES, root_plan
from trace_core.method.predictor import PREDICTORS, FitReport, quality
from trace_core.search_agent.retrieval import RETRIEVERS, Passage, RetrieverSpec
from trace_rl.store.store import RolloutStore


class _Pairs:
    """Groups of 2 for the first prompts the budget covers; no second stage."""

    roots_by_predictor = False
    prefixes_by_predictor = False

    def __init__(self, calls: Counter) -> None:
        self.calls = calls

    def roots(self, predicted, config, rng, mixedness=None):
        self.calls["allocator"] += 1
        return root_plan(predicted, [2 if 2 * (i + 1) <= config.budget else 0 for i in range(len(predicted))])

    def prefixes(self, stage2, budget, config, rng):
        return NO_PREFIXES


class _MeanPredictor:
    """Predicts the leaf-weighted mean target of everything it was taught."""

    def __init__(self, dim: int, config: Any, calls: Counter) -> None:
        self.dim, self.config, self.calls = dim, config, calls
        self.total, self.weight = 0.0, 0.0

    @property
    def fitted(self) -> bool:
        return self.weight > 0

    def predict(self, features: np.ndarray) -> np.ndarray:
        mean = self.total / self.weight if self.weight else self.config.prior
        return np.full(len(np.asarray(features).reshape(-1, self.dim)), mean)

    def add(self, iteration, features, target, weight, groups=None) -> None:
        self.total += float(np.dot(target, weight))
        self.weight += float(np.sum(weight))

    def fit(self) -> FitReport:
        self.calls["predictor"] += 1
        q = quality(np.array([0.5]), np.array([0.5]), np.array([1.0]))
        return FitReport(loss=0.0, examples=1, iterations=1, steps=0, train=q, heldout=None)

    def add_groups(self, iteration, features, successes, n) -> None:
        pass  # no mixedness model

    def predict_mixedness(self, features: np.ndarray) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.weight = state["total"], state["weight"]


class _CountingBackend:
    """The transformers backend, counting the generation calls that go through it."""

    def __init__(self, inner: Any, calls: Counter) -> None:
        self.inner, self.calls, self.stats = inner, calls, inner.stats

    def generate(self, requests, params):
        self.calls["backend"] += 1
        return self.inner.generate(requests, params)

    def reset_cache(self) -> None:
        self.inner.reset_cache()

    def reseed(self, seed: int) -> None:
        self.inner.reseed(seed)

    def sync_weights(self, model: Any) -> None:
        self.inner.sync_weights(model)


class _TitleLookup:
    """A search tool that finds the documents whose title the query names exactly."""

    def __init__(self, spec: RetrieverSpec, calls: Counter) -> None:
        self.by_title = {d.title: d for d in spec.corpus}
        self.calls = calls

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        self.calls["retriever"] += 1
        hits = [self.by_title.get(q.strip()) for q in queries]
        return [[Passage(d.id, d.title, d.text, 1.0)] if d else [] for d in hits]


def _sign_advantages(calls: Counter):
    def estimate(trees) -> list[PathAdvantage]:
        calls["advantage"] += 1
        out = []
        for t, tree in enumerate(trees):
            for leaf in tree.leaves():
                path = tuple(n.node_id for n in tree.path(leaf.node_id)[1:])
                a = 1.0 if (leaf.reward or 0.0) > 0 else -1.0
                out.append(PathAdvantage(t, leaf.node_id, path, (a,) * len(path), (True,) * len(path)))
        return out

    return estimate


@pytest.fixture
def extensions():
    calls: Counter = Counter()
    added = [
        (ALLOCATORS, "pairs", lambda: _Pairs(calls)),
        (PREDICTORS, "running_mean", lambda dim, config: _MeanPredictor(dim, config, calls)),
        (BACKENDS, "counting", lambda spec: _CountingBackend(make_backend("transformers", spec), calls)),
        (RETRIEVERS, "titles", lambda spec: _TitleLookup(spec, calls)),
        (ADVANTAGES, "sign", _sign_advantages(calls)),
    ]
    for registry, name, factory in added:
        registry.register(name)(factory)
    yield calls
    for registry, name, _ in added:
        registry.unregister(name)


def test_a_variant_of_every_kind_registered_by_name_carries_a_training_run(
    prefect_api, workspace, tmp_path, monkeypatch, extensions
):
    from trace_rl.config.settings import SETTINGS_FILE_ENV
    from trace_rl.flows.training import trace_training

    settings = write_settings(
        tmp_path / "s.toml",
        workspace,
        tmp_path / "runs",
        run={"name": "plugins"},
        trace={"allocator": "pairs", "advantage": "sign"},
        predictor={"name": "running_mean"},
        backend={"name": "counting"},
        retriever={"name": "titles"},
        train={"iterations": 1},
    )
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    history = trace_training([])
    assert [h["iteration"] for h in history] == [-1, 0]
    assert {"allocator", "predictor", "backend", "retriever", "advantage"} <= set(extensions)
    store = RolloutStore(f"sqlite:///{tmp_path / 'runs/rollouts.db'}")
    trees = store.load_trees(store.run_id("plugins"), 0)
    assert [len(t.leaves()) for t in trees] == [2] * 8 + [0] * 2  # the pairs plan: 16 leaves, 8 pairs, pool of 10
    store.close()


def test_a_name_registered_twice_is_refused_and_an_unregistered_one_is_unknown(extensions):
    from trace_core.registry import UnknownNameError

    with pytest.raises(ValueError, match="already registered"):
        BACKENDS.register("counting")(lambda spec: None)
    BACKENDS.unregister("counting")
    with pytest.raises(UnknownNameError, match="valid names: .*transformers"):
        make_backend("counting", BackendSpec(model=None, tokenizer=None))
    BACKENDS.register("counting")(lambda spec: None)  # the fixture removes it again
