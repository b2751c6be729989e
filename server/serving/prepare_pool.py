"""Rendering and tokenizing off the event loop, with bounds.

A chat template renders in Python and a long prompt takes the tokenizer
milliseconds to seconds; on the event loop that would stall every stream in
flight. This pool runs that work on a few threads (short prompts inline: the hop
would cost more), lets a bounded number of requests wait for them (beyond:
429), and refuses first, for free, a prompt whose characters alone could
never fit the model's context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lemur.server.admission import RateLimited
from lemur.server.errors import ContextLengthExceeded
from lemur.server.serving.limits import LimitExceeded

T = TypeVar("T")

# No tokenizer packs more characters than this into one token (runs of spaces in
# code come closest), so a longer prompt is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 64
# Below this many characters, rendering and tokenizing take well under a
# millisecond: done inline, they stall the loop less than a thread hop costs.
INLINE_CHARS = 8192


class PreparePool:
    """Two sets of threads: one for prompts, one for grammar work (schema
    checks and conversions), so that no schema ever delays a plain prompt.
    Grammar work also runs one request at a time per API key (its lane): a
    key sending slow schemas waits for itself, not the others."""

    def __init__(self, workers: int, max_waiting: int, max_model_len: int, grammar_timeout: float = 30.0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lemur-prepare")
        self._grammar = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lemur-grammar")
        self._slots = asyncio.Semaphore(workers + max_waiting)
        self._lanes: dict[str, asyncio.Lock] = {}
        self.grammar_timeout = grammar_timeout
        self.max_chars = max(65536, MAX_CHARS_PER_TOKEN * max_model_len)

    async def run(
        self,
        fn: Callable[..., T],
        *args: object,
        chars: int,
        param: str,
        heavy: bool = False,
        owner: str = "",
        inline: bool = True,
    ) -> T:
        """`fn(*args)` for a prompt of `chars` characters (the request field
        `param`): refused at once if no context could hold it; inline when it
        is short, where the hop to a thread would cost more than the work
        (measured: always hopping cut small-request throughput by 40 %),
        unless `inline` is False (tools, whose rendering is long whatever the
        messages' size); otherwise on the pool. `heavy` work (converting
        grammars) goes to the grammar threads, in the lane of `owner` (the
        API key's name)."""
        if chars > self.max_chars:
            raise ContextLengthExceeded(
                f"the prompt has {chars} characters: more than any {self.max_chars // MAX_CHARS_PER_TOKEN}-token "
                "context can hold. Please shorten it.",
                param=param,
            )
        if chars <= INLINE_CHARS and inline and not heavy:
            return fn(*args)
        if heavy:
            return await self._run_in_lane(owner, fn, args)
        if self._slots.locked():
            raise RateLimited("the server is busy preparing other prompts; retry later", retry_after=1.0)
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run_in_lane(self, owner: str, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        """The lane is held until the thread is done, not merely until this
        request stops waiting (timed out, or its client left): a key cannot
        pile work up behind a deadline. A job still queued is dropped."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.setdefault(owner, asyncio.Lock())
        await lane.acquire()
        try:
            job = self._grammar.submit(fn, *args)
        except BaseException:
            lane.release()
            raise
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(lane.release))
        try:
            async with asyncio.timeout(self.grammar_timeout):
                return await asyncio.wrap_future(job)
        except TimeoutError:
            raise LimitExceeded(
                f"checking and converting this request's JSON Schemas took more than {self.grammar_timeout:g}s "
                "(--grammar-timeout); simplify them"
            ) from None
        finally:
            job.cancel()  # no-op once it ran

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._grammar.shutdown(wait=False, cancel_futures=True)
