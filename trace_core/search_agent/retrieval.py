"""The agent's search tool: top-k passages for a batch of queries, and their observation text.

Two retrievers, registered by name in `RETRIEVERS` as factories taking one `RetrieverSpec` and
built only through `make_retriever`:
- `bm25`: a local BM25 index over the corpus (the bm25s library; Lucene scoring, English stopwords),
  kept in the spec's cache folder and rebuilt when the corpus's fingerprint changes.
- `http`: a client of a Search-R1-style retrieval server: `POST {url}` with
  `{"queries": [...], "topk": k, "return_scores": true}`, answered by
  `{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`.
  A busy or restarting server (connection refused, HTTP 429 or 5xx) is retried with exponential
  back-off and full jitter (tenacity), honouring a `Retry-After` header; each request as a whole,
  not each read, is bounded by the timeout.

`format_passages` writes the results the way Search-R1 shows them to the policy:
`Doc 1(Title: ...) text`, one line per passage.

Deviations: none.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from trace_core.atomic import write_text_atomic
from trace_core.registry import Registry
from trace_core.search_agent.data import CorpusDoc

if TYPE_CHECKING:
    import bm25s


@dataclass(frozen=True)
class Passage:
    doc_id: str
    title: str
    text: str
    score: float


class Retriever(Protocol):
    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]: ...


class RetrieverError(RuntimeError):
    """The search tool could not answer (server down, bad reply); the message says which and why."""


@dataclass(frozen=True)
class RetrieverSpec:
    """What a retriever factory is given: the task's corpus, a folder it may keep an index in
    (None: keep nothing), and a remote retriever's endpoint and timeout."""

    corpus: Sequence[CorpusDoc]
    cache_dir: Path | None = None
    url: str = ""
    timeout_s: float = 30.0


RetrieverFactory = Callable[[RetrieverSpec], Retriever]
RETRIEVERS: Registry[RetrieverFactory] = Registry("retriever")


def make_retriever(name: str, spec: RetrieverSpec) -> Retriever:
    """The retriever registered as `name`, built from `spec`; an unknown name lists the valid ones."""
    return RETRIEVERS.get(name)(spec)


def format_passages(passages: Sequence[Passage]) -> str:
    if not passages:
        return "No results."
    return "\n".join(f"Doc {i}(Title: {p.title}) {p.text}" for i, p in enumerate(passages, start=1))


def _passage(doc: CorpusDoc, score: float) -> Passage:
    return Passage(doc.id, doc.title, doc.text, float(score))


def corpus_fingerprint(docs: Sequence[CorpusDoc]) -> str:
    """sha256 over every document's id and contents, streamed (lengths delimit the fields, so no
    two different corpora share a fingerprint by concatenation)."""
    digest = hashlib.sha256()
    for doc in docs:
        for field in (doc.id, doc.contents):
            raw = field.encode()
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
    return digest.hexdigest()


class BM25Retriever:
    """BM25 over a list of documents; `save`/`load` keep the index beside the data."""

    def __init__(self, docs: Sequence[CorpusDoc], index: bm25s.BM25 | None = None) -> None:
        self.docs = list(docs)
        if index is None:
            import bm25s  # here, not at the top: reading settings lists the retrievers without it

            index = bm25s.BM25()
            index.index(self._tokenize([d.contents for d in self.docs]), show_progress=False)
        self.index = index

    @staticmethod
    def _tokenize(texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)  # type: ignore[return-value]

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        if not queries:
            return []
        k = min(topk, len(self.docs))
        tokens = self._tokenize(list(queries))
        known = self.index.vocab_dict
        results: list[list[Passage]] = [[] for _ in queries]
        # bm25s rejects a query none of whose words it indexed; such a query simply finds nothing
        live = [i for i, t in enumerate(tokens) if any(w in known for w in t)]
        if live:
            ids, scores = self.index.retrieve(
                [[w for w in tokens[i] if w in known] for i in live], k=k, show_progress=False, n_threads=1
            )
            for row, i in enumerate(live):
                results[i] = [
                    _passage(self.docs[int(d)], s) for d, s in zip(ids[row], scores[row], strict=True) if s > 0
                ]
        return results

    def save(self, directory: str | Path) -> None:
        self.index.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: str | Path, docs: Sequence[CorpusDoc]) -> BM25Retriever:
        import bm25s

        return cls(docs, bm25s.BM25.load(str(directory), show_progress=False))


# statuses that say "later", not "never": rate limited, or the server failing or restarting
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class _Busy(Exception):
    """A reply with a status in RETRY_STATUSES (retried), carrying its Retry-After seconds if any."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.status, self.retry_after = status, retry_after


class HttpRetriever:
    """Client of a Search-R1 retrieval server (e.g. `http://127.0.0.1:8000/retrieve`), on one
    kept-alive httpx connection pool. A connection that fails to open, and a reply of 429 or 5xx,
    is retried up to `retries` times with exponential back-off and full jitter (`backoff_s`,
    doubling, at most `max_backoff_s`; a `Retry-After` header of at most that is waited instead), so
    a server restarting or shedding load for a few seconds costs seconds, not the stage. Each attempt
    must finish within `timeout_s` in all (a server trickling bytes is cut off at the deadline). A
    timeout, any other error status, a reply that is not JSON, or the last retry's failure is one
    `RetrieverError` naming the server (the stage's own retries take it from there)."""

    def __init__(
        self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 30.0
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._client = httpx.Client(timeout=timeout_s)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        if not queries:
            return []
        body = {"queries": list(queries), "topk": topk, "return_scores": True}
        attempts = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type((_Busy, httpx.ConnectError)),
            reraise=True,
        )
        try:
            payload = attempts(self._post, body)
        except _Busy as busy:
            raise RetrieverError(
                f"retrieval server {self.url} answered {busy.status} ({self.retries + 1} attempts)"
            ) from None
        except httpx.HTTPStatusError as err:
            raise RetrieverError(f"retrieval server {self.url} answered {err.response.status_code}") from None
        except httpx.HTTPError as err:
            raise RetrieverError(f"retrieval server {self.url} did not answer: {err!r}") from None
        except json.JSONDecodeError:
            raise RetrieverError(f"retrieval server {self.url} sent a reply that is not JSON") from None
        return self._parse(payload, len(queries))

    def _post(self, body: dict[str, object]) -> object:
        """One attempt, bounded by `timeout_s` from start to last byte."""
        deadline = time.monotonic() + self.timeout_s
        with self._client.stream("POST", self.url, json=body) as reply:
            if reply.status_code in RETRY_STATUSES:
                raise _Busy(reply.status_code, _retry_after(reply.headers.get("Retry-After")))
            reply.raise_for_status()
            chunks = []
            for chunk in reply.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"the reply took longer than {self.timeout_s:g} s", request=reply.request)
        return json.loads(b"".join(chunks))

    def _wait(self, state: RetryCallState) -> float:
        jittered = wait_random_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Busy) and failure.retry_after is not None:
            return min(max(failure.retry_after, jittered), self.max_backoff_s)
        return jittered

    def _parse(self, payload: object, n_queries: int) -> list[list[Passage]]:
        result = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(result, list) or len(result) != n_queries:
            raise RetrieverError(f"retrieval server {self.url}: expected 'result' with {n_queries} lists")
        out = []
        for hits in result:
            passages = []
            for hit in hits:
                doc = hit.get("document", hit) if isinstance(hit, dict) else None
                if not isinstance(doc, dict) or "contents" not in doc:
                    raise RetrieverError(f"retrieval server {self.url}: a hit has no 'contents'")
                passages.append(_passage(CorpusDoc(str(doc.get("id", "")), doc["contents"]), hit.get("score", 0.0)))
            out.append(passages)
        return out


def _retry_after(header: str | None) -> float | None:
    """A Retry-After header given in seconds (an HTTP date is ignored: back-off applies)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


@RETRIEVERS.register("bm25")
def _bm25_retriever(spec: RetrieverSpec) -> BM25Retriever:
    """The index kept in `spec.cache_dir` when it was built from this very corpus (every document's
    id and text: an edit anywhere, even mid-file, rebuilds it); otherwise built and kept there."""
    if spec.cache_dir is None:
        return BM25Retriever(spec.corpus)
    marker, digest = spec.cache_dir / "build.json", corpus_fingerprint(spec.corpus)
    if marker.exists() and json.loads(marker.read_text()).get("hash") == digest:
        return BM25Retriever.load(spec.cache_dir, spec.corpus)
    retriever = BM25Retriever(spec.corpus)
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    retriever.save(spec.cache_dir)
    write_text_atomic(marker, json.dumps({"hash": digest}, indent=2))
    return retriever


@RETRIEVERS.register("http")
def _http_retriever(spec: RetrieverSpec) -> HttpRetriever:
    return HttpRetriever(spec.url, spec.timeout_s)
