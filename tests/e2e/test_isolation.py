"""Tenants do not share the prefix cache: each API key has its own salt, so a
key cannot learn from cache-hit timing which prompts another key sent (the
CVE-2025-46570 class). Observed through vLLM's own prefix-cache counters."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import API_KEY, SECOND_API_KEY, LiveServer

pytestmark = pytest.mark.e2e

# Long enough to fill several KV blocks (a hit needs a whole block).
SECRET_PROMPT = "The merger with Initech closes on March 3rd; tell nobody. " * 12


def prefix_cache_hits(server: LiveServer) -> float:
    text = httpx.get(server.url("/metrics"), timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:prefix_cache_hits_total(?:\{[^}]*\})? (\S+)$", text, re.M))


def ask(server: LiveServer, key: str) -> None:
    body = {"messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 1, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(server.url("/v1/chat/completions"), json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text


def test_prefix_cache_is_per_key(server: LiveServer) -> None:
    ask(server, API_KEY)  # key 1 sends its prompt: cached now
    before = prefix_cache_hits(server)
    ask(server, API_KEY)
    own_hit = prefix_cache_hits(server) - before
    assert own_hit >= 64, "the same key's repeated prompt should hit the cache"
    before = prefix_cache_hits(server)
    ask(server, SECOND_API_KEY)  # key 2 sends the very same prompt
    assert prefix_cache_hits(server) - before == 0, "another key's cached prompt was reused"
    before = prefix_cache_hits(server)
    ask(server, SECOND_API_KEY)
    assert prefix_cache_hits(server) - before == own_hit  # key 2 has its own cache entry now
