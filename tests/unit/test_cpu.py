"""CPU facts and thread binding (lemur/hardware/cpu.py), and why the engine died
(server/engine/death.py): pure logic, plus the AMX syscalls on this machine."""

from __future__ import annotations

import ctypes
import json
import signal
from pathlib import Path

from lemur.hardware import cpu
from lemur.server.engine.death import diagnose, read_events


def test_binding_not_needed_for_one_rank_or_a_node_per_rank() -> None:
    assert cpu.thread_binding(1, [0, 1], nodes=1) is None
    assert cpu.thread_binding(2, list(range(8)), nodes=2) is None  # vLLM's auto: rank i on node i


def test_binding_splits_cpus_between_ranks() -> None:
    two = cpu.thread_binding(2, [0, 1], nodes=1)
    assert two is not None and two.value == "0|1" and two.reserved == () and not two.shared
    four = cpu.thread_binding(4, [0, 1, 2, 3, 8, 9, 10, 11], nodes=1)
    assert four is not None and four.value == "0-1|2-3|8-9|10-11"
    # What does not divide evenly is left to the engine core and the gateway.
    odd = cpu.thread_binding(2, [4, 5, 6, 7, 9], nodes=1)
    assert odd is not None and odd.value == "4-5|6-7" and odd.reserved == (9,)
    # Never a CPU twice unless there are fewer CPUs than ranks.
    for b in (two, four, odd):
        flat = [c for rank in b.ranks for c in rank]
        assert len(flat) == len(set(flat))


def test_binding_with_fewer_cpus_than_ranks_shares() -> None:
    b = cpu.thread_binding(3, [0, 1], nodes=1)
    assert b is not None and b.shared and b.value == "0|1|0"


def test_numa_nodes_from_sysfs(tmp_path: Path) -> None:
    for node, cpus in (("node0", "0-3"), ("node1", "4-7"), ("node10", "8,10-11")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "cpulist").write_text(cpus + "\n")
    assert cpu.numa_nodes([1, 2, 5, 10, 11], root=tmp_path) == [[1, 2], [5], [10, 11]]
    assert cpu.numa_nodes([0, 1], root=tmp_path / "missing") == [[0, 1]]


def test_amx_syscall_reaches_the_kernel() -> None:
    """ARCH_GET_XCOMP_PERM works on every x86-64 Linux (with or without AMX):
    the permitted features always include x87 and SSE state (bits 0, 1)."""
    mask = ctypes.c_ulong(0)
    assert cpu._arch_prctl(cpu.ARCH_GET_XCOMP_PERM, mask) == 0
    assert mask.value & 0b11 == 0b11


def test_amx_permission_matches_the_cpu() -> None:
    status = cpu.request_amx_permission()
    if cpu.has_amx():
        # The Intel machines of the fleet: the kernel must grant it, and it sticks.
        assert status == cpu.AMX_GRANTED
        assert cpu.amx_permitted()
        assert cpu.request_amx_permission() == cpu.AMX_GRANTED
    else:
        assert status == cpu.AMX_UNSUPPORTED
        assert not cpu.amx_permitted()


def test_isa_flags_are_read() -> None:
    flags = cpu.cpu_flags()
    assert "sse2" in flags  # every x86-64 CPU
    assert cpu.cpu_model()


def _events(tmp_path: Path, *events: dict) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + "not json\n")
    return path


def test_worker_killed_by_sigill_gets_the_dtype_hint(tmp_path: Path) -> None:
    path = _events(
        tmp_path,
        {"time": 2.0, "kind": "error", "process": "EngineCore", "message": "x", "traceback": ["RuntimeError: late"]},
        {"time": 1.0, "kind": "worker_died", "process": "EngineCore", "worker": "VllmWorker-0", "exitcode": -4},
    )
    death = diagnose(read_events(path), {"EngineCore": 1})
    assert death.process == "worker VllmWorker-0"
    assert death.cause == "killed by SIGILL"
    assert "--dtype float32" in death.hint
    assert death.traceback == ()  # the engine core's later error is not the cause
    assert "worker VllmWorker-0 (killed by SIGILL)" in death.summary()


def test_engine_core_killed_by_sigkill_gets_the_memory_hint() -> None:
    death = diagnose([], {"EngineCore": -signal.SIGKILL})
    assert death.process == "engine core EngineCore" and death.cause == "killed by SIGKILL"
    assert "out-of-memory" in death.hint and "VLLM_CPU_KVCACHE_SPACE" in death.hint


def test_python_error_shows_the_first_traceback() -> None:
    events = [
        {"time": 1.0, "kind": "error", "process": "Worker_PP1", "traceback": ["Traceback", "AssertionError: x"]},
        {"time": 2.0, "kind": "error", "process": "EngineCore", "traceback": ["Traceback", "KeyError: 'warmup'"]},
    ]
    death = diagnose(events, {"EngineCore": 1})
    assert death.process == "engine core EngineCore" and death.cause == "exit code 1"
    assert death.traceback == ("Traceback", "AssertionError: x")
    assert death.hint == "Worker_PP1 raised: AssertionError: x"
    assert death.traceback_block() == "last lines of the engine's traceback:\nTraceback\nAssertionError: x"


def test_nothing_known() -> None:
    death = diagnose([], {"EngineCore": 0})
    assert death.process == "unknown process" and death.cause == "exit status unknown"
    assert "log" in death.hint


def test_event_writer_records_worker_deaths_and_tracebacks(tmp_path: Path) -> None:
    import logging

    from lemur.server.engine.vllm_hooks import WORKER_DIED_MSG, EventWriter

    path = tmp_path / "events.jsonl"
    log = logging.getLogger("vllm.test_event_writer")
    writer = EventWriter(path)
    log.addHandler(writer)
    try:
        log.info("not an error: not recorded")
        log.error(WORKER_DIED_MSG + " (exit code: %s), shutting down executor.", "VllmWorker-1", -9)
        try:
            raise AssertionError("intermediate tensors")
        except AssertionError:
            log.exception("WorkerProc hit an exception.")
    finally:
        log.removeHandler(writer)
    died, error = read_events(path)
    assert died["kind"] == "worker_died" and died["worker"] == "VllmWorker-1" and died["exitcode"] == -9
    assert error["kind"] == "error" and error["message"] == "WorkerProc hit an exception."
    assert error["traceback"][-1] == "AssertionError: intermediate tensors"
    assert (
        diagnose([died, error], {})
        .summary()
        .startswith("the inference engine died: worker VllmWorker-1 (killed by SIGKILL)")
    )


def test_exit_status_of_a_killed_child_without_reaping_it() -> None:
    import subprocess
    import sys

    from lemur.server.engine.vllm_hooks import child_exit_status

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    assert child_exit_status(child.pid) == -signal.SIGKILL
    assert child.wait(timeout=10) == -signal.SIGKILL  # still there for its real parent to reap
    assert child_exit_status(child.pid, wait_s=0) is None  # reaped now


def test_worker_died_with_unknown_exit_code_is_looked_up(tmp_path: Path) -> None:
    """vLLM logs 'exit code: None' when it looks before the kernel has the
    status; the engine core (the worker's parent) asks the kernel itself."""
    import logging
    import subprocess
    import sys

    from lemur.server.engine.vllm_hooks import WORKER_DIED_MSG, EventWriter, append_event

    path = tmp_path / "events.jsonl"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    append_event(path, {"time": 0.0, "kind": "started", "process": "VllmWorker-1", "pid": child.pid})
    child.send_signal(signal.SIGILL)
    log = logging.getLogger("vllm.test_worker_died")
    writer = EventWriter(path)
    log.addHandler(writer)
    try:
        log.error(WORKER_DIED_MSG + " (exit code: %s), shutting down executor.", "VllmWorker-1", None)
    finally:
        log.removeHandler(writer)
        child.wait(timeout=10)
    death = diagnose(read_events(path), {})
    assert (death.process, death.cause) == ("worker VllmWorker-1", "killed by SIGILL")
