"""What every serving call needs, built once at start-up."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

from server.admission import AdmissionController
from server.auth import KeyStore
from server.chat_template import ChatTemplate
from server.config import GatewayConfig
from server.engine import Engine
from server.errors import ModelNotFound
from server.metrics import Metrics
from server.ratelimit import KeyLimiter, RateLimiter
from server.tokenizer import Tokenizer


@dataclass
class ServingState:
    """Mutable lifecycle state (the only mutable part of the context)."""

    ready: bool = False
    draining: bool = False
    # Engine request ids in flight, so a drain can abort what is left.
    inflight: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ServingContext:
    config: GatewayConfig
    engine: Engine
    tokenizer: Tokenizer
    template: ChatTemplate
    metrics: Metrics
    admission: AdmissionController
    keys: KeyStore
    limiter: RateLimiter
    state: ServingState = field(default_factory=ServingState)

    @property
    def model_name(self) -> str:
        return self.config.served_model_names[0]

    def cache_salt(self, caller: Caller) -> str | None:
        """Each key its own prefix-cache partition, unless --shared-prefix-cache."""
        return None if self.config.shared_prefix_cache else f"key:{caller.key_name}"

    def resolve_model(self, requested: str | None) -> str:
        """The served name for a request's `model` (absent means the default)."""
        if requested is None or requested in self.config.served_model_names:
            return requested or self.model_name
        raise ModelNotFound(
            f"The model `{requested}` does not exist. This server serves `{self.model_name}`.",
            param="model",
        )


@dataclass(frozen=True)
class Caller:
    """Who a request is for: the key's name (never the key) and its limits."""

    key_name: str
    limits: KeyLimiter | None = None


# Set by the route for the request being served; read by generation to charge
# the tokens to the caller's budget and metrics.
current_caller: ContextVar[Caller | None] = ContextVar("lemur_caller", default=None)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
