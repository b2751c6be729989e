"""Chat completions: a request -> its prompt, grammar and sampling; engine
outputs -> chat objects, with tool calls parsed out of the text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from pydantic import BaseModel

from lemur.server.engine import EngineOutput, EngineRequest, StructuredSpec, TokenLogprob
from lemur.server.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
)
from lemur.server.protocol.common import Usage
from lemur.server.protocol.tools import DeltaFunctionCall, DeltaToolCall, ResponseFunctionCall, ResponseToolCall
from lemur.server.serving.context import Caller, ServingContext, new_request_id
from lemur.server.serving.limits import check_logprob_entries, check_max_tokens, check_sequences
from lemur.server.serving.prompt import render_messages
from lemur.server.serving.respond import ChoiceResult, Prepared
from lemur.server.serving.sampling import build_sampling
from lemur.server.serving.schema_checks import SchemaLimits
from lemur.server.serving.sse import ChunkStream
from lemur.server.serving.structured import GrammarCache, GrammarSettings, structured_spec
from lemur.server.serving.tool_calls import Step, ToolCallParser


def _logprobs(ctx: ServingContext, items: Sequence[TokenLogprob]) -> ChatLogprobs:
    tb = ctx.tokenizer.token_bytes
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=tb(lp.token_id, lp.token),
                top_logprobs=[TopLogprob(token=t, logprob=v, bytes=tb(i, t)) for i, t, v in lp.top],
            )
            for lp in items
        ]
    )


def _finish_reason(reason: str | None, parser: ToolCallParser | None) -> str | None:
    """OpenAI's `tool_calls` when a reply ended by itself after whole calls."""
    called = parser is not None and parser.calls and parser.all_complete()
    return "tool_calls" if reason == "stop" and called else reason


def _call_deltas(parser: ToolCallParser, step: Step) -> list[DeltaToolCall] | None:
    """OpenAI's streamed calls: the first delta has id, type, name and
    `arguments: ""`; later ones only argument text."""
    deltas = []
    for i in sorted({*step.started, *step.arguments}):
        arguments = step.arguments.get(i, "")
        if i in step.started:
            call = parser.calls[i]
            function = DeltaFunctionCall(name=call.name, arguments=arguments)
            deltas.append(DeltaToolCall(index=i, id=call.id, type="function", function=function))
        else:
            deltas.append(DeltaToolCall(index=i, function=DeltaFunctionCall(arguments=arguments)))
    return deltas or None


class ChatAnswer(ChunkStream):
    """Chat completion objects for one request (see respond.Answer). With
    tools in play, each choice's text goes through its own ToolCallParser."""

    def __init__(
        self, ctx: ServingContext, req: ChatCompletionRequest, rid: str, model: str, parse_tools: bool
    ) -> None:
        self.ctx, self.req, self.rid, self.model = ctx, req, rid, model
        self.created = int(time.time())
        self.include_usage = req.include_usage()
        self.parse_tools = parse_tools
        self._parsers: dict[int, ToolCallParser] = {}

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.rid, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening_chunks(self) -> list[BaseModel]:
        role = ChatDelta(role="assistant", content="")
        return [self._chunk([ChatChunkChoice(index=i, delta=role, finish_reason=None)]) for i in range(self.req.n)]

    def _delta(self, out: EngineOutput) -> ChatDelta | None:
        """What one engine output shows; None when nothing (half a UTF-8
        character, or tool-call markup held back)."""
        if not self.parse_tools:
            return ChatDelta(content=out.text) if out.text or out.finish_reason or out.logprobs else None
        parser = self._parsers.setdefault(out.index, ToolCallParser())
        step = parser.feed(out.text)
        if out.finish_reason is not None:
            step.extend(parser.finish())
            self._count_calls(parser)
        if step.empty() and out.finish_reason is None:
            return None
        return ChatDelta(content=step.content or None, tool_calls=_call_deltas(parser, step))

    def delta(self, out: EngineOutput) -> tuple[ChatDelta | None, str | None]:
        """What one engine output shows (None: nothing yet), and its finish
        reason: the content of a chunk, for the APIs restated as chat."""
        delta = self._delta(out)
        return delta, _finish_reason(out.finish_reason, self._parsers.get(out.index))

    def chunk(self, prompt_index: int, out: EngineOutput) -> BaseModel | None:
        delta = self._delta(out)
        if delta is None and not out.logprobs:
            return None
        finish = _finish_reason(out.finish_reason, self._parsers.get(out.index))
        choice = ChatChunkChoice(index=out.index, delta=delta or ChatDelta(), finish_reason=finish)
        if self.req.logprobs and out.logprobs:
            choice.logprobs = _logprobs(self.ctx, out.logprobs)
        return self._chunk([choice])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    def _count_calls(self, parser: ToolCallParser) -> None:
        if parser.calls:
            metrics = self.ctx.metrics
            metrics.child(metrics.tool_calls, self.model).inc(len(parser.calls))

    def message(self, r: ChoiceResult) -> tuple[ChatResponseMessage, str | None]:
        """A finished choice's message (text and parsed calls) and finish reason."""
        if not self.parse_tools:
            return ChatResponseMessage(content=r.text), r.finish_reason
        parser = ToolCallParser()
        step = parser.feed(r.text)
        step.extend(parser.finish())
        self._count_calls(parser)
        calls = [
            ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in parser.calls
        ]
        content = None if calls and not step.content.strip() else step.content
        return ChatResponseMessage(content=content, tool_calls=calls or None), _finish_reason(r.finish_reason, parser)

    def response(self, results: list[list[ChoiceResult]], usage: Usage) -> BaseModel:
        choices = []
        for r in results[0]:
            message, finish = self.message(r)
            logprobs = _logprobs(self.ctx, r.logprobs) if self.req.logprobs else None
            choices.append(ChatChoice(index=r.index, message=message, logprobs=logprobs, finish_reason=finish))
        return ChatCompletionResponse(id=self.rid, created=self.created, model=self.model, choices=choices, usage=usage)


class ChatService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        c = ctx.config
        self.schema_limits = SchemaLimits(
            c.max_schema_bytes, c.max_schema_properties, c.max_schema_enum_values, c.max_schema_any_of
        )
        cache = GrammarCache(int(c.grammar_cache_mb * 1024 * 1024))
        ctx.metrics.watch_grammar_cache(lambda: cache.size)
        self.grammar = GrammarSettings(ctx.engine.info.json_whitespace, self.schema_limits, cache)

    def _grammar(self, req: ChatCompletionRequest, tool_choice: str | None, convert: bool) -> StructuredSpec | None:
        metrics = self.ctx.metrics
        fmt = req.response_format.type if req.response_format is not None else "text"
        if fmt == "text" and tool_choice is None:
            grammar = None
        else:
            t0 = time.perf_counter()
            settings = self.grammar if convert else replace(self.grammar, convert=False)
            grammar = structured_spec(req, tool_choice, settings)
            metrics.grammar_seconds.observe(time.perf_counter() - t0)
        metrics.child(metrics.structured_requests, fmt, tool_choice or "no_tools").inc()
        return grammar

    def prepare(self, req: ChatCompletionRequest, caller: Caller, convert: bool = True) -> Prepared:
        """`convert` False: with cached grammars only (else NotConverted), as
        the pipeline first tries, on the path of a plain prompt."""
        return self.prepare_as(req, caller, convert, new_request_id("chatcmpl"))

    def prepare_as(
        self, req: ChatCompletionRequest, caller: Caller, convert: bool, rid: str, max_tokens_cap: int | None = None
    ) -> Prepared:
        """The same, for a chat request another API restated (its id: `rid`;
        `max_tokens_cap`: its max_tokens is a cap, not a demand, see build_sampling)."""
        ctx = self.ctx
        target = ctx.resolve_model(req.model)
        check_sequences(ctx.config, req.n, prompts=1)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        check_max_tokens(ctx.config, req.requested_max_tokens(), param)
        tool_choice = req.tool_choice_kind() if req.tools else None
        grammar = self._grammar(req, tool_choice, convert)
        # With tool_choice "none" the tools stay out of the prompt: nothing to call.
        tools = req.tools if tool_choice not in (None, "none") else None
        prompt_ids = render_messages(ctx, req.messages, req.add_generation_prompt, tools)
        top = (req.top_logprobs or 0) if req.logprobs else None
        spec = build_sampling(
            ctx,
            req,
            prompt_len=len(prompt_ids),
            max_tokens=req.requested_max_tokens(),
            logprobs=top,
            structured=grammar,
            max_tokens_cap=max_tokens_cap,
        )
        salt = ctx.cache_salt(caller, target.adapter)
        engine_request = EngineRequest(rid, tuple(prompt_ids), spec, salt, target.adapter)
        check_logprob_entries(ctx.config, (engine_request,), "top_logprobs")
        answer = ChatAnswer(ctx, req, rid, target.name, parse_tools=tools is not None)
        return Prepared((engine_request,), caller.account(), answer, target.name)
