"""Per-key rate limits: token buckets for requests and tokens per minute."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lemur.server.admission import RateLimited
from lemur.server.auth import ApiKey


@dataclass
class TokenBucket:
    """Holds up to `capacity`; refills at capacity per minute. May go into debt
    (tokens are charged after the fact), which blocks until repaid."""

    capacity: float
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: available now)."""
        self._refill()
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class KeyLimiter:
    """Requests-per-minute and tokens-per-minute for one key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.requests = TokenBucket(key.rpm) if key.rpm else None
        self.tokens = TokenBucket(key.tpm) if key.tpm else None

    def admit(self) -> None:
        """Before any work: charge one request, or 429 if the key is over its
        requests per minute or its token bucket is in debt."""
        waits = []
        if self.requests is not None:
            waits.append(self.requests.wait_for(1))
        if self.tokens is not None:
            waits.append(self.tokens.wait_for(0))  # in debt: wait until it is repaid
        self._refuse_if_waiting(max(waits, default=0.0))
        if self.requests is not None:
            self.requests.take(1)

    def reserve(self, tokens: int) -> None:
        """Reserve a request's most tokens (prompt + n x max_tokens) up front,
        or 429; `refund` gives back what it did not use. A reservation larger
        than the whole budget needs a full bucket (and leaves it in debt)."""
        if self.tokens is None:
            return
        self._refuse_if_waiting(self.tokens.wait_for(min(tokens, self.tokens.capacity)))
        self.tokens.take(tokens)

    def refund(self, tokens: int) -> None:
        if self.tokens is not None and tokens > 0:
            self.tokens.give(tokens)

    def charge_tokens(self, tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.take(tokens)

    def _refuse_if_waiting(self, wait: float) -> None:
        if wait > 0:
            raise RateLimited(f"rate limit reached for key '{self.key.name}'", retry_after=wait)


class RateLimiter:
    def __init__(self, default_rpm: float | None = None, default_tpm: float | None = None) -> None:
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self._by_key: dict[str, KeyLimiter] = {}

    def for_key(self, key: ApiKey) -> KeyLimiter | None:
        rpm = key.rpm if key.rpm is not None else self.default_rpm
        tpm = key.tpm if key.tpm is not None else self.default_tpm
        if not rpm and not tpm:
            return None
        limiter = self._by_key.get(key.name)
        if limiter is None:
            limiter = KeyLimiter(ApiKey(key.name, key.digest, rpm, tpm))
            self._by_key[key.name] = limiter
        return limiter
