"""A live gateway in a child process: `lemur serve` on a free loopback port,
waited for until /ready, stopped on exit. The one launcher that the tests
and the benchmark scripts share.

The port is free when chosen and the server binds it as it starts, before
its engine; another process may still take it in the second between, so
`start` tries again on another port when that happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

PORT_TAKEN = "address already in use"
# The CPU engine refuses to start without a KV-cache budget (GiB); enough for the tiny models.
CPU_KVCACHE_GIB = "1"
# The kernel tests set these in their own process; a server gets them only when asked.
NOT_INHERITED = ("TRITON_INTERPRET", "LEMUR_KERNELS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    api_key: str | None
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def launch(
    model: Path | str,
    log_path: Path,
    extra: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    cwd: Path | None = None,
    prefix: Sequence[str] = (),
) -> LiveServer:
    """`lemur serve MODEL --enforce-eager EXTRA` on a free loopback port, without
    waiting for it. `prefix`: a command to run it under (`taskset -c 0`)."""
    port = free_port()
    cmd = [
        *prefix, sys.executable, "-m", "lemur", "serve", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", *extra,
    ]  # fmt: skip
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    full_env = {"VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, **inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return LiveServer(f"http://127.0.0.1:{port}", api_key, proc, log_path)


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
    stop(server)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log_tail()}")


def start(
    model: Path | str,
    log_path: Path,
    extra: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> LiveServer:
    """A ready server; launched again on another port if its port was taken meanwhile."""
    return start_many([partial(launch, model, log_path, extra, env, api_key, cwd)], timeout)[0]


def start_many(launchers: Sequence[Callable[[], LiveServer]], timeout: float = 300) -> list[LiveServer]:
    """Several ready servers, launched at once: an engine's start is mostly one
    process at a time importing vLLM, so two start side by side in little more
    than the time of one. Each is launched again on another port if its port
    was taken meanwhile; if one fails, all are stopped."""
    servers = [launcher() for launcher in launchers]
    try:
        for i, launcher in enumerate(launchers):
            for attempt in range(3):
                try:
                    wait_ready(servers[i], timeout)
                    break
                except RuntimeError as exc:
                    if attempt == 2 or PORT_TAKEN not in str(exc).lower():
                        raise
                    servers[i] = launcher()
    except BaseException:
        for server in servers:
            stop(server)
        raise
    return servers


def stop(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def running(
    model: Path | str, log_path: Path | None = None, extra: Sequence[str] = (), timeout: float = 300
) -> Iterator[str]:
    """A ready server for the length of a `with` (its log in a temporary folder
    unless given); yields its base URL."""
    log_path = log_path or Path(tempfile.mkdtemp(prefix="lemur-serve-")) / "server.log"
    server = start(model, log_path, tuple(extra), timeout=timeout)
    try:
        yield server.base_url
    finally:
        stop(server)
