"""Per-key rate limits: token buckets for requests and tokens per minute."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.admission import RateLimited
from server.auth import ApiKey


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


class KeyLimiter:
    """Requests-per-minute and tokens-per-minute for one key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.requests = TokenBucket(key.rpm) if key.rpm else None
        self.tokens = TokenBucket(key.tpm) if key.tpm else None

    def admit(self, prompt_tokens: int) -> None:
        """Charge one request and its prompt, or raise 429 with Retry-After."""
        waits = []
        if self.requests is not None:
            waits.append(self.requests.wait_for(1))
        if self.tokens is not None:
            # A prompt larger than the whole budget could never pass: it only needs a full bucket.
            waits.append(self.tokens.wait_for(min(prompt_tokens, self.tokens.capacity)))
        wait = max(waits, default=0.0)
        if wait > 0:
            raise RateLimited(f"rate limit reached for key '{self.key.name}'", retry_after=wait)
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(prompt_tokens)

    def charge_tokens(self, tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.take(tokens)


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
