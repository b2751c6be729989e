"""Clients cannot hold or overwork the server, on the real engine: slowloris
sockets are closed by the read deadline, a stream whose client stops reading
is cut after the write timeout (its engine request aborted, its slot reused),
and /tokenize counts against the key's rate limit."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lemur.server.auth import hash_line
from tests.conftest import API_KEY, LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITED_KEY = "sk-lemur-three-per-minute"
DEADLINE_S = 2.0
WRITE_TIMEOUT_S = 2.0
MESSAGES = [{"role": "user", "content": "Write a Python function that reverses a list."}]


@pytest.fixture(scope="module")
def guarded(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("slow") / "server.log"
    keys = log.parent / "keys.txt"
    keys.write_text(f"{hash_line(API_KEY, 'main')}\n{hash_line(LIMITED_KEY, 'limited')} rpm=3\n")
    keys.chmod(0o600)
    extra = ["--api-keys-file", str(keys), "--read-deadline", str(DEADLINE_S), "--stream-write-timeout",
             str(WRITE_TIMEOUT_S), "--max-concurrent-requests", "1", "--max-logprob-entries", "100000",
             "--grammar-cache-mb", "1"]  # fmt: skip
    server = start_server(tiny_checkpoint, log, extra)
    yield server
    stop_server(server)


def _port(server: LiveServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _chat(server: LiveServer, max_tokens: int = 4) -> int:
    body = {"messages": MESSAGES, "max_tokens": max_tokens}
    return httpx.post(server.url("/v1/chat/completions"), json=body, headers=AUTH, timeout=30).status_code


# ~8 MB of events (20 top logprobs on each of 8 x 480 tokens): more than any socket buffers hold.
LONG_STREAM = {"max_tokens": 480, "n": 8, "ignore_eos": True, "stream": True, "logprobs": True, "top_logprobs": 20}


def _never_reading() -> socket.socket:
    """A client socket with a small window (it fills fast), for a client that never reads."""
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return reader


def _raw_chat(body: str) -> bytes:
    """A whole chat request as bytes, for sockets that the tests drive by hand."""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slowloris_sockets_are_closed_while_normal_requests_succeed(guarded: LiveServer) -> None:
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", _port(guarded)), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        socks.append(s)
    stop = threading.Event()

    def drip() -> None:  # a header byte now and then: the classic slowloris
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    t0 = time.monotonic()
    try:
        statuses = [_chat(guarded) for _ in range(3)]  # served while the sockets hang on
        assert statuses == [200, 200, 200]
        time.sleep(max(0.0, DEADLINE_S + 1.5 - (time.monotonic() - t0)))
        for s in socks:
            s.settimeout(3)
        closed = sum(_closed_by_peer(s) for s in socks)
    finally:
        stop.set()
        dripper.join()
        for s in socks:
            s.close()
    print(f"\n[slowloris] {closed}/200 sockets closed by the server within {time.monotonic() - t0:.1f}s")
    assert closed == 200
    assert _chat(guarded) == 200


def _metric(server: LiveServer, name: str) -> float:
    text = httpx.get(server.url("/metrics"), timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def test_a_stream_that_is_never_read_is_cut_and_its_slot_reused(guarded: LiveServer) -> None:
    cut_before = _metric(guarded, "lemur:slow_clients_total")
    request = _raw_chat(json.dumps({"messages": MESSAGES, **LONG_STREAM}))
    with _never_reading() as reader:
        reader.connect(("127.0.0.1", _port(guarded)))
        reader.sendall(request)  # ... and never reads a byte of the answer
        time.sleep(0.5)
        # The one slot (--max-concurrent-requests 1) is taken: this request queues
        # until the stream above is cut, then runs.
        t0 = time.monotonic()
        assert _chat(guarded) == 200
        waited = time.monotonic() - t0
    # How long it waited is reported, not bounded: it is mostly how fast this
    # machine fills the socket buffers. The counter says the stream was cut.
    print(f"\n[write timeout] the queued request ran {waited:.1f}s later")
    assert _metric(guarded, "lemur:slow_clients_total") == cut_before + 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = _metric(guarded, "vllm:num_requests_running") + _metric(guarded, "vllm:num_requests_waiting")
        if busy == 0:
            break
        time.sleep(0.2)
    assert busy == 0, "the cut stream's engine request is still running"


def test_tokenize_and_detokenize_are_rate_limited(guarded: LiveServer) -> None:
    """/tokenize runs the tokenizer like any prompt: a key with rpm=3 gets 429
    on the 4th call; /detokenize counts too (finding 4: it had no limit), and
    the 429 comes from the headers, before a body is read or parsed."""
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"prompt": "def main():\n    return 0\n" * 200}
    statuses = [httpx.post(guarded.url("/tokenize"), json=body, headers=headers, timeout=30) for _ in range(2)]
    statuses.append(httpx.post(guarded.url("/detokenize"), json={"tokens": [100, 200]}, headers=headers, timeout=30))
    statuses.append(httpx.post(guarded.url("/detokenize"), json={"tokens": [100, 200]}, headers=headers, timeout=30))
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[-1].json()["error"]["code"] == "rate_limit_exceeded" and "limited" in statuses[-1].text
    assert int(statuses[-1].headers["Retry-After"]) >= 1
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=10) as s:  # a 1 MB body, never sent
        s.sendall(f"POST /tokenize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED_KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n".encode())  # fmt: skip
        assert s.recv(4096).startswith(b"HTTP/1.1 429")


def _read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after `within` s."""
    sock.settimeout(within)
    data = b""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still open after {within}s; got {data[:200]!r}")


def test_an_early_401_closes_the_connection_and_no_later_bytes_reset_the_deadline(guarded: LiveServer) -> None:
    """Finding 1: answered before its body came in, the request's late body
    used to switch the deadline off; a half-sent next request then held the
    socket for ever."""
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), head[:100]
        t0 = time.monotonic()
        for piece in (b"{}", b"GET /health HTTP/1.1\r\nX-A: "):
            try:
                s.sendall(piece)
            except OSError:
                break
        for _ in range(3):  # a byte now and then, past the deadline
            time.sleep(DEADLINE_S / 2)
            try:
                s.sendall(b"a")
            except OSError:
                break
        rest = _read_until_closed(s, DEADLINE_S + 3 - (time.monotonic() - t0))
    assert b"HTTP/1.1" not in rest  # the half-sent GET got no answer: the connection was closed


def test_a_partial_second_request_after_a_normal_one_meets_the_deadline(guarded: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nX-A: ")
        t0 = time.monotonic()
        data = _read_until_closed(s, DEADLINE_S + 3)
    assert data.count(b"HTTP/1.1 200") == 1 and time.monotonic() - t0 >= DEADLINE_S - 0.5


def test_pipelined_streams_both_finish_even_when_longer_than_the_deadline(guarded: LiveServer) -> None:
    """HTTP/1.1 pipelining: the second request is wholly in while the first is
    answered, so the read deadline must not cut the connection while the
    second one waits for its slot and streams."""
    # The second request's wait does not hang on how fast this machine computes:
    # while the first stream runs, a client that never reads queues for the one
    # slot (--max-concurrent-requests 1), ahead of the second request, and holds
    # it until the write timeout (2 s, as long as the deadline) cuts its stream.
    body = json.dumps({"messages": MESSAGES, **LONG_STREAM})
    request = _raw_chat(body)
    data, done_at = b"", []
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=120) as s, _never_reading() as blocker:
        s.sendall(request + request + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = s.recv(65536)  # the first stream has the slot ...
        blocker.connect(("127.0.0.1", _port(guarded)))
        blocker.sendall(request)  # ... and this one queues behind it
        while chunk := s.recv(65536):
            data += chunk
            while data.count(b"data: [DONE]") > len(done_at):
                done_at.append(time.monotonic())
    second = done_at[1] - done_at[0] if len(done_at) == 2 else 0.0
    print(f"\n[pipelining] the second stream ended {second:.1f}s after the first")
    assert data.count(b"data: [DONE]") == 2, data[-300:]  # both streams came back whole ...
    assert second > DEADLINE_S  # ... though the second was answered for longer than the read deadline
    assert data.count(b"HTTP/1.1 200") == 3 and data.rstrip().endswith(b'{"status":"ok"}')


def test_a_whole_response_that_is_never_read_is_cut(guarded: LiveServer) -> None:
    """Finding 9: only streams had a write timeout; 2.8 MB of a non-streamed
    answer was still queued for a client that never read, 75 s later."""
    cut_before = _metric(guarded, "lemur:slow_clients_total")
    asked = {"max_tokens": 480, "n": 8, "ignore_eos": True, "logprobs": True, "top_logprobs": 20}  # ~8 MB of JSON
    body = json.dumps({"messages": MESSAGES, **asked})
    request = _raw_chat(body)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", _port(guarded)))
    try:
        reader.sendall(request)  # ... and never reads a byte of the answer
        deadline = time.monotonic() + 120
        while _metric(guarded, "lemur:slow_clients_total") == cut_before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _metric(guarded, "lemur:slow_clients_total") == cut_before + 1
        reader.settimeout(10)
        received = b""
        while chunk := reader.recv(1 << 20):  # what was in flight, then the server's close
            received += chunk
    finally:
        reader.close()
    assert received.startswith(b"HTTP/1.1 200") and len(received) < 8_000_000  # cut short, not sent whole
    assert _chat(guarded) == 200


def test_the_grammar_cache_stays_within_its_bytes(guarded: LiveServer) -> None:
    """Finding 10: the cache kept 256 conversions of up to 64 KiB schemas,
    each up to 70 times larger as a grammar: about 1.2 GB. Here its budget is
    1 MiB (--grammar-cache-mb 1) and 18 distinct ~75 KB conversions go by."""
    sizes = []
    for i in range(18):
        schema = {"type": "object", "properties": {f"f{i}_{j}": {"type": "string"} for j in range(450)}}
        fmt = {"type": "json_schema", "json_schema": {"name": "many", "schema": schema}}
        body = {"messages": MESSAGES, "response_format": fmt, "max_tokens": 1}
        r = httpx.post(guarded.url("/v1/chat/completions"), json=body, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text[:300]
        sizes.append(_metric(guarded, "lemur:grammar_cache_bytes"))
    print(f"\n[grammar cache] bytes after each request: {[int(s) for s in sizes]}")
    assert sizes[0] > 0 and max(sizes) <= 1024 * 1024
    assert sizes[-1] - sizes[-5] < sizes[0]  # full: each new entry pushed an old one out
