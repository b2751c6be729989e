"""Gateway configuration: each field is declared once, with its flag.

`lemur serve` builds its parser and this config from the fields below
(server/flags.py); vLLM's own flags come from vLLM. To add a gateway flag,
add a field here with `flag(default, help, group)` and read it from
`ctx.config` where it acts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lemur.server.flags import engine_flag, flag

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# After the drain (--shutdown-timeout): aborted streams get this long to send
# their error event and [DONE], then uvicorn this long to close connections.
# Deployments add both to their grace periods (tests/deploy/test_deploy.py checks).
ABORT_GRACE_S = 5.0
HTTP_CLOSE_GRACE_S = 5
# vLLM's CPU backend refuses to start without a KV-cache budget: ours, in GiB,
# unless VLLM_CPU_KVCACHE_SPACE is set (enough for the tiny models).
DEFAULT_CPU_KVCACHE_GIB = "1"
LORA_ADMIN_KEY_ENV = "LEMUR_LORA_ADMIN_KEY"

NETWORK = "network"
KEYS = "API keys and rate limits"
LIMITS = "request limits and admission"
CLIENTS = "slow clients and connections"
MODEL = "model and chat format"
ENGINE = "engine"
LORA = "LoRA adapters"
OBSERVE = "logs, metrics and the playground"
STORE = "stored responses (the Responses API)"
# The order of the groups in `lemur serve --help`.
GROUPS = (MODEL, NETWORK, KEYS, LIMITS, CLIENTS, LORA, STORE, OBSERVE, ENGINE)
DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "lemur"


def parse_lora_modules(items: list[str] | tuple[()]) -> tuple[tuple[str, str], ...]:
    """NAME=PATH items as (name, path) pairs, each name once."""
    modules: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"takes NAME=PATH, not {item!r}")
        if name in modules:
            raise ValueError(f"names {name!r} twice")
        modules[name] = path
    return tuple(modules.items())


@dataclass(frozen=True)
class GatewayConfig:
    host: str = flag(DEFAULT_HOST, "address to bind", NETWORK)
    port: int = flag(DEFAULT_PORT, "port to bind", NETWORK)
    api_key: str | None = flag(None, "require this key as 'Authorization: Bearer <key>'", KEYS)
    api_keys_file: Path | None = flag(
        None, "hashed API keys, one per line: 'sha256:<hex> [name] [rpm=N] [tpm=N]' (see `lemur hash-key`)", KEYS
    )
    rate_limit_rpm: float | None = flag(None, "default requests per minute per key", KEYS, shown_default="unlimited")
    rate_limit_tpm: float | None = flag(None, "default tokens per minute per key", KEYS, shown_default="unlimited")
    shared_prefix_cache: bool = flag(
        False,
        "one prefix cache for all API keys (by default each key has its own: no cross-key timing of prompts)",
        KEYS,
    )
    chat_template: str | None = flag(
        None, "Jinja chat template (file or inline)", MODEL, shown_default="the checkpoint's, else Lemur's ChatML"
    )
    max_body_bytes: int = flag(4 * 1024 * 1024, "largest request body in bytes; beyond: 413", LIMITS)
    max_concurrent_requests: int = flag(256, "sequences running at once: a request counts n x prompts", LIMITS)
    max_queued_requests: int = flag(1024, "requests waiting for a slot; beyond: 429", LIMITS)
    queue_timeout: float = flag(30.0, "seconds a request may wait for a slot before a 429", LIMITS)
    request_timeout: float | None = flag(
        None, "deadline of a request in seconds; past it the request is aborted", LIMITS, shown_default="none"
    )
    max_sequences_per_request: int = flag(
        64, "most sequences (n x prompts) one request may ask for; beyond: 400", LIMITS
    )
    max_tokens_limit: int = flag(
        4096, "most max_tokens per sequence, and the cap of the default when a request omits it", LIMITS
    )
    max_echo_logprob_tokens: int = flag(
        8192, "most prompt-token logprobs (prompt tokens x n) an echo+logprobs request returns", LIMITS
    )
    max_logprob_entries: int = flag(
        32768, "most logprob entries one request may return: n x max_tokens x (top_logprobs + 1)", LIMITS
    )
    max_schema_bytes: int = flag(
        256 * 1024, "bytes of JSON Schema (tools' parameters and response_format) one request may send", LIMITS
    )
    max_schema_properties: int = flag(1024, "object properties in one JSON Schema, at every level", LIMITS)
    max_schema_enum_values: int = flag(1024, "enum values in one JSON Schema, all enums together", LIMITS)
    max_schema_any_of: int = flag(128, "branches of one anyOf or oneOf in a JSON Schema", LIMITS)
    grammar_cache_mb: float = flag(64.0, "memory for converted JSON Schemas kept for reuse, in MiB", LIMITS)
    grammar_timeout: float = flag(
        10.0, "seconds to check and convert one request's JSON Schemas (one request per key at a time)", LIMITS
    )
    stream_write_timeout: float = flag(
        30.0, "cut a response whose client reads nothing for this many seconds, freeing its slot", CLIENTS
    )
    stream_ping_interval: float = flag(
        1.0,
        "while a streamed Messages answer waits for its first token (a long prefill), send Anthropic's `ping` "
        "event after this many seconds, and again each as long; 0: never",
        CLIENTS,
    )
    read_deadline: float = flag(30.0, "seconds a connection has to send each whole request, headers and body", CLIENTS)
    max_connections: int = flag(2048, "open connections at once; beyond: 503", CLIENTS)
    lora_modules: tuple[tuple[str, str], ...] = flag(
        (),
        "LoRA adapters (PEFT directories) to serve beside the base, chosen by a request's `model`; "
        "implies --enable-lora",
        LORA,
        nargs="+",
        metavar="NAME=PATH",
        parse=parse_lora_modules,
        shown_default="none",
    )
    lora_admin_key: str | None = flag(
        None,
        "turn on POST /v1/load_lora_adapter and /v1/unload_lora_adapter, guarded by this key (no user key "
        "works there); implies --enable-lora",
        LORA,
        env=LORA_ADMIN_KEY_ENV,
        parse=lambda v: v or None,
    )
    state_dir: Path = flag(
        DEFAULT_STATE_DIR,
        "where the server keeps what outlives it (the SQLite response store)",
        STORE,
        env="LEMUR_STATE_DIR",
    )
    responses_store: str = flag(
        "sqlite",
        "where stored responses live: sqlite (a file in --state-dir), postgresql://... (shared by replicas), "
        "or none (then store: true is a 400)",
        STORE,
        env="LEMUR_RESPONSES_STORE",
        shown_default="sqlite",
    )
    responses_ttl: float = flag(30 * 24 * 3600.0, "seconds a stored response is kept (30 days)", STORE)
    responses_max_chain: int = flag(256, "most responses in one previous_response_id chain", STORE)
    responses_max_mb_per_key: float = flag(256.0, "most MiB of stored responses per API key", STORE)
    log_format: str = flag("json", "log format", OBSERVE, choices=("json", "text"))
    log_prompts: bool = flag(False, "also log prompts and outputs (off: only sizes and ids)", OBSERVE)
    metrics_require_key: bool = flag(
        False, "protect /metrics with the API keys too (open by default, without the per-key series)", OBSERVE
    )
    metrics_port: int | None = flag(
        None,
        "serve /metrics, with the per-key series, on this port (same host) instead of the API port",
        OBSERVE,
        env="LEMUR_METRICS_PORT",
    )
    playground: bool = flag(
        True,
        "do not serve the chat page at / and /playground (it is static and calls the API with the user's key)",
        OBSERVE,
        negate=True,
    )
    metrics_max_age: float = flag(
        1.0,
        "seconds a render of the series may be reused between /metrics scrapes (an endpoint picker scrapes 20 "
        "times a second); the queue depth it routes by (lemur:num_requests_pending) is always fresh; 0: never",
        OBSERVE,
    )
    warmup: bool = flag(True, "be ready without serving a warm-up request", OBSERVE, negate=True)
    # Read from vLLM's own flags: the names clients may use in `model` (the
    # first is the one /v1/models lists), its log level, and its
    # --shutdown-timeout, which is also how long the gateway drains on SIGTERM.
    served_model_names: tuple[str, ...] = engine_flag((), "served_model_name", convert=tuple)
    log_level: str = engine_flag("info", "log_level", convert=lambda v: str(v).lower())
    shutdown_timeout: float = engine_flag(30.0, "shutdown_timeout", convert=float, engine_default=30.0)
