"""A deterministic engine without a model, for load-testing the gateway alone.

`lemur serve --engine mock MODEL` serves through exactly the same protocol,
serving and HTTP code as the vLLM engine; only token generation is replaced:
after `ttft_s`, each request emits `max_tokens` tokens (no eos) at
`tokens_per_s` per sequence. MODEL supplies only the tokenizer and context
length. Sampling parameters other than n and max_tokens are ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from lemur.server.engine.base import AdapterRef, EngineDeadError, EngineOutput, EngineRequest, ModelInfo
from lemur.server.engine.death import EngineDeath

# A short cycle of ordinary words; their ids come from the checkpoint's tokenizer.
_WORDS = (" the", " lemur", " serves", " tokens", " quickly", ".", " It", " is", " a", " mock")


class MockEngine:
    def __init__(self, path: str, name: str, tokens_per_s: float, ttft_s: float, max_model_len: int | None) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        config = json.loads((Path(path) / "config.json").read_text())
        self.info = ModelInfo(
            name=name,
            path=path,
            tokenizer=path,
            max_model_len=max_model_len or int(config.get("max_position_embeddings", 2048)),
            vocab_size=len(tok),
            created=int(time.time()),
        )
        self._cycle = [
            (ids[0], tok.decode(ids[:1])) for ids in (tok.encode(w, add_special_tokens=False) for w in _WORDS)
        ]
        self.interval = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.ttft_s = ttft_s
        self.alive = True

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if not self.alive:
            raise EngineDeadError("mock engine stopped")
        spec = request.sampling
        loop = asyncio.get_running_loop()
        start = loop.time() + self.ttft_s
        for step in range(spec.max_tokens):
            # Paced against the start, so sleeping late does not slow the whole stream.
            delay = start + step * self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            token_id, text = self._cycle[step % len(self._cycle)]
            last = step == spec.max_tokens - 1
            for index in range(spec.n):
                yield EngineOutput(index, text, (token_id,), finish_reason="length" if last else None)

    async def abort(self, request_id: str) -> None:
        return None  # generation lives in the request's own generator: closing it stops it

    async def add_adapter(self, adapter: AdapterRef) -> None:
        return None  # the mock serves no adapters (its ModelInfo has no LoRA limits)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        return None

    def is_alive(self) -> bool:
        return self.alive

    def death_report(self) -> EngineDeath:
        return EngineDeath("mock engine", None, "it was shut down")

    async def check_health(self) -> None:
        if not self.alive:
            raise EngineDeadError("mock engine stopped")

    async def check_nodes(self, within: float) -> None:
        await self.check_health()  # one process: no other node

    async def shutdown(self) -> None:
        self.alive = False
