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


class Turn:
    """A key's turn at grammar work, for one request whose schemas are new:
    over when both the conversion thread is done (even if the request
    stopped waiting for it) and the request has let go, once the engine sent
    its first output (so the engine compiled its grammar) or it ended. A key
    sending new schemas waits for itself, in the gateway and in the engine's
    compile queue, never the others."""

    def __init__(self, lane: asyncio.Lock) -> None:
        self._lane = lane
        self._holders = {"thread", "request"}

    def _drop(self, holder: str) -> None:
        if holder in self._holders:
            self._holders.discard(holder)
            if not self._holders:
                self._lane.release()

    def thread_done(self) -> None:
        self._drop("thread")

    def request_done(self) -> None:
        """The request's part (idempotent): call it at its first engine output and when it ends."""
        self._drop("request")


class PreparePool:
    """Two sets of threads: one for prompts, one for grammar work (schema
    checks and conversions), so that no schema ever delays a plain prompt.
    Grammar work also runs one request at a time per API key (its lane, taken
    in `Turn`s): a key sending slow schemas waits for itself, not the others."""

    def __init__(self, workers: int, max_waiting: int, max_model_len: int, grammar_timeout: float = 30.0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lemur-prepare")
        self._grammar = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lemur-grammar")
        self._slots = asyncio.Semaphore(workers + max_waiting)
        self._lanes: dict[str, asyncio.Lock] = {}
        self.grammar_timeout = grammar_timeout
        self.max_chars = max(65536, MAX_CHARS_PER_TOKEN * max_model_len)

    def _check_chars(self, chars: int, param: str) -> None:
        if chars > self.max_chars:
            raise ContextLengthExceeded(
                f"the prompt has {chars} characters: more than any {self.max_chars // MAX_CHARS_PER_TOKEN}-token "
                "context can hold. Please shorten it.",
                param=param,
            )

    async def run(self, fn: Callable[..., T], *args: object, chars: int, param: str, inline: bool = True) -> T:
        """`fn(*args)` for a prompt of `chars` characters (the request field
        `param`): refused at once if no context could hold it; inline when it
        is short, where the hop to a thread would cost more than the work
        (measured: always hopping cut small-request throughput by 40 %),
        unless `inline` is False (tools, whose rendering is long whatever the
        messages' size); otherwise on the pool."""
        self._check_chars(chars, param)
        if chars <= INLINE_CHARS and inline:
            return fn(*args)
        if self._slots.locked():
            raise RateLimited("the server is busy preparing other prompts; retry later", retry_after=1.0)
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def take_turn(self, owner: str) -> Turn:
        """Wait for the lane of `owner` (an API key's name)."""
        lane = self._lanes.setdefault(owner, asyncio.Lock())
        await lane.acquire()
        return Turn(lane)

    async def convert(self, turn: Turn, fn: Callable[..., T], *args: object, chars: int, param: str) -> T:
        """`fn(*args)` on the grammar threads, in `turn`, for at most
        --grammar-timeout. The turn's thread part ends when the thread is
        done, not merely when this stops waiting (timed out, or its client
        left): a key cannot pile work up behind a deadline. A job still
        queued is dropped."""
        self._check_chars(chars, param)
        loop = asyncio.get_running_loop()
        try:
            job = self._grammar.submit(fn, *args)
        except BaseException:
            turn.thread_done()
            raise
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(turn.thread_done))
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
