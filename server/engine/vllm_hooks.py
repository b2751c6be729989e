"""vLLM general plugin that runs in every vLLM process (API, engine core, each
worker) before any model code: what a process needs from us on this machine.

Entry point `lemur_process` of the `vllm.general_plugins` group. It:
- asks Linux for AMX permission on a CPU platform (vLLM's CPU kernels use
  AMX whenever the CPU has it, but no vLLM process asks; without the
  permission the first AMX instruction is SIGILL);
- works around vLLM 0.32's CPU pipeline parallel in eager mode (see
  `_allocate_pipeline_buffers_lazily`);
- fixes vLLM 0.32's CPU LoRA ops, which applied an adapter to base-model
  tokens batched with adapter requests (server/engine/cpu_lora_fix.py);
- when the gateway set `LEMUR_ENGINE_EVENTS`, appends this process's fatal
  news (a worker that died, an error with its traceback) to that file, one
  JSON object a line, so the gateway can say why the engine died
  (server/engine/death.py reads it).

Safe to run more than once per process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import traceback
from pathlib import Path

from lemur.hardware.cpu import request_amx_permission

EVENTS_ENV = "LEMUR_ENGINE_EVENTS"
MAX_EVENTS_PER_PROCESS = 20
TRACEBACK_LINES = 12
# vLLM's MultiprocExecutor logs this (with the name and exit code as args)
# from its monitor thread in the engine core when a worker process is gone.
WORKER_DIED_MSG = "Worker proc %s died unexpectedly"

logger = logging.getLogger("vllm.lemur_hooks")  # under "vllm": vLLM's handler prints it
_registered = False


def process_name() -> str:
    return multiprocessing.current_process().name


def append_event(path: Path, event: dict) -> None:
    line = (json.dumps(event, default=str) + "\n").encode()
    # O_APPEND: lines from several processes never interleave mid-line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _pid_of(path: Path, name: str) -> int | None:
    """The pid a process announced in its "started" event."""
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("kind") == "started" and event.get("process") == name:
            return int(event["pid"])
    return None


def child_exit_status(pid: int, wait_s: float = 2.0) -> int | None:
    """A child's exit status as multiprocessing spells it (-N: signal N),
    without reaping it (WNOWAIT: its Process object still gets it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:  # not our child, or already reaped
            return None
        if info is not None:
            return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


class EventWriter(logging.Handler):
    """Appends ERROR records of vLLM's loggers to the events file."""

    def __init__(self, path: Path) -> None:
        super().__init__(level=logging.ERROR)
        self.path = path
        self.written = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.written >= MAX_EVENTS_PER_PROCESS:
            return
        try:
            append_event(self.path, self._event(record))
            self.written += 1
        except Exception:  # a report must never take the engine down
            self.handleError(record)

    def _event(self, record: logging.LogRecord) -> dict:
        event: dict = {"time": record.created, "pid": os.getpid(), "process": process_name()}
        if isinstance(record.msg, str) and record.msg.startswith(WORKER_DIED_MSG) and len(record.args or ()) >= 2:
            name, exitcode = str(record.args[0]), record.args[1]  # type: ignore[index]
            if exitcode is None:
                # vLLM reads the exit code as soon as the worker's pipe closes,
                # before the kernel has its status (it logs "exit code: None").
                pid = _pid_of(self.path, name)
                exitcode = child_exit_status(pid) if pid is not None else None
            return {**event, "kind": "worker_died", "worker": name, "exitcode": exitcode}
        event.update(kind="error", message=record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            lines = "".join(traceback.format_exception(*record.exc_info)).rstrip().splitlines()
            event["traceback"] = lines[-TRACEBACK_LINES:]
        return event


def _report_events(path: Path) -> None:
    vllm_logger = logging.getLogger("vllm")
    if not any(isinstance(h, EventWriter) for h in vllm_logger.handlers):
        vllm_logger.addHandler(EventWriter(path))


def _allocate_pipeline_buffers_lazily() -> None:
    """vLLM 0.32 on CPU with pipeline parallel and --enforce-eager: a rank after
    the first asserts `self.intermediate_tensors is not None` on its first
    step, because only the warm-up dummy run allocates that buffer and the CPU
    worker skips warm-up in eager mode. Allocate it on first use instead,
    exactly as the dummy run would (max_num_tokens rows, model dtype)."""
    from vllm.version import __version__

    if not __version__.startswith("0.32."):  # the release this was read against (pyproject pins it)
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original = CPUModelRunner.sync_and_gather_intermediate_tensors
    if getattr(original, "_lemur_lazy", False):
        return

    def sync_and_gather_intermediate_tensors(self, num_tokens, intermediate_tensors, sync_self):  # type: ignore[no-untyped-def]
        if self.intermediate_tensors is None:
            self.intermediate_tensors = self.model.make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.model_config.dtype, device=self.device
            )
        return original(self, num_tokens, intermediate_tensors, sync_self)

    sync_and_gather_intermediate_tensors._lemur_lazy = True  # type: ignore[attr-defined]
    CPUModelRunner.sync_and_gather_intermediate_tensors = sync_and_gather_intermediate_tensors


def register() -> None:
    """Entry point."""
    global _registered
    if _registered:
        return
    _registered = True
    started = time.perf_counter()
    from vllm.platforms import current_platform

    amx = "not a CPU platform"
    if current_platform.is_cpu():
        amx = request_amx_permission()
        _allocate_pipeline_buffers_lazily()
        from lemur.server.engine import cpu_lora_fix

        cpu_lora_fix.install()
    events = os.environ.get(EVENTS_ENV)
    if events:
        append_event(
            Path(events), {"time": time.time(), "kind": "started", "process": process_name(), "pid": os.getpid()}
        )
        _report_events(Path(events))
    elapsed_ms = (time.perf_counter() - started) * 1000
    reported = "reported" if events else "not reported"
    logger.info(
        "lemur hooks in %s (pid %d): AMX %s; engine events %s (%.0f ms)",
        process_name(),
        os.getpid(),
        amx,
        reported,
        elapsed_ms,
    )
