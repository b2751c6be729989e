"""Why the engine died: which process, its exit code or signal, and a hint.

Pure logic over what the engine processes left behind: the events our vLLM
plugin wrote (server/engine/vllm_hooks.py: a worker that died, errors with
their tracebacks) and the exit codes of the engine-core processes the
gateway started. Exit codes follow multiprocessing: -N means killed by
signal N.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

HINTS: dict[int, str] = {
    signal.SIGILL: (
        "an instruction this CPU or VM does not allow (bf16 kernels use AVX-512/AMX): "
        "try --dtype float32, and send the output of `lemur env` with a bug report"
    ),
    signal.SIGKILL: (
        "killed from outside, most often by the kernel's out-of-memory killer: lower "
        "VLLM_CPU_KVCACHE_SPACE (CPU) or --gpu-memory-utilization, lower --max-model-len, or give it more memory"
    ),
    signal.SIGSEGV: "a crash in native code (segmentation fault): send `lemur env` and this log with a bug report",
    signal.SIGBUS: "a bad memory access in native code (often /dev/shm too small in a container)",
    signal.SIGABRT: "native code aborted (see the engine's log lines above this one)",
}


@dataclass(frozen=True)
class EngineDeath:
    process: str  # e.g. "worker VllmWorker-1", "engine core EngineCore", "unknown process"
    exitcode: int | None
    hint: str
    traceback: tuple[str, ...] = ()

    @property
    def cause(self) -> str:
        if self.exitcode is None:
            return "exit status unknown"
        if self.exitcode < 0:
            try:
                return f"killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                return f"killed by signal {-self.exitcode}"
        return f"exit code {self.exitcode}"

    def summary(self) -> str:
        return f"the inference engine died: {self.process} ({self.cause}); {self.hint}"

    def traceback_block(self) -> str | None:
        if not self.traceback:
            return None
        return "last lines of the engine's traceback:\n" + "\n".join(self.traceback)


def read_events(path: Path | None) -> list[dict]:
    """The events file, oldest first; unreadable lines are skipped."""
    if path is None or not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return sorted(events, key=lambda e: e.get("time", 0))


def _first_traceback(events: Iterable[dict]) -> tuple[str, tuple[str, ...]]:
    """The earliest error with a traceback is the root cause; the ones after
    it are usually other processes tripping over the first failure."""
    for event in events:
        if event.get("kind") == "error" and event.get("traceback"):
            return str(event.get("process", "?")), tuple(str(x) for x in event["traceback"])
    return "", ()


def _hint(exitcode: int | None, traceback: tuple[str, ...], where: str) -> str:
    if exitcode is not None and exitcode < 0 and -exitcode in HINTS:
        return HINTS[-exitcode]
    if traceback:
        return f"{where} raised: {traceback[-1]}"
    if exitcode is not None and exitcode < 0:
        return "killed by a signal (see the engine's log lines above this one)"
    return "no traceback was recorded (see the engine's log lines above this one)"


def _death(process: str, exitcode: int | None, tb: tuple[str, ...], where: str) -> EngineDeath:
    if exitcode is not None and exitcode < 0:
        tb = ()  # killed: later tracebacks are others tripping over it
    return EngineDeath(process, exitcode, _hint(exitcode, tb, where), tb)


def anything_died(events: list[dict]) -> bool:
    return any(e.get("kind") in ("worker_died", "error") for e in events)


def diagnose(events: list[dict], engine_exitcodes: Mapping[str, int]) -> EngineDeath:
    """Blame the first worker vLLM saw die; else an engine core that exited
    badly; else whoever raised first."""
    where, tb = _first_traceback(events)
    died = next((e for e in events if e.get("kind") == "worker_died"), None)
    if died is not None:
        code = died.get("exitcode")
        exitcode = code if isinstance(code, int) else None
        return _death(f"worker {died.get('worker', '?')}", exitcode, tb, where)
    failed = {name: code for name, code in engine_exitcodes.items() if code != 0}
    if failed:
        name, exitcode = next(iter(failed.items()))
        return _death(f"engine core {name}", exitcode, tb, where)
    return _death(where or "unknown process", None, tb, where)
