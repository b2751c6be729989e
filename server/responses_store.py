"""Stored responses, for the Responses API's `store` and `previous_response_id`.

Each row is one response: its own input items, the response object as sent,
its owner (the API key's name: nobody else can read, continue or delete it),
the response it continued, and its depth in that chain. Continuing a chain
reads it in one recursive query, oldest first.

Two backends with one schema: SQLite, a file in the server's state directory
(the embedded default: it survives a restart), and PostgreSQL for replicas
behind a load balancer, where the next turn may land on any of them. Expired
rows are invisible at once and deleted by a sweep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("lemur.responses")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lemur_responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        previous_id TEXT,
        depth INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL,
        input TEXT NOT NULL,
        response TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lemur_responses_owner ON lemur_responses (owner, expires_at)",
    "CREATE INDEX IF NOT EXISTS lemur_responses_expiry ON lemur_responses (expires_at)",
)
_COLUMNS = "id, owner, previous_id, depth, input, response"
_CHAIN = f"""WITH RECURSIVE chain AS (
        SELECT {_COLUMNS} FROM lemur_responses WHERE id = ? AND owner = ? AND expires_at > ?
        UNION ALL
        SELECT r.id, r.owner, r.previous_id, r.depth, r.input, r.response
        FROM lemur_responses r JOIN chain c ON r.id = c.previous_id
        WHERE r.owner = ? AND r.expires_at > ?)
    SELECT {_COLUMNS} FROM chain ORDER BY depth"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str
    previous_id: str | None
    depth: int  # 1 for a response that continued none
    input: list[dict[str, Any]]  # its own input items, with ids
    response: dict[str, Any]  # the response object, as sent

    @classmethod
    def from_row(cls, row: Any) -> StoredResponse:
        id_, owner, previous_id, depth, input_, response = row
        return cls(id_, owner, previous_id, depth, json.loads(input_), json.loads(response))


class ResponseStore(ABC):
    """Where responses live. Every read is by owner: another key's id is not found."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._sweeper: asyncio.Task | None = None

    @abstractmethod
    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (`?` placeholders); its rows."""

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    async def open(self) -> None:
        await self._open()
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._close()

    async def put(self, stored: StoredResponse) -> None:
        now = time.time()
        input_, response = json.dumps(stored.input), json.dumps(stored.response)
        sql = "INSERT INTO lemur_responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        args = (stored.id, stored.owner, stored.previous_id, stored.depth, now, now + self.ttl_s,
                len(input_) + len(response), input_, response)  # fmt: skip
        await self._execute(sql, args)

    async def get(self, id_: str, owner: str) -> StoredResponse | None:
        sql = f"SELECT {_COLUMNS} FROM lemur_responses WHERE id = ? AND owner = ? AND expires_at > ?"
        rows = await self._execute(sql, (id_, owner, time.time()))
        return StoredResponse.from_row(rows[0]) if rows else None

    async def chain(self, id_: str, owner: str) -> list[StoredResponse]:
        """The response and those it continued, oldest first; [] if it is not
        found, or if a link was deleted or expired (the conversation is gone)."""
        now = time.time()
        rows = [StoredResponse.from_row(r) for r in await self._execute(_CHAIN, (id_, owner, now, owner, now))]
        return rows if rows and rows[0].depth == 1 else []

    async def delete(self, id_: str, owner: str) -> bool:
        sql = "DELETE FROM lemur_responses WHERE id = ? AND owner = ? AND expires_at > ? RETURNING id"
        return bool(await self._execute(sql, (id_, owner, time.time())))

    async def bytes_of(self, owner: str) -> int:
        sql = "SELECT COALESCE(SUM(size), 0) FROM lemur_responses WHERE owner = ? AND expires_at > ?"
        rows = await self._execute(sql, (owner, time.time()))
        return int(rows[0][0])

    async def purge(self) -> int:
        return len(
            await self._execute("DELETE FROM lemur_responses WHERE expires_at <= ? RETURNING id", (time.time(),))
        )

    async def _sweep(self) -> None:
        period = min(max(self.ttl_s, 1.0), 300.0)
        while True:
            await asyncio.sleep(period)
            try:
                if removed := await self.purge():
                    logger.info("removed %d expired responses", removed)
            except Exception:  # a database hiccup must not end the sweeps
                logger.exception("sweeping expired responses failed")


class SqliteStore(ResponseStore):
    """One file; its connection lives on one thread of its own (sqlite3
    connections belong to a thread), so the event loop never waits on disk."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lemur-responses")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            db.execute(statement)
        self.path.chmod(0o600)  # other users of the machine read no conversation
        self._db = db

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        assert self._db is not None
        return self._db.execute(sql, args).fetchall()

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, sql, args)

    async def _open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)

    async def _close(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=False)


class PostgresStore(ResponseStore):
    """A PostgreSQL database shared by the replicas (asyncpg, a small pool)."""

    def __init__(self, dsn: str, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.dsn = dsn
        self._pool: Any = None

    async def _open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        async with self._pool.acquire() as db, db.transaction():
            # Replicas starting together would race to create the table.
            await db.execute("SELECT pg_advisory_xact_lock(hashtext('lemur_responses'))")
            for statement in SCHEMA:
                await db.execute(statement)

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        numbered = _numbered(sql)
        async with self._pool.acquire() as db:
            return list(await db.fetch(numbered, *args))

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


def open_store(spec: str, state_dir: Path, ttl_s: float) -> ResponseStore | None:
    """The store `--responses-store` names: sqlite, postgresql://..., or none."""
    if spec == "none":
        return None
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresStore(spec, ttl_s)
    if spec == "sqlite":
        return SqliteStore(state_dir / "responses.sqlite3", ttl_s)
    raise ValueError(f"--responses-store takes sqlite, none or a postgresql:// URL, not {spec!r}")
