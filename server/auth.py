"""API keys: where they come from, how they are checked, and their limits.

Keys come from `--api-key`, the LEMUR_API_KEYS environment variable
(comma-separated), and a keys file with one key per line, stored hashed:

    sha256:<64 hex digits> [name] [rpm=N] [tpm=N]    # comments and blank lines are fine

(`lemur hash-key` prints such a line). Only SHA-256 digests are kept in
memory; a presented key is hashed and compared with every stored digest in
constant time, and its *name* (never the key) is what logs and metrics see.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("lemur.auth")
ENV_VAR = "LEMUR_API_KEYS"
_LINE = re.compile(r"^sha256:([0-9a-fA-F]{64})(?:\s+([^\s=]+))?((?:\s+\w+=[0-9.]+)*)\s*$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens (prompt + completion) per minute


# Who calls when no keys are configured: default limits still apply to it.
ANONYMOUS = ApiKey("anonymous", b"")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def hash_line(key: str, name: str) -> str:
    return f"sha256:{digest(key).hex()} {name}"


def parse_keys_file(path: Path) -> list[ApiKey]:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by others (mode %s): chmod 600 it", path, oct(stat.S_IMODE(mode)))
    keys = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: expected 'sha256:<hex> [name] [rpm=N] [tpm=N]'")
        opts = dict(kv.split("=") for kv in m.group(3).split())
        unknown = set(opts) - {"rpm", "tpm"}
        if unknown:
            raise ValueError(f"{path}:{n}: unknown options {sorted(unknown)}")
        keys.append(ApiKey(
            name=m.group(2) or f"key-{n}",
            digest=bytes.fromhex(m.group(1)),
            rpm=float(opts["rpm"]) if "rpm" in opts else None,
            tpm=float(opts["tpm"]) if "tpm" in opts else None,
        ))  # fmt: skip
    return keys


def _refuse_duplicates(keys: list[ApiKey]) -> None:
    """Two keys with one name would share its rate-limit buckets and be one
    caller in logs and metrics; one key listed twice is a copy-paste slip."""
    names: dict[str, int] = {}
    digests: set[bytes] = set()
    for key in keys:
        names[key.name] = names.get(key.name, 0) + 1
        if key.digest in digests:
            raise ValueError(f"API key {key.name!r} is listed twice (the same key)")
        digests.add(key.digest)
    dup = sorted(name for name, count in names.items() if count > 1)
    if dup:
        raise ValueError(f"API key names must be unique; repeated: {', '.join(dup)}")


class KeyStore:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def from_sources(cls, api_key: str | None, keys_file: Path | None) -> KeyStore:
        keys = []
        if api_key:
            keys.append(ApiKey("default", digest(api_key)))
        for i, key in enumerate(k.strip() for k in os.environ.get(ENV_VAR, "").split(",")):
            if key:
                keys.append(ApiKey(f"env-{i}", digest(key)))
        if keys_file is not None:
            keys.extend(parse_keys_file(keys_file))
        _refuse_duplicates(keys)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """Compare against every key (no early exit), in constant time each."""
        candidate = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(candidate, key.digest):
                found = key
        return found
