"""A model spanning two nodes, on the real CPU engine: two processes on
localhost stand in for the nodes, the leader (`lemur serve --nnodes 2
--node-rank 0`) and a worker (the same command line plus `--headless
--node-rank 1`). Nothing is set in their environment by hand: each node
finds its address, its Gloo interface and its thread binding itself.

- TP 2 and PP 2 across the nodes give TP 1's greedy tokens in float32, with
  logprobs within 1e-4 (tests/support/parallel.py).
- A worker node killed or frozen while idle turns /health to 503 and the
  leader exits 1 within 15 s, naming the node and its ranks.
- A killed leader: the worker node exits non-zero within 30 s.

Each pair's failure test is its last: it ends the pair.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from lemur.server import live
from tests.conftest import API_KEY, TEST_FLAGS, LiveServer, free_port, launch_server
from tests.support.parallel import greedy, largest_difference

pytestmark = pytest.mark.e2e

MODES = {"tp2": ["--tensor-parallel-size", "2"], "pp2": ["--pipeline-parallel-size", "2"]}
LEADER_EXIT_S = 15  # a dead or frozen worker node: /health 503 and exit 1 within this
WORKER_EXIT_S = 30  # a dead leader: the worker node exits within this
# What a node would otherwise find for itself; the tests must not set them.
NODE_ENV = ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "VLLM_CPU_OMP_THREADS_BIND")


@dataclass
class Pair:
    mode: str
    leader: LiveServer
    worker: LiveServer  # its URL is unused: a worker node serves no HTTP

    def stop(self) -> None:
        for node in (self.leader, self.worker):
            if node.process.poll() is None:
                _kill_tree(node.process.pid)


def _kill_tree(pid: int) -> None:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _start_pair(checkpoint: Path, where: Path, mode: str) -> Pair:
    env = {k: v for k, v in os.environ.items() if k not in NODE_ENV}
    node = ["--dtype", "float32", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    flags = [*node, *MODES[mode]]
    t0 = time.monotonic()
    leader = launch_server(checkpoint, where / "leader.log", [*flags, "--node-rank", "0"], env=env)
    worker_flags = [*TEST_FLAGS, *flags, "--node-rank", "1", "--headless"]  # the leader's line, plus these
    worker = live.launch(checkpoint, where / "worker.log", worker_flags, env, API_KEY, cwd=where)
    pair = Pair(mode, leader, worker)
    try:
        live.wait_ready(leader, timeout=300)
    except BaseException:
        print(worker.log_tail())
        pair.stop()
        raise
    print(f"\n[multinode] {mode} across two nodes ready in {time.monotonic() - t0:.1f}s")
    return pair


@pytest.fixture(scope="module", params=sorted(MODES))
def pair(request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    started = _start_pair(tiny_checkpoint, tmp_path_factory.mktemp(f"nodes-{request.param}"), request.param)
    yield started
    started.stop()


def test_same_greedy_tokens_and_logprobs_as_tp1(pair: Pair, fp32_reference: list) -> None:
    worker_log = pair.worker.log_path.read_text()
    for found in ("VLLM_HOST_IP=127.0.0.1", "GLOO_SOCKET_IFNAME=lo", "VLLM_CPU_OMP_THREADS_BIND="):
        assert found in worker_log and found in pair.leader.log_path.read_text(), found
    worst = largest_difference(fp32_reference, greedy(pair.leader), pair.mode)
    print(f"\n[multinode] {pair.mode}: largest logprob difference from TP 1: {worst:.2e}")


def _until_exit(leader: LiveServer, limit_s: float) -> tuple[set[int], float]:
    """Poll /health until the leader exits: the statuses seen, and when it exited."""
    t0, statuses = time.monotonic(), set()
    while leader.process.poll() is None and time.monotonic() - t0 < limit_s + 5:
        try:
            statuses.add(httpx.get(leader.url("/health"), timeout=2).status_code)
        except httpx.HTTPError:
            pass  # the port closed: on its way out
        time.sleep(0.1)  # the leader answers 503 for a second (DEATH_503_S) before it exits
    return statuses, time.monotonic() - t0


def test_a_worker_node_lost_while_idle_ends_the_leader(pair: Pair) -> None:
    """TP 2: the worker node is killed; PP 2: it is frozen (SIGSTOP)."""
    assert httpx.get(pair.leader.url("/health"), timeout=5).status_code == 200
    leader_tree = psutil.Process(pair.leader.process.pid).children(recursive=True)
    worker = psutil.Process(pair.worker.process.pid)
    sig = signal.SIGKILL if pair.mode == "tp2" else signal.SIGSTOP
    for p in [worker, *worker.children(recursive=True)]:
        p.send_signal(sig)
    statuses, took = _until_exit(pair.leader, LEADER_EXIT_S)
    code = pair.leader.process.poll()
    print(f"\n[multinode] {pair.mode}: worker node {sig.name}: the leader exited {code} after {took:.1f}s")
    assert code == 1 and took <= LEADER_EXIT_S, (code, took, pair.leader.log_tail())
    assert 503 in statuses, statuses
    # The death report names the node and its ranks.
    assert "the inference engine died: worker node 1 (rank 1)" in pair.leader.log_path.read_text(), (
        pair.leader.log_tail()
    )
    _, alive = psutil.wait_procs(leader_tree, timeout=5)
    assert not alive, alive  # the leader reaped its engine core and its own ranks


@pytest.fixture()
def fresh_pair(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[Pair]:
    started = _start_pair(tiny_checkpoint, tmp_path, "tp2")
    yield started
    started.stop()


def test_a_worker_node_exits_once_its_leader_is_killed(fresh_pair: Pair) -> None:
    _kill_tree(fresh_pair.leader.process.pid)
    t0 = time.monotonic()
    code = fresh_pair.worker.process.wait(timeout=WORKER_EXIT_S + 30)
    took = time.monotonic() - t0
    print(f"\n[multinode] leader killed: the worker node exited {code} after {took:.1f}s")
    assert code != 0 and took <= WORKER_EXIT_S, (code, took)
    assert "lost the leader at 127.0.0.1:" in fresh_pair.worker.log_path.read_text()
    children = [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == fresh_pair.worker.process.pid]
    assert not children  # its ranks were reaped
