"""The Responses API's service: a turn begins with its stored conversation
(owned by the caller's key, within the chain and storage caps), runs as a
chat request through the one pipeline, and is stored once done; stored
responses are read, listed and deleted by their owner only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter

from lemur.server.errors import APIError, InvalidRequest, NotFound
from lemur.server.protocol.responses import InputItem, ResponseObject, ResponsesRequest
from lemur.server.responses_store import ResponseStore, StoredResponse
from lemur.server.serving.chat import ChatService
from lemur.server.serving.context import Caller, new_object_id
from lemur.server.serving.limits import LimitExceeded
from lemur.server.serving.respond import Prepared
from lemur.server.serving.responses import ResponsesTurn, restate
from lemur.server.serving.responses_answer import ResponsesAnswer
from lemur.server.serving.restating import chat_request, renamed

logger = logging.getLogger("lemur.responses")
_ITEMS = TypeAdapter(list[InputItem])


@dataclass(frozen=True)
class StoreLimits:
    max_chain: int
    max_bytes_per_key: int


def _not_found(id_: str, param: str | None = None) -> NotFound:
    return NotFound(f"No response with id '{id_}' found.", param=param)


def _input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """This turn's input as stored items, each with an id (as OpenAI lists them)."""
    if isinstance(req.input, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": req.input}]}]
    else:
        items = [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in req.input]
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    for item in items:
        item.setdefault("id", new_object_id(prefixes.get(item.get("type", "message"), "item")))
    return items


class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore | None, limits: StoreLimits) -> None:
        self.chat, self.store, self.limits = chat, store, limits

    async def begin(self, req: ResponsesRequest, caller: Caller) -> ResponsesTurn:
        """The turn, with the conversation it continues; cheap checks first."""
        if req.store and self.store is None:
            message = "store: this server keeps no responses (--responses-store none); send store: false"
            raise InvalidRequest(message, param="store")
        store = self.store is not None and req.store is not False  # OpenAI's default: stored
        history: list[InputItem] = []
        previous = None
        if req.previous_response_id is not None:
            chain = await self._chain(req.previous_response_id, caller)
            for stored in chain:
                history += _ITEMS.validate_python(stored.input + stored.response["output"])
            previous = chain[-1]
        if store and self.store is not None:
            used = await self.store.bytes_of(caller.key_name)
            if used >= self.limits.max_bytes_per_key:
                raise LimitExceeded(
                    f"store: this key's stored responses take {used} bytes, the most it may keep "
                    "(--responses-max-mb-per-key); delete some, or send store: false",
                    param="store",
                )
        return ResponsesTurn(req, tuple(history), previous, store)

    async def _chain(self, id_: str, caller: Caller) -> list[StoredResponse]:
        param = "previous_response_id"
        if self.store is None:
            raise InvalidRequest(f"{param}: this server keeps no responses (--responses-store none)", param=param)
        chain = await self.store.chain(id_, caller.key_name)
        if not chain:
            raise _not_found(id_, param)
        if len(chain) >= self.limits.max_chain:
            raise LimitExceeded(
                f"{param}: this conversation has {len(chain)} responses, the most one chain may hold "
                "(--responses-max-chain); start a new one",
                param=param,
            )
        return chain

    def prepare(self, turn: ResponsesTurn, caller: Caller, convert: bool = True) -> Prepared:
        restated = restate(turn)
        chat = chat_request(restated)
        rid = new_object_id("resp")
        try:
            prepared = self.chat.prepare_as(chat, caller, convert, rid)
        except APIError as exc:
            raise renamed(exc, restated) from None

        async def keep(response: ResponseObject) -> bool:
            return await self._keep(turn, caller, response)

        answer = ResponsesAnswer(turn.request, rid, prepared.model, prepared.answer, keep if turn.store else None)
        return replace(prepared, answer=answer)

    async def _keep(self, turn: ResponsesTurn, caller: Caller, response: ResponseObject) -> bool:
        """Store a finished response; False (and a log line) if the store failed:
        the answer still goes out, saying `store: false`."""
        assert self.store is not None
        previous = turn.previous
        stored = StoredResponse(
            response.id,
            caller.key_name,
            previous.id if previous else None,
            previous.depth + 1 if previous else 1,
            _input_items(turn.request),
            response.model_dump(mode="json", exclude_none=True) | {"store": True},
        )
        try:
            await self.store.put(stored)
        except Exception:
            logger.exception("could not store response %s", response.id)
            return False
        return True

    async def retrieve(self, id_: str, caller: Caller) -> dict[str, Any]:
        stored = await self._stored(id_, caller)
        return stored.response

    async def input_items(self, id_: str, caller: Caller, limit: int, order: str, after: str | None) -> dict[str, Any]:
        """OpenAI's list of a response's input items: newest first unless `order` is asc."""
        items = (await self._stored(id_, caller)).input
        items = items if order == "asc" else items[::-1]
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidRequest(f"after: no input item '{after}' in this response", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
        return {"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": len(items) > limit}

    async def delete(self, id_: str, caller: Caller) -> dict[str, Any]:
        if self.store is None or not await self.store.delete(id_, caller.key_name):
            raise _not_found(id_)
        return {"id": id_, "object": "response.deleted", "deleted": True}

    async def _stored(self, id_: str, caller: Caller) -> StoredResponse:
        stored = await self.store.get(id_, caller.key_name) if self.store is not None else None
        if stored is None:
            raise _not_found(id_)
        return stored
