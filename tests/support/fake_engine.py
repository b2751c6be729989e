"""A deterministic stand-in engine for unit tests of pure gateway logic.

Nothing about serving is claimed from it; the e2e tests use the real engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from lemur.server.engine import EngineOutput, EngineRequest, ModelInfo
from lemur.server.engine.death import EngineDeath


class FakeEngine:
    """Emits `max_tokens` tokens per choice: the text "t0 t1 t2 ..."."""

    def __init__(
        self, path: str, vocab_size: int, max_model_len: int = 256, delay: float = 0.0, stop_after: int | None = None
    ) -> None:
        self.info = ModelInfo(
            name="fake", path=path, tokenizer=path, max_model_len=max_model_len,
            vocab_size=vocab_size, created=int(time.time()),
        )  # fmt: skip
        self.delay = delay
        self.stop_after = stop_after  # finish with "stop" after this many tokens
        self.requests: list[EngineRequest] = []
        self.aborted: list[str] = []
        self.alive = True

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.requests.append(request)
        spec = request.sampling
        try:
            steps = min(spec.max_tokens, self.stop_after or spec.max_tokens)
            finish = "stop" if steps < spec.max_tokens else "length"
            for step in range(steps):
                for index in range(spec.n):
                    last = step == steps - 1
                    yield EngineOutput(index=index, text=f" t{step}", token_ids=(10 + step,),
                                       finish_reason=finish if last else None)  # fmt: skip
                await asyncio.sleep(self.delay)
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request.request_id)
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def is_alive(self) -> bool:
        return self.alive

    def death_report(self) -> EngineDeath:
        return EngineDeath("fake engine", None, "stopped by the test")

    async def check_health(self) -> None:
        return None

    async def check_nodes(self, within: float) -> None:
        return None

    async def shutdown(self) -> None:
        self.alive = False
