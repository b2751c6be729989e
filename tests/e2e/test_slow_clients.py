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
             str(WRITE_TIMEOUT_S), "--max-concurrent-requests", "1"]  # fmt: skip
    server = start_server(tiny_checkpoint, log, extra)
    yield server
    stop_server(server)


def _port(server: LiveServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _chat(server: LiveServer, max_tokens: int = 4) -> int:
    body = {"messages": MESSAGES, "max_tokens": max_tokens}
    return httpx.post(server.url("/v1/chat/completions"), json=body, headers=AUTH, timeout=30).status_code


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
    # ~8 MB of events (20 top logprobs on each of 8 x 480 tokens): more than any socket buffers hold.
    stream = {"max_tokens": 480, "n": 8, "ignore_eos": True, "stream": True, "logprobs": True, "top_logprobs": 20}
    body = json.dumps({"messages": MESSAGES, **stream})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    reader.connect(("127.0.0.1", _port(guarded)))
    reader.sendall(request)  # ... and never reads a byte of the answer
    try:
        time.sleep(0.5)
        # The one slot (--max-concurrent-requests 1) is taken: this request queues
        # until the stream above is cut, then runs.
        t0 = time.monotonic()
        assert _chat(guarded) == 200
        waited = time.monotonic() - t0
    finally:
        reader.close()
    print(f"\n[write timeout] the queued request ran {waited:.1f}s later")
    assert waited < WRITE_TIMEOUT_S + 10
    assert _metric(guarded, "lemur:slow_clients_total") == cut_before + 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = _metric(guarded, "vllm:num_requests_running") + _metric(guarded, "vllm:num_requests_waiting")
        if busy == 0:
            break
        time.sleep(0.2)
    assert busy == 0, "the cut stream's engine request is still running"


def test_tokenize_is_rate_limited(guarded: LiveServer) -> None:
    """/tokenize runs the tokenizer like any prompt: a key with rpm=3 gets 429 on the 4th call."""
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"prompt": "def main():\n    return 0\n" * 200}
    statuses = [httpx.post(guarded.url("/tokenize"), json=body, headers=headers, timeout=30) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[-1].json()["error"]["code"] == "rate_limit_exceeded" and "limited" in statuses[-1].text
    assert int(statuses[-1].headers["Retry-After"]) >= 1
