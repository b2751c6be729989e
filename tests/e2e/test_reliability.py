"""Overload, deadlines, graceful drain and engine death, on the real server."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import API_KEY, REPO, LiveServer, launch_server, start_server, stop_server, wait_ready
from tests.support.streams import finish_reasons, sigterm_while_streaming

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Write a Python function that reverses a list."}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def limited(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("limited") / "server.log"
    extra = ["--api-key", API_KEY, "--max-concurrent-requests", "2", "--max-queued-requests", "2",
             "--queue-timeout", "5", "--request-timeout", "1"]  # fmt: skip
    server = start_server(tiny_checkpoint, log, extra)
    yield server
    stop_server(server)


async def _one(client: httpx.AsyncClient, url: str, stream: bool) -> tuple[int, dict | None]:
    body = {"messages": MESSAGES, "max_tokens": 32, "ignore_eos": True, "stream": stream}
    if not stream:
        r = await client.post(url, json=body, headers=AUTH)
        return r.status_code, r.json()
    async with client.stream("POST", url, json=body, headers=AUTH) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(await r.aread())
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    tokens = sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content") is not None) - 1
    return 200, {"done": events[-1] == "data: [DONE]", "finish": finish, "chunks": tokens}


def test_overload_burst_gets_only_200_429_503(limited: LiveServer) -> None:
    """10x the admission limit (2 running + 2 queued) at once."""
    url = limited.url("/v1/chat/completions")

    async def burst() -> list[tuple[int, dict | None]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(*(_one(client, url, stream=i % 2 == 1) for i in range(40)))

    t0 = time.monotonic()
    results = asyncio.run(burst())
    elapsed = time.monotonic() - t0
    statuses = Counter(status for status, _ in results)
    print(f"\n[overload] 40 requests in {elapsed:.1f}s: {dict(statuses)}")
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 4 and statuses[429] >= 1
    for status, body in results:
        if status == 200 and "choices" in body:
            assert body["choices"][0]["finish_reason"] == "length"
            assert body["usage"]["completion_tokens"] == 32
        elif status == 200:
            assert body["done"] and body["finish"] == ["length"]
        else:
            assert body["error"]["code"] in ("rate_limit_exceeded", "server_overloaded")
    r = httpx.post(url, json={"messages": MESSAGES, "max_tokens": 2}, headers=AUTH, timeout=30)
    assert r.status_code == 200  # and it recovers


def test_429_carries_retry_after(limited: LiveServer) -> None:
    url = limited.url("/v1/chat/completions")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"messages": MESSAGES, "max_tokens": 64, "ignore_eos": True}
            return await asyncio.gather(*(client.post(url, json=body, headers=AUTH) for _ in range(12)))

    refused = [r for r in asyncio.run(burst()) if r.status_code == 429]
    assert refused
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)


def test_request_timeout_aborts(limited: LiveServer) -> None:
    url = limited.url("/v1/chat/completions")
    long = {"messages": MESSAGES, "max_tokens": 480, "n": 16, "ignore_eos": True}
    t0 = time.monotonic()
    r = httpx.post(url, json=long, headers=AUTH, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - t0 < 10
    with httpx.stream("POST", url, json={**long, "stream": True}, headers=AUTH, timeout=30) as s:
        assert s.status_code == 200
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "request_timeout"


def _held_while_loading(server: LiveServer) -> int:
    """Bound at start, listened on once ready: while the engine loads no other
    process can take the port, and a client is refused (nothing answers yet)."""
    port = int(server.base_url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 120
    while "; AMX " not in server.log_path.read_text() and time.monotonic() < deadline:  # the gateway's first line
        assert server.process.poll() is None, server.log_tail()
        time.sleep(0.1)
    assert "EngineCore" not in server.log_path.read_text()  # the engine is still to come
    assert isinstance(_bind(port), OSError)  # held
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url("/ready"), timeout=2)
    wait_ready(server)
    assert f"listening on http://127.0.0.1:{port}" in server.log_path.read_text()
    return port


def test_the_port_is_held_while_loading_and_sigterm_drains(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """One engine start for both: the port through the start, then the drain."""
    server = launch_server(tiny_checkpoint, tmp_path / "server.log", ["--shutdown-timeout", "60"])
    body = {"messages": MESSAGES, "max_tokens": 200, "ignore_eos": True, "stream": True}
    try:
        port = _held_while_loading(server)
        run = sigterm_while_streaming(server, body, streams=20)
        assert run.ready == 503
        assert run.refused == 503
        for lines in run.streams:
            assert lines[-1] == "data: [DONE]"
            assert finish_reasons(lines) == ["length"]
        rc = server.process.wait(timeout=60)
        print(f"\n[drain] 20 streams finished {run.drained_after:.1f}s after SIGTERM; exit code {rc}")
        assert rc == 0
    finally:
        if server.process.poll() is None:
            stop_server(server)
    assert _bind(port) is None  # released on exit


def test_engine_death_is_detected_and_exits_nonzero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    server = start_server(tiny_checkpoint, tmp_path / "server.log", [])
    url = server.url("/v1/chat/completions")
    try:
        with httpx.stream("POST", url, json={"messages": MESSAGES, "max_tokens": 480, "ignore_eos": True,
                                             "stream": True}, timeout=30) as s:  # fmt: skip
            lines = s.iter_lines()
            assert next(lines).startswith("data: ")
            for child in psutil.Process(server.process.pid).children(recursive=True):
                child.kill()
            t0 = time.monotonic()
            rest = [line for line in lines if line.startswith("data: ")]  # must not hang
        # The stream in flight ends with an error event and [DONE], not a hang.
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] in ("service_unavailable", "internal_error")
        detected = None
        while time.monotonic() - t0 < 10:
            try:
                if httpx.get(server.url("/health"), timeout=2).status_code == 503:
                    detected = time.monotonic() - t0
                    break
            except httpx.HTTPError:
                detected = time.monotonic() - t0  # already gone: also not healthy
                break
            time.sleep(0.1)
        assert detected is not None, "health stayed 200 for 10 s after the engine died"
        rc = server.process.wait(timeout=30)
        print(f"\n[engine death] /health not ok after {detected:.2f}s; exit code {rc}")
        assert rc == 1
        # Every engine process was SIGKILLed; the gateway names one and the likely cause.
        log = server.log_path.read_text()
        assert "the inference engine died: " in log and "(killed by SIGKILL)" in log, server.log_tail()
    finally:
        if server.process.poll() is None:
            stop_server(server)


def test_drain_timeout_aborts_what_is_left(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Streams that outlast --shutdown-timeout end with an error event and
    [DONE]; the process still exits 0."""
    server = start_server(tiny_checkpoint, tmp_path / "server.log", ["--shutdown-timeout", "1"])
    url = server.url("/v1/chat/completions")
    body = {"messages": MESSAGES, "max_tokens": 480, "n": 8, "ignore_eos": True, "stream": True}
    try:

        async def scenario() -> list[list[str]]:
            async with httpx.AsyncClient(timeout=120) as client:
                started = asyncio.Event()
                count = 0

                async def stream() -> list[str]:
                    nonlocal count
                    lines: list[str] = []
                    async with client.stream("POST", url, json=body) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                lines.append(line)
                                if len(lines) == 10:
                                    count += 1
                                    if count == 4:
                                        started.set()
                    return lines

                tasks = [asyncio.create_task(stream()) for _ in range(4)]
                await asyncio.wait_for(started.wait(), 60)
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        t0 = time.monotonic()
        results = asyncio.run(scenario())
        for lines in results:
            assert lines[-1] == "data: [DONE]"
            assert json.loads(lines[-2][6:])["error"]["code"] == "service_unavailable"
        rc = server.process.wait(timeout=60)
        print(
            f"\n[drain timeout] 4 long streams aborted; all ended {time.monotonic() - t0:.1f}s after start; exit {rc}"
        )
        assert rc == 0
    finally:
        if server.process.poll() is None:
            stop_server(server)


def _bind(port: int) -> OSError | None:
    """None if `port` could be bound on loopback (and is released again), else the error."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc
    return None


def test_a_taken_port_fails_the_start_at_once(tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "lemur", "serve", str(tiny_checkpoint), "--port", str(port), "--api-key", API_KEY]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-800:]
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "EngineCore" not in out.stdout + out.stderr  # refused before any engine process started
