"""What a model spanning nodes needs beyond vLLM, with no vLLM in it (the
runner is vllm_node.py): the leader's report of nodes that stopped
answering, and a worker node's watch on its leader.

vLLM's own headless worker outlives a dead leader (vllm#32136): its ranks
wait for work for ever. A worker node here watches the leader's rendezvous
port (the TCP store that rank 0 holds for the job's lifetime) and gives up
once it is gone, so that a supervisor restarts the whole group.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass

from lemur.server.engine.death import EngineDeath

LEADER_PROBE_S = 2.0  # how often a worker node looks for its leader
LEADER_MISSES = 3  # probes in a row that must fail before the leader counts as gone


@dataclass(frozen=True)
class Layout:
    """How the ranks lie over the nodes: node k holds ranks
    [k * per_node, (k + 1) * per_node); the leader is node 0."""

    nodes: int
    world_size: int  # TP x PP
    leader: str  # host:port of the rendezvous

    @property
    def per_node(self) -> int:
        return self.world_size // self.nodes


def lost_nodes(layout: Layout, within: float, exc: BaseException) -> EngineDeath:
    """The engine's death when the remote ranks did not answer a health check
    (the leader's own are alive, or vLLM would have said so): which nodes and
    ranks. One call cannot tell which of several nodes failed: the ranks are
    asked together."""
    first, last = layout.per_node, layout.world_size - 1
    ranks = f"rank {first}" if first == last else f"ranks {first}-{last}"
    nodes = "node 1" if layout.nodes == 2 else f"one of nodes 1-{layout.nodes - 1}"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        why = f"did not answer a health check within {within:g}s"
    else:
        why = f"failed a health check ({exc})"
    hint = f"{why}: the node died, froze or lost its network (see its log; the leader is {layout.leader})"
    return EngineDeath(f"worker {nodes} ({ranks})", None, hint)


class LeaderLost(Exception):
    """The leader's rendezvous port stopped answering."""


class LeaderWatch(threading.Thread):
    """Connects to the leader's rendezvous port every `every` seconds; once
    the leader has been seen, LEADER_MISSES failures in a row mean it is
    gone: `lost` is set and this process gets SIGUSR1, since its main thread
    may be blocked inside vLLM's start-up (see `raise_leader_lost`)."""

    def __init__(self, host: str, port: int, every: float = LEADER_PROBE_S) -> None:
        super().__init__(name="LeaderWatch", daemon=True)
        self.address = (host, port)
        self.every = every
        self.lost = threading.Event()
        self._stop = threading.Event()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=self.every):
                return True
        except OSError:
            return False

    def run(self) -> None:
        seen, misses = False, 0
        while not self._stop.wait(self.every):
            if self._answers():
                seen, misses = True, 0
            elif seen:
                misses += 1
                if misses >= LEADER_MISSES:
                    self.lost.set()
                    os.kill(os.getpid(), signal.SIGUSR1)
                    return

    def stop(self) -> None:
        self._stop.set()


def raise_leader_lost(signum: int, frame: object) -> None:
    """SIGUSR1's handler in a worker node: LeaderLost in the main thread."""
    raise LeaderLost
