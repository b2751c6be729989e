"""What every serving call needs, built once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lemur.server.admission import AdmissionController
from lemur.server.auth import KeyStore
from lemur.server.chat_template import ChatTemplate
from lemur.server.config import GatewayConfig
from lemur.server.engine import AdapterRef, Engine
from lemur.server.errors import ModelNotFound
from lemur.server.lora_registry import AdapterRegistry
from lemur.server.metrics import Metrics
from lemur.server.ratelimit import KeyLimiter, RateLimiter
from lemur.server.serving.prepare_pool import PreparePool
from lemur.server.tokenizer import Tokenizer


@dataclass
class ServingState:
    """Mutable lifecycle state (the only mutable part of the context)."""

    ready: bool = False
    draining: bool = False
    # Engine request ids in flight, so a drain can abort what is left.
    inflight: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Target:
    """What a request's `model` names: the base, or one of its adapters."""

    name: str  # as responses, logs and metrics show it
    adapter: AdapterRef | None = None


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
    pool: PreparePool
    lora_registry: AdapterRegistry
    state: ServingState = field(default_factory=ServingState)

    @property
    def model_name(self) -> str:
        return self.config.served_model_names[0]

    def cache_salt(self, caller: Caller, adapter: AdapterRef | None = None) -> str | None:
        """Each key its own prefix-cache partition, unless --shared-prefix-cache;
        and each loaded adapter its own: vLLM keys cached blocks by an adapter's
        name and path, so an adapter reloaded from the same folder with new
        weights would otherwise reuse the old one's KV."""
        parts = [] if self.config.shared_prefix_cache else [f"key:{caller.key_name}"]
        if adapter is not None:
            parts.append(f"lora:{adapter.int_id}")
        return "|".join(parts) or None

    def resolve_model(self, requested: str | None) -> Target:
        """The base or adapter a request's `model` names (absent: the base)."""
        if requested is None or requested in self.config.served_model_names:
            return Target(requested or self.model_name)
        adapter = self.lora_registry.get(requested)
        if adapter is not None:
            return Target(adapter.name, adapter.ref)
        names = ", ".join(f"`{a.name}`" for a in self.lora_registry.all())
        also = f" and the adapters {names}" if names else ""
        raise ModelNotFound(
            f"The model `{requested}` does not exist. This server serves `{self.model_name}`{also}.", param="model"
        )


@dataclass(frozen=True)
class Caller:
    """Who a request is for: the key's name (never the key) and its limits."""

    key_name: str
    limits: KeyLimiter | None = None

    def account(self) -> Account:
        return Account(self.key_name, self.limits)


@dataclass
class Account:
    """What one request may spend and has spent, for its caller's token
    budget and metrics: reserved up front, used as the engine reports,
    settled (the unused part refunded) exactly once at the end."""

    key_name: str
    limits: KeyLimiter | None = None
    reserved: int = 0
    used: int = 0
    settled: bool = False

    def reserve(self, tokens: int) -> None:
        if self.limits is not None:
            self.limits.reserve(tokens)  # 429 when over budget
        self.reserved = tokens

    def use(self, tokens: int) -> None:
        self.used += tokens

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.limits is not None:
            if self.used <= self.reserved:
                self.limits.refund(self.reserved - self.used)
            else:  # nothing reserved (e.g. a warm-up), or more than reserved: charge the rest
                self.limits.charge_tokens(self.used - self.reserved)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"


def new_object_id(prefix: str) -> str:
    """The ids of the Responses and Messages APIs: `resp_...`, `msg_...`, `fc_...`
    (128 random bits, as a uuid4 has, without building the UUID: a fifth of the cost)."""
    return f"{prefix}_{os.urandom(16).hex()}"
