"""Tensor and pipeline parallel through the gateway on the real CPU engine.

The servers here run in float32, not the CPU default bf16: tensor parallel
sums partial products in another order (an all-reduce over ranks), and in
bf16 that alone moves logprobs by ~1e-2 and flips near-tied greedy tokens.
In float32 the reordering costs ~1e-6, so "same tokens, logprobs within
1e-4" is a real check of the sharding, not of rounding.

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
from tests.support.streams import finish_reasons, sigterm_while_streaming

pytestmark = pytest.mark.e2e

PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "import numpy as np\n",
    "<html><body>",
    "Once upon a time",
]
MAX_TOKENS = 24
LOGPROB_TOL = 1e-4  # float32 with reordered sums: ~1e-6 observed
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


def _greedy(server: LiveServer) -> list[list[tuple[str, float, dict[str, float]]]]:
    """(token, logprob, top-2) per generated token, for each prompt."""
    out = []
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 2, "ignore_eos": True}
        r = httpx.post(server.url("/v1/completions"), json=body, timeout=60)
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        out.append(list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)))
    return out


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    server, ready_s = _start(tiny_checkpoint, tmp_path_factory.mktemp("tp1") / "server.log", [])
    try:
        print(f"\n[parallel] TP 1 ready in {ready_s:.1f}s")
        return _greedy(server)
    finally:
        stop_server(server)


@pytest.fixture(scope="module", params=sorted(MODES))
def parallel(request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    mode = request.param
    server, ready_s = _start(tiny_checkpoint, tmp_path_factory.mktemp(mode) / "server.log", MODES[mode])
    print(f"\n[parallel] {mode} ready in {ready_s:.1f}s")
    yield mode, server
    if server.process.poll() is None:
        stop_server(server)


def test_same_greedy_tokens_and_logprobs_as_tp1(parallel: tuple[str, LiveServer], reference: list) -> None:
    mode, server = parallel
    assert "VLLM_CPU_OMP_THREADS_BIND=0|1" in server.log_path.read_text()  # chosen by the gateway
    worst = 0.0
    for prompt, ref, got in zip(PROMPTS, reference, _greedy(server), strict=True):
        for i, ((ref_tok, ref_lp, ref_top), (tok, lp, _)) in enumerate(zip(ref, got, strict=True)):
            assert abs(lp - ref_lp) <= LOGPROB_TOL, (mode, prompt, i, lp, ref_lp)
            worst = max(worst, abs(lp - ref_lp))
            if tok != ref_tok:
                # Only an exact tie (within the tolerance) may pick another token;
                # after it, the two continuations are different texts.
                gap = abs(sorted(ref_top.values())[-1] - sorted(ref_top.values())[-2])
                assert gap <= LOGPROB_TOL, (mode, prompt, i, tok, ref_tok, gap)
                break
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
