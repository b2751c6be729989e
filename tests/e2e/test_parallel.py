"""Tensor and pipeline parallel through the gateway on the real CPU engine,
in float32 against TP 1 (tests/support/parallel.py says why float32).

No VLLM_CPU_OMP_THREADS_BIND is set: the gateway must split the CPUs between
the ranks itself (the inherited environment is scrubbed of it).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.support.parallel import greedy, largest_difference
from tests.support.streams import finish_reasons, sigterm_while_streaming

pytestmark = pytest.mark.e2e

MODES = {"tp2": ["--tensor-parallel-size", "2"], "pp2": ["--pipeline-parallel-size", "2"]}
# The worker processes' titles (vLLM sets them): VLLM::Worker_TP1, VLLM::Worker_PP1.
LAST_RANK = {"tp2": "Worker_TP1", "pp2": "Worker_PP1"}
# How the last rank dies, and what the gateway must then say: SIGKILL is what
# the OOM killer sends, SIGILL what an AMX instruction without permission gets.
KILLS = {
    "tp2": (signal.SIGKILL, "(killed by SIGKILL)", "out-of-memory"),
    "pp2": (signal.SIGILL, "(killed by SIGILL)", "try --dtype float32"),
}
STREAM_MESSAGES = [{"role": "user", "content": "Write a Python function that reverses a list."}]


def _start(checkpoint: Path, log: Path, extra: list[str]) -> tuple[LiveServer, float]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
    t0 = time.monotonic()
    server = start_server(checkpoint, log, ["--dtype", "float32", *extra], env=env)
    return server, time.monotonic() - t0


@pytest.fixture(scope="module", params=sorted(MODES))
def parallel(request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    mode = request.param
    server, ready_s = _start(tiny_checkpoint, tmp_path_factory.mktemp(mode) / "server.log", MODES[mode])
    print(f"\n[parallel] {mode} ready in {ready_s:.1f}s")
    yield mode, server
    if server.process.poll() is None:
        stop_server(server)


def test_same_greedy_tokens_and_logprobs_as_tp1(parallel: tuple[str, LiveServer], fp32_reference: list) -> None:
    mode, server = parallel
    assert "VLLM_CPU_OMP_THREADS_BIND=0|1" in server.log_path.read_text()  # chosen by the gateway
    worst = largest_difference(fp32_reference, greedy(server), mode)
    print(f"\n[parallel] {mode}: largest logprob difference from TP 1: {worst:.2e}")


def test_streaming(parallel: tuple[str, LiveServer]) -> None:
    _, server = parallel
    body = {"messages": STREAM_MESSAGES, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(server.url("/v1/chat/completions"), json=body, timeout=60).json()
    with httpx.stream("POST", server.url("/v1/chat/completions"), json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert sum(1 for p in pieces if p) >= 8  # token by token, not one blob
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sigterm_drains_streams_and_exits_0(parallel: tuple[str, LiveServer]) -> None:
    """Last test of each mode: it stops the server."""
    _, server = parallel
    # Long enough (400 tokens x 4 streams) to be in flight when the signal lands.
    body = {"messages": STREAM_MESSAGES, "max_tokens": 400, "ignore_eos": True, "stream": True}
    run = sigterm_while_streaming(server, body, streams=4, lines_first=2)
    assert run.ready == 503 and run.refused == 503
    for lines in run.streams:
        assert lines[-1] == "data: [DONE]"
        assert finish_reasons(lines) == ["length"]
    assert server.process.wait(timeout=60) == 0


@pytest.fixture(params=sorted(MODES))
def fresh_parallel(request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[tuple]:
    mode = request.param
    server, _ = _start(tiny_checkpoint, tmp_path / "server.log", MODES[mode])
    yield mode, server
    if server.process.poll() is None:
        stop_server(server)


def _worker(server: LiveServer, title: str) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if title in " ".join(child.cmdline()):
            return child
    raise AssertionError(f"no {title} process under the server")


def test_killing_one_rank_fails_the_stream_and_exits_1(fresh_parallel: tuple[str, LiveServer]) -> None:
    mode, server = fresh_parallel
    sig, cause, hint = KILLS[mode]
    url = server.url("/v1/chat/completions")
    body = {"messages": STREAM_MESSAGES, "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url, json=body, timeout=60) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")
        _worker(server, LAST_RANK[mode]).send_signal(sig)
        rest = [line for line in lines if line.startswith("data: ")]  # must not hang
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "service_unavailable"
    statuses = set()
    while server.process.poll() is None:
        try:
            statuses.add(httpx.get(server.url("/health"), timeout=2).status_code)
            statuses.add(httpx.post(url, json={**body, "stream": False, "max_tokens": 2}, timeout=5).status_code)
        except httpx.HTTPError:
            break  # the port closed: the process is on its way out
        time.sleep(0.1)
    assert statuses == {503}, statuses
    assert server.process.wait(timeout=30) == 1
    log = server.log_path.read_text()
    # The gateway says which process died, how, and what to try.
    assert f"the inference engine died: worker VllmWorker-1 {cause}" in log, server.log_tail()
    assert hint in log
