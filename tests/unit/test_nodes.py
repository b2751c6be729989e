"""The pure parts of a model spanning nodes: each node's environment, the
leader's report of a node that stopped answering, and a worker node's
watch on its leader (a real socket on loopback)."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from lemur.hardware.cpu import explicit_binding
from lemur.hardware.network import GLOO_IFNAME_ENV, HOST_IP_ENV, interface_of, node_environment, route_ip
from lemur.server.engine.nodes import LEADER_MISSES, Layout, LeaderWatch, lost_nodes


def test_a_node_finds_its_address_and_interface_on_the_route_to_the_leader() -> None:
    assert route_ip("127.0.0.1") == "127.0.0.1"
    assert interface_of("127.0.0.1") == "lo"
    assert node_environment("127.0.0.1", {}) == {HOST_IP_ENV: "127.0.0.1", GLOO_IFNAME_ENV: "lo"}


def test_what_is_set_is_left_alone() -> None:
    both = {HOST_IP_ENV: "10.0.0.7", GLOO_IFNAME_ENV: "eth9"}
    assert node_environment("127.0.0.1", both) == {}
    # A given address decides the interface; one no interface holds gets none.
    assert node_environment("127.0.0.1", {HOST_IP_ENV: "127.0.0.1"}) == {GLOO_IFNAME_ENV: "lo"}
    assert node_environment("127.0.0.1", {HOST_IP_ENV: "192.0.2.77"}) == {}


@pytest.mark.parametrize(
    ("ranks", "cpus", "expected"),
    [(1, [0, 1], "0-1"), (2, [0, 1, 2, 3], "0-1|2-3"), (2, [0, 1, 2], "0|1"), (2, [5], "5|5")],
)
def test_explicit_binding_has_one_entry_per_local_rank(ranks: int, cpus: list[int], expected: str) -> None:
    # Without NUMA nodes in /sys (or one of them), the CPUs are split evenly.
    assert explicit_binding(ranks, cpus).split("|") == expected.split("|")


def test_the_report_names_the_nodes_and_ranks() -> None:
    tp2 = lost_nodes(Layout(2, 2, "10.0.0.1:29501"), 3.0, TimeoutError("RPC call to check_health timed out."))
    assert tp2.process == "worker node 1 (rank 1)"
    assert "did not answer a health check within 3s" in tp2.hint and "10.0.0.1:29501" in tp2.hint
    assert tp2.summary().startswith("the inference engine died: worker node 1 (rank 1)")
    wide = lost_nodes(Layout(4, 16, "h:1"), 3.0, RuntimeError("Worker failed with error 'x'"))
    assert wide.process == "worker one of nodes 1-3 (ranks 4-15)"
    assert "failed a health check (Worker failed with error 'x')" in wide.hint


@pytest.fixture()
def sigusr1() -> list[int]:
    """SIGUSR1 recorded rather than acted on (LeaderWatch sends it to this process)."""
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    yield got
    signal.signal(signal.SIGUSR1, previous)


def _wait(condition, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_worker_node_gives_up_once_its_leader_is_gone(sigusr1: list[int]) -> None:
    leader = socket.create_server(("127.0.0.1", 0))
    watch = LeaderWatch("127.0.0.1", leader.getsockname()[1], every=0.02)
    watch.start()
    try:
        time.sleep(0.2)  # seen several times, and still there
        assert not watch.lost.is_set()
        leader.close()
        assert _wait(watch.lost.is_set, 5.0)
        assert _wait(lambda: sigusr1 == [signal.SIGUSR1], 1.0)
    finally:
        watch.stop()


def test_a_leader_not_yet_up_is_waited_for(sigusr1: list[int]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    watch = LeaderWatch("127.0.0.1", port, every=0.02)
    watch.start()
    time.sleep(0.02 * (LEADER_MISSES + 10))
    watch.stop()
    assert not watch.lost.is_set() and sigusr1 == []
