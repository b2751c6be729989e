"""A model that spans nodes, on vLLM's multiprocessing backend: each node's
environment, and the worker node (`lemur serve --headless`).

The leader (`lemur serve --nnodes N --node-rank 0`) runs the gateway, the
engine core and its own ranks; a worker node (`--node-rank K --headless`)
runs only its ranks, which take their work from the leader. Both come from
one command line, so the engine settings (LoRA, dtype, parallel sizes) cannot
differ between them. A worker node exits 1 once its leader is gone
(nodes.py: LeaderWatch), reaping its ranks.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import time
from types import FrameType

from vllm.config import ParallelConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.executor.multiproc_executor import MultiprocExecutor

from lemur.hardware.cpu import allowed_cpus, explicit_binding, numa_nodes, thread_binding
from lemur.hardware.network import node_environment
from lemur.server.engine.nodes import Layout, LeaderLost, LeaderWatch, raise_leader_lost

logger = logging.getLogger("lemur.node")
THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def layout(parallel: ParallelConfig) -> Layout:
    return Layout(parallel.nnodes, parallel.world_size, f"{parallel.master_addr}:{parallel.master_port}")


def local_ranks(args: AsyncEngineArgs) -> int:
    """The ranks on this node: the world (TP x PP) split evenly over the nodes."""
    return max(1, args.tensor_parallel_size * args.pipeline_parallel_size // max(1, args.nnodes))


def prepare_node(args: AsyncEngineArgs) -> None:
    """This node's environment, where not set: on several nodes, the address
    and interface on the route to the leader; on a CPU, a thread binding with
    one entry per local rank. The engine processes inherit it."""
    if args.nnodes > 1:
        for name, value in node_environment(args.master_addr, os.environ).items():
            os.environ[name] = value
            logger.info("node %d of %d: %s=%s", args.node_rank, args.nnodes, name, value)
    _bind_cpu_ranks(local_ranks(args), several_nodes=args.nnodes > 1)


def _bind_cpu_ranks(ranks: int, several_nodes: bool) -> None:
    """On a CPU with fewer NUMA nodes than local ranks, vLLM's automatic
    binding refuses to start ("Not enough allowed NUMA nodes"); across nodes
    it counts the whole world's ranks, so it refuses even one rank per node.
    Bind the local ranks explicitly instead, unless the user chose."""
    if not current_platform.is_cpu() or THREADS_BIND_ENV in os.environ:
        return
    cpus = allowed_cpus()
    if several_nodes:
        value = explicit_binding(ranks, cpus)
    elif (binding := thread_binding(ranks, cpus, len(numa_nodes(cpus)))) is not None:
        value = binding.value
    else:
        return  # vLLM's own binding works
    os.environ[THREADS_BIND_ENV] = value
    logger.info("%d CPU ranks on this node: %s=%s", ranks, THREADS_BIND_ENV, value)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # a supervisor stopping the node: not a failure


def run_worker_node(args: AsyncEngineArgs) -> int:
    """Run this node's ranks until the leader is gone (exit 1), a local rank
    dies (exit 1) or SIGTERM (exit 0); the ranks are reaped in every case."""
    if args.nnodes <= 1 or args.node_rank <= 0:
        raise ValueError("--headless runs a worker node: give --nnodes 2 or more and --node-rank 1 or more")
    prepare_node(args)
    config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)
    watch = LeaderWatch(args.master_addr, args.master_port)
    signal.signal(signal.SIGUSR1, raise_leader_lost)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    sizes = f"TP {args.tensor_parallel_size} x PP {args.pipeline_parallel_size}"
    leader = f"{args.master_addr}:{args.master_port}"
    logger.info("worker node %d of %d: ranks of %s, leader at %s", args.node_rank, args.nnodes, sizes, leader)
    watch.start()
    executor: MultiprocExecutor | None = None
    try:
        executor = MultiprocExecutor(config, monitor_workers=False)
        logger.info("worker node %d ready", args.node_rank)
        return _supervise(executor, args.node_rank)
    except LeaderLost:
        logger.error("lost the leader at %s:%d: exiting so that the group restarts", *watch.address)
        return 1
    finally:
        watch.stop()
        if executor is not None:
            started = time.monotonic()
            executor.shutdown()
            logger.info("reaped this node's ranks in %.1fs", time.monotonic() - started)


def _supervise(executor: MultiprocExecutor, node_rank: int) -> int:
    """Wait for a local rank to die (the leader's loss comes as LeaderLost)."""
    procs = {w.proc.sentinel: w for w in executor.workers}
    died = multiprocessing.connection.wait(list(procs))
    worker = procs[died[0]]
    logger.error("worker node %d: rank %d died (exit code %s)", node_rank, worker.rank, worker.proc.exitcode)
    return 1
