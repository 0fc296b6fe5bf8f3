import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from trace_core.registry import UnknownNameError
from trace_core.search_agent.retrieval import (
    BM25Retriever,
    HttpRetriever,
    Passage,
    RetrieverError,
    RetrieverSpec,
    format_passages,
    make_retriever,
)


def test_bm25_ranks_the_named_entitys_own_document_first(small_task, retriever):
    for record in small_task.splits["train"][:20]:
        for step in record.chain:
            top = retriever.search([step.query], 2)[0][0]
            assert top.title == step.query


def test_a_query_of_unknown_words_finds_nothing_instead_of_failing(retriever):
    assert retriever.search(["zzqx wwvy", "   "], 3) == [[], []]


def test_passages_are_formatted_as_numbered_docs_with_titles():
    text = format_passages([Passage("1", "A", "a text", 2.0), Passage("2", "B", "b text", 1.0)])
    assert text == "Doc 1(Title: A) a text\nDoc 2(Title: B) b text"


def test_retrievers_are_built_by_name_and_an_unknown_name_lists_the_valid_ones(small_task):
    spec = RetrieverSpec(small_task.corpus, url="http://127.0.0.1:9/retrieve", timeout_s=2)
    bm25 = make_retriever("bm25", spec)
    assert isinstance(bm25, BM25Retriever) and bm25.search([small_task.corpus[0].title], 1)[0]
    http = make_retriever("http", spec)
    assert isinstance(http, HttpRetriever) and (http.url, http.timeout_s) == (spec.url, 2)
    with pytest.raises(UnknownNameError, match="valid names: bm25, http"):
        make_retriever("dense", spec)


def test_a_kept_bm25_index_is_reused_for_the_same_corpus_and_rebuilt_for_another(small_task, tmp_path):
    first = make_retriever("bm25", RetrieverSpec(small_task.corpus, tmp_path))
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "build.json" in saved and len(saved) > 1
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = make_retriever("bm25", RetrieverSpec(small_task.corpus, tmp_path))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp  # loaded, not rebuilt
    query = small_task.corpus[3].title
    assert again.search([query], 2) == first.search([query], 2)
    fewer = make_retriever("bm25", RetrieverSpec(small_task.corpus[:10], tmp_path))
    kept = {h.doc_id for hits in fewer.search([d.title for d in small_task.corpus], 3) for h in hits}
    assert kept and kept <= {d.id for d in small_task.corpus[:10]}  # the index holds the new corpus only


class _FakeRetrievalServer(BaseHTTPRequestHandler):
    """Answers like Search-R1's retrieval server, echoing each query into a document."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/retrieve" and body["return_scores"] is True
        result = [
            [
                {"document": {"id": f"{q}-{i}", "contents": f'"{q} {i}"\nabout {q}'}, "score": 1.0 / (i + 1)}
                for i in range(body["topk"])
            ]
            for q in body["queries"]
        ]
        payload = json.dumps({"result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def retrieval_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeRetrievalServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    server.shutdown()
    server.server_close()


def test_the_http_client_speaks_the_search_r1_retrieval_protocol(retrieval_server):
    hits = HttpRetriever(retrieval_server).search(["Varno", "Telmar"], 2)
    assert [[p.title for p in h] for h in hits] == [["Varno 0", "Varno 1"], ["Telmar 0", "Telmar 1"]]
    assert hits[0][0].text == "about Varno" and hits[0][1].score == 0.5


def test_an_unreachable_retrieval_server_is_one_clear_error_naming_it():
    with pytest.raises(RetrieverError, match=r"http://127.0.0.1:9/retrieve did not answer"):
        HttpRetriever("http://127.0.0.1:9/retrieve", timeout_s=2).search(["x"], 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_retrieval_server_that_comes_up_late_is_waited_for_not_failed():
    port = _free_port()
    server: list[HTTPServer] = []

    def start_late() -> None:
        time.sleep(0.3)  # the client's first connection is refused; its retry finds the server
        server.append(HTTPServer(("127.0.0.1", port), _FakeRetrievalServer))
        server[0].serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    hits = HttpRetriever(f"http://127.0.0.1:{port}/retrieve", timeout_s=5, retries=5).search(["Varno"], 1)
    assert [p.title for p in hits[0]] == ["Varno 0"]
    server[0].shutdown()
    server[0].server_close()


class _Unavailable(BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_error_status_is_one_clear_error_naming_the_server_and_status():
    server = HTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    with pytest.raises(RetrieverError, match=rf"{url} answered 503"):
        HttpRetriever(url, timeout_s=2, backoff_s=0.01).search(["x"], 1)
    server.shutdown()
    server.server_close()


class _BusyThenUp(_FakeRetrievalServer):
    """Answers 503 (then 429 with Retry-After: 0) before answering properly; counts the requests."""

    requests: ClassVar[list[int]] = []

    def do_POST(self):
        self.requests.append(1)
        if len(self.requests) <= 2:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503 if len(self.requests) == 1 else 429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_POST()


def test_a_server_shedding_load_with_503_or_429_is_retried_until_it_answers():
    _BusyThenUp.requests = []
    server = HTTPServer(("127.0.0.1", 0), _BusyThenUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    hits = HttpRetriever(url, timeout_s=5, retries=3, backoff_s=0.01).search(["Varno"], 1)
    assert [p.title for p in hits[0]] == ["Varno 0"] and len(_BusyThenUp.requests) == 3
    with pytest.raises(RetrieverError, match="answered 429"):  # more refusals than retries: one line
        _BusyThenUp.requests = []
        HttpRetriever(url, timeout_s=5, retries=1, backoff_s=0.01).search(["Varno"], 1)
    server.shutdown()
    server.server_close()


class _Trickle(BaseHTTPRequestHandler):
    """Sends a reply one byte every 0.3 s: each read is quick, the whole reply never ends."""

    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    def log_message(self, *args):
        pass


def test_a_server_trickling_its_reply_is_cut_off_at_the_timeout_not_waited_for():
    server = HTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    start = time.monotonic()
    with pytest.raises(RetrieverError, match="did not answer"):
        HttpRetriever(url, timeout_s=1.0, retries=0).search(["x"], 1)
    assert time.monotonic() - start < 5
    server.shutdown()
    server.server_close()
