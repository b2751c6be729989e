"""Shared by every test folder: the tiny checkpoint, and `lemur serve` with
the tests' flags through the one launcher (lemur.server.live).

The folders: unit/ (gateway logic, CLI, packaging; mock engines at most),
kernels/, training/, deploy/ and e2e/ (the real server on the real vLLM
engine). `make test-fast` runs every test not marked `engine` (each test
under e2e/ is, and the few elsewhere that start vLLM say so); `make test`
runs them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from lemur.server import live
from lemur.server.live import LiveServer, free_port, wait_ready
from lemur.server.live import stop as stop_server

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-lemur-test-key"
# The shared server also knows a second key (named "env-0"), for per-key behaviour.
SECOND_API_KEY = "sk-lemur-second-key"
MAX_MODEL_LEN = 512
PING_INTERVAL = 0.001  # seconds: --stream-ping-interval of the session server
MODEL_NAME = "lemur-tiny-chat-untrained"
# Tests read counters right after their requests, so every scrape renders
# (--metrics-max-age 0); the default reuse is tested in tests/unit/test_metrics_render.py.
TEST_FLAGS = ("--max-model-len", str(MAX_MODEL_LEN), "--metrics-max-age", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = REPO / "tests" / "e2e"
    for item in items:
        if e2e in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lemur.training.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / MODEL_NAME)


@pytest.fixture(scope="session")
def turn_ender_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, crafted to end every turn, with a 32k context (for agent clients)."""
    from lemur.training.tiny import build_turn_ender

    return build_turn_ender(tiny_checkpoint, tmp_path_factory.mktemp("ckpt") / "lemur-tiny-turn-ender")


@pytest.fixture(scope="session")
def fp32_reference(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """TP 1's greedy tokens and logprobs in float32 (tests/support/parallel.py),
    for the parallel and multi-node tests; its server stops once they are read."""
    from tests.support.parallel import greedy

    t0 = time.monotonic()
    server = start_server(tiny_checkpoint, tmp_path_factory.mktemp("tp1") / "server.log", ["--dtype", "float32"])
    try:
        print(f"\n[parallel] TP 1 ready in {time.monotonic() - t0:.1f}s")
        return greedy(server)
    finally:
        stop_server(server)


def start_server(
    checkpoint: Path, log_path: Path, extra: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> LiveServer:
    """A ready `lemur serve` on the checkpoint with the tests' flags (the test key in its headers),
    run from the log's folder: a checkout's root on sys.path would make its
    folders importable by their own names (`server.logs` beside lemur.server.logs)."""
    return start_servers(checkpoint, [(log_path, extra, env)], timeout)[0]


Launch = tuple[Path, list[str], dict[str, str] | None]  # the log's path, extra flags, environment


def start_servers(checkpoint: Path, launches: list[Launch], timeout: float = 300) -> list[LiveServer]:
    """Several such servers, started side by side (in little more than the time of one)."""
    return live.start_many([partial(launch_server, checkpoint, *launch) for launch in launches], timeout)


def launch_server(checkpoint: Path, log_path: Path, extra: list[str], env: dict[str, str] | None = None) -> LiveServer:
    """The same, without waiting for it."""
    flags = [*TEST_FLAGS, *_state_dir(log_path, extra), *extra]
    return live.launch(checkpoint, log_path, flags, env, API_KEY, cwd=log_path.parent)


def _state_dir(log_path: Path, extra: list[str]) -> list[str]:
    """Each test server keeps its state (the SQLite response store) beside its log, unless the test says where."""
    return [] if "--state-dir" in extra else ["--state-dir", str(log_path.parent / "state")]


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real server with the test key, started once for the whole session
    (each engine start costs 20-40 s); tests that need other flags start their
    own, shared within their module wherever the behaviour allows."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    t0 = time.monotonic()
    # A ping interval shorter than any first token: every streamed Messages
    # answer then starts with pings, which the clients must take in their stride.
    flags = ["--api-key", API_KEY, "--stream-ping-interval", str(PING_INTERVAL)]
    live = start_server(tiny_checkpoint, log_path, flags, env={"LEMUR_API_KEYS": SECOND_API_KEY})
    print(f"\n[lemur] server ready in {time.monotonic() - t0:.1f}s at {live.base_url}")
    yield live
    stop_server(live)


@pytest.fixture(scope="session")
def client(server: LiveServer):
    import openai

    return openai.OpenAI(base_url=server.url("/v1"), api_key=server.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def async_client_factory(server: LiveServer):
    import openai

    def make() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=server.url("/v1"), api_key=server.api_key, max_retries=0, timeout=60)

    return make


__all__ = ["LiveServer", "free_port", "launch_server", "start_server", "stop_server", "wait_ready"]
