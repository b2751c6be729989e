"""Gateway configuration (the flags that are ours, not vLLM's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# After the drain (--shutdown-timeout): aborted streams get this long to send
# their error event and [DONE], then uvicorn this long to close connections.
# Deployments add both to their grace periods (tests/test_deploy.py checks).
ABORT_GRACE_S = 5.0
HTTP_CLOSE_GRACE_S = 5
# vLLM's CPU backend refuses to start without a KV-cache budget: ours, in GiB,
# unless VLLM_CPU_KVCACHE_SPACE is set (enough for the tiny models).
DEFAULT_CPU_KVCACHE_GIB = "1"


@dataclass(frozen=True)
class GatewayConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    # Hashed keys with names and optional per-key limits (see server/auth.py).
    api_keys_file: Path | None = None
    # Default per-key limits (requests / tokens per minute); None: unlimited.
    rate_limit_rpm: float | None = None
    rate_limit_tpm: float | None = None
    # /metrics needs a key too (it is open by default, for Prometheus).
    metrics_require_key: bool = False
    # /metrics on a listener of its own (same host), and not on the API port.
    metrics_port: int | None = None
    # Largest request body accepted (413 beyond).
    max_body_bytes: int = 4 * 1024 * 1024
    # Log prompts and outputs (off: only sizes and ids are logged).
    log_prompts: bool = False
    chat_template: str | None = None
    # Names clients may use in `model`; the first is the one /v1/models lists.
    served_model_names: tuple[str, ...] = ()
    log_level: str = "info"
    # Run one tiny request at start-up; /ready turns 200 once it has been served.
    warmup: bool = True
    # Admission control: running generation requests, and how many may wait.
    max_concurrent_requests: int = 256
    max_queued_requests: int = 1024
    queue_timeout: float = 30.0
    # Deadline of one request, seconds (None: none); past it the engine request is aborted.
    request_timeout: float | None = None
    # Drain on SIGTERM: how long requests in flight may take to finish.
    shutdown_timeout: float = 30.0
    # One prefix cache for all keys (faster, but a key can time another's prompts).
    shared_prefix_cache: bool = False
    # Bounded work per request (server/serving/limits.py): sequences (n x prompts),
    # max_tokens per sequence (also the cap of the default), and echoed prompt logprobs.
    max_sequences_per_request: int = 64
    max_tokens_limit: int = 4096
    max_echo_logprob_tokens: int = 8192
    # Slow clients: a stream whose client has not read for this long is cut
    # (its engine request aborted, its slot freed); each request must arrive
    # whole within the read deadline; at most this many open connections.
    stream_write_timeout: float = 30.0
    read_deadline: float = 30.0
    max_connections: int = 2048
    # LoRA adapters served from the start: (name, PEFT directory) pairs.
    lora_modules: tuple[tuple[str, str], ...] = ()
    # Loading and unloading adapters at run time (POST /v1/load_lora_adapter,
    # /v1/unload_lora_adapter) needs this key, and no user key works there.
    # None: those routes are off.
    lora_admin_key: str | None = None
    # The chat page at / and /playground (static; it calls the API with the user's key).
    playground: bool = True
